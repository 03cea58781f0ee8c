#!/usr/bin/env python
"""The first job a newcomer runs, `python run.py`, timed from an empty cache as the README's quick
start runs it: the English tokenizer is trained, the demo corpus pre-tokenized, and the tiny
Llama trained on 262,144 tokens. Records the whole command's wall time next to the run's own
training seconds, tokens per second and parameter count (from its results.json).

    python benchmarks/default_run.py              # writes benchmarks/default_run.json
    python benchmarks/default_run.py --runs 2     # a second run reuses the first one's cache

Time it on a quiet machine: other work on the cores slows it in proportion.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KEYS = ("model.parameters", "tokenizer.name", "tokenizer.vocab_size", "train.tokens", "train.seconds",
        "train.tokens_per_second", "val.ar.bpb", "val.en.bpb")


def main(argv: list[str] | None = None) -> int:
    from allam.results import provenance

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1, help="runs one after another; the first starts from an empty cache")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "default_run.json")
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="allam-default-run-") as tmp:
        env = {**os.environ, "ALLAM_CACHE": str(Path(tmp) / "cache")}
        for i in range(a.runs):
            run_dir = Path(tmp) / f"run{i}"
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={run_dir}",
                                   "trainer.progress_bar=false"], cwd=ROOT, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
                return proc.returncode
            res = json.loads((run_dir / "results.json").read_text())
            rows.append({"run": i + 1, "cache": "empty" if i == 0 else "warm", "wall_seconds": round(wall, 1),
                         **{k: res.get(k) for k in KEYS}})
            print(json.dumps(rows[-1]), flush=True)
    a.out.write_text(json.dumps({**provenance(), "cpu_count": os.cpu_count(), "command": "python run.py",
                                 "runs": rows}, indent=2) + "\n")
    print(f"JSON: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
