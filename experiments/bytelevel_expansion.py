#!/usr/bin/env python
"""ALLaM's vocabulary expansion on the shipped byte-level BPE bases: Arabic tokens per word on the
demo corpus's held-out Arabic before and after +16k and +32k Arabic tokens, and the English
identity check over every English document of the demo corpus (training and held-out).

    python experiments/bytelevel_expansion.py                  # tekken, qwen, gpt2 where installed
    python experiments/bytelevel_expansion.py --sizes 16000 --bases tekken

Prints a markdown table and writes the numbers as JSON, with the commit it ran at (the default bases
and sizes: experiments/bytelevel_expansion.json; others: outputs/bytelevel_expansion.json).
Tokenizers are built exactly as a run builds them (cached under paths.cache_dir / ALLAM_CACHE).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from omegaconf import OmegaConf

    from allam.config import TokenizerConfig
    from allam.data.demo import demo_texts
    from allam.tokenizer import build_tokenizer
    from allam.tokenizer.bytelevel import SHIPPED

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bases", default="tekken,qwen,gpt2")
    p.add_argument("--sizes", default="16000,32000")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("ALLAM_CACHE", ROOT / ".cache")) / "tokenizers")
    p.add_argument("--out", type=Path, help="JSON to write (default: experiments/bytelevel_expansion.json for the "
                   "default bases and sizes, else outputs/bytelevel_expansion.json)")
    a = p.parse_args(argv)
    if a.out is None:  # a partial run does not replace the committed record
        full = (a.bases, a.sizes) == (p.get_default("bases"), p.get_default("sizes"))
        a.out = ROOT / ("experiments" if full else "outputs") / "bytelevel_expansion.json"

    def texts(lang):
        return demo_texts(lang, "train")

    ar_val = list(demo_texts("ar", "val"))
    english = list(demo_texts("en", "train")) + list(demo_texts("en", "val"))
    words = sum(len(d.split()) for d in ar_val)

    def per_word(tok) -> float:
        return sum(len(x) for x in tok(ar_val, add_special_tokens=False)["input_ids"]) / words

    rows = []
    for name in a.bases.split(","):
        if SHIPPED[name].path() is None:
            print(f"{name}: skipped ({SHIPPED[name].install})")
            continue
        base = build_tokenizer(OmegaConf.merge(OmegaConf.structured(TokenizerConfig), {"base": name}),
                               cache_dir=a.cache, texts=texts)
        en_ids = base.tokenizer(english, add_special_tokens=False)["input_ids"]
        row = {"base": name, "model": SHIPPED[name].model, "vocab": len(base.tokenizer), "ar_tokens_per_word": per_word(base.tokenizer)}
        for n in (int(s) for s in a.sizes.split(",")):
            t0 = time.perf_counter()
            exp = build_tokenizer(OmegaConf.merge(OmegaConf.structured(TokenizerConfig),
                                                  {"variant": "expanded", "base": name, "num_new_tokens": n}),
                                  cache_dir=a.cache, texts=texts)
            seconds = time.perf_counter() - t0
            same = sum(x == y for x, y in zip(exp.tokenizer(english, add_special_tokens=False)["input_ids"], en_ids))
            row[f"+{n}"] = {"vocab": len(exp.tokenizer), "ar_tokens_per_word": per_word(exp.tokenizer),
                            "english_identical": same, "english_docs": len(english),
                            "build_seconds": round(seconds, 1), "stats": exp.meta.get("stats", {})}
        rows.append(row)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    from allam.results import provenance

    a.out.write_text(json.dumps({**provenance(), "heldout_arabic_words": words, "rows": rows}, indent=2) + "\n")
    sizes = [int(s) for s in a.sizes.split(",")]
    print("| base | vocab | Arabic tokens/word | " + " | ".join(f"+{n // 1000}k: tokens/word (English docs identical)" for n in sizes) + " |")
    print("|---|---|---|" + "---|" * len(sizes))
    for r in rows:
        cells = [f"{r[f'+{n}']['ar_tokens_per_word']:.2f} ({r[f'+{n}']['english_identical']:,}/{r[f'+{n}']['english_docs']:,})"
                 for n in sizes]
        print(f"| {r['base']} | {r['vocab']:,} | {r['ar_tokens_per_word']:.2f} | " + " | ".join(cells) + " |")
    print(f"held-out Arabic: {words:,} words; JSON: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
