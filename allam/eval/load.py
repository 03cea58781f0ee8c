"""What ``task=eval ckpt=<path>`` scores (and ``task=generate`` samples from): a run directory, a
Lightning checkpoint (a .ckpt file or a sharded torch.distributed.checkpoint folder) or a Hugging
Face folder, resolved to one model source, then loaded whole onto one device with its tokenizer.

| ckpt= | weights | shape | tokenizer |
|---|---|---|---|
| run directory | its checkpoints/last.ckpt | its model_config.json | rebuilt from its config.yaml |
| .ckpt file / sharded folder | the checkpoint's tensors, read into host memory, then copied into the model | model_config.json above it | from the config.yaml above it |
| Hugging Face folder | its safetensors | its config.json | the folder's own |
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from allam.config import ConfigError

LAST = Path("checkpoints") / "last.ckpt"


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "checkpoint" | "hf"
    path: Path  # the checkpoint (file or sharded folder) or the Hugging Face folder
    run_dir: Path | None  # the allam run it belongs to, if any

    @property
    def model_config(self) -> Path | None:
        return self.run_dir / "model_config.json" if self.run_dir is not None else None


def _is_hf_folder(p: Path) -> bool:
    return (p / "config.json").is_file() and any(p.glob("*.safetensors"))


def _run_dir_above(p: Path) -> Path | None:
    return next((d for d in [p, *p.resolve().parents] if (d / "model_config.json").is_file()), None)


def resolve(ckpt: str | None, task: str = "eval") -> ModelSource:
    """The model source `ckpt` names; ConfigError (one line) when it names none (`task` names the
    task that needs it)."""
    from allam.model.export import is_dcp_folder

    if not ckpt:
        raise ConfigError(f"ckpt=None: task={task} needs ckpt=<run dir, .ckpt file, sharded checkpoint folder or "
                          "Hugging Face folder>")
    p = Path(str(ckpt)).expanduser()
    if not p.exists():
        raise ConfigError(f"ckpt={ckpt}: no such file or folder")
    if p.is_dir() and _is_hf_folder(p):
        return ModelSource("hf", p.resolve(), _run_dir_above(p.parent))
    if p.is_dir() and (p / LAST).exists():
        p = p / LAST
    if p.is_file() or is_dcp_folder(p):
        run = _run_dir_above(p.parent)
        if run is None:
            raise ConfigError(f"ckpt={ckpt}: not inside an allam run directory (no model_config.json above it)")
        return ModelSource("checkpoint", p.resolve(), run.resolve())
    raise ConfigError(f"ckpt={ckpt}: neither a run directory (with {LAST}), a checkpoint, nor a Hugging Face "
                      "folder (config.json + *.safetensors)")


class _CheckpointRows:
    """A weight source (allam.model.weights.materialize) over a checkpoint's tensors."""

    def __init__(self, path: Path):
        from allam.model.export import checkpoint_tensors

        self.tensors = dict(checkpoint_tensors(path))

    def rows(self, name, shape, start, stop):
        if name not in self.tensors:
            raise ConfigError(f"ckpt: the checkpoint has no tensor {name}")
        return self.tensors[name][start:stop]


def load_tokenizer(source: ModelSource, build_tokenizer):
    """The tokenizer of `source`: a Hugging Face folder's own, or a run's rebuilt by
    `build_tokenizer(training_cfg)` from its saved config (cached by fingerprint, so normally a
    lookup). Loads no weights, so a task can check its input against the tokenizer first."""
    from allam.config.saved import training_config_for
    from allam.tokenizer import hf_folder

    if source.kind == "hf":
        return hf_folder.load(source.path, local_files_only=True)
    training_cfg = training_config_for(source.path)
    if training_cfg is None:
        raise ConfigError(f"ckpt={source.path}: no config.yaml above it to rebuild the tokenizer from")
    return build_tokenizer(training_cfg).tokenizer


def load_model(source: ModelSource, device: str = "cpu"):
    """The model of `source`, whole, in eval mode on `device` (float32)."""
    if source.kind == "hf":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(source.path), local_files_only=True,
                                                     trust_remote_code=False, dtype="float32")
    else:
        from allam.model.spec import spec_from_saved

        weights = _CheckpointRows(source.path)
        model = spec_from_saved(source.model_config, lambda: weights).build(device)
    return model.to(device).eval()


def load(source: ModelSource, build_tokenizer, device: str = "cpu"):
    """(model in eval mode on `device`, tokenizer): :func:`load_tokenizer` then :func:`load_model`."""
    tokenizer = load_tokenizer(source, build_tokenizer)
    return load_model(source, device), tokenizer
