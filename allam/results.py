"""The results.json schema: every key a run writes, how it is written and printed, and how
reports read it. Adding a metric is one edit here.

A results file is a flat JSON object: dotted metric keys (``val.ar.bpb``) plus a few nested
records (``choices``, ``data``, ``config``). ``task`` says which task wrote it; reports read
``task == "train"`` files, and ``task == "eval"`` files for their scores.
"""
from __future__ import annotations

import json
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

FILENAME = "results.json"
ROOT = Path(__file__).resolve().parent.parent  # the checkout whose commit a results file records

# provenance: which code wrote a results file. write() adds these keys to every file that lacks
# them; a file written before they existed has none, and claim reports call its code "unknown commit"
PROVENANCE_KEYS: dict[str, str] = {
    "code.commit": "git commit of the checkout allam ran from (None: not a git checkout)",
    "code.dirty": "True when tracked files differed from that commit (None: not a git checkout)",
    "versions.torch": "installed torch version (None: not installed)",
    "versions.lightning": "installed lightning version",
    "versions.transformers": "installed transformers version",
    "versions.tokenizers": "installed tokenizers version",
}

# the main metric keys a training run writes, with what they hold
TRAIN_KEYS: dict[str, str] = {
    "status": "finished, preempted (checkpoint saved; run the command again) or failed",
    "resumed_from": "the checkpoint this command resumed from (None: a fresh start)",
    "train.nonfinite_skips": "optimizer steps skipped for a non-finite loss or gradient (train.nonfinite=skip)",
    "model.parameters": "parameters, a tied head counted once",
    "model.non_embedding_parameters": "parameters without the input embedding (the N of 6N)",
    "model.attention": "attention implementation that ran (xformers, sdpa, eager)",
    "train.cross_entropy": "cross-entropy implementation that ran (fused, chunked, plain)",
    "tokenizer.name": "the tokenizer variant's name",
    "tokenizer.vocab_size": "pieces in the tokenizer",
    "train.steps": "optimizer steps taken (the global step at the end)",
    "train.tokens": "training tokens seen, resumed runs included",
    "train.tokens_this_run": "training tokens seen by this command (all ranks)",
    "train.seconds": "training seconds of this run, validation excluded",
    "train.tokens_per_second": "training tokens per second of this run",
    "train.mfu": "model FLOPs utilization (6N + 12LHQT per token over the peak)",
    "train.mfu_peak_source": "where the peak FLOP/s came from (datasheet, measured, configured)",
    "train.flops_per_token": "training FLOPs per token (6N + 12LHQT)",
    "train.flops": "training FLOPs of this run's model: flops_per_token x train.tokens",
    "train.base_flops": "FLOPs spent on the checkpoint this run starts from (its run's train.total_flops; None: unknown or random init)",
    "train.total_flops": "train.base_flops (when known) + train.flops: compute spent on this model in all",
    "train.loss": "the last training loss",
    "wall_seconds": "wall time of the task",
    "val.step": "global step the val.* scores belong to",
}
VAL_FIELDS = ("loss", "bpb", "tokens", "bytes")  # val.<lang>.<field>
# "curve": the validation curve, one record per validation (trainer.val_every_steps, the starting
# checkpoint's scores at tokens 0 and the final one): step, tokens (this run's training tokens),
# flops (total FLOPs at that point, the base's included) and val.<lang>.<loss|bpb>. Reports compare
# arms at matched tokens or FLOPs by interpolating it (allam/curves.py), so they need no logger files.
CURVE_KEY = "curve"
START_FIELDS = ("loss", "bpb")  # start.val.<lang>.<field>: the starting checkpoint's scores

