"""The bridge to lm-evaluation-harness: every suite, the offline ``demo`` suite included, is a list
of harness tasks scored by ``lm_eval.simple_evaluate`` on an in-memory model, so the numbers are
the harness's own (``lm_eval`` on an exported folder gives the same ones).

:func:`prepare` checks a suite before any model is loaded: the task names exist, and every
dataset a task reads is reachable (the hub, the local Hugging Face cache, or a local copy under
``eval.data_dir``), else one line names the tasks that need the hub. :func:`evaluate` then runs
each task with its few-shot count and returns flat scores per task.

Per task (``eval.<task>.<field>`` in results.json): ``acc``, ``acc_norm`` (log-likelihood over the
choice's length in characters) and their standard errors as the harness computes them, ``n``
(items scored), ``chance`` (the mean of 1 / number of choices over those items), ``max_length``
(the context the model was scored with) and ``seconds``; for this package's own tasks also the leak
check's counts (``dropped_leak`` and its reasons, ``leak_candidates``; :mod:`allam.eval.leak`).

``lm_eval`` is imported only here, and only when a suite runs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from allam.config import ConfigError

log = logging.getLogger("allam")

SUITE_DIR = Path(__file__).parent / "tasks"  # the demo suite's task YAML files
STDERR_ITERS = 1000  # > 0 makes the harness report standard errors (closed form for acc and acc_norm)
CONTINUATION_MARGIN = 4  # tokens: a continuation tokenized alone vs after its context
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_DATASET_PATH_LINE = re.compile(r"^(\s*dataset_path:\s*)(['\"]?)([^'\"\s#]+)\2(\s*(?:#.*)?)$", re.M)


def own_tasks() -> list[str]:
    """The tasks this package ships (allam/eval/tasks/<task>.yaml)."""
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))


@dataclass
class Plan:
    """What a suite runs, checked: task -> few-shot count, and where the harness finds the tasks."""

    tasks: dict[str, int]
    include_path: list[str] = field(default_factory=lambda: [str(SUITE_DIR)])
    include_defaults: bool = False  # the harness's own task library (slow to index; needed for its tasks)
    local_copies: dict[str, str] = field(default_factory=dict)  # hub dataset -> local folder
    seed: int = 1234  # the demo suite's item seed (the harness passes it to the custom_dataset hooks)
    task_manager: object = None  # the harness's TaskManager, once built (indexing its library takes seconds)

    def manager(self):
        if self.task_manager is None:
            from lm_eval.tasks import TaskManager

            self.task_manager = TaskManager(include_path=self.include_path, include_defaults=self.include_defaults,
                                            metadata={"seed": self.seed})
        return self.task_manager


# --------------------------------------------------------------------------- before the model
def prepare(eval_cfg, workdir: Path) -> Plan:
    """Checks the suite `eval_cfg` names and returns its plan; raises ConfigError (one line) for an
    unknown task or a task whose data is out of reach. Loads no model; for harness tasks it
    indexes the harness's task library (seconds) and, when ``eval.data_dir`` holds local
    copies, writes those tasks' configs pointed at them under `workdir`."""
    shots = dict(eval_cfg.num_fewshot or {})
    tasks = {str(t): int(shots.get(t, 0)) for t in eval_cfg.tasks}
    for name, n in tasks.items():
        if n and name in own_tasks():  # the harness would draw the shots from the scored items themselves
            raise ConfigError(f"eval.num_fewshot.{name}={n}: the project's own tasks have only their test items, "
                              "which the harness would draw the examples from (another item's answer shown); "
                              "score them zero-shot")
    foreign = [t for t in tasks if t not in own_tasks()]
    if not foreign:
        return Plan(tasks, seed=int(eval_cfg.seed))
    plan = Plan(tasks, include_defaults=True, seed=int(eval_cfg.seed))
    index = plan.manager().task_index
    for name in foreign:
        if name not in index:
            raise ConfigError(f"eval.tasks.{name}: no such lm-evaluation-harness task or group (eval={eval_cfg.name})")
    needs = {name: _datasets(index, name) for name in foreign}  # task -> {dataset_path: yaml files}
    data_dir = Path(eval_cfg.data_dir).expanduser().resolve() if eval_cfg.data_dir else None
    local = {path: str(data_dir / path) for files in needs.values() for path in files
             if data_dir is not None and (data_dir / path).is_dir()}
    online = hub_reachable()
    missing = {name: sorted(p for p in files if p not in local and not (online or in_local_cache(p)))
               for name, files in needs.items()}
    missing = {name: paths for name, paths in missing.items() if paths}
    if missing:
        where = "offline mode is on (HF_HUB_OFFLINE)" if _offline_env() else "the Hugging Face hub is out of reach"
        example = next(iter(missing.values()))[0]
        listed = "; ".join(f"{name} ({', '.join(paths)})" for name, paths in missing.items())
        raise ConfigError(
            f"eval={eval_cfg.name}: {where} and these tasks read hub datasets found nowhere on this machine: {listed}. "
            f"Put a copy of each dataset repository under a folder and pass eval.data_dir=<folder> "
            f"(read as <folder>/<dataset_path>, e.g. <folder>/{example}; the tasks' dataset_path then points there), "
            f"or fill the Hugging Face cache on a machine with hub access")
    if local:
        plan.local_copies = local
        plan.include_path.append(str(_point_at_local_copies(needs, local, Path(workdir))))
        plan.task_manager = None  # indexed again with the rewritten configs
    return plan


