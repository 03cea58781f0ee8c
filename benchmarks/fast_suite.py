#!/usr/bin/env python
"""The fast test suite as CI runs it (`python -m pytest -q -m "not slow"`, from an empty cache),
timed: the test counts and pytest's own seconds next to the command's wall time.

    python benchmarks/fast_suite.py               # writes benchmarks/fast_suite.json

Time it on a quiet machine: the suite keeps every core busy, so other work slows it in proportion.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SUMMARY = re.compile(r"^=*\s*(\d+ \w+.*) in ([\d.]+)s")


def main(argv: list[str] | None = None) -> int:
    from allam.results import provenance

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "fast_suite.json")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="allam-suite-") as tmp:
        env = {**os.environ, "ALLAM_CACHE": str(Path(tmp) / "cache")}
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    lines = [m for m in map(SUMMARY.search, proc.stdout.splitlines()) if m]
    if proc.returncode != 0 or not lines:  # the failures' tracebacks, not only the summary
        out = proc.stdout
        start = out.find("= FAILURES =")
        print(out[max(0, out.rfind("\n", 0, start)) if start >= 0 else -6000:], proc.stderr[-3000:], sep="\n",
              file=sys.stderr)
    if not lines:
        return 1
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (\w+)", lines[-1].group(1))}
    row = {**provenance(), "cpu_count": os.cpu_count(), "command": 'python -m pytest -q -m "not slow"',
           "cache": "empty", "counts": counts, "pytest_seconds": float(lines[-1].group(2)),
           "wall_seconds": round(wall, 1), "exit": proc.returncode}
    if proc.returncode == 0:  # a failing suite is no measurement of the suite: the committed record stays
        a.out.write_text(json.dumps(row, indent=2) + "\n")
    print(json.dumps(row))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
