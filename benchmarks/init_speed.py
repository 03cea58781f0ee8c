"""How long random init takes: the seconds :func:`allam.model.weights.materialize` spends filling a
Llama of a few hundred million parameters from ``RandomWeights``, in one process and on each rank
of an FSDP2 model sharded over ``--world`` CPU processes (gloo), as ``configure_model`` does it.

    python benchmarks/init_speed.py                    # ~270M parameters, 1 process, then 2 ranks
    python benchmarks/init_speed.py --layers 4 --world 2

Prints one JSON line: the parameter count, the one-process seconds, each rank's seconds and the
number of values each rank filled.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def config(args):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                       num_attention_heads=args.hidden // 64, num_key_value_heads=args.hidden // 64,
                       vocab_size=args.vocab, tie_word_embeddings=False)


def build(args, mesh=None) -> tuple[float, list[float], int, int]:
    """(seconds of materialize, [of them drawing values, CPU seconds of drawing], values filled by
    this process, parameters of the whole model)."""
    import torch
    from transformers import AutoModelForCausalLM

    from allam.model.weights import RandomWeights, materialize

    cfg = config(args)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    total = sum(p.numel() for p in model.parameters())
    if mesh is not None:
        from allam.model.shard import fully_shard_llama

        fully_shard_llama(model, mesh)
    model.to_empty(device="cpu")
    source, drawing = RandomWeights(0.02, True, 0, cfg.num_hidden_layers), [0.0, 0.0]
    rows = source.rows

    def timed_rows(*a):  # the time spent drawing (wall and CPU, all threads), apart from materialize's own work
        t, c = time.perf_counter(), time.process_time()
        out = rows(*a)
        drawing[0] += time.perf_counter() - t
        drawing[1] += time.process_time() - c
        return out

    source.rows = timed_rows
    t0 = time.perf_counter()
    materialize(model, source)
    seconds = time.perf_counter() - t0
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())
    return seconds, drawing, local, total


def rank_main(args) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("data_parallel",))["data_parallel"]
    seconds, drawing, local, _ = build(args, mesh)
    print(json.dumps({"rank": dist.get_rank(), "seconds": round(seconds, 2), "drawing_s": round(drawing[0], 2),
                      "drawing_cpu_s": round(drawing[1], 2), "values": local}))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per process (default: torch's)")
    ap.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rank:
        rank_main(args)
        return
    seconds, drawing, _, total = build(args)
    argv = [a for a in sys.argv[1:]]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + os.getpid() % 2000),
           "WORLD_SIZE": str(args.world)}
    procs = [subprocess.Popen([sys.executable, __file__, *argv, "--rank"], stdout=subprocess.PIPE, text=True,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(args.world)]
    ranks = [json.loads(p.communicate(timeout=1800)[0].strip().splitlines()[-1]) for p in procs]
    print(json.dumps({"benchmark": "init_speed", "parameters": total, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "one_process_s": round(seconds, 2),
                      "one_process_drawing_s": round(drawing[0], 2),
                      "one_process_drawing_cpu_s": round(drawing[1], 2), "world": args.world,
                      "ranks": ranks, "max_rank_s": max(r["seconds"] for r in ranks)}))


if __name__ == "__main__":
    main()