# eval.<task>.<field>: an eval suite's scores per lm-evaluation-harness task (allam/eval/harness.py);
# written by training runs with eval.at_end and by task=eval runs
EVAL_FIELDS: dict[str, str] = {
    "acc": "accuracy: the choice with the highest log-likelihood is the answer",
    "acc_stderr": "standard error of acc",
    "acc_norm": "accuracy with log-likelihood divided by the choice's length in characters",
    "acc_norm_stderr": "standard error of acc_norm",
    "n": "items scored",
    "chance": "expected accuracy of a uniform random guess (mean of 1 / choices)",
    "max_length": "context in tokens the model was scored with",
    "seconds": "wall time of the task",
    # the leak check of the offline suites (allam/eval/leak.py): candidate items left out because a
    # text of theirs overlaps the training text of the demo corpora
    "dropped_leak": "candidate items dropped by the leak check (the three reasons below together)",
    "dropped_leak_prompt": "dropped: the prompt overlaps the training text",
    "dropped_leak_answer": "dropped: the prompt is clean, the answer (a candidate) overlaps",
    "dropped_leak_group": "dropped: clean, but in a closed group with an overlapping text (the group goes whole)",
    "leak_candidates": "candidate items the leak check looked at",
    # per item, so two models scored on the same items can be compared item by item (allam/stats.py)
    "correct": "one character per item scored, in the task's item order: 1 where acc counted it right, else 0",
    "items_sha": "SHA-256 (first 16 hex digits) of the scored items' ids and choices, in order: equal sha, same items",
}

# generate.*: what task=generate writes (besides task, run_dir, ckpt, source_run, prompt,
# wall_seconds, config, generate_config and the provenance keys)
GENERATE_KEYS: dict[str, str] = {
    "generate.prompt_text": "the text the model was given: the prompt, or the chat template's rendering of it as one user message",
    "generate.chat": "True when the chat template made generate.prompt_text",
    "generate.prompt_tokens": "tokens of generate.prompt_text",
    "generate.text": "the generated text, special tokens left out",
    "generate.token_ids": "the generated token ids, the stop token included when one ended the text",
    "generate.tokens": "generated tokens",
    "generate.stopped": "end_of_text (a stop token came) or max_new_tokens",
    "generate.seconds": "wall time of the sampling (loading excluded)",
    "generate.tokens_per_second": "generate.tokens / generate.seconds",
}

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
_VAL_LANG = re.compile(r"^val\.([a-z]{2,3})\.bpb$")


def languages(*results: dict) -> list[str]:
    """The languages scored in these results (keys val.<code>.bpb): the targets in the order
    first seen, then English (so an Arabic run lists ar, en)."""
    seen = dict.fromkeys(m.group(1) for r in results for k in r if (m := _VAL_LANG.match(k)))
    return [c for c in seen if c != "en"] + [c for c in seen if c == "en"]


def report_metrics(runs: list[dict]) -> list[str]:
    """:data:`REPORT_METRICS` with every language of ``runs`` in place of the Arabic/English pair."""
    langs = languages(*runs) or ["ar", "en"]
    out = [f"val.{c}.bpb" for c in langs] + ["delta.val.en.bpb"] + [f"val.{c}.loss" for c in langs]
    return out + [m for m in REPORT_METRICS if not m.startswith(("val.", "delta."))]


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


def objective_keys(objective: str, final: dict[str, dict], start: dict[str, dict] | None = None) -> dict[str, Any]:
    """objective, val.<sft|dpo>.<metric> and start.val.<sft|dpo>.<metric> of a post-training run
    (allam.train.post: loss, and for dpo reward_accuracy, margin, chosen/rejected rewards and
    log-probabilities); nothing for pretraining, whose scores are per language."""
    if objective == "pretrain":
        return {}
    out: dict[str, Any] = {"objective": objective}
    for prefix, scores in (("val", final), ("start.val", start or {})):
        for name, vals in scores.items():
            out.update({f"{prefix}.{name}.{k}": v for k, v in vals.items()})
    return out


def carried_flops(checkpoint: str | None) -> float | None:
    """FLOPs already spent on a checkpoint: the ``train.total_flops`` of the training run whose
    export it is (``<run dir>/hf`` next to ``<run dir>/results.json``), or of the checkpoint a
    ``task=export`` folder was written from. None when that is unknown (a hub checkpoint, a folder
    no run of this project wrote)."""
    if not checkpoint:
        return None
    for candidate in (Path(checkpoint) / FILENAME, Path(checkpoint).parent / FILENAME):
        res = read(candidate) if candidate.is_file() else None
        if res and res.get("task") in ("train", "export") and isinstance(res.get("train.total_flops"), (int, float)):
            return float(res["train.total_flops"])
    return None