def _datasets(index, name: str, seen: set | None = None) -> dict[str, set[Path]]:
    """Every hub dataset a task, group or tag reads -> the YAML files that name it."""
    seen = set() if seen is None else seen
    if name in seen or name not in index:
        return {}
    seen.add(name)
    entry = index[name]
    out: dict[str, set[Path]] = {}

    def add(more):
        for path, files in more.items():
            out.setdefault(path, set()).update(files)

    if entry.kind.name == "TAG":
        for child in sorted(entry.tags):
            add(_datasets(index, child, seen))
    elif entry.kind.name == "GROUP":
        children = (entry.cfg or {}).get("task") or []
        for child in children if isinstance(children, list) else [children]:
            child_name = child.get("task") if isinstance(child, dict) else child
            if isinstance(child_name, str):
                add(_datasets(index, child_name, seen))
    else:
        path = (entry.cfg or {}).get("dataset_path")
        if path and "custom_dataset" not in (entry.cfg or {}) and not Path(str(path)).expanduser().exists():
            add({str(path): {entry.yaml_path}})
    return out


def _offline_env() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in OFFLINE_ENV)


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when an offline variable is set or the hub's host does not answer within `timeout`."""
    if _offline_env():
        return False
    host = re.sub(r"^https?://", "", os.environ.get("HF_ENDPOINT", "https://huggingface.co")).split("/")[0]
    try:
        socket.create_connection((host.split(":")[0], 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def in_local_cache(dataset_path: str) -> bool:
    """Whether the Hugging Face hub cache or the datasets cache holds this hub dataset."""
    from datasets import config as ds_config
    from huggingface_hub import constants

    if (Path(constants.HF_HUB_CACHE) / f"datasets--{dataset_path.replace('/', '--')}").is_dir():
        return True
    cache = Path(ds_config.HF_DATASETS_CACHE)
    wanted = dataset_path.replace("/", "___").lower()
    return cache.is_dir() and any(p.name.lower() == wanted for p in cache.iterdir())


def _point_at_local_copies(needs: dict[str, dict[str, set[Path]]], local: dict[str, str], workdir: Path) -> Path:
    """Copies the task folders of the tasks that read `local` datasets into a new folder
    ``lm_eval_tasks-*`` under `workdir` (one per process: ranks never share it), their
    ``dataset_path`` fields rewritten to the local folders. The harness indexes it after its own
    library, so these configs replace the originals."""
    import tempfile

    workdir.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="lm_eval_tasks-", dir=workdir))
    def local_path(m: re.Match) -> str:
        return m.group(1) + local[m.group(3)] + m.group(4) if m.group(3) in local else m.group(0)

    folders = sorted({f.parent for files in needs.values() for path, fs in files.items() if path in local for f in fs})
    for i, folder in enumerate(folders):
        dest = out / f"{i:03d}-{folder.name}"
        shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for f in dest.rglob("*"):
            if f.is_file() and f.suffix in (".yaml", ""):  # task files and their include templates
                text = f.read_text(encoding="utf-8")
                if (new := _DATASET_PATH_LINE.sub(local_path, text)) != text:
                    f.write_text(new, encoding="utf-8")
    return out


