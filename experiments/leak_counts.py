#!/usr/bin/env python
"""The leak check's counts and the item counts of the offline suites, as README.md quotes them.

Everything is computed by the project's own code, nothing is typed in:
- ``index``: the leak index of the Arabic demo's training text (:func:`allam.eval.leak.training_index`):
  training documents, words, distinct 13-gram hashes, the short-text 6-gram hashes and the size
  of the cached index file. With ``--rebuild`` the index is also built again in memory
  (:meth:`allam.eval.leak.Index.build`, the cache untouched), timed and compared with the cached one.
- ``demo_suite``: per task of ``eval=demo`` (:func:`allam.eval.demo_suite.build`, default seed and
  cap) the items and the leak counts results.json gets (``eval.<task>.dropped_leak``,
  ``dropped_leak_prompt``, ``dropped_leak_answer``, ``dropped_leak_group``, ``leak_candidates``).
- ``overlap``: the rows of :func:`allam.eval.leak.overlap_report` (what ``python -m allam.eval.leak``
  prints): per held-out demo source, and for the validation documents per language at
  ``data.val_bytes`` (every k-th held-out document, as ``_build_val`` picks them): documents, those
  with any shared 13-gram, with at least half their 13-grams shared, and that leak by the rule.
- ``competence``: per language of :mod:`allam.eval.competence` (ar, en and the presets hi, fa, ko,
  ru, each checked against its preset's index, whose counts are recorded too) the word-order and
  next-word items (with the suite's caps, and without: ``items_uncapped``), the leak candidates
  (held-out verses of 8-30 words) and the verses the leak check dropped.
Also the git commit and dirty flag (:func:`allam.results.provenance`, with the tracked files that
differ; ``git_at_end`` when they changed during the run) and the wall seconds of each part.

    ALLAM_CACHE=.cache python experiments/leak_counts.py --json experiments/leak_counts.json
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from allam import results as R  # noqa: E402
from allam.data import demo  # noqa: E402
from allam.eval import competence, demo_suite, leak  # noqa: E402

UNCAPPED = 10**9  # an item cap no task reaches


def index_summary(cache_dir: Path, sources: tuple[str, ...] | None = None) -> tuple[leak.Index, dict]:
    """The leak index of these demo sources (default: the Arabic demo's) and its counts."""
    fp = leak.corpus_fingerprint(sources)
    path = leak.index_path(cache_dir, fp)
    cached = path.is_file()
    t = time.perf_counter()
    index = leak.training_index(cache_dir, sources)
    return index, {
        "sources": list(sources or demo.ARABIC_DEMO), "fingerprint": fp,
        "documents": index.docs, "words": index.total_words,
        "n": leak.N, "distinct_gram_hashes": int(len(index.grams)),
        "short_n": leak.MIN_WORDS, "distinct_short_gram_hashes": int(len(index.short)),
        "file": str(path.relative_to(cache_dir)), "file_bytes": path.stat().st_size,
        "loaded_from_cache": cached, "seconds": round(time.perf_counter() - t, 2),
    }


def rebuild(index: leak.Index, sources: tuple[str, ...] | None = None) -> dict:
    """Builds the index again in memory (one pass, as training_index does when nothing is cached)."""
    t = time.perf_counter()
    fresh = leak.Index.build(d.text for d in leak.training_documents(sources))
    seconds = time.perf_counter() - t
    same = ((fresh.docs, fresh.total_words) == (index.docs, index.total_words)
            and np.array_equal(fresh.grams, index.grams) and np.array_equal(fresh.short, index.short))
    return {"build_seconds": round(seconds, 2), "identical_to_cached": same}


def git_state() -> dict:
    prov = R.provenance()
    changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True).stdout.splitlines()
    return {"commit": prov["code.commit"], "dirty": prov["code.dirty"], "changed_tracked_files": changed}


def demo_counts(index: leak.Index, seed: int) -> dict:
    out = {}
    for task in demo_suite.TASKS:
        items, counts = demo_suite.build(task, seed, demo_suite.ITEMS, index)
        out[task] = {"items": len(items), **counts}
    return out


