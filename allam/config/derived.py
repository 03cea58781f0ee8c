"""Quantities derived from the config, each computed in this one place.

Every function takes the sub-config it needs (``trainer``, ``data``, ``model``, ...), never the
whole config, so a task module can hand them around without reaching upstream.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch


def world_size(trainer) -> int:
    """Ranks the run trains on: devices per node x nodes (``auto``/-1 counts the visible GPUs)."""
    devices = trainer.devices
    if isinstance(devices, int):
        n = devices
    elif isinstance(devices, str) and devices.isdigit():
        n = int(devices)
    elif hasattr(devices, "__len__") and not isinstance(devices, str):
        n = len(devices)
    elif devices in ("auto", -1, "-1"):
        if trainer.accelerator in ("gpu", "cuda"):
            import torch  # only here: a saved config's numbers need no torch (allam.claim_runs)

            n = torch.cuda.device_count()
        else:
            n = 1
    else:
        n = 1
    return max(1, n) * max(1, trainer.num_nodes)


def tokens_per_step(data, model, trainer) -> int:
    """Training tokens in one optimizer step: micro-batch x seq_len x accumulation x ranks."""
    return data.batch_size * model.seq_len * trainer.accumulate_grad_batches * world_size(trainer)


def saved_tokens_per_step(config: dict) -> Optional[int]:
    """:func:`tokens_per_step` of a saved, resolved config (a run's config.yaml or results.json
    ``config``); None when a part is missing or not a number."""
    try:
        from omegaconf import OmegaConf

        c = OmegaConf.create({k: config[k] for k in ("data", "model", "trainer")})
        return int(tokens_per_step(c.data, c.model, c.trainer))
    except Exception:
        return None


def total_steps(data, model, trainer) -> int:
    """Optimizer steps of the run, from the config alone (never from the trainer; Lightning #20550)."""
    if trainer.max_steps:
        return int(trainer.max_steps)
    return max(1, math.ceil(trainer.max_tokens / tokens_per_step(data, model, trainer)))


def embedding_warmup_steps(init, data, model, trainer) -> int:
    """Optimizer steps during which only the embeddings and the head train (init.embedding_warmup_tokens)."""
    if not init.embedding_warmup_tokens:
        return 0
    return math.ceil(init.embedding_warmup_tokens / tokens_per_step(data, model, trainer))


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype forward and backward run in for a Lightning precision string."""
    import torch

    precision = str(precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float32


def fsdp_param_dtype(trainer) -> torch.dtype | None:
    """The dtype FSDP2 gathers parameters in for forward and backward (bf16 under bf16 precision;
    gradients are still reduced and master weights kept in fp32); None when not sharding."""
    import torch

    if str(trainer.strategy) != "fsdp":
        return None
    dtype = compute_dtype(trainer.precision)
    return None if dtype == torch.float32 else dtype


def device_type(trainer) -> str:
    """"cuda" or "cpu": where the run's tensors live."""
    import torch

    gpu = trainer.accelerator in ("gpu", "cuda") or (trainer.accelerator == "auto" and torch.cuda.is_available())
    return "cuda" if gpu else "cpu"
