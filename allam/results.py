"""The results.json schema: every key a run writes, how it is written and printed, and how
reports read it. Adding a metric is one edit here.

A results file is a flat JSON object: dotted metric keys (``val.ar.bpb``) plus a few nested
records (``choices``, ``data``, ``config``). ``task`` says which task wrote it; reports read
only ``task == "train"`` files.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FILENAME = "results.json"

# every metric key a training run writes, with what it holds
TRAIN_KEYS: dict[str, str] = {
    "model.parameters": "parameters, a tied head counted once",
    "model.non_embedding_parameters": "parameters without the input embedding (the N of 6N)",
    "model.attention": "attention implementation that ran (xformers, sdpa, eager)",
    "tokenizer.name": "the tokenizer variant's name",
    "tokenizer.vocab_size": "pieces in the tokenizer",
    "train.steps": "optimizer steps taken (the global step at the end)",
    "train.tokens": "training tokens seen, resumed runs included",
    "train.tokens_this_run": "training tokens seen by this process",
    "train.seconds": "training seconds of this run, validation excluded",
    "train.tokens_per_second": "training tokens per second of this run",
    "train.mfu": "model FLOPs utilization (6N + 12LHQT per token over the peak)",
    "train.mfu_peak_source": "where the peak FLOP/s came from (datasheet, measured, configured)",
    "train.flops_per_token": "training FLOPs per token (6N + 12LHQT)",
    "train.loss": "the last training loss",
    "wall_seconds": "wall time of the task",
    "val.step": "global step the val.* scores belong to",
}
VAL_FIELDS = ("loss", "bpb", "tokens", "bytes")  # val.<lang>.<field>
START_FIELDS = ("loss", "bpb")  # start.val.<lang>.<field>: the starting checkpoint's scores

# the headline metrics a cross-run report shows, in order
REPORT_METRICS = (
    "val.ar.bpb",
    "val.en.bpb",
    "delta.val.en.bpb",
    "val.ar.loss",
    "val.en.loss",
    "train.tokens",
    "train.tokens_per_second",
)


def validation_keys(final: dict[str, dict], start: dict[str, dict] | None = None) -> dict[str, Any]:
    """val.<lang>.*, start.val.<lang>.* and delta.val.<lang>.bpb (> 0: worse than at the start,
    i.e. forgetting) from per-language validation scores."""
    out: dict[str, Any] = {}
    for lang, vals in final.items():
        for key in VAL_FIELDS:
            out[f"val.{lang}.{key}"] = vals[key]
    for lang, vals in (start or {}).items():
        for key in START_FIELDS:
            out[f"start.val.{lang}.{key}"] = vals[key]
        if lang in final:
            out[f"delta.val.{lang}.bpb"] = final[lang]["bpb"] - vals["bpb"]
    return out


def write(out_dir: Path, results: dict) -> Path:
    """Write results.json into `out_dir`; returns its path."""
    path = Path(out_dir) / FILENAME
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return path


def read(path: Path) -> dict | None:
    """One results file, or None when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def collect_runs(root: Path) -> list[dict]:
    """Every training run's results under `root` (or the one file `root`), in path order; each
    carries its file as ``_path``."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(root.rglob(FILENAME))
    runs = []
    for f in files:
        res = read(f)
        if res is not None and res.get("task") == "train":
            res["_path"] = str(f)
            runs.append(res)
    return runs


def print_summary(results: dict, path: Path) -> None:
    """The lines a training run ends with."""
    def f(key, fmt="{:.4f}"):
        v = results.get(key)
        return fmt.format(v) if isinstance(v, (int, float)) else "n/a"

    print()
    print(f"tokens seen      {f('train.tokens', '{:,}')} in {f('train.seconds', '{:.1f}')} s "
          f"({f('train.tokens_per_second', '{:,.0f}')} tokens/s)")
    for lang in ("ar", "en"):
        if f"val.{lang}.loss" in results:
            line = f"val {lang}           loss {f(f'val.{lang}.loss')}  bits/byte {f(f'val.{lang}.bpb')}"
            if f"start.val.{lang}.bpb" in results:
                line += f"  (start {f(f'start.val.{lang}.bpb')}, change {f(f'delta.val.{lang}.bpb', '{:+.4f}')})"
            print(line)
    print(f"results: {path}")
