"""Preparing a large corpus: the engine (allam/data/engine.py: parallel tasks on datatrove's local
executor) against the one-process path (the main process reads, parses, dedups and writes; a fork
pool cleans and tokenizes), side by side on the same generated corpus, in one run.

The corpus: one JSONL file per language (Arabic, English) of ``--mb`` MB each, documents made from
the demo corpora's words (each a shuffled run of 20-400 words of a demo document, so few repeat),
generated under ``--tmp`` and deleted afterwards (never committed). Tokenizer: the Mistral-7B
SentencePiece model shipped in mistral-common (32,000 pieces). Each path runs in its own process
(peak RSS of the process and of its children measured apart) from an empty cache:

- ``one_process``: ``build(workers=1)`` with ``RAYON_NUM_THREADS=1``: everything in one process
  on one core (the tokenizer's own threads off), the rate of one core;
- ``pool``: ``build(workers=cores)`` without the engine (the path every source took before it);
- ``engine``: ``build(workers=cores, task_bytes=...)``: count, tokenize, merge.

All three must write the same bytes (SHA-256 of train.bin, val.bin and val_docs.npy per source).
Prints one JSON line; ``--out`` also writes it.

    python benchmarks/prepare_engine.py --mb 800 --out benchmarks/prepare_engine.json
    python benchmarks/prepare_engine.py --mb 20                  # a quick run
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

LANGS = {"ar": ("tafsir_ar", "hadith_ar", "bible_ar"), "en": ("hadith_en", "bible_en")}


def write_corpus(folder: Path, mb: float, seed: int = 0) -> dict:
    from allam.data import demo

    sources = {}
    for lang, names in LANGS.items():
        docs = [d.text.split() for n in names for d in demo.demo_documents(n)]
        rng = random.Random(seed)
        path = folder / f"{lang}.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            while fh.tell() < mb * 1e6:
                words = list(rng.choice(docs))
                rng.shuffle(words)
                fh.write(json.dumps({"text": " ".join(words[: rng.randint(20, 400)])}, ensure_ascii=False) + "\n")
        sources[lang] = {"lang": lang, "kind": "natural", "loader": "jsonl", "path": str(path),
                         **({"strip_diacritics": True, "strip_tatweel": True} if lang == "ar" else {})}
    return sources


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()[:16]


def run_path(path: str, sources: dict, cache: Path, tok_folder: Path, task_bytes: int) -> dict:
    import contextlib
    import io

    from transformers import AutoTokenizer

    from allam.data.shard_build import build, default_workers
    from allam.data.shards import TokenizerInfo, plan_jobs
    from data_pipeline import data_cfg

    info = TokenizerInfo.from_tokenizer(AutoTokenizer.from_pretrained(str(tok_folder)))
    cfg = data_cfg(sources)
    jobs = plan_jobs(dict(cfg.sources), False, info, cache)
    workers = 1 if path == "one_process" else default_workers()
    lines: list[str] = []
    r0 = [sum(resource.getrusage(w)[:2]) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        built = build(jobs, info, workers=workers, progress=False, log=lines.append,
                      task_bytes=task_bytes if path == "engine" else None)
    seconds = time.perf_counter() - t0
    r1 = [sum(resource.getrusage(w)[:2]) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    rss = [round(resource.getrusage(w).ru_maxrss / 1024) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    size = sum(Path(s["path"]).stat().st_size for s in sources.values())
    digests = {name: {f: _digest(sh.path / f) for f in ("train.bin", "val.bin", "val_docs.npy")} for name, sh in built.items()}
    tokens = sum(sh.meta["train"]["tokens"] + sh.meta["val"]["tokens"] for sh in built.values())
    return {"path": path, "workers": workers, "seconds": round(seconds, 2), "mb_per_s": round(size / 1e6 / seconds, 2),
            "tokens": tokens, "tokens_per_s": round(tokens / seconds), "digests": digests,
            "cpu_seconds_main": round(r1[0] - r0[0], 1), "cpu_seconds_children": round(r1[1] - r0[1], 1),
            "peak_rss_mb": rss[0], "peak_rss_children_mb": rss[1],
            "engine_lines": [ln for ln in lines if "tasks of about" in ln or "merged in" in ln or "counted and tokenized" in ln]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=800.0, help="MB of JSONL per language")
    ap.add_argument("--task-bytes", type=int, default=256 << 20, help="data.prepare.task_bytes (default 256 MiB)")
    ap.add_argument("--paths", default="pool,engine,one_process")
    ap.add_argument("--small-mb", type=float, default=100.0,
                    help="also run the engine on a corpus this size first, for its peak RSS (0: no)")
    ap.add_argument("--tmp", default=None, help="folder for the corpus and caches (default: a temporary folder)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:  # one path, in its own process
        spec = json.loads(args.child)
        print(json.dumps(run_path(spec["path"], spec["sources"], Path(spec["cache"]), Path(spec["tok"]), spec["task_bytes"])))
        return {}
    from allam.data.shard_build import default_workers
    from data_pipeline import mistral_folder

    tmp = Path(tempfile.mkdtemp(prefix="allam-prep-", dir=args.tmp))
    try:
        t0 = time.perf_counter()
        sources = write_corpus(tmp / "corpus", args.mb) if (tmp / "corpus").mkdir() is None else {}
        gen_s = time.perf_counter() - t0
        tok = mistral_folder(tmp)
        small = None
        if args.small_mb:
            (tmp / "small").mkdir()
            spec = {"path": "engine", "sources": write_corpus(tmp / "small", args.small_mb), "cache": str(tmp / "cache-small"),
                    "tok": str(tok), "task_bytes": args.task_bytes}
            out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], check=True, capture_output=True, text=True)
            small = json.loads(out.stdout.strip().splitlines()[-1])
            small = {k: small[k] for k in ("seconds", "mb_per_s", "peak_rss_mb", "peak_rss_children_mb")}
            shutil.rmtree(tmp / "small", ignore_errors=True)
            shutil.rmtree(tmp / "cache-small", ignore_errors=True)
        rows = []
        for path in args.paths.split(","):
            spec = {"path": path, "sources": sources, "cache": str(tmp / f"cache-{path}"), "tok": str(tok),
                    "task_bytes": args.task_bytes}
            env = {**os.environ, **({"RAYON_NUM_THREADS": "1"} if path == "one_process" else {})}
            out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], check=True,
                                 capture_output=True, text=True, env=env)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "digests"}), file=sys.stderr, flush=True)
            shutil.rmtree(tmp / f"cache-{path}", ignore_errors=True)
        by = {r["path"]: r for r in rows}
        result = {
            "benchmark": "prepare_engine",
            "corpus_mb_per_language": args.mb,
            "corpus_bytes": sum(Path(s["path"]).stat().st_size for s in sources.values()),
            "generate_seconds": round(gen_s, 1),
            "tokenizer": "mistral7b (32,000 SentencePiece pieces)",
            "cores": default_workers(),
            "task_bytes": args.task_bytes,
            "paths": rows,
            "same_bytes": len({json.dumps(r["digests"], sort_keys=True) for r in rows}) == 1,
            "engine_small_corpus": {"mb_per_language": args.small_mb, **small} if small else None,
            "peak_rss_note": "peak RSS of the building process and of its largest child, sampled right after the build",
        }
        if "engine" in by and "pool" in by:
            result["engine_over_pool"] = round(by["engine"]["mb_per_s"] / by["pool"]["mb_per_s"], 3)
        if "engine" in by and "one_process" in by:
            result["engine_over_one_process"] = round(by["engine"]["mb_per_s"] / by["one_process"]["mb_per_s"], 3)
        if "pool" in by and "one_process" in by:
            result["pool_over_one_process"] = round(by["pool"]["mb_per_s"] / by["one_process"]["mb_per_s"], 3)
        if "pool" in by:  # the pool's main process reads, parses, dedups and writes everything: its ceiling
            main_s_per_mb = by["pool"]["cpu_seconds_main"] / (result["corpus_bytes"] / 1e6)
            result["pool_main_process_ceiling_mb_per_s"] = round(1 / main_s_per_mb, 1) if main_s_per_mb else None
        if "engine" in by:  # CPU seconds per MB across the engine's processes: its rate per core
            cpu = by["engine"]["cpu_seconds_main"] + by["engine"]["cpu_seconds_children"]
            result["engine_mb_per_cpu_second"] = round(result["corpus_bytes"] / 1e6 / cpu, 2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
