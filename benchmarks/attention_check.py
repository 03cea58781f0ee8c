"""Do the attention backends agree numerically? The same small Llama (grouped-query attention) with
the same weights runs forward and backward under ``sdpa`` (the reference), ``eager`` and, where its
kernels run, ``xformers``; the largest differences of the logits and of every gradient are reported
relative to the reference's largest magnitude.

    python benchmarks/attention_check.py                                   # CPU, fp32
    python benchmarks/attention_check.py --device cuda --dtype bfloat16    # a GPU

Prints one JSON line; ``ok`` per backend is the comparison within the dtype's tolerance.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2}  # relative to the reference's largest magnitude


def main() -> None:
    import torch
    from omegaconf import OmegaConf
    from transformers import LlamaForCausalLM

    from allam.model.attention import register_xformers, xformers_status
    from allam.model.decoder import decoder_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(TOLERANCE))
    ap.add_argument("--seq", type=int, default=256)
    args = ap.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    m = OmegaConf.create(dict(hidden_size=256, intermediate_size=512, num_layers=2, num_heads=8, num_kv_heads=4,
                              seq_len=args.seq, max_position_embeddings=None, rope_theta=1e4, norm_eps=1e-5,
                              tie_embeddings=False))
    ids = torch.randint(0, 1000, (2, args.seq), generator=torch.Generator().manual_seed(0)).to(device)

    def run(backend: str, state=None):
        torch.manual_seed(0)
        model = LlamaForCausalLM(decoder_config(m, 1000, backend)).to(device=device, dtype=dtype)
        if state is not None:
            model.load_state_dict(state)
        logits = model(input_ids=ids).logits
        logits.float().pow(2).mean().backward()
        grads = {n: p.grad.float() for n, p in model.named_parameters()}
        return model.state_dict(), logits.detach().float(), grads

    def compare(ref, got) -> dict:
        scale = ref[1].abs().max().item()
        logit_diff = (got[1] - ref[1]).abs().max().item() / scale
        grad_diff = max(((got[2][n] - g).abs().max() / g.abs().max().clamp_min(1e-12)).item() for n, g in ref[2].items())
        tol = TOLERANCE[args.dtype]
        return {"ok": logit_diff < tol and grad_diff < 10 * tol, "max_rel_logits": logit_diff,
                "max_rel_grad": grad_diff, "tolerance": tol}

    state, *ref = run("sdpa")
    ref = (state, *ref)
    out = {"benchmark": "attention_check", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "dtype": args.dtype, "reference": "sdpa", "sdpa_vs_eager": compare(ref, run("eager", state))}
    ok, reason = xformers_status(device.type, dtype)
    if ok:
        register_xformers()
        out["xformers"] = {**compare(ref, run("xformers", state)), "status": reason}
    else:
        out["xformers"] = {"ran": False, "reason": reason}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
