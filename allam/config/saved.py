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
