"""A run directory's safety rules: one writer at a time, resume only from a checkpoint that
checks out, and nothing in the directory touched before the checks pass.

- :class:`RunLock`: ``.lock`` (pid, host, start time) held by global rank 0 while a command works in
  the directory; a lock left by a process that is gone (same host) is taken over.
- :func:`resume_checkpoint`: the checkpoint to resume (``ckpt=...``, or the newest valid one under
  ``run.resume=auto``), or a one-line refusal (``run.resume=never`` and a used directory).
- :func:`check_resume`: the checkpoint loads, its model shapes fit this run's model, its data
  fingerprint (tokenizer included) matches, and its recorded config differs only in keys a resume
  may change (:data:`RESUME_MAY_CHANGE`); otherwise one line naming what differs.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

from allam.config import ConfigError, Resume
from allam.config.derived import saved_tokens_per_step
from allam.config.saved import RESUME_MAY_CHANGE, comparable_config

LOCK = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Exclusive use of a run directory by one command (global rank 0 takes it)."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK
        self.held = False

    def acquire(self) -> "RunLock":
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(str(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = json.loads(self.path.read_text())
                except (OSError, ValueError):
                    owner = {}
                same_host = owner.get("host") == me["host"]
                if same_host and isinstance(owner.get("pid"), int) and not _alive(owner["pid"]):
                    self.path.unlink(missing_ok=True)  # its owner is gone: take it over
                    continue
                raise ConfigError(
                    f"hydra.run.dir={self.path.parent}: in use by pid {owner.get('pid', '?')} on host "
                    f"{owner.get('host', '?')} since {owner.get('since', '?')}; wait for it to finish, or delete "
                    f"{self.path} if that process is gone")
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise ConfigError(f"hydra.run.dir={self.path.parent}: cannot take {self.path}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def used(out: Path) -> bool:
    """Whether a run directory already holds a run (checkpoints, results or a saved config)."""
    out = Path(out)
    ckpts = out / "checkpoints"
    return (ckpts.is_dir() and any(ckpts.iterdir())) or (out / "results.json").exists() or (out / "config.yaml").exists()


def resume_checkpoint(ckpt: Optional[str], resume: Resume, out: Path) -> tuple[Optional[Path], list[str]]:
    """The checkpoint this command resumes from, and notes on checkpoints passed over."""
    from allam.train.checkpointing import newest_valid, verify

    if ckpt:
        path = Path(os.path.expanduser(str(ckpt)))
        why = verify(path)
        if why:
            raise ConfigError(f"ckpt={ckpt}: {why}; point ckpt= at a checkpoint of an allam run "
                              f"(checkpoints/last.ckpt or checkpoints/step*.ckpt)")
        return path, []
    if resume == Resume.never:
        if used(out):
            raise ConfigError(f"run.resume=never: hydra.run.dir={out} already holds a run; choose a new "
                              "hydra.run.dir, or run.resume=auto to continue it")
        return None, []
    path, skipped = newest_valid(out / "checkpoints")
    return path, skipped


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


# keys added after runs were saved, with the value that does what those runs did: a saved config
# without the key resumes when the current value is this one (a source's key: any source)
ADDED_KEYS = {"data.val_fraction": (0.05,), "data.val_cap_bytes": (None,), "data.dedup_across_sources": (False,),
              "data.sources.*.val_fraction": (None, 0.05), "data.sources.*.val_max_bytes": (None,),
              "init.new_output_embeddings": (None,)}


def _added_with_old_behaviour(key: str, value, saved: dict) -> bool:
    parts = key.split(".")
    pattern = "data.sources.*." + parts[-1] if key.startswith("data.sources.") and len(parts) == 4 else key
    return key not in saved and pattern in ADDED_KEYS and value in ADDED_KEYS[pattern]


def changed_keys(saved: dict, current: dict) -> list[str]:
    """Keys whose values differ between two resolved configs, except those a resume may change and
    keys added since the run was saved that keep its behaviour (:data:`ADDED_KEYS`, and a stage's
    empty ``mix``)."""
    a, b = _flatten(comparable_config(saved)), _flatten(comparable_config(current))
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k) and not k.startswith(RESUME_MAY_CHANGE)
            and not _added_with_old_behaviour(k, b.get(k), a)]


def check_checkpoint_kind(path: Path, sharded: bool) -> None:
    """Refuse (one line) a checkpoint of the other kind than this run's trainer reads: FSDP2 runs
    (``trainer.strategy=fsdp``) save and load torch.distributed.checkpoint folders, the others
    single Lightning ``.ckpt`` files; neither loads the other's optimizer state."""
    path = Path(path)
    if path.is_dir() == sharded:
        return
    kind, needs = (("a single-file checkpoint", "sharded folders (trainer.strategy=fsdp)") if sharded
                   else ("a sharded FSDP checkpoint folder", "single .ckpt files"))
    raise ConfigError(
        f"ckpt={path}: {kind}, but this run's trainer reads {needs}; resume with the trainer it was saved "
        f"with, or export it (task=export ckpt={path}) and start a new run from the export "
        f"(init=pretrained init.checkpoint=<export folder>)")


def check_resume(path: Path, config: dict, model_shapes: dict, data_fingerprint: dict, allow_data_change: bool,
                 tokens_per_step: int, sharded: Optional[bool] = None) -> int:
    """Refuse (one line) a checkpoint that does not fit this run; returns its global step.
    `sharded`: whether this run's trainer saves and loads sharded folders (FSDP2), checked first."""
    from allam.data import check_fingerprint
    from allam.train.checkpointing import read_meta, tensor_shapes

    if sharded is not None:
        check_checkpoint_kind(path, sharded)
    meta = read_meta(path)
    shapes = tensor_shapes(path)
    bad = [f"{k} {shapes.get(k)} vs {v}" for k, v in model_shapes.items() if shapes.get(k) not in (None, v)]
    missing = [k for k in model_shapes if k not in shapes]
    if bad or missing:
        detail = ", ".join(bad[:3]) or f"missing {', '.join(missing[:3])}"
        raise ConfigError(f"ckpt={path}: its model does not fit this run's model ({detail}; checkpoint vs run); "
                          "resume with the model and tokenizer settings it was trained with")
    record = meta.get("allam") or {}
    saved = record.get("config")
    if saved is not None:
        diff = changed_keys(saved, config)
        if diff:
            shown = ", ".join(f"{k} ({_get(saved, k)} -> {_get(config, k)})" for k in diff[:4])
            raise ConfigError(
                f"ckpt={path}: resuming with changed settings {shown}{' ...' if len(diff) > 4 else ''}; a resume "
                "continues the checkpoint's model, optimizer, schedule and data, so only the length of training, "
                "devices, logging, checkpointing and evaluation may change; start a new run from its export "
                "(init=llama2 init.checkpoint=<run>/hf) to change the others"
                + ("; a run saved when objective.val defaulted to demo resumes with objective.val=demo"
                   if "objective.val" in diff and _get(saved, "objective.val") == "demo" else ""))
        saved_tps = saved_tokens_per_step(saved)
        if saved_tps and saved_tps != tokens_per_step:
            raise ConfigError(f"ckpt={path}: tokens per optimizer step {tokens_per_step:,} differs from the "
                              f"checkpoint's {saved_tps:,}; keep data.batch_size x devices x nodes x "
                              "trainer.accumulate_grad_batches the same")
    if record.get("data_fingerprint"):
        check_fingerprint(record["data_fingerprint"], data_fingerprint, allow_data_change)
    return int(meta.get("global_step", 0))


def _get(cfg: dict, dotted: str):
    return _flatten(cfg).get(dotted)
