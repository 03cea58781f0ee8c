"""Read model weights out of Lightning checkpoints without unpickling arbitrary objects."""
from __future__ import annotations

from pathlib import Path

import torch

PREFIX = "model."  # CausalLM keeps the Hugging Face model as its `model` attribute


def model_state(ckpt: dict) -> dict[str, torch.Tensor]:
    """The HF model's state dict inside a CausalLM checkpoint (keys without the 'model.' prefix)."""
    state = ckpt.get("state_dict", ckpt.get("model", ckpt))
    return {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}


def read_checkpoint(path: Path) -> dict:
    """A single-file Lightning checkpoint as a dict (tensors and plain types only)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def load_module_state(model: torch.nn.Module, path: Path) -> None:
    """Load a CausalLM checkpoint's model weights into `model` (a matching HF Llama).

    A sharded checkpoint (the folder FSDP writes through torch.distributed.checkpoint) is read
    in place, model keys only: optimizer states, the bulk of such a checkpoint, are never loaded.
    """
    path = Path(path)
    if path.is_dir():
        import torch.distributed.checkpoint as dcp

        own = model.state_dict()
        target = {PREFIX + k: v for k, v in own.items() if not k.endswith("rotary_emb.inv_freq")}
        dcp.load({"model": target}, checkpoint_id=str(path), no_dist=True)
        return
    state = model_state(read_checkpoint(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
