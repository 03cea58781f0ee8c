"""Peak memory of reading tokenizer training text against corpus size, side by side with a named
baseline, in one run; and the SentencePiece trainer's peak memory per sampled word.

Each measurement runs in a fresh process (peak RSS, ``ru_maxrss``, is per process). The corpus is
generated text streamed from a seeded generator (never held in memory or written): documents of
100 words drawn from the distinct Arabic words of the shipped hadith corpus with Zipf frequencies
(the i-th word's weight 1/i), so word lengths are those of Arabic text.

- ``sample``: :class:`allam.tokenizer.spm.TrainingText` with ``max_words=--cap`` (the sampler
  the tokenizers use): its peak RSS should stay flat as the corpus grows.
- ``all`` (the baseline): the same class with ``max_words=None`` (the earlier default, no cap):
  every line held, in this sampler's heap rather than the plain list the earlier code used.
- ``train``: SentencePiece BPE (Llama-2's settings, ``--vocab`` pieces) on a sample of each of
  ``--train-words`` words, for the trainer's bytes per word at the default cap.

Prints one JSON line.

    python benchmarks/tokenizer_sample_rss.py                         # 2M, 8M, 32M words; cap 1M
    python benchmarks/tokenizer_sample_rss.py --sizes 200000 800000 --cap 100000 --train-words 100000
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_CHILD = r"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from allam.tokenizer import spm as spm_util

mode, words, cap, vocab = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
vocabulary = np.array(json.loads(open(sys.argv[6], encoding="utf-8").read()), dtype=object)
p = 1.0 / np.arange(1, len(vocabulary) + 1)
rng = np.random.default_rng(0)


def docs():
    for _ in range(words // 100_000):  # 1,000 documents of 100 words at a time
        ids = rng.choice(len(vocabulary), size=(1000, 100), p=p / p.sum())
        for row in vocabulary[ids]:
            yield " ".join(row)


base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
text = spm_util.TrainingText(seed=0)
kept = text.add("ar", docs(), None if mode == "all" else cap)
read_s = time.perf_counter() - t0
out = {"mode": mode, "corpus_words": words, "kept_words": kept, "lines": len(text.lines), "read_s": round(read_s, 2),
       "rss_before_mb": round(base / 1024, 1), "rss_after_read_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
if mode == "train":
    t0 = time.perf_counter()
    spm_util.train_bpe(text.lines, vocab, seed=0, hard_vocab_limit=False)
    out["train_s"] = round(time.perf_counter() - t0, 2)
    out["rss_after_train_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
print(json.dumps(out))
"""


def measure(mode: str, words: int, cap: int, vocab: int, vocabulary: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT), mode, str(words), str(cap), str(vocab), vocabulary],
                          capture_output=True, text=True, check=True)
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(row), file=sys.stderr)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2_000_000, 8_000_000, 32_000_000])
    ap.add_argument("--cap", type=int, default=1_000_000)
    ap.add_argument("--train-words", type=int, nargs="+", default=[1_000_000, 4_000_000])
    ap.add_argument("--vocab", type=int, default=16_000)
    args = ap.parse_args()
    t0 = time.perf_counter()
    from allam.data import demo

    words = sorted({w for d in demo.demo_documents("hadith_ar", "train") for w in d.text.split()})
    with tempfile.NamedTemporaryFile("w", suffix=".json", encoding="utf-8", delete=False) as fh:
        json.dump(words, fh, ensure_ascii=False)
    rows = [measure(mode, n, args.cap, args.vocab, fh.name) for n in args.sizes for mode in ("sample", "all")]
    trained = [measure("train", n, n, args.vocab, fh.name) for n in args.train_words]
    Path(fh.name).unlink()
    per_word = [(r["rss_after_train_mb"] - r["rss_before_mb"]) * 2**20 / r["kept_words"] for r in trained]
    print(json.dumps({
        "benchmark": "tokenizer_sample_rss", "args": vars(args), "cap_words": args.cap, "vocab": args.vocab,
        "peak_rss_mb": {mode: {str(r["corpus_words"]): r["rss_after_read_mb"] for r in rows if r["mode"] == mode}
                        for mode in ("sample", "all")},
        "read_s": {mode: {str(r["corpus_words"]): r["read_s"] for r in rows if r["mode"] == mode} for mode in ("sample", "all")},
        "spm_train": [{k: r[k] for k in ("kept_words", "lines", "train_s", "rss_before_mb", "rss_after_train_mb")} for r in trained],
        "spm_train_bytes_per_word": [round(b, 1) for b in per_word],
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
        "wall_s": round(time.perf_counter() - t0, 1),
    }))


if __name__ == "__main__":
    main()
