"""Data pipeline speed, side by side with a named baseline, on the same corpus, in one run.

1. Pre-tokenization: this pipeline (``allam.data.shard_build.build``: read, clean, dedup, tokenize on
   all cores, write memory-mapped shards) against Hugging Face ``datasets.Dataset.map(batched=True)``
   calling the same fast tokenizer (``tokenizer(batch["text"])``; the documents handed to it are
   already in memory, so the baseline is timed on less work than the pipeline). The baseline is
   run both with the default single process (the tokenizer's own Rayon threads use every core)
   and with ``num_proc`` = cores; the faster of the two is the baseline of the ratio.
2. Loader: tokens/s delivered by the train dataloader (exact blend, blocks gathered from the
   shards, LongTensor batches) at the default shape (batch 8 x 257 tokens), main process.

Prints one JSON line. Targets on 2 cores: ``pretokenize_speedup`` >= 1.5, ``loader_tokens_per_s`` >= 1e7.

    python benchmarks/data_pipeline.py                      # the demo corpus, the shipped Mistral tokenizer
    python benchmarks/data_pipeline.py --docs 300 --tokenizer <hf folder>   # a quick run
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

AR_CLEAN = {"strip_diacritics": True, "strip_tatweel": True, "strip_bidi": True}


def mistral_folder(tmp: Path) -> Path:
    """A Hugging Face folder for the Mistral-7B-v0.1 SentencePiece model shipped in mistral-common."""
    import importlib.util

    spec = importlib.util.find_spec("mistral_common")
    model = Path(list(spec.submodule_search_locations)[0]) / "data" / "tokenizer.model.v1"
    out = tmp / "mistral7b"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    return out


def write_corpus(tmp: Path, names: list[str], max_docs: int | None) -> tuple[dict, list[str]]:
    """The demo documents as jsonl files (one per source) and the same texts in memory."""
    from allam.data import demo

    sources, texts = {}, []
    for name in names:
        path = tmp / "corpus" / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            for i, doc in enumerate(demo.demo_documents(name)):
                if max_docs is not None and i >= max_docs:
                    break
                fh.write(json.dumps({"text": doc.text}, ensure_ascii=False) + "\n")
                texts.append(doc.text)
        lang = demo.DEMO_LANG[name]
        sources[name] = {"lang": lang, "kind": demo.DEMO_KIND[name], "loader": "jsonl", "path": str(path),
                         **(AR_CLEAN if lang == "ar" else {})}
    return sources, texts


def data_cfg(sources: dict):
    from omegaconf import OmegaConf

    from allam.config import DataConfig, SourceConfig

    cfg = OmegaConf.structured(DataConfig)
    cfg.sources = {k: OmegaConf.merge(OmegaConf.structured(SourceConfig), v) for k, v in sources.items()}
    return cfg


def bench_pipeline(tokenizer, sources: dict, cache: Path) -> tuple[float, int]:
    from allam.data.shard_build import build
    from allam.data.shards import TokenizerInfo, plan_jobs

    cfg = data_cfg(sources)
    t0 = time.perf_counter()
    tok = TokenizerInfo.from_tokenizer(tokenizer)
    jobs = plan_jobs(dict(cfg.sources), False, tok, cache)
    with contextlib.redirect_stdout(io.StringIO()):
        shards = build(jobs, tok, progress=False)
    dt = time.perf_counter() - t0
    tokens = sum(s.meta["train"]["tokens"] + s.meta["val"]["tokens"] for s in shards.values())
    return dt, tokens


def bench_baseline(tokenizer, texts: list[str], num_proc: int | None) -> tuple[float, int]:
    try:
        import datasets
    except ImportError:
        sys.exit("the baseline needs Hugging Face datasets: pip install -e '.[hf]'")

    datasets.disable_progress_bars()
    datasets.disable_caching()
    ds = datasets.Dataset.from_dict({"text": texts})
    t0 = time.perf_counter()
    out = ds.map(lambda b: tokenizer(b["text"]), batched=True, num_proc=num_proc, remove_columns=["text"])
    dt = time.perf_counter() - t0
    tokens = sum(len(x) for x in out.with_format("numpy")["input_ids"]) if len(out) else 0
    return dt, tokens


def bench_loader(tokenizer, sources: dict, cache: Path, batches: int, seq_len: int, batch_size: int) -> float:
    from allam.data.datamodule import AllamDataModule

    cfg = data_cfg(sources)
    cfg.batch_size = batch_size
    dm = AllamDataModule(cfg, tokenizer, seq_len=seq_len, cache_dir=cache, train_batches=batches, progress=False)
    with contextlib.redirect_stdout(io.StringIO()):
        dm.prepare()
    t0 = time.perf_counter()
    n = 0
    for batch in dm.train_dataloader():
        n += batch.numel()
    return n / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default=None, help="HF tokenizer folder (default: the shipped Mistral-7B model)")
    ap.add_argument("--sources", default="tafsir_ar,hadith_ar,bible_ar,hadith_en,bible_en")
    ap.add_argument("--docs", type=int, default=None, help="at most this many documents per source (quick runs)")
    ap.add_argument("--loader-batches", type=int, default=4000)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--skip-num-proc", action="store_true", help="baseline with the default single process only")
    args = ap.parse_args(argv)
    os.environ.pop("TOKENIZERS_PARALLELISM", None)  # the baseline may use the tokenizer's threads

    from transformers import AutoTokenizer

    from allam.data.shard_build import default_workers

    with tempfile.TemporaryDirectory(prefix="allam-bench-") as tmpdir:
        tmp = Path(tmpdir)
        folder = Path(args.tokenizer) if args.tokenizer else mistral_folder(tmp)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        sources, texts = write_corpus(tmp, args.sources.split(","), args.docs)
        cores = default_workers()
        # baseline first, so the pipeline gets no warm-up advantage from it
        base_dt, base_tokens = bench_baseline(tokenizer, texts, None)
        baselines = {"num_proc=None": base_tokens / base_dt}
        if not args.skip_num_proc and cores > 1:
            dt, _ = bench_baseline(tokenizer, texts, cores)
            baselines[f"num_proc={cores}"] = base_tokens / dt
        pipe_dt, pipe_tokens = bench_pipeline(tokenizer, sources, tmp / "cache")
        loader = bench_loader(tokenizer, sources, tmp / "cache", args.loader_batches, args.seq_len, args.batch_size)
    pipe_tps = pipe_tokens / pipe_dt
    best = max(baselines.values())
    result = {
        "benchmark": "data_pipeline",
        "corpus": f"demo:{args.sources}" + (f" (first {args.docs} docs each)" if args.docs else ""),
        "tokenizer": "mistral7b" if not args.tokenizer else str(args.tokenizer),
        "cores": cores,
        "documents": len(texts),
        "pipeline_tokens": pipe_tokens,
        "baseline_tokens": base_tokens,
        "pipeline_seconds": round(pipe_dt, 3),
        "pretokenize_tokens_per_s": round(pipe_tps),
        "baseline": "datasets.Dataset.map(batched=True) with the same fast tokenizer",
        "baseline_tokens_per_s": {k: round(v) for k, v in baselines.items()},
        "pretokenize_speedup": round(pipe_tps / best, 3),
        "loader_shape": [args.batch_size, args.seq_len + 1],
        "loader_tokens_per_s": round(loader),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
