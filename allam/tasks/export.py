"""task=export: a Hugging Face folder (weights, config, tokenizer) from a checkpoint of a run,
written one tensor at a time (a sharded checkpoint is never gathered whole)."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from allam.config import ConfigError
from allam.config.saved import training_config_for
from allam.tasks.builders import build_tokenizer, export_hf


def run(cfg: DictConfig) -> dict:
    from allam.model.spec import saved_config

    from allam.model.export import checkpoint_tensors

    if not cfg.ckpt:
        raise ConfigError("ckpt=None: task=export needs ckpt=<path to a .ckpt of an allam run>")
    ckpt = Path(cfg.ckpt)
    if not ckpt.exists():
        raise ConfigError(f"ckpt={cfg.ckpt}: no such checkpoint")
    saved = next((p / "model_config.json" for p in ckpt.resolve().parents if (p / "model_config.json").exists()), None)
    if saved is None:
        raise ConfigError(f"ckpt={cfg.ckpt}: not inside an allam run directory (no model_config.json above it)")
    bundle = build_tokenizer(training_config_for(ckpt) or cfg)
    out = Path(cfg.paths.output_dir) / "hf"
    export_hf(checkpoint_tensors(ckpt), saved_config(saved), bundle, out)
    print(f"exported: {out}")
    return {"task": "export", "export": str(out), "ckpt": str(ckpt)}
