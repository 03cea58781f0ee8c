"""Model shapes, plan mode counts, attention backends and init."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from allam.config import ROOT, ConfigError
from allam.model import attention as attn
from allam.model.decoder import decoder_config, parameter_counts
from allam.model.spec import build_random
from allam.tasks.plan import run as plan

LLAMA2 = {"7b": 6_738_415_616, "13b": 13_015_864_320, "70b": 68_976_648_192}


@pytest.mark.parametrize("size", sorted(LLAMA2))
def test_plan_counts_equal_published_llama2(make_cfg, size, tmp_path):
    res = plan(make_cfg(f"model={size}", "init=llama2", out=tmp_path / "plan"))
    assert res["model.parameters"] == LLAMA2[size]
    assert json.loads((tmp_path / "plan" / "results.json").read_text())["plan.vocab_size"] == res["plan.vocab_size"]
    assert res["plan.vocab_size"] == 32000
    assert res["plan.memory_gib"]["total"] > res["plan.memory_gib"]["weights"] > 0


def test_plan_fsdp_shards_states_across_ranks(make_cfg):
    one = plan(make_cfg("model=70b", "init=llama2", "trainer=fsdp", "trainer.devices=1"))
    many = plan(make_cfg("model=70b", "init=llama2", "trainer=fsdp", "trainer.devices=8", "trainer.num_nodes=2"))
    assert many["plan.world_size"] == 16
    assert many["plan.tokens_per_step"] == 16 * one["plan.tokens_per_step"]
    assert abs(many["plan.memory_gib"]["optimizer"] * 16 - one["plan.memory_gib"]["optimizer"]) < 1e-6
    eight = plan(make_cfg("model=70b", "init=llama2", "trainer=fsdp", "optim=adamw8bit"))
    assert eight["plan.memory_gib"]["optimizer"] < one["plan.memory_gib"]["optimizer"] / 3
    # each rank holds its shard plus the gathered units in flight (root + 2 layers of a 70B: 4.16 GiB
    # in bf16), whatever the precision: bf16-true used to count the shard alone
    layer = 855_654_400  # q, o 8192²; k, v 8192 x 1024; MLP 3 x 8192 x 28672; two norms
    root = LLAMA2["70b"] - 80 * layer  # embeddings, head, final norm
    for precision, nbytes in (("bf16-true", 2), ("32-true", 4)):
        p = plan(make_cfg("model=70b", "init=llama2", "trainer=fsdp", "trainer.devices=8", "trainer.num_nodes=4",
                          f"trainer.precision={precision}"))
        want = (nbytes * LLAMA2["70b"] / 32 + nbytes * (root + 2 * layer)) / 2**30
        assert p["plan.memory_gib"]["weights"] == pytest.approx(want, rel=1e-6), precision


def test_plan_cli_is_fast_and_reads_nothing(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "task=plan", "model=13b", "init=llama2", "data.ar_ratio=0.4",
         f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    assert proc.returncode == 0, proc.stderr
    assert "13,015,864,320 parameters" in proc.stdout


def test_tiny_model_is_about_7m(make_cfg):
    cfg = make_cfg()
    model = build_random(cfg.model, cfg.init, 8192, "sdpa")
    n = parameter_counts(model)["total"]
    assert 6.5e6 < n < 8e6


def test_random_init_scales_residual_projections(make_cfg):
    cfg = make_cfg("model.num_layers=8")
    model = build_random(cfg.model, cfg.init, 512, "sdpa")
    q = model.model.layers[0].self_attn.q_proj.weight.std().item()
    o = model.model.layers[0].self_attn.o_proj.weight.std().item()
    assert abs(q - 0.02) < 0.002
    assert abs(o - 0.02 / 4.0) < 0.001  # std / sqrt(2 * 8)
    again = build_random(cfg.model, cfg.init, 512, "sdpa")
    assert torch.equal(model.lm_head.weight, again.lm_head.weight)  # seeded


def _tiny(attention: str, kv_heads: int | None = None):
    from omegaconf import OmegaConf

    m = OmegaConf.create(dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=kv_heads,
                              seq_len=32, max_position_embeddings=None, rope_theta=10000.0, norm_eps=1e-5,
                              tie_embeddings=False))
    torch.manual_seed(0)
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(decoder_config(m, 97, attention))
    return model


def _forward_backward(model, ids):
    model.zero_grad()
    logits = model(input_ids=ids).logits
    logits.float().pow(2).mean().backward()
    return logits.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_sdpa_and_eager_agree(kv_heads):
    ids = torch.randint(0, 97, (3, 32))
    a = _tiny("sdpa", kv_heads)
    b = _tiny("eager", kv_heads)
    b.load_state_dict(a.state_dict())
    la, ga = _forward_backward(a, ids)
    lb, gb = _forward_backward(b, ids)
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-4)
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], atol=1e-6, rtol=1e-4)


class _ReferenceMEA:
    """memory_efficient_attention's contract ([B, T, H, D] in and out; the bottom-right causal bias;
    dropout p) computed with plain SDPA; records (q_len, kv_len, bias type, p) of every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, q, k, v, attn_bias=None, p=0.0, scale=None):
        from xformers.ops.fmha.attn_bias import (LowerTriangularFromBottomRightLocalAttentionMask,
                                                 LowerTriangularFromBottomRightMask)

        m, n = q.shape[1], k.shape[1]
        self.calls.append((m, n, type(attn_bias).__name__, p, q.dtype))
        assert q.shape[2] == k.shape[2] == v.shape[2], "the kernel gets as many key/value heads as query heads"
        # xformers' input check, which runs before any kernel is chosen (so on every device)
        assert q.dtype == k.dtype == v.dtype, f"Query/Key/Value should all have the same dtype: {q.dtype, k.dtype, v.dtype}"
        mask = None
        if isinstance(attn_bias, LowerTriangularFromBottomRightLocalAttentionMask):
            w = attn_bias._window_size  # query i sees keys i + (n - m) - w + 1 .. i + (n - m)
            mask = torch.ones(m, n, dtype=torch.bool).tril(n - m) & ~torch.ones(m, n, dtype=torch.bool).tril(n - m - w)
        elif isinstance(attn_bias, LowerTriangularFromBottomRightMask):
            mask = torch.ones(m, n, dtype=torch.bool).tril(n - m)  # query i sees keys up to i + (n - m)
        elif attn_bias is not None:
            raise AssertionError(f"unexpected bias {attn_bias!r}")
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale
        )
        return out.transpose(1, 2)


