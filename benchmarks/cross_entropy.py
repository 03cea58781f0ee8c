"""Peak memory, time and agreement of the training loss's implementations, side by side in one
process: ``plain`` (today's: every logit of the micro-batch at once, upcast to fp32) against
``chunked`` (allam.train.loss: one chunk of tokens' logits at a time) and, where Liger Kernel runs,
``fused``. Each arm computes the head matmul + cross-entropy and its backward for the same hidden
states [tokens, hidden] and head weight [vocab, hidden]; peak memory is what the arm adds on top of
those inputs (benchmarks/peak_memory.py). Defaults: the tiny model's micro-batch (8 x 256 tokens,
hidden 256) at a 32k vocabulary, fp32 on the CPU.

    python benchmarks/cross_entropy.py
    python benchmarks/cross_entropy.py --device cuda --dtype bfloat16 --tokens 16384 --hidden 2048

Prints one JSON line, with the largest absolute difference of the loss and of both gradients
against ``plain``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    import torch

    from allam.train import loss as L
    from peak_memory import PeakMemory

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=8 * 256)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--chunk", type=int, default=1024, help="tokens per chunk (trainer.cross_entropy_chunk)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="bfloat16: autocast over fp32 inputs, as under trainer.precision=bf16-mixed")
    args = ap.parse_args()

    device = torch.device(args.device)
    g = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(args.tokens, args.hidden, device=device, generator=g)
    weight = torch.randn(args.vocab, args.hidden, device=device, generator=g) * args.hidden**-0.5
    targets = torch.randint(0, args.vocab, (args.tokens,), device=device, generator=g)
    arms = {"plain": L.plain_cross_entropy, "chunked": partial(L.chunked_cross_entropy, chunk=args.chunk)}
    ok, fused_reason = L.fused_status(device.type, getattr(torch, args.dtype))
    if ok:
        arms["fused"] = L.fused_cross_entropy

    def run(fn):
        h = hidden.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with PeakMemory(device) as pm:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
                loss = fn(h, w, targets)
            loss.backward()
        seconds = time.perf_counter() - t0
        return loss.detach(), h.grad, w.grad, pm.peak_bytes, seconds

    for fn in arms.values():  # warm-up: kernels, allocator
        run(fn)
    results, ref = {}, None
    for name, fn in arms.items():
        loss, gh, gw, peak, seconds = run(fn)
        if ref is None:
            ref = (loss, gh, gw)
        results[name] = {"peak_memory_gib": peak / 2**30, "seconds": seconds, "loss": float(loss),
                         "max_abs_diff": {"loss": float((loss - ref[0]).abs()), "grad_hidden": float((gh - ref[1]).abs().max()),
                                          "grad_weight": float((gw - ref[2]).abs().max())}}
    out = {
        "benchmark": "cross_entropy",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "shape": {"tokens": args.tokens, "hidden": args.hidden, "vocab": args.vocab, "chunk": args.chunk},
        "baseline": "plain",
        **results,
        "memory_ratio_plain_vs_chunked": results["plain"]["peak_memory_gib"] / results["chunked"]["peak_memory_gib"],
        "max_abs_diff": results["chunked"]["max_abs_diff"],
        # the fused arm's result (above) stays under "fused"; why it ran or not goes here
        "fused_status": {"ran": "fused" in results, "reason": fused_reason},
        "peak_memory_source": PeakMemory(device).source,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
