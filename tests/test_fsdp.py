"""FSDP2 (trainer=fsdp) in real multi-process runs on CPU over gloo: sharded init equal to a single
process, loss trajectories equal to one process at the same global batch, no rank holding the whole
model while loading or exporting, sharded resume (also on another world size), export equal to the
trained model."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from allam.config import ROOT
from conftest import run_inprocess

WORKER = ROOT / "tests" / "fsdp_worker.py"
TINY = ["model=micro", "data.val_bytes=2000", "trainer.progress_bar=false", "trainer.log_every_n_steps=1",
        "optim.warmup_steps=2", "trainer.val_every_steps=null"]
FSDP2 = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.precision=32-true", "logger=csv"]


def _env(cache_dir) -> dict:
    return {**os.environ, "ALLAM_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
            "OMP_NUM_THREADS": "1"}


def _run(args, cache_dir, timeout=300):
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=_env(cache_dir))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _losses(run_dir: Path) -> list[float]:
    rows = csv.DictReader((run_dir / "csv" / "metrics.csv").open())
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks(mode: str, world: int, args: dict, tmp_path: Path, cache_dir) -> list[dict]:
    """Launch `world` worker processes (one per rank) and return each rank's result."""
    port = _free_port()
    outs = [tmp_path / f"{mode}-rank{r}.json" for r in range(world)]
    procs = [subprocess.Popen([sys.executable, str(WORKER), mode, str(r), str(world), str(port), str(outs[r]),
                               json.dumps(args)], env=_env(cache_dir), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-4000:]
    return [json.loads(o.read_text()) for o in outs]


# --------------------------------------------------------------------------- sharded materialization
def _random_init(cache_dir) -> list[str]:
    return [f"paths.cache_dir={cache_dir}", TINY[0], "model.num_layers=3"]


def _expansion(cache_dir, english_checkpoint, strategy: str) -> list[str]:
    return [f"paths.cache_dir={cache_dir}", TINY[0], "init=llama2", f"init.checkpoint={english_checkpoint}",
            "tokenizer=expanded", "tokenizer.num_new_tokens=512", "tokenizer.training_words=60000",
            f"init.new_embeddings={strategy}"]


@pytest.fixture(scope="module")
def two_rank_inits(tmp_path_factory, cache_dir, english_checkpoint) -> dict[str, list[dict]]:
    """The fast suite's 2-rank sharded inits, in one launch (one process group, one start-up):
    case -> each rank's result."""
    cases = {"random_init": _random_init(cache_dir),
             **{s: _expansion(cache_dir, english_checkpoint, s) for s in ("subtoken_mean", "random")}}
    res = _ranks("init", 2, {"cases": cases}, tmp_path_factory.mktemp("inits"), cache_dir)
    return {name: [r["cases"][name] for r in res] for name in cases}


def _check_random_init(res: list[dict]) -> None:
    diffs = res[0]["max_diff"]
    assert len(diffs) == 3 * 9 + 3  # every parameter was compared
    assert max(diffs.values()) == 0.0
    assert sum(r["local_numel"] for r in res) == res[0]["numel"]  # the shards partition the model
    assert all(r["local_numel"] < 0.75 * r["numel"] for r in res)


def test_sharded_random_init_equals_one_process(two_rank_inits):
    """Each rank fills only its shards, and the weights equal a single process's with the same seed."""
    _check_random_init(two_rank_inits["random_init"])


@pytest.mark.slow
def test_sharded_random_init_equals_one_process_on_three_ranks(tmp_path, cache_dir):
    _check_random_init(_ranks("init", 3, {"overrides": _random_init(cache_dir)}, tmp_path, cache_dir))


def _check_expansion(res: list[dict], strategy: str) -> None:
    diffs = res[0]["max_diff"]
    assert diffs["model.embed_tokens.weight"] == 0.0 and diffs["lm_head.weight"] == 0.0, strategy
    assert max(diffs.values()) == 0.0, strategy


@pytest.mark.parametrize("strategy", ["subtoken_mean", "random"])
def test_sharded_pretrained_expansion_equals_one_process(two_rank_inits, strategy):
    """init=llama2 with tokenizer=expanded: read tensor by tensor into the shards; the grown
    embedding and head rows equal the single-process path's, for every new-row strategy."""
    _check_expansion(two_rank_inits[strategy], strategy)


@pytest.mark.slow
def test_sharded_pretrained_expansion_with_mean_rows_equals_one_process(tmp_path, cache_dir, english_checkpoint):
    res = _ranks("init", 2, {"overrides": _expansion(cache_dir, english_checkpoint, "mean")}, tmp_path, cache_dir)
    _check_expansion(res, "mean")


@pytest.mark.slow  # the fast suite's sharded-init tests cover Llama shapes, both new-row fills, random init
def test_sharded_qwen2_byte_level_expansion_equals_one_process(tmp_path, cache_dir):
    """init=pretrained from a tied-embedding Qwen2 whose own tokenizer is byte-level (GPT-2's
    vocabulary, 50,257 ids in 50,304 rows): the expanded vocabulary's rows, the checkpoint's
    padding rows among them, and the q/k/v biases land in the shards exactly as in one process."""
    from omegaconf import OmegaConf
    from test_architectures import save_tiny

    from allam.config import TokenizerConfig
    from allam.data.demo import demo_texts
    from allam.tokenizer import build_tokenizer
    from allam.tokenizer.bytelevel import SHIPPED

    if SHIPPED["gpt2"].path() is None:
        pytest.skip(f"GPT-2's vocabulary is not installed ({SHIPPED['gpt2'].install})")
    gpt2 = build_tokenizer(OmegaConf.merge(OmegaConf.structured(TokenizerConfig), {"base": "gpt2"}),
                           cache_dir=cache_dir, texts=lambda lang: demo_texts(lang, "train"))
    folder = save_tiny(tmp_path / "qwen", "qwen2", vocab=50_304, tie=True, tokenizer=gpt2.tokenizer)
    overrides = [f"paths.cache_dir={cache_dir}", TINY[0], "model.num_kv_heads=2", "model.arch=qwen2", "init=pretrained",
                 f"init.checkpoint={folder}", "tokenizer=expanded", "tokenizer.num_new_tokens=300",
                 "tokenizer.training_words=50000"]
    res = _ranks("init", 2, {"overrides": overrides}, tmp_path, cache_dir)
    diffs = res[0]["max_diff"]
    assert "lm_head.weight" not in diffs and diffs["model.embed_tokens.weight"] == 0.0  # tied: one matrix
    assert "model.layers.0.self_attn.q_proj.bias" in diffs and max(diffs.values()) == 0.0
    assert res[0]["numel"] == sum(r["local_numel"] for r in res)


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory):
    """A ~218M-parameter Llama saved as a Hugging Face folder (safetensors, two files)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=8192, hidden_size=1024, intermediate_size=4096, num_hidden_layers=12,
                      num_attention_heads=16, max_position_embeddings=256, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02, generator=gen)
    folder = tmp_path_factory.mktemp("big") / "llama-218m"
    model.save_pretrained(str(folder), max_shard_size="500MB")
    n = sum(p.numel() for p in model.parameters())
    del model
    return folder, n


@pytest.mark.slow
def test_no_rank_holds_the_whole_model(tmp_path, cache_dir, big_checkpoint):
    """Loading a 218M-parameter folder on 2 ranks, and exporting it from the sharded checkpoint on
    one process: peak host-memory growth stays well under one fp32 copy of the model."""
    folder, n = big_checkpoint
    fp32 = 4 * n
    ckpt = tmp_path / "sharded.ckpt"
    res = _ranks("load", 2, {"folder": str(folder), "save": str(ckpt)}, tmp_path, cache_dir)
    for r in res:
        assert r["numel"] == n
        assert r["rss_growth"] < 0.7 * fp32, f"rank {r['rank']}: {r['rss_growth'] / fp32:.2f} of the fp32 model"
    out = tmp_path / "export.json"
    args = {"ckpt": str(ckpt), "config": str(folder / "config.json"), "out": str(tmp_path / "hf"),
            "shard_bytes": fp32 // 8}
    proc = subprocess.run([sys.executable, str(WORKER), "export", "0", "1", "0", str(out), json.dumps(args)],
                          env=_env(cache_dir), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    growth = json.loads(out.read_text())["rss_growth"]
    assert growth < 0.7 * fp32, f"export: {growth / fp32:.2f} of the fp32 model"
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 8
    from safetensors import safe_open

    name = "model.layers.5.mlp.down_proj.weight"
    with safe_open(str(folder / json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"][name]),
                   "pt") as a, safe_open(str(tmp_path / "hf" / index["weight_map"][name]), "pt") as b:
        assert torch.equal(a.get_tensor(name), b.get_tensor(name))
    # the stored shares: each rank wrote about half
    sizes = sorted(f.stat().st_size for f in ckpt.glob("*.distcp"))
    assert len(sizes) == 2 and sizes[0] > 0.4 * fp32 and sizes[1] < 0.6 * fp32


# --------------------------------------------------------------------------- training end to end
def test_fsdp_training_resume_and_export(tmp_path, cache_dir):
    """One 2-rank FSDP2 run against one process at the same global batch: the same losses and
    validation; its 2-rank sharded checkpoint resumes exactly on 1 rank (resharded); and its export
    scores exactly what the trained module scored."""
    common = [*TINY, "trainer.max_steps=6", "trainer.checkpoint_every_steps=3"]
    fsdp = tmp_path / "fsdp"
    _run([*FSDP2, "trainer.devices=2", "data.batch_size=2", *common, f"hydra.run.dir={fsdp}"], cache_dir)
    one = tmp_path / "one"
    assert run_inprocess(["data.batch_size=4", *common, "logger=csv", "export=false"], cache_dir, one) is None
    a, b = _losses(fsdp), _losses(one)
    assert len(a) == len(b) == 6
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5, (a, b)
    ra, rb = _results(fsdp), _results(one)
    for lang in ("ar", "en"):
        assert abs(ra[f"val.{lang}.loss"] - rb[f"val.{lang}.loss"]) < 1e-5
    assert ra["train.tokens"] == rb["train.tokens"] == 6 * 4 * 64
    step3 = fsdp / "checkpoints" / "step3.ckpt"
    assert (step3 / ".metadata").exists() and len(list(step3.glob("*.distcp"))) == 2  # one file per rank
    assert (step3 / "COMPLETE").exists() and not list(step3.parent.glob(".tmp-*"))  # written atomically

    # resume the 2-rank sharded checkpoint on 1 rank (DCP reshards it): the same steps follow
    resumed = tmp_path / "resumed"
    _run([*FSDP2, "trainer.devices=1", "data.batch_size=4", *common, f"ckpt={step3}", "export=false",
          f"hydra.run.dir={resumed}"], cache_dir)
    tail = _losses(resumed)
    assert len(tail) == 3 and max(abs(x - y) for x, y in zip(tail, a[3:])) < 1e-5, (tail, a[3:])
    rr = _results(resumed)
    assert rr["train.steps"] == 6 and rr["train.tokens"] == ra["train.tokens"]
    for lang in ("ar", "en"):
        assert abs(rr[f"val.{lang}.loss"] - ra[f"val.{lang}.loss"]) < 1e-5

    # the export (streamed from the sharded checkpoint) scores what the sharded module scored
    check = tmp_path / "export-check"
    assert run_inprocess([*TINY, "init=llama2", f"init.checkpoint={fsdp / 'hf'}", "trainer.max_steps=1",
                          "data.batch_size=4", "logger=none", "export=false"], cache_dir, check) is None
    start = _results(check)
    for lang in ("ar", "en"):
        assert abs(start[f"start.val.{lang}.loss"] - ra[f"val.{lang}.loss"]) < 1e-5


@pytest.mark.slow  # the fast suite stops an accumulated step in one process (tests/test_data_resume.py)
def test_a_stop_signal_stops_both_ranks_at_one_step_end_and_the_run_resumes(tmp_path, cache_dir):
    """SIGTERM to a 2-rank FSDP2 run with gradient accumulation: rank 0 forwards it to rank 1, the
    ranks agree at the end of an optimizer step, both write their shard of last.ckpt and the run
    exits 75; the same command continues it to its end."""
    import signal
    import time

    from allam.train.checkpointing import read_meta

    run = tmp_path / "run"
    args = [*FSDP2, *TINY, "trainer.devices=2", "data.batch_size=1", "trainer.accumulate_grad_batches=2",
            f"hydra.run.dir={run}"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args, "trainer.max_steps=100000"], cwd=ROOT,
                            env=_env(cache_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, deadline = run / "csv" / "metrics.csv", time.time() + 240
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") > 3):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 75, err[-4000:]
    res = _results(run)
    last = run / "checkpoints" / "last.ckpt"
    assert res["status"] == "preempted" and res["train.steps"] > 0
    assert (last / "COMPLETE").exists() and len(list(last.glob("*.distcp"))) == 2
    meta = read_meta(last)
    assert meta["global_step"] == res["train.steps"]
    state = meta["AllamDataModule"]
    assert state["position"] == 2 * res["train.steps"] and state["world_size"] == 2  # whole steps only
    _run([*args, f"trainer.max_steps={res['train.steps'] + 2}"], cache_dir)
    done = _results(run)
    assert done["status"] == "finished" and done["train.steps"] == res["train.steps"] + 2
    assert done["train.tokens"] == (res["train.steps"] + 2) * 2 * 2 * 64


@pytest.mark.slow  # the fast suite scores evaluation during training in one process (tests/test_eval.py)
def test_fsdp_eval_during_and_after_training_equals_one_process(tmp_path, cache_dir):
    """eval.every_tokens and eval.at_end under 2-rank FSDP2: every rank scores the suite in lockstep
    on the sharded model; the scores logged during training and written at the end equal those of
    one process training the same global batch."""
    common = [*TINY, "trainer.max_steps=2", "export=false", "eval.at_end=true", "eval.every_tokens=256",
              "eval.limit=4", "eval.tasks=[next_verse_en,verse_en2ar]"]
    fsdp, one = tmp_path / "fsdp", tmp_path / "one"
    _run([*FSDP2, "trainer.devices=2", "data.batch_size=2", *common, f"hydra.run.dir={fsdp}"], cache_dir)
    assert run_inprocess(["data.batch_size=4", "logger=csv", *common], cache_dir, one) is None
    ra, rb = _results(fsdp), _results(one)
    for task in ("next_verse_en", "verse_en2ar"):
        assert ra[f"eval.{task}.n"] == 4
        for key in ("acc", "acc_norm"):
            assert ra[f"eval.{task}.{key}"] == rb[f"eval.{task}.{key}"], (task, key)
    logged = [r for r in csv.DictReader((fsdp / "csv" / "metrics.csv").open()) if r.get("eval/next_verse_en/acc")]
    assert len(logged) == 2  # after steps 1 and 2 (256 tokens each)


@pytest.mark.slow
def test_fsdp_adaptation_matches_one_process(tmp_path, cache_dir, english_checkpoint):
    """init=llama2 + tokenizer=expanded under FSDP2 on 2 ranks: the same loss trajectory as 1 process."""
    common = [*TINY, "init=llama2", f"init.checkpoint={english_checkpoint}", "tokenizer=expanded",
              "tokenizer.num_new_tokens=512", "tokenizer.training_words=60000", "trainer.max_steps=10",
              "export=false", "logger=csv"]
    fsdp, one = tmp_path / "fsdp", tmp_path / "one"
    _run([*FSDP2, "trainer.devices=2", "data.batch_size=2", *common, f"hydra.run.dir={fsdp}"], cache_dir)
    _run(["data.batch_size=4", *common, f"hydra.run.dir={one}"], cache_dir)
    a, b = _losses(fsdp), _losses(one)
    assert len(a) == len(b) == 10
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5, (a, b)
    ra, rb = _results(fsdp), _results(one)
    assert abs(ra["start.val.en.loss"] - rb["start.val.en.loss"]) < 1e-5  # the same grown starting model
