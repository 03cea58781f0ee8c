"""A run's saved config: the resolved ``config.yaml`` that training writes into its run directory,
read back against the schema (keys added since the run take their defaults)."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from allam.config.schema import AllamConfig


def training_config_for(ckpt: Path) -> DictConfig | None:
    """The config saved in the nearest folder above `ckpt` that has a config.yaml (the run
    directory of a checkpoint file or folder); None when no folder above it has one."""
    for parent in Path(ckpt).resolve().parents:
        candidate = parent / "config.yaml"
        if candidate.exists():
            return OmegaConf.merge(OmegaConf.structured(AllamConfig), OmegaConf.load(candidate))
    return None


def without_empty_stage_mix(config: dict) -> dict:
    """``config`` with each ``data.stages`` item's empty ``mix`` left out: a stage saved before the
    key existed is the stage it is now (a list item's keys are compared as one value)."""
    stages = ((config or {}).get("data") or {}).get("stages")
    if not stages:
        return config
    out = {**config, "data": {**config["data"], "stages": [
        {k: v for k, v in st.items() if not (k == "mix" and not v)} if isinstance(st, dict) else st for st in stages]}}
    return out
