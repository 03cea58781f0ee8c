"""Read model weights out of Lightning checkpoints without unpickling arbitrary objects."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch


def read_checkpoint(path: Path) -> dict:
    """A Lightning checkpoint as a dict. A sharded (FSDP) checkpoint folder is consolidated first."""
    path = Path(path)
    if path.is_dir():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            flat = Path(tmp) / "consolidated.pt"
            dcp_to_torch_save(str(path), str(flat))
            return torch.load(flat, map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu", weights_only=True)


def model_state(ckpt: dict) -> dict[str, torch.Tensor]:
    """The HF model's state dict inside a CausalLM checkpoint (keys without the 'model.' prefix)."""
    state = ckpt.get("state_dict", ckpt.get("model", ckpt))
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}


def load_module_state(model: torch.nn.Module, path: Path) -> None:
    state = model_state(read_checkpoint(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
