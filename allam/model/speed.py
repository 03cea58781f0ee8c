"""Speed options applied per decoder layer (the FSDP2 unit) of a Hugging Face Llama.

- Activation checkpointing (``model.activation_checkpointing``): a checkpointed layer keeps
  only its input and recomputes its activations in the backward (PyTorch's non-reentrant
  ``torch.utils.checkpoint``, through the layer's own Hugging Face hook, so parameter names and
  FSDP2's hooks are unchanged). ``none``; ``selective``: the even-numbered layers (0, 2, 4, ...),
  about half the activation memory for about half the recompute of ``full``; ``full``: every layer.
- ``torch.compile`` per layer (``trainer.compile``): each layer's ``forward`` is compiled; the
  layers share one compiled graph (same code, parameters as inputs; two under ``selective``
  checkpointing: the checkpointed layers' and the others'), FSDP2's hooks stay outside it and the
  state dict keeps its names (tests/test_resume_evidence.py counts the graphs). Compile after sharding: FSDP2 swaps the layer's class.

Kernels from packages that may not run here (xformers attention, Liger Kernel's fused loss) are
chosen by :func:`resolve_backend`: by trying them, not by version tables.
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Callable

import torch

from allam.config import ConfigError

_ANNOUNCED: set[str] = set()


def resolve_backend(key: str, requested: str, *, preferred: str, fallback: str, fixed: tuple[str, ...],
                    probe: Callable[[], tuple[bool, str]], log: logging.Logger, label: str) -> str:
    """The backend that runs for config key `key`: one of `fixed` as asked; `preferred` where
    ``probe()`` says it runs; under ``auto`` otherwise `fallback`; asking for `preferred` where it
    cannot run is a ConfigError naming the reason. Logs once per process which runs and why."""
    requested = str(requested)
    if requested in fixed:
        chosen, reason = requested, "requested"
    else:
        ok, reason = probe()
        if requested == preferred and not ok:
            raise ConfigError(f"{key}={preferred}: cannot run here ({reason}); allowed here: auto, {', '.join(fixed)}")
        chosen = preferred if ok else fallback
        if requested == "auto" and not ok:
            reason = f"auto fell back to {fallback}: {reason}"
    msg = f"{label}: {chosen} ({reason})"
    if msg not in _ANNOUNCED:
        _ANNOUNCED.add(msg)
        log.info(msg)
    return chosen


def checkpointed_layers(num_layers: int, mode: str) -> list[int]:
    """Indices of the decoder layers that recompute their activations in the backward."""
    mode = str(mode)
    if mode == "none":
        return []
    if mode == "selective":
        return list(range(0, num_layers, 2))
    if mode == "full":
        return list(range(num_layers))
    raise ValueError(f"activation checkpointing {mode!r}: allowed: none, selective, full")


def apply_activation_checkpointing(model: torch.nn.Module, mode: str) -> list[int]:
    """Turn checkpointing on for the layers `mode` names and off for the others; returns them."""
    from torch.utils.checkpoint import checkpoint

    layers = model.model.layers
    chosen = set(checkpointed_layers(len(layers), mode))
    func = partial(checkpoint, use_reentrant=False)
    for i, layer in enumerate(layers):
        layer._gradient_checkpointing_func = func
        layer.gradient_checkpointing = i in chosen
    return sorted(chosen)


def compile_layers(model: torch.nn.Module, **compile_kwargs) -> None:
    """torch.compile each decoder layer's forward in place (idempotent).

    Traced with Dynamo's ``skip_fwd_side_effects_in_bwd_under_checkpoint`` on, for these calls
    only: with the ``kernels`` package present (a dependency of transformers from 5.25),
    Hugging Face's attention sets and resets a global around its forward. Inside a checkpointed
    layer Dynamo cannot replay that in the recompute and breaks the graph; the pair leaves the
    global as it found it, so there is nothing to replay."""
    for layer in model.model.layers:
        if not getattr(layer, "_allam_compiled", False):
            compiled = torch.compile(layer.forward, **compile_kwargs)
            layer.forward = torch._dynamo.config.patch(skip_fwd_side_effects_in_bwd_under_checkpoint=True)(compiled)
            layer._allam_compiled = True