def eval_keys(scores: dict[str, dict]) -> dict[str, Any]:
    """eval.<task>.<field> from per-task scores (allam.eval.harness.evaluate)."""
    return {f"eval.{task}.{k}": v for task, vals in scores.items() for k, v in vals.items() if k in EVAL_FIELDS}


def eval_tasks(results: dict) -> list[str]:
    """The tasks a results dict holds eval scores for, in the order written."""
    tasks = [key[len("eval."):-len(".acc")] for key in results if key.startswith("eval.") and key.endswith(".acc")]
    return list(dict.fromkeys(tasks))


def print_eval(results: dict) -> None:
    """One line per evaluated task: acc and acc_norm with standard errors, items, chance."""
    for task in eval_tasks(results):
        def f(field, fmt="{:.3f}"):
            v = results.get(f"eval.{task}.{field}")
            return fmt.format(v) if isinstance(v, (int, float)) else "n/a"

        print(f"eval {task:<16} acc {f('acc')} ± {f('acc_stderr')}  acc_norm {f('acc_norm')} ± {f('acc_norm_stderr')}"
              f"  (n={f('n', '{:d}')}, chance {f('chance')}, {f('seconds', '{:.1f}')} s)"
              + (f"  leak check dropped {f('dropped_leak', '{:d}')} of {f('leak_candidates', '{:d}')}"
                 if f"eval.{task}.dropped_leak" in results else ""))


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def provenance() -> dict[str, Any]:
    """The PROVENANCE_KEYS of this process: the checkout's git commit and dirty flag (tracked
    files only; both None outside a git checkout) and the versions of the libraries that decide
    the numbers."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    out: dict[str, Any] = {"code.commit": commit.strip() if commit else None,
                           "code.dirty": bool(status.strip()) if status is not None else None}
    for lib in ("torch", "lightning", "transformers", "tokenizers"):
        try:
            out[f"versions.{lib}"] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[f"versions.{lib}"] = None
    return out


def _dump(results: dict) -> str:
    stamped = results if all(k in results for k in PROVENANCE_KEYS) else {**provenance(), **results}
    return json.dumps(stamped, indent=2, ensure_ascii=False, default=str) + "\n"


def write(out_dir: Path, results: dict) -> Path:
    """Write results.json into `out_dir` with the PROVENANCE_KEYS it lacks; returns its path."""
    path = Path(out_dir) / FILENAME
    path.write_text(_dump(results), encoding="utf-8")
    return path


def write_status(out_dir: Path, results: dict) -> Path:
    """Write a run's results without ever replacing a finished run's results.json with those of a
    later command that did not finish (preempted, failed): those go to results.<status>.json."""
    path = Path(out_dir) / FILENAME
    previous = read(path) if path.exists() else None
    if results.get("status") != "finished" and previous and previous.get("status", "finished") == "finished":
        target = Path(out_dir) / f"results.{results.get('status')}.json"
        target.write_text(_dump(results), encoding="utf-8")
        return target
    return write(out_dir, results)


def read(path: Path) -> dict | None:
    """One results file, or None when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def collect_runs(root: Path, task: str = "train") -> list[dict]:
    """Every training run's results under `root` (or the one file `root`), in path order; each
    carries its file as ``_path``. ``task="eval"``: the results of task=eval runs instead."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(root.rglob(FILENAME))
    runs = []
    for f in files:
        res = read(f)
        if res is not None and res.get("task") == task:
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
    for lang in languages(results):
        if f"val.{lang}.loss" in results:
            line = f"val {lang}           loss {f(f'val.{lang}.loss')}  bits/byte {f(f'val.{lang}.bpb')}"
            if f"start.val.{lang}.bpb" in results:
                line += f"  (start {f(f'start.val.{lang}.bpb')}, change {f(f'delta.val.{lang}.bpb', '{:+.4f}')})"
            print(line)
    print_eval(results)
    print(f"results: {path}")
