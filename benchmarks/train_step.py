"""Training-step speed of the attention backends, side by side in one run, on the same model.

Times forward + backward + AdamW step of a Llama built by allam (default: the tiny CPU model,
8,192-piece vocabulary, sequence 256, batch 8) for each attention backend that runs here, and
reports tokens/s and MFU ((6N + 12·L·H·Q·T) FLOPs per token over the device peak: the datasheet
on GPUs, a measured matmul rate on CPUs). The baseline of the ratios is `eager` (transformers'
plain PyTorch attention); xformers is included only where its kernels run.

    python benchmarks/train_step.py                       # tiny model on this machine
    python benchmarks/train_step.py --hidden 2048 --layers 4 --heads 16 --seq 2048 --device cuda --dtype bfloat16

Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import torch
    from omegaconf import OmegaConf
    from transformers import LlamaForCausalLM

    from allam.model.attention import register_xformers, xformers_status
    from allam.model.decoder import flops_per_token, decoder_config, parameter_counts
    from allam.train.callbacks import peak_tflops

    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=688)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()

    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    m = OmegaConf.create(dict(hidden_size=args.hidden, intermediate_size=args.ffn, num_layers=args.layers,
                              num_heads=args.heads, num_kv_heads=None, seq_len=args.seq, max_position_embeddings=None,
                              rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=False))
    backends = ["eager", "sdpa"]
    ok, reason = xformers_status(device.type, dtype)
    if ok:
        register_xformers()
        backends.append("xformers")
    peak, peak_source = peak_tflops(device, "bf16-true" if dtype == torch.bfloat16 else "32-true", None)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq + 1), device=device)
    tokens = args.batch * args.seq
    results = {}
    for backend in backends:
        torch.manual_seed(0)
        model = LlamaForCausalLM(decoder_config(m, args.vocab, backend)).to(device=device, dtype=dtype)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        times = []
        for step in range(args.steps + 2):  # two warm-up steps
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            logits = model(input_ids=ids[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, args.vocab).float(), ids[:, 1:].reshape(-1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= 2:
                times.append(time.perf_counter() - t0)
        sec = statistics.median(times)
        n = parameter_counts(model)["non_embedding"]
        fpt = flops_per_token(model.config, n, args.seq)
        results[backend] = {"tokens_per_s": tokens / sec, "step_s": sec,
                            "mfu": tokens / sec * fpt / (peak * 1e12) if peak else None}
        del model, opt
    base = results["eager"]["tokens_per_s"]
    out = {
        "benchmark": "train_step",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "shape": {"hidden": args.hidden, "layers": args.layers, "heads": args.heads, "vocab": args.vocab,
                  "seq": args.seq, "batch": args.batch},
        "baseline": "eager",
        "results": results,
        "speedup_vs_eager": {k: v["tokens_per_s"] / base for k, v in results.items()},
        "xformers": reason,
        "peak_tflops": peak,
        "peak_source": peak_source,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
