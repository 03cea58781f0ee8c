"""Optimizers (torch AdamW, bitsandbytes AdamW8bit) and LR schedules (warmup, then cosine or constant)."""
from __future__ import annotations

import functools
import math

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Three groups: the input embedding and output head; the body's matrices (decayed); the body's
    norms and biases (not decayed). Groups of the body carry ``body=True`` so an embedding warm-up
    can hold them still through the LR schedule alone (no requires_grad changes, so DDP and FSDP
    keep working)."""
    emb = {id(model.get_input_embeddings().weight)}
    head = model.get_output_embeddings()
    if head is not None:
        emb.add(id(head.weight))
    embeddings, decay, no_decay, seen = [], [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in emb:
            embeddings.append(p)
        elif "norm" in name or name.endswith(".bias"):  # by name: FSDP's sharded views are all 1-D
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": embeddings, "weight_decay": weight_decay, "body": False},
        {"params": decay, "weight_decay": weight_decay, "body": True},
        {"params": no_decay, "weight_decay": 0.0, "body": True},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, o) -> torch.optim.Optimizer:
    name = str(o.name)
    groups = param_groups(model, o.weight_decay)
    betas = (float(o.betas[0]), float(o.betas[1]))
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=o.lr, betas=betas, eps=o.eps)
    return torch.optim.AdamW(groups, lr=o.lr, betas=betas, eps=o.eps, fused=fused_supported(groups) or None)


def fused_supported(groups: list[dict]) -> bool:
    """Whether torch's fused AdamW kernel takes every parameter (DTensor shards included): each
    (device type, dtype) among them is tried once with one fused step on a one-element tensor,
    since torch checks a parameter's device and dtype only when it first steps."""
    kinds = {(p.device.type, p.dtype) for g in groups for p in g["params"]}
    return all(_fused_adamw_steps(device, dtype) for device, dtype in kinds)


@functools.lru_cache(maxsize=None)
def _fused_adamw_steps(device_type: str, dtype: torch.dtype) -> bool:
    if not dtype.is_floating_point:
        return False
    try:
        p = torch.zeros(1, dtype=dtype, device=device_type, requires_grad=True)
        p.grad = torch.zeros_like(p)
        torch.optim.AdamW([p], fused=True).step()
    except (RuntimeError, NotImplementedError):  # "`fused=True` requires ... supported devices", or no kernel
        return False
    return True


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """Multiplier on the peak LR at optimizer step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, o, total_steps: int, embedding_warmup_steps: int = 0):
    """LambdaLR per group. During an embedding warm-up the body's groups get LR 0 (AdamW's
    decoupled weight decay is scaled by the LR, so they do not move at all)."""
    schedule = str(o.schedule)

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, o.warmup_steps, schedule, o.min_lr_ratio)

    def body_factor(step: int) -> float:
        return 0.0 if step < embedding_warmup_steps else factor(step)

    lambdas = [body_factor if g.get("body") and embedding_warmup_steps > 0 else factor for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
