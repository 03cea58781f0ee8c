"""Checks a training run makes before it computes anything, each failing with one line: the
device exists, the W&B login exists for an online logger, and the plan's memory estimate fits
the device (GPU memory, or host RAM on the CPU; ``run.memory_check=false`` skips it)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from allam.config import ConfigError, LoggerName
from allam.config.derived import device_type, tokens_per_step, world_size

GiB = 1024**3


def check_device(trainer) -> None:
    if device_type(trainer) == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={trainer.accelerator}: no CUDA GPU is visible to torch "
                          f"(torch {torch.__version__}); use trainer=cpu, or task=plan to size a GPU run")


def check_wandb_login(logger) -> None:
    """An online W&B run needs credentials; without them wandb would prompt or stall on the network."""
    if logger.name != LoggerName.wandb or logger.mode != "online":
        return
    if os.environ.get("WANDB_API_KEY"):
        return
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return
    raise ConfigError("logger.mode=online: no W&B credentials (WANDB_API_KEY unset and no api.wandb.ai entry "
                      "in ~/.netrc); run `wandb login`, or keep logger.mode=offline")


def available_memory_gib(trainer) -> tuple[float, str]:
    """Memory one rank can use, and what it is."""
    if device_type(trainer) == "cuda":
        _free, total = torch.cuda.mem_get_info()
        return total / GiB, f"GPU memory ({torch.cuda.get_device_name()})"
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        return float("inf"), "host memory (unknown)"
    ranks_here = max(1, world_size(trainer) // max(1, trainer.num_nodes))
    return avail / GiB / ranks_here, f"available host memory per rank ({ranks_here} on this machine)"


def check_memory(cfg, vocab_size: int) -> None:
    """Refuse a run whose plan cannot fit the device."""
    if not cfg.run.memory_check:
        return
    from allam.model.plan import make_plan

    p = make_plan(cfg.model, cfg.trainer, batch_size=cfg.data.batch_size, optimizer=cfg.optim.name,
                  vocab_size=vocab_size, world=world_size(cfg.trainer),
                  tokens_per_step=tokens_per_step(cfg.data, cfg.model, cfg.trainer))
    need = p.memory_gib["total"]
    have, what = available_memory_gib(cfg.trainer)
    if need > have:
        raise ConfigError(
            f"model={cfg.model.name}: needs about {need:.1f} GiB per rank (plan: weights {p.memory_gib['weights']:.1f}, "
            f"optimizer {p.memory_gib['optimizer']:.1f}, activations {p.memory_gib['activations']:.1f}, logits "
            f"{p.memory_gib['logits']:.1f}) but {what} is {have:.1f} GiB; shrink model.seq_len or data.batch_size, "
            "turn on activation checkpointing, shard with trainer=fsdp, or set run.memory_check=false to try anyway")
