"""One rank of a multi-process FSDP2 check, launched by tests/test_fsdp.py (gloo on CPU).

    python tests/fsdp_worker.py MODE RANK WORLD PORT OUT_JSON [ARGS_JSON]

Modes:
- ``init``: shard a model spec over WORLD ranks, materialize it shard by shard, and compare every
  parameter (gathered one at a time) with the whole model a single process builds from the same spec;
  ARGS ``{"cases": {name: overrides}}`` does so for several specs in one process group.
- ``load``: materialize a Hugging Face folder's model sharded, measuring this rank's peak host
  memory growth; then save the shards as a torch.distributed.checkpoint folder in the layout the
  FSDP2 trainer writes.
- ``export``: (one process) stream a Hugging Face folder out of such a checkpoint folder,
  measuring peak host memory growth.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def mesh(world: int):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (world,), mesh_dim_names=("data_parallel",))["data_parallel"]


def spec_from_args(args: dict):
    """A ModelSpec: through the project's real config (compose overrides) or a bare HF folder."""
    if "folder" in args:
        from transformers import AutoConfig

        from allam.model.spec import ModelSpec
        from allam.model.weights import PretrainedWeights

        cfg = AutoConfig.from_pretrained(args["folder"])
        cfg._attn_implementation = "sdpa"
        return ModelSpec(cfg, lambda: PretrainedWeights(args["folder"]))
    from hydra import compose, initialize_config_dir

    from allam.config import CONF_DIR, validate
    from allam.model.spec import model_spec
    from allam.tasks.builders import build_tokenizer

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=args["overrides"])
    validate(cfg)
    bundle = build_tokenizer(cfg)
    return model_spec(cfg.model, cfg.init, cfg.tokenizer, bundle, "sdpa")


def materialize_sharded(spec, world: int):
    """The spec's model sharded over the world and filled shard by shard; with this rank's peak
    host-memory growth and its share of the elements."""
    from allam.model.shard import fully_shard_llama
    from allam.model.weights import materialize

    model = spec.meta()
    fully_shard_llama(model, mesh(world))
    reset_peak()
    before = rss_bytes("VmRSS")
    model.to_empty(device="cpu")
    materialize(model, spec.weights())
    measured = {"rss_growth": rss_bytes("VmHWM") - before,
                "local_numel": sum(p.to_local().numel() for p in model.parameters()),
                "numel": sum(p.numel() for p in model.parameters())}
    return model, measured


def materialize_and_compare(spec, rank: int, world: int) -> dict:
    """materialize_sharded, then every parameter gathered (one at a time) and compared on rank 0
    with the whole model one process builds from the same spec."""
    from torch.distributed.tensor import DTensor

    model, result = materialize_sharded(spec, world)
    whole = spec.build() if rank == 0 else None
    ref = dict(whole.named_parameters()) if whole is not None else {}
    diffs = {}
    for name, p in model.named_parameters():
        full = p.full_tensor() if isinstance(p, DTensor) else p  # collective: every rank joins
        if rank == 0:
            diffs[name] = (full - ref[name]).abs().max().item()
    result["max_diff"] = diffs
    return result


def main() -> None:
    mode, rank, world, port, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
    args = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    result: dict = {"rank": rank}
    if mode == "export":
        from transformers import LlamaConfig

        from allam.model.export import dcp_tensors, write_hf_folder

        config = LlamaConfig.from_json_file(args["config"])
        reset_peak()
        before = rss_bytes("VmRSS")
        write_hf_folder(dcp_tensors(Path(args["ckpt"])), config, Path(args["out"]), max_shard_bytes=args["shard_bytes"])
        result["rss_growth"] = rss_bytes("VmHWM") - before
        out.write_text(json.dumps(result))
        return

    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
    if mode == "init" and "cases" in args:  # several specs, one process group: one start-up for all
        result["cases"] = {name: materialize_and_compare(spec_from_args({"overrides": overrides}), rank, world)
                           for name, overrides in args["cases"].items()}
    elif mode == "init":
        result.update(materialize_and_compare(spec_from_args(args), rank, world))
    elif mode == "load":
        import torch.distributed.checkpoint as dcp

        model, measured = materialize_sharded(spec_from_args(args), world)
        result.update(measured)
        state = {"model." + k: v for k, v in model.state_dict().items()}
        dcp.save({"state_dict": state}, checkpoint_id=args["save"])
    dist.barrier()
    out.write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
