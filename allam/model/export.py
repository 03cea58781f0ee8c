"""Hugging Face folders written one tensor at a time, from whatever holds a run's weights.

Readers yield ``(name, tensor)`` in Hugging Face naming, loading one tensor at a time:
- :func:`dcp_tensors`: a torch.distributed.checkpoint folder (what FSDP2 runs save: each rank
  wrote its shards; a tensor read here is assembled from all of them);
- :func:`ckpt_tensors`: a single-file Lightning checkpoint, memory-mapped (single device, DDP);
- a live model's ``state_dict().items()``.

:func:`write_hf_folder` packs them into safetensors files of at most ``max_shard_bytes`` with an
index (as ``save_pretrained`` writes large models), so the writer never holds more than one file's
tensors plus one tensor. The folder loads with ``AutoModelForCausalLM.from_pretrained``.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator

import torch

PREFIX = "model."  # CausalLM keeps the Hugging Face model as its `model` attribute
DCP_PREFIX = "state_dict." + PREFIX  # Lightning's ModelParallelStrategy saves {"state_dict": module state}
SKIP = ("rotary_emb.inv_freq", "rotary_emb.original_inv_freq")
GiB = 1024**3
MAX_SHARD_BYTES = 2 * GiB  # the largest safetensors file an export writes (and holds while writing)


def is_dcp_folder(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / ".metadata").exists()


def dcp_tensor_keys(path: Path) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """Hugging Face name -> (shape, dtype) of every model tensor in a DCP checkpoint folder."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    out = {}
    for fqn, m in meta.items():
        if isinstance(m, TensorStorageMetadata) and fqn.startswith(DCP_PREFIX) and not fqn.endswith(SKIP):
            out[fqn[len(DCP_PREFIX):]] = (m.size, m.properties.dtype)
    return out


def dcp_tensors(path: Path, names: Iterable[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Model tensors of a DCP checkpoint folder, one read at a time (no process group needed)."""
    import torch.distributed.checkpoint as dcp

    keys = dcp_tensor_keys(path)
    for name in names if names is not None else keys:
        shape, dtype = keys[name]
        holder = {DCP_PREFIX + name: torch.empty(shape, dtype=dtype)}
        dcp.load(holder, checkpoint_id=str(path), no_dist=True)
        yield name, holder[DCP_PREFIX + name]


def ckpt_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Model tensors of a single-file Lightning checkpoint (memory-mapped; tensors and plain
    types only, never arbitrary pickled objects)."""
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True)
    state = ckpt.get("state_dict", ckpt)
    for k, v in state.items():
        if k.startswith(PREFIX) and not k.endswith(SKIP):
            yield k[len(PREFIX):], v


def checkpoint_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The model tensors of any checkpoint an allam run writes (a DCP folder or a .ckpt file)."""
    path = Path(path)
    return dcp_tensors(path) if path.is_dir() else ckpt_tensors(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_hf_folder(tensors: Iterable[tuple[str, torch.Tensor]], config, out: Path,
                    max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Write a Hugging Face model folder: config.json, generation_config.json and the weights as
    ``model.safetensors`` or ``model-0000k-of-0000n.safetensors`` files plus
    ``model.safetensors.index.json``. A tied head is not stored (the config says it is tied)."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    weight_map: dict[str, int] = {}
    current: dict[str, torch.Tensor] = {}
    current_bytes = total = 0
    written = 0
    dtypes: set[torch.dtype] = set()

    def flush() -> None:
        nonlocal current, current_bytes, written
        if current:
            save_file(current, str(out / f"part-{written:05d}.tmp"), metadata={"format": "pt"})
            written += 1
            current, current_bytes = {}, 0

    def drop_parts() -> None:
        for part in out.glob("part-*.tmp"):
            part.unlink()

    try:
        for name, t in tensors:
            if name.endswith(SKIP) or (tied and name == "lm_head.weight"):
                continue
            t = t.detach().to("cpu").contiguous()
            if t.is_floating_point():
                dtypes.add(t.dtype)
                if not torch.isfinite(t).all():
                    from allam.config import RunFailed

                    drop_parts()
                    raise RunFailed(f"{name}: non-finite values; refusing to export to {out}")
            size = t.numel() * t.element_size()
            if current and current_bytes + size > max_shard_bytes:
                flush()
            current[name] = t
            current_bytes += size
            total += size
            weight_map[name] = written
        flush()
    except OSError as exc:  # a full disk: one line, and no part left behind
        from allam.config import RunFailed

        drop_parts()
        free = shutil.disk_usage(out).free if out.exists() else 0
        raise RunFailed(f"export to {out} failed ({exc.strerror or exc}; {free / GiB:.1f} GiB free there); "
                        "an earlier export in that folder is kept") from None
    except BaseException:  # a stop: the earlier export stays whole
        drop_parts()
        raise
    # the new weights are complete: only now do the earlier export's go
    for old in list(out.glob("model*.safetensors")) + list(out.glob("model.safetensors.index.json")):
        old.unlink()
    names = ["model.safetensors"] if written == 1 else [f"model-{i + 1:05d}-of-{written:05d}.safetensors" for i in range(written)]
    mode = 0o666 & ~_umask()
    for i, final in enumerate(names):
        (out / f"part-{i:05d}.tmp").replace(out / final)
        os.chmod(out / final, mode)  # safetensors writes 0600; readable as the folder's other files are
    if written > 1:
        index = {"metadata": {"total_size": total}, "weight_map": {k: names[i] for k, i in sorted(weight_map.items())}}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config = config.__class__.from_dict(config.to_dict())
    if len(dtypes) == 1:  # the dtype the weights are stored in (bf16-true runs export bfloat16)
        config.dtype = next(iter(dtypes))
    config.use_cache = True
    config._attn_implementation = "sdpa"  # xformers is registered only inside allam
    config.save_pretrained(str(out))
    GenerationConfig.from_model_config(config).save_pretrained(str(out))
    return out
