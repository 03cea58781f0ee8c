"""Training throughput of the project's step against a plain Hugging Face loop, side by side in one
process on the same device, after warm-up.

Arms (same shape, micro-batch, sequence, precision, optimizer and gradient clipping; random tokens):
- ``hf_loop`` (a): a plain ``LlamaForCausalLM`` loop: SDPA, full logits upcast to fp32 for the loss,
  autocast for ``*-mixed`` precision, torch AdamW (fused where the kernel runs) or bitsandbytes
  AdamW8bit, the same activation checkpointing as (b) (``model.activation_checkpointing``: none
  for 1b, selective for 7b), no compile;
- ``hf_compiled`` (a'): (a) with the whole model under ``torch.compile``: the fair baseline for a
  compiled (b), since (b) against (a) mostly measures ``torch.compile``;
- ``project`` (b): the step exactly as ``run.py`` builds it: the config composed from conf/, the
  model spec, ``CausalLM`` with every speed option (allam.tasks.train.training_module), the Lightning
  Trainer from allam.tasks.builders with the run's callbacks (training_callbacks; no checkpoint writing);
- ``raw_loop`` (c): the same work as (b) (model, speed options, loss, optimizer, schedule, clipping)
  in a plain PyTorch loop: (b) against (c) is Lightning's overhead.

Each arm runs on its own: one that fails (out of memory or any other error) is recorded with its
error and the others go on. Where Inductor cannot compile (no compiler toolchain) the arms run
eager and the JSON says ``compile_fallback``; where bitsandbytes' AdamW8bit does not run, torch's
fused AdamW replaces it and the JSON says ``optimizer_fallback`` (benchmarks/fallbacks.py).

Prints one JSON line: tokens/s (of the median step; each step timed from its start to the next
one's, so loading and Lightning's hooks count), MFU (6N + 12·L·H·Q·T FLOPs per token over the device peak: the
datasheet on GPUs, a measured matmul rate on CPUs) and peak memory of each arm, the ratio b/a,
b/a', Lightning's overhead 1 - b/c, and the plan's memory estimate (allam.model.plan) next to the
measured peaks.

    python benchmarks/throughput.py --model tiny                 # CPU
    python benchmarks/throughput.py --model 1b                   # one GPU, seq 2048, micro-batch 8
    python benchmarks/throughput.py --model 7b                   # one 80 GB GPU: bf16, AdamW8bit, checkpointing
    python benchmarks/throughput.py --model 1b trainer.compile=false data.batch_size=4   # any override
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# the presets: config overrides, timed steps, warm-up steps
PRESETS = {
    "tiny": (["trainer=cpu", "model=tiny", "model.vocab_size=8192"], 10, 2),
    "1b": (["trainer=gpu", "model=1b", "data.batch_size=8", "trainer.compile=true"], 10, 3),
    "7b": (["trainer=gpu", "model=7b", "trainer.precision=bf16-true", "optim=adamw8bit", "data.batch_size=2",
            "model.activation_checkpointing=selective", "trainer.compile=true"], 8, 3),
}


class _Vocab:
    """Stands in for a tokenizer where only its size and special ids matter (random tokens)."""

    bos_token_id, eos_token_id = 1, 2

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def compose(model: str, extra: list[str], out: Path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from allam.config import CONF_DIR, validate

    base, _, _ = PRESETS[model]
    overrides = [*base, "logger=none", "trainer.progress_bar=false", "export=false", "trainer.val_every_steps=null",
                 f"paths.output_dir={out}", f"paths.cache_dir={out / 'cache'}", *extra]
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = hydra_compose("config", overrides=overrides)
    validate(cfg)
    return cfg


def batches(cfg, vocab: int, n: int):
    """A loader of `n` micro-batches of random token blocks [batch, seq_len + 1]."""
    import torch

    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, vocab, (n * cfg.data.batch_size, cfg.model.seq_len + 1), generator=g)
    return torch.utils.data.DataLoader(blocks, batch_size=cfg.data.batch_size, shuffle=False)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device, precision: str):
    import torch

    if precision.endswith("-mixed"):
        from allam.config.derived import compute_dtype

        return torch.autocast(device.type, dtype=compute_dtype(precision))
    return contextlib.nullcontext()


def _timed_loop(step, loader, device, warmup: int) -> tuple[list[float], float]:
    """Run `step(batch)` over the loader; (seconds of each step after warm-up, from the start of one
    to the start of the next, loading included; the last loss)."""
    starts, loss = [], None
    for i, batch in enumerate(loader):
        if i >= warmup:
            _sync(device)
            starts.append(time.perf_counter())
        loss = step(batch.to(device, non_blocking=True))
    _sync(device)
    starts.append(time.perf_counter())
    return [b - a for a, b in zip(starts, starts[1:])], float(loss)


def _plain_optimizer(model, o):
    import torch

    from allam.train.optim import fused_supported

    kw = dict(lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    if str(o.name) == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(model.parameters(), **kw)
    params = list(model.parameters())
    return torch.optim.AdamW(params, fused=fused_supported([{"params": params}]) or None, **kw)


def hf_loop(cfg, spec, loader, device, warmup: int, compiled: bool = False):
    """(a) the plain Hugging Face loop; (a') with `compiled`, the whole model under torch.compile."""
    import torch
    import torch.nn.functional as F
    from transformers import LlamaForCausalLM

    from allam.model.speed import apply_activation_checkpointing

    config = copy.deepcopy(spec.config)
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = LlamaForCausalLM(config)
    if str(cfg.trainer.precision).endswith("-true"):
        from allam.config.derived import compute_dtype

        model.to(compute_dtype(cfg.trainer.precision))
    apply_activation_checkpointing(model, cfg.model.activation_checkpointing)  # as the project's arm
    model.train()
    opt = _plain_optimizer(model, cfg.optim)
    clip, precision = float(cfg.optim.grad_clip or 0), str(cfg.trainer.precision)
    forward = torch.compile(model) if compiled else model

    def step(batch):
        with _autocast(device, precision):
            logits = forward(input_ids=batch[:, :-1]).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), batch[:, 1:].reshape(-1))
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return _timed_loop(step, loader, device, warmup)