# --------------------------------------------------------------------------- scoring
def model_context(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


class _HarnessNotes(logging.Filter):
    """Counts (and drops) the harness's one-warning-per-request notes on left-truncated contexts,
    and drops its notes about what this bridge does on purpose (an in-memory model, Python-built
    datasets)."""

    EXPECTED = ("`pretrained` model kwarg is not of type `str`", "Passed an already-initialized model",
                "Custom kwargs can be passed", "Overwriting default num_fewshot")

    def __init__(self) -> None:
        super().__init__()
        self.truncated = 0

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        if msg.startswith("Combined length of context"):
            self.truncated += 1
            return False
        return not any(note in msg for note in self.EXPECTED)


@contextmanager
def _quiet_harness():
    """The harness at WARNING (its INFO lines are per task and per batch); yields the notes filter."""
    notes, root = _HarnessNotes(), logging.getLogger("lm_eval")
    loggers = [logging.getLogger(n) for n in ("lm_eval.models.huggingface", "lm_eval.api.task", "lm_eval.evaluator")]
    level = root.level
    root.setLevel(logging.WARNING)
    for lg in loggers:
        lg.addFilter(notes)
    try:
        yield notes
    finally:
        root.setLevel(level)
        for lg in loggers:
            lg.removeFilter(notes)


def split_pair(encode, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The context and continuation tokens a continuation is scored with: the harness's split (the
    whole text's tokens after the context's own; trailing spaces of the context go with the
    continuation), except where the context's own tokens are not a prefix of the whole text's. A
    byte-level pre-tokenizer that glues punctuation to the newlines after it (Qwen's, tekken's)
    encodes "man." + "\n\nاني" as ``man .ĊĊ اني``, not ``man . ĊĊ اني``; the harness then scored
    the answer after ``man .``, a text without the blank line the model was trained on. Here the
    context is the tokens the two encodings share and the rest is scored, the straddling token
    included (the same for every choice whose first characters are the same, as in this
    project's tasks, which start each with the delimiter)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole, alone = encode(context + continuation), encode(context)
    shared = 0
    for a, b in zip(whole, alone):
        if a != b:
            break
        shared += 1
    if shared == len(alone) or shared == 0:
        return alone, whole[len(alone):]
    return whole[:shared], whole[shared:]


@lru_cache(maxsize=1)
def _scoring_lm():
    """lm-evaluation-harness's HFLM with :func:`split_pair` as its context/continuation split."""
    from lm_eval.models.huggingface import HFLM

    class ScoringLM(HFLM):
        def _encode_pair(self, context, continuation):
            return split_pair(self.tok_encode, context, continuation)

    return ScoringLM


def evaluate(model, tokenizer, eval_cfg, plan: Plan, mixed_precision_dtype=None) -> dict[str, dict]:
    """Scores `model` (a Hugging Face causal LM, in memory) on every task of `plan`; returns
    task -> {acc, acc_stderr, acc_norm, acc_norm_stderr, n, chance, max_length, seconds}.

    The context is ``eval.max_length`` or the model's max_position_embeddings, raised (with a
    log line) for a task whose longest answer would not fit: the harness scores a continuation
    whole and left-truncates only its context."""
    from lm_eval import simple_evaluate

    HFLM = _scoring_lm()
    tm = plan.manager()
    was_training = model.training
    out: dict[str, dict] = {}
    with _quiet_harness() as notes:
        for name, shots in plan.tasks.items():
            t0 = time.perf_counter()
            loaded = tm.load([name])
            leaves = loaded["tasks"]
            chance, longest = _choices_stats(leaves, tokenizer, eval_cfg.limit)
            context = int(eval_cfg.max_length or model_context(model) or 2048)
            max_length = max(context, longest + 1)
            if max_length > context:
                log.warning("eval %s: an answer takes up to %d tokens, more than the context of %d; scoring with "
                            "max_length %d (positions past the trained context)", name, longest, context, max_length)
            lm = HFLM(pretrained=model, tokenizer=tokenizer, add_bos_token=True, batch_size=int(eval_cfg.batch_size),
                      max_length=max_length, mixed_precision_dtype=mixed_precision_dtype)
            notes.truncated = 0
            # a group (scored as its aggregate), a task, or a tag (each of its tasks)
            objs = [loaded["groups"][name]] if name in loaded["groups"] else [leaves[name]] if name in leaves \
                else list(leaves.values())
            res = simple_evaluate(model=lm, tasks=objs, task_manager=tm, num_fewshot=int(shots),
                                  limit=eval_cfg.limit, bootstrap_iters=STDERR_ITERS, log_samples=True,
                                  random_seed=None, numpy_random_seed=None, torch_random_seed=None)
            if res is None:  # not the reporting process (LOCAL_RANK > 0)
                continue
            seconds = time.perf_counter() - t0
            for task, vals in _scores(res, name, list(leaves)).items():
                members = list(leaves) if task == name else [task]
                items = sum(chance[t][1] for t in members)
                vals.update(chance=sum(chance[t][0] * chance[t][1] for t in members) / max(1, items),
                            max_length=max_length, seconds=seconds)
                vals.update(_leak_counts(members))
                vals.update(per_item(res.get("samples", {}).get(task)))
                out[task] = vals
            if notes.truncated:
                log.info("eval %s: %d of its scored contexts were left-truncated to fit %d tokens",
                         name, notes.truncated, max_length)
    model.train(was_training)
    return out


def per_item(samples: list[dict] | None) -> dict[str, str]:
    """``correct`` (a 0/1 character per item, in item order) and ``items_sha`` (which items, with
    their choices) from the harness's logged samples of one task; empty for a group's aggregate."""
    if not samples or any("acc" not in s for s in samples) or len({s["doc_id"] for s in samples}) != len(samples):
        return {}  # no accuracy per item, or an item scored more than once: nothing to pair on
    samples = sorted(samples, key=lambda s: s["doc_id"])
    ident = [[s["doc"].get("id", s["doc_id"]) if isinstance(s["doc"], dict) else s["doc_id"], s["doc_hash"]]
             for s in samples]
    return {"correct": "".join("1" if s.get("acc") else "0" for s in samples),
            "items_sha": hashlib.sha256(json.dumps(ident, default=str).encode()).hexdigest()[:16]}


def _leak_counts(tasks: list[str]) -> dict[str, int]:
    """The leak check's counts of this package's tasks (summed over a group's members); empty for
    tasks built elsewhere."""
    from allam.eval.demo_suite import LEAK_REPORTS

    reports = [LEAK_REPORTS[t] for t in tasks if t in LEAK_REPORTS]
    return {k: sum(r[k] for r in reports) for k in reports[0]} if reports else {}


def _choices_stats(leaves: dict, tokenizer, limit) -> tuple[dict[str, tuple[float, int]], int]:
    """Per task (mean of 1 / choices over the items scored, items scored), and the longest
    continuation in tokens (with a margin for how it tokenizes after its context)."""
    stats, texts = {}, []
    for name, task in leaves.items():
        docs = list(task.eval_docs)[: limit or None]
        delim = task.config.target_delimiter or ""
        inverse = []
        for doc in docs:
            choices = task.doc_to_choice(doc)
            inverse.append(1.0 / max(1, len(choices)))
            texts += [delim + c for c in choices]
        stats[name] = (sum(inverse) / len(inverse) if inverse else 0.0, len(inverse))
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else [0]
    return stats, max(lengths) + CONTINUATION_MARGIN


def _scores(res: dict, name: str, leaves: list[str]) -> dict[str, dict]:
    """The requested task's (or group's aggregate) metrics; a group the harness does not
    aggregate gives each of its tasks instead."""
    results, counts = res["results"], res.get("n-samples", {})

    def metrics(key: str, tasks: list[str]) -> dict:
        row = results.get(key, {})
        vals = {}
        for field_ in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr"):
            v = row.get(f"{field_},none")
            if isinstance(v, (int, float)):
                vals[field_] = float(v)
        vals["n"] = int(sum(counts.get(t, {}).get("effective", 0) for t in tasks))
        return vals

    top = metrics(name, leaves)
    if "acc" in top:
        return {name: top}
    return {leaf: metrics(leaf, [leaf]) for leaf in leaves if "acc" in metrics(leaf, [leaf])}
