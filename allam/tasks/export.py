"""task=export: a Hugging Face folder (weights, config, tokenizer) from a checkpoint of a run,
written one tensor at a time (a sharded checkpoint is never gathered whole). ``ckpt=`` names a
checkpoint, or a run directory (its newest valid checkpoint is exported)."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from allam.config import ConfigError
from allam.config.saved import training_config_for
from allam.tasks.builders import build_tokenizer, export_hf, saved_run_tokenizer

log = logging.getLogger("allam")


def run(cfg: DictConfig) -> dict:
    from allam.model.export import checkpoint_tensors
    from allam.model.spec import saved_config

    if not cfg.ckpt:
        raise ConfigError("ckpt=None: task=export needs ckpt=<path to a .ckpt of an allam run>")
    ckpt = checkpoint_to_export(cfg.ckpt)
    saved = next((p / "model_config.json" for p in ckpt.resolve().parents if (p / "model_config.json").exists()), None)
    if saved is None:
        raise ConfigError(f"ckpt={cfg.ckpt}: not inside an allam run directory (no model_config.json above it)")
    trained = training_config_for(ckpt)  # the run's tokenizer, found in this command's cache (paths.cache_dir)
    bundle = saved_run_tokenizer(cfg)(trained) if trained is not None else build_tokenizer(cfg)
    out = Path(cfg.paths.output_dir) / "hf"
    export_hf(checkpoint_tensors(ckpt), saved_config(saved), bundle, out)
    print(f"exported: {out}")
    return record_export(saved.parent, ckpt, out)


def record_export(run: Path, ckpt: Path, out: Path) -> dict:
    """results.json next to the export, with the run's config.yaml and model_config.json: the
    folder then says what it is, as a run's own ``hf`` does. generate reads the run's objective
    (chat=auto: the template only after sft or dpo), and a run starting from the export carries
    the FLOPs spent up to the exported checkpoint (``train.total_flops``: the run's base FLOPs and
    its FLOPs per token times the tokens the checkpoint had trained)."""
    import shutil

    from allam import results as R
    from allam.train.checkpointing import read_meta

    meta = read_meta(ckpt)
    tokens = ((meta.get("callbacks") or {}).get("Throughput") or {}).get("tokens")
    source = R.read(run / R.FILENAME) or {}
    fpt = source.get("train.flops_per_token")
    total = (float(source.get("train.base_flops") or 0.0) + float(fpt) * int(tokens)
             if isinstance(fpt, (int, float)) and tokens is not None else None)
    for name in ("config.yaml", "model_config.json"):
        if (run / name).exists() and (run / name).resolve() != (out.parent / name).resolve():
            shutil.copyfile(run / name, out.parent / name)
    results = {"task": "export", "source_run": str(run), "ckpt": str(ckpt), "export": str(out),
               "train.steps": meta.get("global_step"), "train.tokens": tokens, "train.total_flops": total}
    R.write(out.parent, results)
    return results


def checkpoint_to_export(value) -> Path:
    """The checkpoint `ckpt=value` names, verified (one line when it is missing or damaged); a run
    directory stands for its newest valid checkpoint."""
    from allam.train.checkpointing import newest_valid, verify

    path = Path(str(value)).expanduser()
    if not path.exists():
        raise ConfigError(f"ckpt={value}: no such checkpoint")
    run = path if (path / "model_config.json").exists() else (
        path.parent if path.name == "checkpoints" and (path.parent / "model_config.json").exists() else None)
    if path.is_dir() and run is not None:  # a run directory (or its checkpoints folder)
        newest, skipped = newest_valid(run / "checkpoints")
        if newest is None:
            why = f" ({len(skipped)} damaged: {skipped[0]})" if skipped else ""
            raise ConfigError(f"ckpt={value}: a run directory with no complete checkpoint in "
                              f"{run / 'checkpoints'}{why}; train it (task=train) before exporting")
        log.info("exporting %s, the newest valid checkpoint of %s", newest, run)
        return newest
    why = verify(path)
    if why:
        raise ConfigError(f"ckpt={value}: {why}; point ckpt= at a checkpoint of an allam run "
                          "(checkpoints/last.ckpt or checkpoints/step*.ckpt) or at its run directory")
    return path
