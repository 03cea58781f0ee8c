#!/usr/bin/env python
"""ALLaM's toy adaptation recipe (experiment=adapt_toy: expanded vocabulary, sub-token-mean rows,
the mix at a constant LR) run for other target languages from one English base, and what it did:
each language's validation bits per byte at step 0 and at the end, and its realized share.

    python experiments/languages_adapt.py --base outputs/claims/seed1/claims_english_base/hf \\
        --json experiments/languages_adapt.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("bible_hi", "bible_fa", "bible_ko", "bible_ru", "trilingual")


def run(preset: str, base: Path, out: Path, tokens: int) -> dict:
    run_dir = out / preset
    res_path = run_dir / "results.json"
    res = json.loads(res_path.read_text()) if res_path.is_file() else {}
    if res.get("status") != "finished":
        args = [sys.executable, str(ROOT / "run.py"), "experiment=adapt_toy", f"data={preset}", f"init.checkpoint={base}",
                f"trainer.max_tokens={tokens}", "trainer.progress_bar=false", "export=false", f"hydra.run.dir={run_dir}"]
        t = time.perf_counter()
        with open(out / f"{preset}.log", "w") as log:
            subprocess.run(args, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
        print(f"{preset}: {time.perf_counter() - t:.0f} s", flush=True)
        res = json.loads(res_path.read_text())
    langs = res["data"]["languages"]
    return {
        "tokenizer": res.get("tokenizer.name"),
        "vocab_size": res.get("tokenizer.vocab_size"),
        "train_tokens": res.get("train.tokens"),
        "languages": {code: {"target_share": v["target_share"], "realized_share": v["realized_share"],
                             "start_bpb": res.get(f"start.val.{code}.bpb"), "end_bpb": res.get(f"val.{code}.bpb"),
                             "tokens_per_byte": res.get(f"val.{code}.tokens_per_byte")}
                      for code, v in langs.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=Path, required=True, help="the English base's Hugging Face folder")
    p.add_argument("--presets", default=",".join(PRESETS))
    p.add_argument("--tokens", type=int, default=262_144)
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "languages_adapt")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    result = {"base": str(a.base), "tokens": a.tokens, "runs": {}}
    for preset in a.presets.split(","):
        result["runs"][preset] = run(preset, a.base.resolve(), a.out, a.tokens)
    print(f"{'preset':<12}{'lang':<6}{'share':>8}{'real':>8}{'bpb step 0':>12}{'bpb end':>10}")
    for preset, r in result["runs"].items():
        for code, v in r["languages"].items():
            print(f"{preset:<12}{code:<6}{v['target_share']:>8.3f}{v['realized_share']:>8.3f}"
                  f"{v['start_bpb'] or float('nan'):>12.3f}{v['end_bpb'] or float('nan'):>10.3f}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
