"""The training loss: the output head's matmul and the next-token cross-entropy, in one of three ways
(``trainer.cross_entropy``).

- ``plain``: the model's full logits ``[batch, seq, vocab]``, upcast to fp32 for the loss (at a
  32k vocabulary, about 1 GB for one 8 x 2048 micro-batch in bf16 plus 4.2 GB for the fp32 copy
  and its gradient).
- ``chunked``: plain PyTorch on every device. A custom autograd function runs the head matmul
  and the cross-entropy over ``chunk`` tokens at a time and computes the gradients of the hidden
  states and of the head's weight in the same pass, so only one chunk's logits ever exist; the
  backward only scales the stored gradients. Same FLOPs as ``plain`` (no recomputation).
- ``fused``: Liger Kernel's fused linear + cross-entropy (Triton, CUDA only), where it installs
  and runs: decided by *trying it* on the target device and dtype, like the attention backend.

``auto`` picks ``fused`` where it runs and ``chunked`` otherwise, and says once which and why.
"""
from __future__ import annotations

import logging
from functools import lru_cache, partial

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


# --------------------------------------------------------------------------- chunked
class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets``, ``chunk`` rows at a time.

    hidden [N, H], weight [V, H], targets [N] (``-100``: not scored). The matmuls follow the
    ambient autocast (bf16 on GPUs); softmax and the loss are fp32. The gradients are kept
    unnormalized (softmax minus one-hot) and divided by the token count in the backward, together
    with the incoming gradient, so a loss scaler's factor is applied before anything underflows.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int):
        valid = targets != IGNORE_INDEX
        count = valid.sum().clamp_min(1).to(torch.float32)
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk]
            t = targets[start:start + chunk]
            ok = valid[start:start + chunk]
            safe = t.clamp_min(0)
            logits = (h @ weight.t()).float()  # [chunk, V]: the only logits alive; all else in place
            picked = logits.gather(1, safe[:, None]).squeeze(1)
            top = logits.amax(dim=-1, keepdim=True)
            sumexp = logits.sub_(top).exp_().sum(dim=-1)
            total += torch.where(ok, top.squeeze(1) + sumexp.log() - picked, 0.0).sum()
            if want_h or want_w:
                g = logits.div_(sumexp[:, None])  # softmax
                g[torch.arange(len(t), device=g.device), safe] -= 1.0
                g.mul_(ok[:, None])
                g = g.to(weight.dtype)  # the matmuls below follow autocast like the forward's
                if want_h:
                    grad_h[start:start + chunk] = g @ weight
                if want_w:
                    grad_w += (g.t() @ h).float()
                del g
            del logits  # before the next chunk's logits exist
        ctx.grads = (grad_h, grad_w, count)
        ctx.weight_dtype = weight.dtype
        return total / count

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        grad_h, grad_w, count = ctx.grads
        ctx.grads = None
        scale = grad_out.float() / count
        gh = grad_h.mul_(scale.to(grad_h.dtype)) if grad_h is not None else None
        gw = grad_w.mul_(scale).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          chunk: int = 1024) -> torch.Tensor:
    """Mean next-token loss of hidden states [..., H] under the head ``weight`` [V, H]."""
    h = hidden.reshape(-1, hidden.shape[-1])
    return ChunkedLinearCrossEntropy.apply(h, weight, targets.reshape(-1), int(chunk))


def plain_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The unchunked loss (trainer.cross_entropy=plain): every logit at once, upcast to fp32."""
    logits = hidden @ weight.t()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX)


def fused_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Liger Kernel's fused linear + cross-entropy (its Triton kernels)."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    h = hidden.reshape(-1, hidden.shape[-1])
    return LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX)(weight, h, targets.reshape(-1))


# --------------------------------------------------------------------------- the probe
@lru_cache(maxsize=None)
def fused_status(device_type: str, dtype: torch.dtype) -> tuple[bool, str]:
    """(runs, reason): whether Liger Kernel's fused linear + cross-entropy runs here, found by a
    tiny call checked against the chunked loss."""
    where = f"{device_type}/{str(dtype).replace('torch.', '')}"
    if device_type != "cuda":
        return False, f"Liger Kernel runs Triton kernels on CUDA only, not on {device_type}"
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    try:
        import liger_kernel
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss  # noqa: F401
    except Exception as exc:
        return False, f"liger-kernel is not importable ({type(exc).__name__}: {_first_line(exc)})"
    gen = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(64, 64, device="cuda", generator=gen)
    w = torch.randn(256, 64, device="cuda", generator=gen) * 0.125
    t = torch.randint(0, 256, (64,), device="cuda", generator=gen)
    want = plain_cross_entropy(h, w, t)
    # parameters in `dtype` (bf16-true, FSDP2's gathered bf16) and fp32 under autocast (bf16-mixed)
    for param_dtype, autocast in ((dtype, False), (torch.float32, dtype != torch.float32)):
        try:
            wp = w.to(param_dtype).requires_grad_(True)
            with torch.autocast("cuda", dtype=dtype, enabled=autocast):
                got = fused_cross_entropy(h.to(param_dtype).requires_grad_(True), wp, t)
            got.backward()
            if wp.grad is None or wp.grad.dtype != param_dtype:
                return False, f"Liger Kernel's fused loss gives no {param_dtype} weight gradient on {where}"
        except Exception as exc:
            return False, f"Liger Kernel's kernels do not run on {where}: {_first_line(exc)}"
        if not torch.isfinite(got) or abs(float(got) - float(want)) > 0.05 * abs(float(want)):
            return False, f"Liger Kernel's loss {float(got):.4f} disagrees with the plain loss {float(want):.4f} on {where}"
    return True, f"liger-kernel {getattr(liger_kernel, '__version__', '')} runs on {where}".replace("  ", " ")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resolve_cross_entropy(requested: str, device_type: str, dtype: torch.dtype) -> str:
    """The loss that runs for ``trainer.cross_entropy`` (`chunked`, `fused` or `plain`); logs once
    which and why. `fused` where it cannot run is a ConfigError naming the reason."""
    from allam.model.speed import resolve_backend

    return resolve_backend("trainer.cross_entropy", requested, preferred="fused", fallback="chunked",
                           fixed=("chunked", "plain"), probe=lambda: fused_status(device_type, dtype), log=log,
                           label="cross-entropy")


# --------------------------------------------------------------------------- the model's loss
def head_loss(kind: str, chunk: int = 1024):
    """loss(hidden [B, T, H], head weight [V, H], targets [B, T]) for a resolved ``kind``."""
    if kind == "chunked":
        return partial(chunked_cross_entropy, chunk=chunk)
    if kind == "fused":
        return fused_cross_entropy
    if kind == "plain":
        return plain_cross_entropy
    raise ValueError(f"unknown cross-entropy {kind!r}; resolve it with resolve_cross_entropy first")


def attach_loss(model: torch.nn.Module, kind: str, chunk: int = 1024) -> None:
    """Give a Hugging Face causal LM a ``next_token_loss(input_ids, targets)`` method: the decoder
    stack, then the head and the loss of `kind`. Under FSDP2 the method is registered as a forward
    method, so the root unit's parameters (embedding, final norm, head) are gathered around it as
    around ``forward``."""
    from torch.distributed.fsdp import register_fsdp_forward_method

    loss = head_loss(kind, chunk)

    def next_token_loss(input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        hidden = model.model(input_ids=input_ids, use_cache=False).last_hidden_state
        return loss(hidden, model.lm_head.weight, targets)

    model.next_token_loss = next_token_loss
    register_fsdp_forward_method(model, "next_token_loss")