def raw_loop(cfg, spec, loader, device, warmup: int, cross_entropy: str):
    """(c) the project's work without Lightning."""
    import torch

    from allam.model.speed import apply_activation_checkpointing, compile_layers
    from allam.train.loss import attach_loss
    from allam.train.optim import build_optimizer, build_scheduler

    model = spec.build(device)
    if str(cfg.trainer.precision).endswith("-true"):
        from allam.config.derived import compute_dtype

        model.to(compute_dtype(cfg.trainer.precision))
    apply_activation_checkpointing(model, cfg.model.activation_checkpointing)
    if cfg.trainer.compile:
        compile_layers(model)
    attach_loss(model, cross_entropy, cfg.trainer.cross_entropy_chunk)
    model.train()
    opt = build_optimizer(model, cfg.optim)
    sched = build_scheduler(opt, cfg.optim, len(loader))
    clip, precision = float(cfg.optim.grad_clip or 0), str(cfg.trainer.precision)

    def step(batch):
        with _autocast(device, precision):
            loss = model.next_token_loss(batch[:, :-1], batch[:, 1:])
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return _timed_loop(step, loader, device, warmup)


def project(cfg, spec, loader, device, warmup: int, out: Path, vocab: int):
    """(b) the project's step as run.py builds it."""
    import lightning as L
    import numpy as np
    from lightning.pytorch.callbacks import ModelCheckpoint

    from allam.model.decoder import flops_per_token, parameter_counts
    from allam.tasks.builders import build_trainer, training_callbacks
    from allam.tasks.train import training_module

    steps = len(loader)
    module = training_module(cfg, spec, np.ones(vocab, dtype=np.int64), [], steps)
    counts = parameter_counts(spec.meta())
    fpt = flops_per_token(spec.config, counts["non_embedding"], cfg.model.seq_len)
    callbacks = training_callbacks(cfg, out, fpt, data_fingerprint={}).as_list()  # the train task's own list

    class StepTimer(L.Callback):  # as _timed_loop: from the start of one step to the next
        starts: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx >= warmup:
                _sync(device)
                self.starts.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == steps - 1:
                _sync(device)
                self.starts.append(time.perf_counter())

    timer = StepTimer()
    trainer = build_trainer(cfg, out, [*callbacks, timer], steps)
    # a benchmark writes no checkpoint (a 7B one is tens of GB)
    trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]
    trainer.fit(module, train_dataloaders=loader)
    return [b - a for a, b in zip(timer.starts, timer.starts[1:])], module.last_loss


