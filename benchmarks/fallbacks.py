"""Does this machine run the optional speed pieces? Each probe tries the piece on a tiny input on
the device and answers (ok, reason); the benchmarks fall back where one does not run and name the
fallback in their JSON:

- ``inductor_status``: ``torch.compile`` (Inductor) of a tiny function, which needs a working
  compiler toolchain (a C++ compiler on CPUs; Triton and a C compiler on GPUs). Fallback: eager
  (``trainer.compile=false``), recorded as ``compile_fallback``;
- ``adamw8bit_status``: bitsandbytes' AdamW8bit takes one step. Fallback: torch's fused AdamW
  (``optim=adamw``), recorded as ``optimizer_fallback``.

    python benchmarks/fallbacks.py --device cuda     # one JSON line with both answers
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def _reason(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def inductor_status(device: str) -> tuple[bool, str]:
    """Whether ``torch.compile`` (default backend, Inductor) compiles and runs a tiny function on `device`."""
    import torch

    def tiny(x):
        return torch.sin(x) * 2 + 1

    try:
        x = torch.arange(16, dtype=torch.float32, device=device)
        y = torch.compile(tiny)(x)
        if not torch.allclose(y, tiny(x)):
            return False, "torch.compile gave a different result than eager on a tiny function"
    except Exception as exc:  # no compiler, a broken Triton, ...: any of them means eager
        return False, "torch.compile failed on a tiny function: " + _reason(exc)
    return True, "torch.compile (Inductor) compiled and ran a tiny function"


def adamw8bit_status(device: str) -> tuple[bool, str]:
    """Whether bitsandbytes imports and its AdamW8bit takes a step on `device`."""
    import torch

    try:
        import bitsandbytes as bnb
    except Exception as exc:
        return False, "bitsandbytes does not import: " + _reason(exc)
    try:
        p = torch.nn.Parameter(torch.ones(4096, device=device))
        opt = bnb.optim.AdamW8bit([p], lr=1e-3)
        p.grad = torch.ones_like(p)
        opt.step()
        if not bool(torch.isfinite(p).all()) or bool((p == 1).all()):
            return False, "bitsandbytes AdamW8bit's step left the parameter unchanged or non-finite"
    except Exception as exc:
        return False, "bitsandbytes AdamW8bit failed one step: " + _reason(exc)
    return True, f"bitsandbytes {getattr(bnb, '__version__', '?')} AdamW8bit took a step"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    out = {"benchmark": "fallbacks", "device": args.device}
    for name, probe in (("compile", inductor_status), ("adamw8bit", adamw8bit_status)):
        t0 = time.perf_counter()
        ok, reason = probe(args.device)
        out[name] = {"ok": ok, "reason": reason, "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
