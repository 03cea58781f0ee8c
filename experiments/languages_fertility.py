#!/usr/bin/env python
"""Tokens per word before and after vocabulary expansion for other target languages.

For each language preset (conf/data/bible_<code>.yaml) this runs ``task=tokenizer-report`` (the
SentencePiece bases english8k and mistral7b, the shipped byte-level bases, their expansions with
``tokenizer.num_new_tokens`` new pieces of that language, and the bilingual tokenizer, all trained
on the preset's training text exactly as a training run would) and collects, per language and
base, the target language's and English's tokens per word on the held-out books, before and after
expansion. English must be identical: the byte-level expansions prove it on every English
document when they are built (allam.tokenizer.bytelevel_expand.check_expansion); here the SentencePiece
ones are checked too, as equal English token counts.

    python experiments/languages_fertility.py --json experiments/languages_fertility.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LANGS = ("hi", "fa", "ko", "ru")


def report(code: str, out: Path, new_tokens: int) -> dict:
    run_dir = out / code
    path = run_dir / "tokenizer_report.json"
    if not path.is_file():
        args = [sys.executable, str(ROOT / "run.py"), "task=tokenizer-report", f"data=bible_{code}",
                "tokenizer=expanded", "tokenizer.base=english8k", f"tokenizer.num_new_tokens={new_tokens}",
                f"hydra.run.dir={run_dir}"]
        t = time.perf_counter()
        subprocess.run(args, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        print(f"{code}: report in {time.perf_counter() - t:.0f} s", flush=True)
    rep = json.loads(path.read_text())
    rep["skipped"] = (json.loads((run_dir / "results.json").read_text()).get("skipped") or {})
    return rep


def summarize(code: str, rep: dict) -> dict:
    variants = rep["variants"]
    rows = {}
    for name, v in variants.items():
        base = v.get("base")  # an expansion names its base
        if base not in variants:
            continue
        b = variants[base]
        rows[base] = {
            "expanded": name,
            "vocab": [b.get("vocab_size"), v.get("vocab_size")],
            f"{code}_tokens_per_word": [b[code]["tokens_per_word"], v[code]["tokens_per_word"]],
            f"{code}_reduction": v[code]["tokens_per_word"] / b[code]["tokens_per_word"],
            "en_tokens_per_word": [b["en"]["tokens_per_word"], v["en"]["tokens_per_word"]],
            "en_identical_tokens": b["en"]["tokens"] == v["en"]["tokens"],
        }
    for what in rep["skipped"]:  # a base whose expansion could not be built: its own numbers still
        base = dict(kv.split("=", 1) for kv in what.split()).get("base")
        if base in variants and base not in rows:
            b = variants[base]
            rows[base] = {"expanded": None, "vocab": [b.get("vocab_size"), None],
                          f"{code}_tokens_per_word": [b[code]["tokens_per_word"], None], f"{code}_reduction": None,
                          "en_tokens_per_word": [b["en"]["tokens_per_word"], None], "en_identical_tokens": None}
    return {"heldout_words": rep.get("heldout_words"), "bases": rows, "skipped": rep["skipped"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--langs", default=",".join(LANGS))
    p.add_argument("--new-tokens", type=int, default=8000)  # one Bible (~0.7M words) supports ~16k merges over tekken, not more
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "languages_fertility")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    result = {"new_tokens": a.new_tokens, "languages": {}}
    for code in a.langs.split(","):
        result["languages"][code] = summarize(code, report(code, a.out, a.new_tokens))
    print(f"{'lang':<5}{'base':<12}{'target tok/word before -> after':>34}{'English tok/word':>18}{'identical':>10}")
    for code, r in result["languages"].items():
        for base, row in r["bases"].items():
            before, after = row[f"{code}_tokens_per_word"]
            if after is None:
                print(f"{code:<5}{base:<12}{before:>16.2f} -> (not built){row['en_tokens_per_word'][0]:>19.3f}")
                continue
            print(f"{code:<5}{base:<12}{before:>16.2f} -> {after:<6.2f} ({row[f'{code}_reduction']:.2f}x)"
                  f"{row['en_tokens_per_word'][0]:>14.3f}{str(row['en_identical_tokens']):>10}")
    for code, r in result["languages"].items():
        for what, why in r["skipped"].items():
            print(f"{code}: skipped {what}: {why}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(row["en_identical_tokens"] is not False for r in result["languages"].values()
                    for row in r["bases"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