def competence_counts(cache_dir: Path, seed: int) -> dict:
    out = {}
    for lang in competence.LANGS:
        t = time.perf_counter()
        sources = None if lang in ("ar", "en") else demo.preset_sources(lang)  # as competence.default_index picks
        index, summary = index_summary(cache_dir, sources)
        row: dict = {"index": summary}
        for kind in ("word_order", "next_word"):
            task = f"{kind}_{lang}"
            items, counts = competence.build(task, seed, None, index)  # the suite's cap
            uncapped, counts_uncapped = competence.build(task, seed, UNCAPPED, index)
            assert counts == counts_uncapped, (task, counts, counts_uncapped)
            row[kind] = {"task": task, "items": len(items), "items_uncapped": len(uncapped), **counts}
        row["seconds"] = round(time.perf_counter() - t, 2)
        out[lang] = row
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path, default=ROOT / "experiments" / "leak_counts.json")
    p.add_argument("--cache-dir", type=Path, default=None, help="default: $ALLAM_CACHE, else <project>/.cache")
    p.add_argument("--val-bytes", type=int, default=65536, help="data.val_bytes of the validation rows")
    p.add_argument("--seed", type=int, default=demo_suite.DEFAULT_SEED, help="eval.seed")
    p.add_argument("--rebuild", action="store_true", help="also build the demo index again in memory and time it")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cache_dir = Path(a.cache_dir or leak.default_cache_dir())
    t_all = time.perf_counter()
    report: dict = {"git": git_state(), "settings": {
        "leak": {"n": leak.N, "min_words": leak.MIN_WORDS, "coverage": leak.LEAK_COVERAGE,
                 "normalization": leak.NORMALIZATION},
        "seed": a.seed, "demo_items_cap": demo_suite.ITEMS, "val_bytes": a.val_bytes,
        "competence_caps": {"word_order": competence.WORD_ORDER_ITEMS, "next_word": competence.ITEMS}},
        "seconds": {}}

    t = time.perf_counter()
    index, report["index"] = index_summary(cache_dir)
    if a.rebuild:
        report["index"]["rebuild"] = rebuild(index)
    report["seconds"]["index"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    report["demo_suite"] = demo_counts(index, a.seed)
    report["seconds"]["demo_suite"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    report["overlap"] = leak.overlap_report(index, a.val_bytes)
    report["seconds"]["overlap"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    report["competence"] = competence_counts(cache_dir, a.seed)
    report["seconds"]["competence"] = round(time.perf_counter() - t, 2)
    report["seconds"]["total"] = round(time.perf_counter() - t_all, 2)
    if (end := git_state()) != report["git"]:  # the checkout changed while this ran (a commit, an edit)
        report["git_at_end"] = end

    ix = report["index"]
    print(f"\nleak index: {ix['documents']:,} documents, {ix['words']:,} words, {ix['distinct_gram_hashes']:,} "
          f"{ix['n']}-gram hashes, {ix['distinct_short_gram_hashes']:,} {ix['short_n']}-gram hashes, "
          f"{ix['file_bytes']:,} bytes" + (f", rebuilt in {ix['rebuild']['build_seconds']} s "
                                           f"(identical: {ix['rebuild']['identical_to_cached']})" if a.rebuild else ""))
    print(f"\n{'task':<15}{'items':>6}  leak check")
    for task, r in report["demo_suite"].items():
        print(f"{task:<15}{r['items']:>6}  {r['dropped_leak']:,} of {r['leak_candidates']:,} (prompt "
              f"{r['dropped_leak_prompt']}, answer {r['dropped_leak_answer']}, group {r['dropped_leak_group']})")
    print("\n" + "\n".join(leak.overlap_lines(report["overlap"])))
    print(f"\n{'lang':<5}{'word order':>11}{'next word':>10}{'(uncapped)':>11}  verses dropped")
    for lang, r in report["competence"].items():
        wo, nw = r["word_order"], r["next_word"]
        print(f"{lang:<5}{wo['items']:>11,}{nw['items']:>10,}{nw['items_uncapped']:>11,}  "
              f"{wo['dropped_leak']} of {wo['leak_candidates']:,}")
    print(f"\nseconds: {report['seconds']}")
    a.json.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(f"-> {a.json}")


if __name__ == "__main__":
    main()