def _xformers_pair(monkeypatch, kv_heads):
    """(sdpa model, xformers model with the same weights, the reference standing in for the kernel)."""
    import xformers.ops as xops

    ref = _ReferenceMEA()
    monkeypatch.setattr(xops, "memory_efficient_attention", ref)
    attn.register_xformers()
    a = _tiny("sdpa", kv_heads)
    x = _tiny("xformers", kv_heads)
    x.load_state_dict(a.state_dict())
    return a, x, ref


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_xformers_adapter_layout_on_cpu(monkeypatch, kv_heads):
    """The adapter's transposes, GQA expansion and causal bias, checked on CPU by standing a
    reference in for the kernel (xformers has no CPU kernels); the real kernel is checked below."""
    a, x, ref = _xformers_pair(monkeypatch, kv_heads)
    ids = torch.randint(0, 97, (2, 32))
    la, ga = _forward_backward(a, ids)
    lx, gx = _forward_backward(x, ids)
    torch.testing.assert_close(la, lx, atol=1e-5, rtol=1e-4)
    for n in ga:
        torch.testing.assert_close(ga[n], gx[n], atol=1e-6, rtol=1e-4)
    assert ref.calls and all(c[2] == "LowerTriangularFromBottomRightMask" for c in ref.calls)


def _cache_kwarg(model) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_xformers_adapter_with_kv_cache_aligns_causality_bottom_right(monkeypatch, kv_heads):
    """With a KV cache the queries are the last positions: a prefill of 8 tokens, a chunk of 4
    (4 queries over 12 keys: the bias must align bottom-right) and one decoded token give the
    logits of one full forward."""
    a, x, ref = _xformers_pair(monkeypatch, kv_heads)
    a.eval(), x.eval()
    ids = torch.randint(0, 97, (2, 13))
    with torch.no_grad():
        full = a(input_ids=ids).logits
        out = x(input_ids=ids[:, :8], use_cache=True)
        key = _cache_kwarg(x)
        cache = out[key] if key in out else out["past_key_values"]
        chunk = x(input_ids=ids[:, 8:12], use_cache=True, **{key: cache})
        cache = chunk[key] if key in chunk else chunk["past_key_values"]
        last = x(input_ids=ids[:, 12:], use_cache=True, **{key: cache})
    torch.testing.assert_close(out.logits, full[:, :8], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(chunk.logits, full[:, 8:12], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(last.logits, full[:, 12:], atol=1e-5, rtol=1e-4)
    shapes = {(m, n) for m, n, *_ in ref.calls}
    assert shapes == {(8, 8), (4, 12), (1, 13)}
    assert all(bias == ("NoneType" if m == 1 else "LowerTriangularFromBottomRightMask") for m, _, bias, *_ in ref.calls)


def test_xformers_adapter_drops_out_only_in_training(monkeypatch):
    a, x, ref = _xformers_pair(monkeypatch, 2)
    for layer in x.model.layers:
        layer.self_attn.attention_dropout = 0.1
    ids = torch.randint(0, 97, (2, 16))
    x.train()
    x(input_ids=ids)
    assert [c[3] for c in ref.calls] == [0.1] * len(x.model.layers)
    ref.calls.clear()
    x.eval()
    with torch.no_grad():
        x(input_ids=ids)
    assert [c[3] for c in ref.calls] == [0.0] * len(x.model.layers)


def test_xformers_adapter_under_bf16_autocast(monkeypatch):
    """precision=bf16-mixed runs the model under autocast: the rotary embedding leaves q and k in
    float32 while v comes out of a Linear in bfloat16. The kernel refuses mixed dtypes (the
    reference checks as xformers does), so the adapter casts all three to the autocast dtype and
    the logits equal SDPA's under the same autocast."""
    a, x, ref = _xformers_pair(monkeypatch, 2)
    ids = torch.randint(0, 97, (2, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        la, ga = _forward_backward(a, ids)
        lx, gx = _forward_backward(x, ids)
    assert ref.calls and {c[4] for c in ref.calls} == {torch.bfloat16}
    torch.testing.assert_close(la.float(), lx.float(), atol=2e-2, rtol=2e-2)
    for n in ga:
        torch.testing.assert_close(ga[n].float(), gx[n].float(), atol=5e-3, rtol=5e-2)


def test_xformers_adapter_keeps_gemma3_sliding_window_layers_local(monkeypatch):
    """Gemma-3 interleaves local (sliding-window) and global layers and passes each layer's window
    to the attention function: with a window of 4 over 16 positions the xformers model's logits,
    with and without a KV cache, equal SDPA's (whose masks transformers builds); the local layers
    run SDPA with the window mask (xformers' local bias has no backward kernel in float32 or
    before sm80), the global ones the kernel."""
    import xformers.ops as xops
    from test_architectures import SHAPE
    from transformers import AutoConfig, AutoModelForCausalLM

    ref = _ReferenceMEA()
    monkeypatch.setattr(xops, "memory_efficient_attention", ref)
    attn.register_xformers()
    def cfg():  # one config each: from_config sets the attention implementation on the config it is given
        return AutoConfig.for_model("gemma3_text", vocab_size=97, sliding_window=4,
                                    layer_types=["sliding_attention", "full_attention"], **SHAPE)

    torch.manual_seed(0)
    a = AutoModelForCausalLM.from_config(cfg(), attn_implementation="sdpa").eval()
    x = AutoModelForCausalLM.from_config(cfg(), attn_implementation="xformers").eval()
    assert a.config._attn_implementation == "sdpa"
    x.load_state_dict(a.state_dict())
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        full = a(input_ids=ids).logits
        torch.testing.assert_close(x(input_ids=ids).logits, full, atol=1e-5, rtol=1e-4)
        out = x(input_ids=ids[:, :10], use_cache=True)
        key = _cache_kwarg(x)
        last = x(input_ids=ids[:, 10:11], use_cache=True, **{key: out[key] if key in out else out["past_key_values"]})
    torch.testing.assert_close(last.logits, full[:, 10:11], atol=1e-5, rtol=1e-4)
    # the kernel ran the global layer's calls (and the local layer's decoding step where the cache
    # keeps just the window: nothing to cut off); the local layer's 16- and 10-position passes went to SDPA
    shapes = [(m, n) for m, n, *_ in ref.calls]
    assert shapes.count((16, 16)) == 1 and shapes.count((10, 10)) == 1 and (1, 11) in shapes
    assert "LowerTriangularFromBottomRightLocalAttentionMask" not in {c[2] for c in ref.calls}


def test_xformers_detection_is_honest_on_cpu():
    ok, reason = attn.xformers_status("cpu", torch.float32)
    assert not ok and "CPU" in reason
    assert attn.resolve_attention("auto", "cpu", torch.float32) == "sdpa"
    with pytest.raises(ConfigError, match="model.attention=xformers: cannot run here"):
        attn.resolve_attention("xformers", "cpu", torch.float32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_xformers_kernel_agrees_with_sdpa_on_gpu():
    ok, reason = attn.xformers_status("cuda", torch.bfloat16)
    if not ok:
        pytest.skip(reason)
    ids = torch.randint(0, 97, (2, 32), device="cuda")
    a = _tiny("sdpa", 2).cuda().to(torch.bfloat16)
    attn.register_xformers()
    x = _tiny("xformers", 2).cuda().to(torch.bfloat16)
    x.load_state_dict(a.state_dict())
    la, ga = _forward_backward(a, ids)
    lx, gx = _forward_backward(x, ids)
    torch.testing.assert_close(la.float(), lx.float(), atol=2e-2, rtol=2e-2)


def test_plan_counts_the_expanded_vocabulary_without_building_it(make_cfg, tmp_path):
    """ALLaM 7B adaptation: Llama-2's 32,000 pieces + 32,000 Arabic ones; nothing is trained or cached
    (in a cache of its own: the session's is shared with the other xdist worker)."""
    cache = tmp_path / "own-cache"
    cache.mkdir()
    res = plan(make_cfg("experiment=allam7b_adapt", f"paths.cache_dir={cache}"))
    assert res["plan.vocab_size"] == 64000
    assert res["model.parameters"] == LLAMA2["7b"] + 2 * 32000 * 4096  # new input rows and new head rows
    assert plan(make_cfg("experiment=allam7b_scratch", f"paths.cache_dir={cache}"))["plan.vocab_size"] == 64000
    assert not list(cache.rglob("*"))


def test_plan_pads_a_grown_vocabulary_as_training_does(make_cfg, english_checkpoint):
    """A checkpoint of 8,192 rows and 1,000 new pieces: training pads the grown matrices to the next
    multiple of model.pad_vocab_to (9,216 rows), and so does the plan (it said 9,192); a random-init
    model.vocab_size below the tokenizer's size is refused before a tokenizer is trained."""
    from allam.config import validate

    cfg = make_cfg("model=micro", "init=llama2", f"init.checkpoint={english_checkpoint}", "tokenizer=expanded",
                   "tokenizer.num_new_tokens=1000")
    assert plan(cfg)["plan.vocab_size"] == 9216
    with pytest.raises(ConfigError, match=r"^model\.vocab_size=32000: smaller than the tokenizer's 64,000 pieces"):
        validate(make_cfg("model=7b", "tokenizer=bilingual", "tokenizer.vocab_size=64000"))


@pytest.mark.slow  # the fast suite runs the throughput, cross-entropy and data-pipeline benchmarks
def test_train_step_benchmark_runs():
    """benchmarks/ measures speed; the test only checks the script runs and prints its JSON."""
    import json

    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--hidden", "64", "--layers", "2", "--heads", "4",
         "--ffn", "128", "--vocab", "512", "--seq", "32", "--batch", "2", "--steps", "1", "--device", "cpu"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["baseline"] == "eager" and set(out["results"]) >= {"eager", "sdpa"}
    assert out["speedup_vs_eager"]["eager"] == 1.0 and out["results"]["sdpa"]["tokens_per_s"] > 0


def test_fsdp_strategy_is_fsdp2_data_parallel(make_cfg):
    """trainer=fsdp runs on Lightning's ModelParallelStrategy: every rank data-parallel (FSDP2), no
    tensor parallelism, sharded checkpoints; other trainers keep Lightning's own strategies."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    from allam.tasks.builders import build_strategy

    strategy = build_strategy(make_cfg("trainer=fsdp", "trainer.devices=8", "trainer.num_nodes=4").trainer)
    assert isinstance(strategy, ModelParallelStrategy)
    assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == (32, 1)
    assert strategy._save_distributed_checkpoint is True
    assert build_strategy(make_cfg().trainer) == "auto"


def test_plan_reports_host_memory_per_rank(make_cfg):
    """The sharded loader and streaming export keep each rank's host memory to its shard (CPU
    training only) plus a tensor or a file: never the whole model, whatever its size."""
    res = plan(make_cfg("experiment=allam70b_adapt", "trainer.num_nodes=4", "trainer.devices=8"))
    host, fp32 = res["plan.host_gib"], res["plan.parameters"] * 4 / 2**30
    assert host["largest_tensor"] == pytest.approx(64000 * 8192 * 4 / 2**30)  # the grown embedding
    assert host["load"] == pytest.approx(2 * host["largest_tensor"])  # old rows + grown matrix; shards on the GPUs
    assert host["load"] < 0.02 * fp32 and host["export"] < 0.02 * fp32
    cpu = plan(make_cfg("model=7b", "init=llama2", "trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2"))
    chost, cfp32 = cpu["plan.host_gib"], cpu["plan.parameters"] * 4 / 2**30
    assert chost["load"] == pytest.approx(cfp32 / 2 + chost["largest_tensor"])
