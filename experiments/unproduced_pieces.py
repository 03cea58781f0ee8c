#!/usr/bin/env python
"""How many appended SentencePiece pieces the expanded tokenizer can never produce, before and
after the expansion dropped them (allam/tokenizer/expand.py: ``unproduced``).

For each tokenizer folder (the claims' configuration built by this checkout: ``english8k`` with 1%
Arabic in its training words, ``tokenizer.num_new_tokens=16000``; and any ``--old`` folder, e.g. the
same configuration built before the fix): the new ids whose own text the Hugging Face BPE (merges
ranked by id, as SentencePiece ranks them by score) does not encode as that id, a few examples, and
how often all new ids and the dead ones occur in the Arabic demo's held-out documents. Also the git
commit and dirty flag (:func:`allam.results.provenance`).

    ALLAM_CACHE=.cache python experiments/unproduced_pieces.py --old <folder> --json experiments/unproduced_pieces.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from allam import results as R  # noqa: E402


def measure(folder: Path, first: int, heldout: list[str]) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = tok.backend_tokenizer.model
    dead = []
    for i in range(first, len(tok)):
        piece = tok.convert_ids_to_tokens(i)
        got = model.tokenize(piece)
        if [t.id for t in got] != [i]:
            dead.append((i, piece, [t.value for t in got]))
    counts = Counter(i for ids in tok(heldout, add_special_tokens=False)["input_ids"] for i in ids)
    dead_ids = {i for i, _, _ in dead}
    return {"folder": str(folder), "vocabulary": len(tok), "new_pieces": len(tok) - first,
            "not_produced": len(dead), "examples": [{"id": i, "piece": p, "encodes_as": e} for i, p, e in dead[:8]],
            "heldout_ar_documents": len(heldout),
            "heldout_new_tokens": sum(c for i, c in counts.items() if i >= first),
            "heldout_new_ids_used": sum(1 for i in counts if i >= first),
            "heldout_dead_tokens": sum(counts[i] for i in dead_ids)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", action="append", default=[], help="an expanded tokenizer folder built before the fix")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    from omegaconf import OmegaConf

    from allam.config import TokenizerConfig
    from allam.data.demo import demo_texts
    from allam.tokenizer import build_tokenizer

    t0 = time.perf_counter()
    cfg = OmegaConf.merge(OmegaConf.structured(TokenizerConfig),
                          {"variant": "expanded", "base_ar_share": 0.01, "num_new_tokens": 16000})
    cache = Path(os.environ.get("ALLAM_CACHE", ROOT / ".cache")) / "tokenizers"
    built = build_tokenizer(cfg, cache_dir=cache, texts=lambda lang: demo_texts(lang, "train"))
    first = len(built.base.tokenizer)
    heldout = list(demo_texts("ar", "val"))
    out = {"config": {"base": "english8k", "base_ar_share": 0.01, "num_new_tokens": 16000},
           "now": {**measure(built.path, first, heldout), "stats": built.meta["stats"]},
           "old": [measure(Path(f), first, heldout) for f in a.old],
           "seconds": round(time.perf_counter() - t0, 1), **R.provenance()}
    text = json.dumps(out, indent=1, ensure_ascii=False)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
