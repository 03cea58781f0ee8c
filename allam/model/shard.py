"""FSDP2: shard a (meta-device) Llama across the data-parallel ranks, one decoder layer per unit."""
from __future__ import annotations

import torch


def fully_shard_llama(model: torch.nn.Module, mesh, param_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Apply ``fully_shard`` to every decoder layer, then to the whole model (embedding, final norm
    and head form the root unit). With `param_dtype` (bf16 on GPUs) forward and backward run in
    that dtype while gradients are reduced in fp32 and the sharded master weights stay fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else MixedPrecisionPolicy()
    layers = list(model.model.layers)
    for i, layer in enumerate(layers):
        # the last layer's parameters are needed again at once by the backward: keep them gathered
        fully_shard(layer, mesh=mesh, mp_policy=mp, reshard_after_forward=i < len(layers) - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model
