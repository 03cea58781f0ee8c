"""Attention backends: xformers where its kernels run, otherwise PyTorch SDPA (or eager).

`xformers` is registered with transformers' AttentionInterface, so a `LlamaForCausalLM`
built with ``attn_implementation="xformers"`` calls
``xformers.ops.memory_efficient_attention`` with a causal bias.

Whether xformers can run is decided by *trying it*: a tiny forward on the target device and
dtype. The wheel on the package index ships CUDA kernels for one torch release; with another
torch they do not load, and on the CPU there are none. A version table would lie in those
cases; a probe does not.
"""
from __future__ import annotations

import logging
from functools import lru_cache

import torch

log = logging.getLogger(__name__)

_REGISTERED = False


def _xformers_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None,
                        softcap=None, **kwargs):
    """transformers attention-interface function backed by xformers memory_efficient_attention.

    query/key/value arrive as [batch, heads, seq, head_dim]; xformers wants [batch, seq, heads, head_dim].
    No mask function is registered for this backend, so transformers passes attention_mask=None
    and causality comes from the bias here (bottom-right aligned, so decoding with a KV cache
    stays correct). A layer with a ``sliding_window`` (Gemma-3's local layers) that cuts keys off
    runs PyTorch SDPA with the window mask (each query sees itself and the ``sliding_window - 1``
    keys before it, as transformers' own masks do): xformers' local bias has a backward kernel only
    in flash attention (16-bit, sm80 and newer). Padding masks and logit soft-capping are not
    supported: training uses packed blocks without padding.

    The kernel needs one dtype for q, k and v. Under autocast (``precision=bf16-mixed``) the
    rotary embedding leaves q and k in float32 while v comes out of a Linear in bfloat16; SDPA is
    cast by autocast, this call is not, so q, k and v are cast here to the autocast dtype (to
    v's dtype outside autocast).
    """
    import xformers.ops as xops

    if attention_mask is not None:
        raise NotImplementedError("xformers attention backend does not support padding masks; use sdpa")
    if softcap is not None:
        raise NotImplementedError("xformers attention backend does not support logit soft-capping; use sdpa or eager")
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        b, h, s, d = key.shape
        key = key[:, :, None].expand(b, h, groups, s, d).reshape(b, h * groups, s, d)
        value = value[:, :, None].expand(b, h, groups, s, d).reshape(b, h * groups, s, d)
    device = query.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else value.dtype
    q, k, v = (t.transpose(1, 2).to(dtype) for t in (query, key, value))
    causal = getattr(module, "is_causal", True)
    m, n = q.shape[1], k.shape[1]
    if causal and sliding_window and n > sliding_window:
        # a local layer whose window cuts keys off: xformers' local mask has a backward kernel only
        # in flash attention (16-bit, sm80 and newer), so this layer runs SDPA with the window mask
        w = int(sliding_window)
        pos = torch.arange(n, device=q.device)
        rel = (pos[None, :] - pos[n - m:, None])  # key minus query position, queries aligned bottom-right
        mask = (rel <= 0) & (rel > -w)
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
            dropout_p=dropout if module.training else 0.0, scale=scaling)
        return out.transpose(1, 2), None
    bias = None
    if causal and m > 1:
        bias = xops.fmha.attn_bias.LowerTriangularFromBottomRightMask()
    out = xops.memory_efficient_attention(
        q, k, v, attn_bias=bias, p=dropout if module.training else 0.0, scale=scaling
    )
    return out, None  # [batch, seq, heads, head_dim], as transformers expects


def register_xformers() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface

    AttentionInterface.register("xformers", _xformers_attention)
    _REGISTERED = True


@lru_cache(maxsize=None)
def xformers_status(device_type: str, dtype: torch.dtype) -> tuple[bool, str]:
    """(runs, reason): whether xformers' kernels run for this device type and dtype."""
    if device_type == "cpu":
        return False, "xformers has no CPU kernels"
    if device_type == "cuda" and not torch.cuda.is_available():
        return False, "CUDA is not available"
    try:
        import xformers  # noqa: F401
        import xformers.ops as xops
    except Exception as exc:  # pragma: no cover - depends on the install
        return False, f"xformers is not importable ({type(exc).__name__}: {exc})"
    try:
        q = torch.randn(1, 8, 2, 64, device=device_type, dtype=dtype)
        xops.memory_efficient_attention(q, q, q, attn_bias=xops.fmha.attn_bias.LowerTriangularMask())
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return False, f"xformers kernels do not run on {device_type}/{str(dtype).replace('torch.', '')}: {first}"
    return True, f"xformers {xformers.__version__} kernels run on {device_type}/{str(dtype).replace('torch.', '')}"


def resolve_attention(requested: str, device_type: str, dtype: torch.dtype) -> str:
    """Pick the attention implementation name for transformers and log once which one runs."""
    from allam.model.speed import resolve_backend

    chosen = resolve_backend("model.attention", requested, preferred="xformers", fallback="sdpa",
                             fixed=("sdpa", "eager"), probe=lambda: xformers_status(device_type, dtype), log=log,
                             label="attention")
    if chosen == "xformers":
        register_xformers()
    return chosen