def measure_arm(runner, make_loader, device) -> dict:
    """Run one arm under the peak-memory meter: its step times, last loss and peak memory, or its
    error (out of memory, or any other exception, with the traceback's last lines), so that one
    failing arm is recorded and the others still run."""
    import traceback

    import torch

    from peak_memory import PeakMemory

    pm = None
    try:
        with PeakMemory(device) as pm:
            step_s, loss = runner(make_loader())
    except torch.OutOfMemoryError as exc:
        return {"error": f"out of memory: {str(exc).splitlines()[0][:200]}", "peak_memory_gib": pm.gib if pm else None}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {str(exc).strip()[:400]}",
                "traceback_tail": traceback.format_exc().strip().splitlines()[-6:]}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"step_s": step_s, "last_loss": loss, "peak_memory_gib": pm.gib}


def choose_fallbacks(cfg, device, compiled_arm: bool) -> dict:
    """The overrides that replace what does not run here, and each fallback named (None: no fallback).
    Inductor is probed where the config compiles or the compiled baseline is asked for;
    bitsandbytes where the config uses ``optim=adamw8bit``."""
    from fallbacks import adamw8bit_status, inductor_status

    res = {"overrides": [], "compile_fallback": None, "optimizer_fallback": None}
    if cfg.trainer.compile or compiled_arm:
        ok, reason = inductor_status(device.type)
        if not ok:
            res["compile_fallback"] = "eager: " + reason
            if cfg.trainer.compile:
                res["overrides"].append("trainer.compile=false")
    if str(cfg.optim.name) == "adamw8bit":
        ok, reason = adamw8bit_status(device.type)
        if not ok:
            res["optimizer_fallback"] = "adamw (torch's fused AdamW) instead of adamw8bit: " + reason
            res["overrides"].append("optim=adamw")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--steps", type=int, help="timed optimizer steps (default: the preset's)")
    ap.add_argument("--warmup", type=int, help="untimed steps first (compile, allocator, caches)")
    ap.add_argument("--arms", default="hf_loop,raw_loop,project",
                    help="which arms, in this order: hf_loop, hf_compiled, raw_loop, project")
    ap.add_argument("overrides", nargs="*", help="config overrides, as on run.py")
    args = ap.parse_args()

    import logging

    import torch

    from allam.config.derived import device_type
    from allam.model.decoder import flops_per_token, parameter_counts
    from allam.model.plan import make_plan
    from allam.model.spec import model_spec
    from allam.tasks.builders import resolve_attention
    from allam.train.callbacks import peak_tflops
    from allam.train.loss import resolve_cross_entropy
    from peak_memory import PeakMemory

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    _, steps, warmup = PRESETS[args.model]
    steps, warmup = args.steps or steps, args.warmup if args.warmup is not None else warmup
    out = Path(tempfile.mkdtemp(prefix="allam-throughput-"))
    cfg = compose(args.model, args.overrides, out)
    device = torch.device("cuda" if device_type(cfg.trainer) == "cuda" else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"error: --model {args.model} runs on a GPU and none is available; use --model tiny")
    arms = args.arms.split(",")
    fallbacks = choose_fallbacks(cfg, device, "hf_compiled" in arms)
    if fallbacks["overrides"]:
        cfg = compose(args.model, [*args.overrides, *fallbacks["overrides"]], out)

    from allam.config.derived import compute_dtype

    vocab = int(cfg.model.vocab_size or 8192)
    attention = resolve_attention(cfg.model, cfg.trainer)
    spec = model_spec(cfg.model, cfg.init, cfg.tokenizer, SimpleNamespace(tokenizer=_Vocab(vocab)), attention)
    loss_kind = resolve_cross_entropy(cfg.trainer.cross_entropy, device.type, compute_dtype(cfg.trainer.precision))
    counts = parameter_counts(spec.meta())
    fpt = flops_per_token(spec.config, counts["non_embedding"], cfg.model.seq_len)
    peak, peak_source = peak_tflops(device, str(cfg.trainer.precision), cfg.trainer.peak_tflops)
    tokens_per_step = cfg.data.batch_size * cfg.model.seq_len
    plan = make_plan(cfg.model, cfg.trainer, batch_size=cfg.data.batch_size, optimizer=cfg.optim.name,
                     vocab_size=spec.config.vocab_size, world=1,
                     tokens_per_step=cfg.data.batch_size * cfg.model.seq_len)

    runners = {
        "hf_loop": lambda loader: hf_loop(cfg, spec, loader, device, warmup),
        "hf_compiled": lambda loader: hf_loop(cfg, spec, loader, device, warmup, compiled=True),
        "raw_loop": lambda loader: raw_loop(cfg, spec, loader, device, warmup, loss_kind),
        "project": lambda loader: project(cfg, spec, loader, device, warmup, out / "project", vocab),
    }
    results = {}
    for arm in arms:
        if arm not in runners:
            sys.exit(f"error: --arms {arm}: allowed: {', '.join(runners)}")
        if arm == "hf_compiled" and fallbacks["compile_fallback"]:
            results[arm] = {"skipped": "no compiled baseline: " + fallbacks["compile_fallback"]}
            continue
        torch.manual_seed(0)
        results[arm] = measure_arm(runners[arm], lambda: batches(cfg, vocab, warmup + steps), device)
        if "step_s" in results[arm]:
            # the median step: robust to other work sharing the machine; the mean for comparison
            step_s, gib = results[arm].pop("step_s"), results[arm]["peak_memory_gib"]
            rate = tokens_per_step / statistics.median(step_s)
            results[arm] = {"tokens_per_s": rate, "tokens_per_s_mean": tokens_per_step * len(step_s) / sum(step_s),
                            "step_s_median": statistics.median(step_s),
                            "mfu": rate * fpt / (peak * 1e12) if peak else None,
                            **results[arm], "plan_vs_measured": plan.memory_gib["total"] / gib if gib else None}

    def rate(arm):
        return results.get(arm, {}).get("tokens_per_s")

    line = {
        "benchmark": "throughput",
        "model": args.model,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "precision": str(cfg.trainer.precision),
        "optimizer": str(cfg.optim.name),
        "shape": {"parameters": counts["total"], "layers": cfg.model.num_layers, "hidden": cfg.model.hidden_size,
                  "vocab": spec.config.vocab_size, "seq": cfg.model.seq_len, "batch": cfg.data.batch_size},
        "speed": {"attention": attention, "cross_entropy": loss_kind, "compile": bool(cfg.trainer.compile),
                  "activation_checkpointing": str(cfg.model.activation_checkpointing)},
        "steps": steps, "warmup": warmup, "overrides": args.overrides,
        **results,
        "ratio_project_vs_hf": rate("project") / rate("hf_loop") if rate("project") and rate("hf_loop") else None,
        "ratio_project_vs_hf_compiled": (rate("project") / rate("hf_compiled")
                                         if rate("project") and rate("hf_compiled") else None),
        "compile_fallback": fallbacks["compile_fallback"], "optimizer_fallback": fallbacks["optimizer_fallback"],
        "lightning_overhead": 1 - rate("project") / rate("raw_loop") if rate("project") and rate("raw_loop") else None,
        "plan_memory_gib": plan.memory_gib,
        "peak_memory_source": PeakMemory(device).source,
        "flops_per_token": fpt, "peak_tflops": peak, "peak_source": peak_source,
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
