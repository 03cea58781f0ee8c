"""A run's saved config: the resolved ``config.yaml`` that training writes into its run directory,
read back against the schema (keys added since the run take their defaults)."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from allam.config.schema import POST_VAL_AUTO, AllamConfig, post_validation


def training_config_for(ckpt: Path) -> DictConfig | None:
    """The config saved in the nearest folder above `ckpt` that has a config.yaml (the run
    directory of a checkpoint file or folder); None when no folder above it has one."""
    for parent in Path(ckpt).resolve().parents:
        candidate = parent / "config.yaml"
        if candidate.exists():
            return OmegaConf.merge(OmegaConf.structured(AllamConfig), OmegaConf.load(candidate))
    return None


# keys a resume may change (a prefix ending in "." covers a group): how long to train, where to log
# and checkpoint, and how the same computation is laid out or run (allam.tasks.rundir refuses a
# resume that changes any other key; the claims report counts runs that differ only in these, and
# their seeds, as one arm, the budget keys apart); tokens per optimizer step must stay the same on a
# resume (checked separately)
RESUME_MAY_CHANGE = (
    "task", "ckpt", "export", "report_dir", "run.", "paths.", "logger.", "eval.",
    "trainer.max_tokens", "trainer.max_steps", "trainer.val_every_steps", "trainer.checkpoint_every_steps",
    "trainer.log_every_n_steps", "trainer.progress_bar", "trainer.devices", "trainer.num_nodes",
    "trainer.strategy", "trainer.name", "trainer.compile", "trainer.peak_tflops", "trainer.deterministic",
    "trainer.accelerator", "data.batch_size", "data.num_workers", "data.allow_fingerprint_change", "data.cache_wait_s", "data.prepare.",
    "trainer.accumulate_grad_batches", "model.attention", "model.activation_checkpointing",
    "trainer.cross_entropy", "trainer.cross_entropy_chunk", "train.nonfinite", "train.max_nonfinite_skips",
)


OLD_AR_RATIO_DEFAULT = 0.45  # data.ar_ratio's schema default before None meant "not set"


def comparable_config(config: dict) -> dict:
    """``config`` in the form runs were saved in before three schema changes, so a run saved before
    them compares equal to the same run now: each ``data.stages`` item's empty ``mix`` is left out
    (a stage saved before the key existed is the stage it is now; a list item's keys are compared
    as one value), and an unset ``ar_ratio`` (None, at the top or in a stage) reads 0.45, the
    schema's default then, which meant "not set" beside a mix table and the same share without.
    ``objective.val=auto`` reads as the held-out data it stands for (``demo`` with demo training data)."""
    objective = (config or {}).get("objective")
    if isinstance(objective, dict) and objective.get("val") == POST_VAL_AUTO:  # the data it stands for
        config = {**config, "objective": {**objective, "val": post_validation(objective)}}
    data = (config or {}).get("data")
    if not isinstance(data, dict):
        return config
    data = {**data, **({"ar_ratio": OLD_AR_RATIO_DEFAULT} if "ar_ratio" in data and data["ar_ratio"] is None else {})}
    if data.get("stages"):
        data["stages"] = [_comparable_stage(st) if isinstance(st, dict) else st for st in data["stages"]]
    return {**config, "data": data}


def _comparable_stage(stage: dict) -> dict:
    out = {k: v for k, v in stage.items() if not (k == "mix" and not v)}
    if "ar_ratio" in out and out["ar_ratio"] is None:
        out["ar_ratio"] = OLD_AR_RATIO_DEFAULT
    return out
