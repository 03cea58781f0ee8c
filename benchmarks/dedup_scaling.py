"""Exact-dedup cost against the number of documents, side by side with a named baseline, in one run.

The pipeline's ``allam.data.cleaning.HashSet`` (each batch's new hashes a sorted run, runs merged
like a binary counter, lookups through a fence) against the previous one, kept here as the
baseline ("one array re-sorted at every flush": recent hashes in a Python set, and every
``--buffer`` of them the whole sorted array concatenated with them and sorted again). Both get the
same stream of 64-bit hashes (10% repeats) in batches of 4,096, the shard writer's order of
magnitude, and must keep exactly the same documents. For each n the seconds of each are printed, and the exponent b of
a fit t = a * n^b over the sizes (n log n fits b a little above 1; quadratic growth, b near 2, shows
once the merges dominate).

Prints one JSON line.

    python benchmarks/dedup_scaling.py                          # 1M, 4M, 16M documents, buffer 2^20
    python benchmarks/dedup_scaling.py --sizes 100000 400000 --buffer 16384   # a quick run
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from allam.data.cleaning import HashSet  # noqa: E402

BATCH = 4096


class ResortedArray:
    """The baseline: the HashSet this project shipped before, one sorted array re-sorted whole at
    every flush of `buffer` recent hashes."""

    def __init__(self, buffer: int):
        self.sorted = np.zeros(0, np.uint64)
        self.recent: set[int] = set()
        self.buffer = buffer

    def first_seen(self, hashes: np.ndarray) -> np.ndarray:
        keep = np.ones(len(hashes), bool)
        if len(self.sorted) and len(hashes):
            pos = np.minimum(np.searchsorted(self.sorted, hashes), len(self.sorted) - 1)
            keep &= self.sorted[pos] != hashes
        for j, h in enumerate(hashes.tolist()):
            if keep[j]:
                if h in self.recent:
                    keep[j] = False
                else:
                    self.recent.add(h)
        if len(self.recent) >= self.buffer:
            merged = np.concatenate([self.sorted, np.fromiter(self.recent, np.uint64, len(self.recent))])
            merged.sort()
            self.sorted, self.recent = merged, set()
        return keep


def stream(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fresh = rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)
    repeats = rng.random(n) < 0.1
    fresh[repeats] = fresh[rng.integers(0, n, size=int(repeats.sum()))]  # 10% repeat an earlier or later hash
    return fresh


def timed(make, hashes: np.ndarray) -> tuple[float, int]:
    seen = make()
    t0 = time.perf_counter()
    kept = 0
    for i in range(0, len(hashes), BATCH):
        kept += int(seen.first_seen(hashes[i : i + BATCH]).sum())
    return time.perf_counter() - t0, kept


def exponent(sizes: list[int], seconds: list[float]) -> float:
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1 << 20, 1 << 22, 1 << 24])
    p.add_argument("--buffer", type=int, default=1 << 20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rows = []
    for n in a.sizes:
        hashes = stream(n, a.seed)
        t_new, kept_new = timed(HashSet, hashes)
        t_old, kept_old = timed(lambda: ResortedArray(a.buffer), hashes)
        assert kept_new == kept_old == len(np.unique(hashes)), (kept_new, kept_old)  # the same answer, exact
        rows.append({"docs": n, "kept": kept_new, "seconds": round(t_new, 3), "baseline_seconds": round(t_old, 3),
                     "speedup": round(t_old / t_new, 3)})
    sizes = [r["docs"] for r in rows]
    out = {"benchmark": "dedup_scaling", "buffer": a.buffer, "batch": BATCH, "rows": rows,
           "baseline": "one sorted array re-sorted at every flush (the previous HashSet)"}
    if len(rows) > 1:
        out["exponent"] = round(exponent(sizes, [r["seconds"] for r in rows]), 3)
        out["baseline_exponent"] = round(exponent(sizes, [r["baseline_seconds"] for r in rows]), 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
