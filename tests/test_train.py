"""End to end through the real Trainer: tiny models, a few steps, real tokenizers and files."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from allam.tasks import builders
from allam.tasks import export as export_task
from allam.tasks import train as train_task
from allam.config import ConfigError

FAST = [
    "trainer.max_steps=3",
    "data.batch_size=2",
    "data.val_bytes=3000",
    "trainer.log_every_n_steps=1",
]
SMALL_MODEL = ["model=micro"]

REQUIRED = ["val.ar.bpb", "val.en.bpb", "val.ar.loss", "val.en.loss", "train.tokens", "train.tokens_per_second",
            "model.parameters"]


def test_default_config_trains_and_writes_results(make_cfg, tmp_path, capsys):
    """The default job (tiny model, demo corpus, english8k tokenizer), cut to 3 steps."""
    out = tmp_path / "run"
    res = train_task.run(make_cfg(*FAST, out=out))
    saved = json.loads((out / "results.json").read_text())
    for key in REQUIRED:
        assert key in saved and saved[key] is not None, key
    assert saved["train.tokens"] == 3 * 2 * 256
    assert 6.5e6 < saved["model.parameters"] < 8e6
    assert saved["choices"]["model"] == "tiny" and saved["choices"]["init"] == "random"
    assert saved["tokenizer.name"] == "english8k" and saved["tokenizer.vocab_size"] == 8192
    for lang in ("ar", "en"):
        # three steps from random init: no better than a few nats under uniform over the vocabulary
        assert math.log(8192) - 4 < saved[f"val.{lang}.loss"] < math.log(8192) + 0.5
        assert 0 < saved[f"val.{lang}.bpb"] < 20
    assert (out / "config.yaml").exists() and (out / "checkpoints" / "last.ckpt").exists()
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == f"results: {out / 'results.json'}"
    assert res["model.attention"] == "sdpa"
    assert 0 < saved["train.loss"] < math.log(8192) + 1


def test_training_lowers_loss_with_adamw8bit(make_cfg, tmp_path):
    out = tmp_path / "run"
    cfg = make_cfg(*SMALL_MODEL, "trainer.max_steps=30", "data.batch_size=4", "data.val_bytes=6000", "optim=adamw8bit",
                   "optim.lr=3e-3", "optim.warmup_steps=2", "export=false", "logger=csv", out=out)
    res = train_task.run(cfg)
    import csv

    rows = list(csv.DictReader(open(out / "csv" / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses[-1] < losses[0] - 1.0, losses
    assert res["val.en.loss"] < math.log(8192) - 1.0
    assert any(r.get("train/tokens_per_s") for r in rows) and any(r.get("train/mfu") for r in rows)
    assert any(r.get("train/lr") for r in rows)


def _save_tiny_llama(folder: Path, tokenizer, hidden=64, vocab=None) -> Path:
    cfg = LlamaConfig(vocab_size=vocab or len(tokenizer), hidden_size=hidden, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=128, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def english8k(make_cfg):
    return builders.build_tokenizer(make_cfg())


def test_init_llama2_from_saved_checkpoint(make_cfg, tmp_path, english8k):
    ckpt = _save_tiny_llama(tmp_path / "base", english8k.tokenizer)
    out = tmp_path / "run"
    cfg = make_cfg("init=llama2", f"init.checkpoint={ckpt}", *SMALL_MODEL, *FAST, out=out)
    before = LlamaForCausalLM.from_pretrained(ckpt).model.layers[0].mlp.up_proj.weight.clone()
    res = train_task.run(cfg)
    assert res["choices"]["init"] == "llama2"
    assert res["model.parameters"] == sum(p.numel() for p in LlamaForCausalLM.from_pretrained(ckpt).parameters())
    after = AutoModelForCausalLM.from_pretrained(out / "hf").model.layers[0].mlp.up_proj.weight
    assert not torch.equal(before, after)  # it trained from the loaded weights
    assert (after - before).abs().max() < 0.05  # ...and did not start from random ones


def test_a_resumed_adaptation_keeps_its_starting_scores(make_cfg, tmp_path, english8k):
    """start.val.* (the checkpoint's scores before training) and delta.val.* are what forgetting is
    measured by; a run resumed from its checkpoint (a preemption, a longer budget) reported none,
    since only the first command scores the start. They travel in the checkpoint now."""
    ckpt = _save_tiny_llama(tmp_path / "base", english8k.tokenizer)
    out = tmp_path / "run"
    common = ["init=llama2", f"init.checkpoint={ckpt}", *SMALL_MODEL, "data.batch_size=2", "data.val_bytes=3000",
              "export=false"]
    first = train_task.run(make_cfg(*common, "trainer.max_steps=2", out=out))
    again = train_task.run(make_cfg(*common, "trainer.max_steps=4", out=out))
    assert again["resumed_from"] and again["train.steps"] == 4
    for lang in ("ar", "en"):
        assert again[f"start.val.{lang}.bpb"] == first[f"start.val.{lang}.bpb"]
        assert again[f"delta.val.{lang}.bpb"] == pytest.approx(again[f"val.{lang}.bpb"] - first[f"start.val.{lang}.bpb"])


def test_init_llama2_vocab_mismatch_is_a_clear_error(make_cfg, tmp_path, english8k):
    ckpt = _save_tiny_llama(tmp_path / "small-vocab", english8k.tokenizer, vocab=4096)
    cfg = make_cfg("init=llama2", f"init.checkpoint={ckpt}", *SMALL_MODEL, *FAST)
    with pytest.raises(ConfigError, match=r"has 4096 embedding rows but tokenizer .* has 8192 pieces; use tokenizer=expanded"):
        train_task.run(cfg)


def test_init_llama2_architecture_mismatch_names_both(make_cfg, tmp_path, english8k):
    ckpt = _save_tiny_llama(tmp_path / "wide", english8k.tokenizer, hidden=128)
    cfg = make_cfg("init=llama2", f"init.checkpoint={ckpt}", *SMALL_MODEL, *FAST)
    with pytest.raises(ConfigError, match=r"model=micro disagrees with init.checkpoint=.*hidden_size 64 vs 128"):
        train_task.run(cfg)


def test_init_llama2_refuses_pickle_only_checkpoint(make_cfg, tmp_path, english8k):
    folder = tmp_path / "pickled"
    cfg = LlamaConfig(vocab_size=8192, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=128)
    LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=False)
    english8k.tokenizer.save_pretrained(folder)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ConfigError, match="safetensors"):
        train_task.run(make_cfg("init=llama2", f"init.checkpoint={folder}", *SMALL_MODEL, *FAST))


def test_export_reproduces_training_logits(make_cfg, tmp_path):
    out = tmp_path / "run"
    train_task.run(make_cfg(*SMALL_MODEL, *FAST, out=out))
    tok = AutoTokenizer.from_pretrained(out / "hf")
    model = AutoModelForCausalLM.from_pretrained(out / "hf", dtype=torch.float32).eval()
    ids = tok(["The word of God. قال رسول الله"], return_tensors="pt").input_ids
    # the same weights, read back out of the Lightning checkpoint
    from allam.model.export import ckpt_tensors

    ref = LlamaForCausalLM(model.config)
    ref.load_state_dict(dict(ckpt_tensors(out / "checkpoints" / "last.ckpt")), strict=False)
    with torch.no_grad():
        diff = (model(ids).logits - ref.eval()(ids).logits).abs().max().item()
    assert diff < 1e-4
    gen = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 5
    # task=export from the checkpoint gives the same folder contents, finding the run's tokenizer in
    # this command's cache (paths.cache_dir), not the one the run recorded (another machine's, here)
    saved = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(saved.replace(f"cache_dir: {make_cfg().paths.cache_dir}", "cache_dir: /proc/elsewhere"))
    assert "/proc/elsewhere" in (out / "config.yaml").read_text()
    exp = tmp_path / "exported"
    export_task.run(make_cfg("task=export", f"ckpt={out / 'checkpoints' / 'last.ckpt'}", out=exp))
    # the export folder says what it is: the run's FLOPs up to the checkpoint, its config (objective)
    from allam import results as R
    from allam.config.saved import training_config_for

    trained = json.loads((out / "results.json").read_text())
    assert R.carried_flops(str(exp / "hf")) == pytest.approx(trained["train.total_flops"])
    assert json.loads((exp / "results.json").read_text())["source_run"] == str(out)
    assert training_config_for(exp / "hf").objective.name == "pretrain"
    again = AutoModelForCausalLM.from_pretrained(exp / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (again(ids).logits - model(ids).logits).abs().max().item() < 1e-5


def test_embedding_warmup_freezes_then_unfreezes(make_cfg, tmp_path, monkeypatch):
    """init.embedding_warmup_tokens: only embeddings and head move for that many tokens."""
    import lightning as L

    snaps = []

    class Snap(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            m = module.model
            snaps.append((trainer.global_step, m.model.layers[0].mlp.up_proj.weight.detach().clone(),
                          m.model.embed_tokens.weight.detach().clone()))

    real = train_task.build_trainer
    monkeypatch.setattr(train_task, "build_trainer", lambda cfg, out, cbs, steps: real(cfg, out, [*cbs, Snap()], steps))
    # 2 x 64 tokens per step: 256 warm-up tokens = 2 steps
    cfg = make_cfg(*SMALL_MODEL, "trainer.max_steps=5", "data.batch_size=2", "data.val_bytes=1500", "export=false",
                   "init.embedding_warmup_tokens=256", "optim.warmup_steps=0")
    train_task.run(cfg)
    steps = {s: (w, e) for s, w, e in snaps}
    assert torch.equal(steps[0][0], steps[2][0])  # layers frozen during steps 0 and 1
    assert not torch.equal(steps[0][1], steps[2][1])  # embeddings trained
    assert not torch.equal(steps[2][0], steps[3][0])  # the update made at step 2 moves the body


def test_resume_from_checkpoint_continues_steps(make_cfg, tmp_path):
    out1 = tmp_path / "first"
    train_task.run(make_cfg(*SMALL_MODEL, "trainer.max_steps=2", "data.batch_size=2", "data.val_bytes=1500",
                            "export=false", out=out1))
    out2 = tmp_path / "second"
    res = train_task.run(make_cfg(*SMALL_MODEL, "trainer.max_steps=4", "data.batch_size=2", "data.val_bytes=1500",
                                  "export=false", f"ckpt={out1 / 'checkpoints' / 'last.ckpt'}", out=out2))
    assert res["train.steps"] == 4
    assert res["train.tokens"] == 4 * 2 * 64  # the count carries over the resume
    assert res["train.tokens_this_run"] == 2 * 2 * 64  # only the two new steps ran here


def test_wandb_runs_offline_one_per_job_and_one_per_resumed_run(make_cfg, tmp_path, monkeypatch):
    """Offline by default; two jobs in one process (Hydra's multirun) are two W&B runs (the second
    logged into the first's, still open); a resumed run keeps its W&B run id (it started another run)."""
    from allam.tasks.builders import WANDB_ID_FILE

    monkeypatch.delenv("WANDB_MODE", raising=False)
    args = [*SMALL_MODEL, "data.batch_size=2", "data.val_bytes=1500", "logger=wandb", "export=false",
            "trainer.checkpoint_every_steps=2"]
    first, second = tmp_path / "job0", tmp_path / "job1"
    train_task.run(make_cfg(*args, "trainer.max_steps=2", out=first))
    train_task.run(make_cfg(*args, "trainer.max_steps=2", "data.seed=2", out=second))
    train_task.run(make_cfg(*args, "trainer.max_steps=4", out=first))  # resumes job0 from its checkpoint

    def runs(out):
        return sorted(p.name for p in (out / "wandb").glob("offline-run-*") if any(p.rglob("*.wandb")))

    ids = [(out / WANDB_ID_FILE).read_text().strip() for out in (first, second)]
    assert ids[0] != ids[1]
    assert len(runs(first)) == 2 and all(name.endswith("-" + ids[0]) for name in runs(first))  # synced as one run
    assert len(runs(second)) == 1 and runs(second)[0].endswith("-" + ids[1])


def test_final_scores_come_from_the_last_step(make_cfg, tmp_path):
    """With validation every 2 steps of 5, results.json still scores the model after step 5."""
    res = train_task.run(make_cfg(*SMALL_MODEL, "trainer.max_steps=5", "trainer.val_every_steps=2", "data.batch_size=2",
                                  "data.val_bytes=3000", "export=false"))
    assert res["train.steps"] == 5 and res["val.step"] == 5


def test_init_llama2_refuses_a_foreign_tokenizer(make_cfg, tmp_path, english8k):
    """Token ids must mean what the checkpoint learned: Mistral's 32k pieces on an english8k model is an error."""
    ckpt = _save_tiny_llama(tmp_path / "base", english8k.tokenizer, vocab=32000)
    with pytest.raises(ConfigError, match=r"tokenizer.base=mistral7b: its vocabulary differs from the tokenizer of init"):
        train_task.run(make_cfg("init=llama2", f"init.checkpoint={ckpt}", "tokenizer=mistral", *SMALL_MODEL, *FAST))
    with pytest.raises(ConfigError, match=r"tokenizer=bilingual: a vocabulary trained from scratch"):
        train_task.run(make_cfg("init=llama2", f"init.checkpoint={ckpt}", "tokenizer=bilingual", *SMALL_MODEL, *FAST))


def test_last_checkpoint_holds_the_final_step(make_cfg, tmp_path):
    """checkpoint_every_steps=2 of 3 steps: last.ckpt is still the state after step 3."""
    out = tmp_path / "run"
    train_task.run(make_cfg(*SMALL_MODEL, "trainer.max_steps=3", "trainer.checkpoint_every_steps=2",
                            "data.batch_size=1", "data.val_bytes=1500", "export=false", out=out))
    ck = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["global_step"] == 3
    assert (out / "checkpoints" / "step2.ckpt").exists()


def test_gradients_are_clipped_to_the_configured_norm(make_cfg, tmp_path, monkeypatch):
    from allam.train.module import CausalLM

    norms = []
    real = CausalLM.configure_gradient_clipping

    def spy(self, optimizer, *args, **kwargs):
        real(self, optimizer, *args, **kwargs)
        grads = [p.grad.detach().flatten() for p in self.model.parameters() if p.grad is not None]
        norms.append(torch.cat(grads).norm().item())

    monkeypatch.setattr(CausalLM, "configure_gradient_clipping", spy)
    train_task.run(make_cfg(*SMALL_MODEL, "trainer.max_steps=2", "data.batch_size=1", "data.val_bytes=1500",
                            "export=false", "optim.grad_clip=0.05"))
    assert len(norms) == 2 and all(n <= 0.05 * 1.001 for n in norms)


def test_the_logged_step_loss_is_the_mean_of_its_micro_batches_over_ranks():
    """With accumulation 2 the step's loss (logged once, kept for results.json and the non-finite
    guard) is the mean of both micro-batches' losses, reduced over ranks, not the last one's."""
    from types import SimpleNamespace

    from allam.train.module import CausalLM

    logged, reduced = [], []
    strategy = SimpleNamespace(reduce=lambda t, reduce_op: (reduced.append(reduce_op), t * 0 + 5.0)[1])
    fake = SimpleNamespace(_loss_sum=None, _loss_micro=0, log=lambda name, value, **k: logged.append((name, float(value))),
                           trainer=SimpleNamespace(accumulate_grad_batches=2, world_size=1, strategy=strategy))
    fake._step_total = lambda value, op, scale=1.0: CausalLM._step_total(fake, value, op, scale)
    for loss in (1.0, 3.0, 2.0, 6.0):
        CausalLM._log_step_loss(fake, torch.tensor(loss))
    assert logged == [("train/loss", 2.0), ("train/loss", 4.0)] and float(fake._last_loss) == 4.0 and not reduced
    fake.trainer.world_size = 2  # other ranks' losses: the mean over ranks (here 5.0) is what is logged
    CausalLM._log_step_loss(fake, torch.tensor(1.0))
    CausalLM._log_step_loss(fake, torch.tensor(1.0))
    assert reduced == ["mean"] and logged[-1] == ("train/loss", 5.0) and float(fake._last_loss) == 5.0


def test_logged_lr_is_the_rate_each_step_trained_with(make_cfg, tmp_path):
    """train/lr in a step's row is the rate that step's update used (Lightning steps the scheduler
    before the batch-end hooks, so reading it there logged the next step's rate), during warm-up
    and the decay."""
    import csv

    from allam.train.optim import lr_factor

    out = tmp_path / "run"
    cfg = make_cfg(*SMALL_MODEL, "trainer.max_steps=6", "data.batch_size=2", "data.val_bytes=1500", "export=false",
                   "logger=csv", "trainer.log_every_n_steps=1", "optim.warmup_steps=3", "optim.schedule=cosine",
                   "optim.lr=0.001", "optim.min_lr_ratio=0.1", "trainer.val_every_steps=null", out=out)
    train_task.run(cfg)
    rows = [r for r in csv.DictReader((out / "csv" / "metrics.csv").open()) if r.get("train/lr")]
    got = [(int(r["step"]), float(r["train/lr"])) for r in rows]
    assert [s for s, _ in got] == list(range(6))
    for step, lr in got:
        assert lr == pytest.approx(1e-3 * lr_factor(step, 6, 3, "cosine", 0.1)), (step, lr, got)


def test_the_training_clock_leaves_out_evaluations_and_checkpoint_writes(monkeypatch):
    """An evaluation during training (eval.every_tokens) pauses the clock and adds no point to the
    validation curve (it used to record the last validation's scores again at its own step), and a
    checkpoint write (Lightning's ModelCheckpoint runs after this callback's batch-end hook) is not
    counted toward the next step's time."""
    import time
    from types import SimpleNamespace

    from allam.train import eval_callback as EC
    from allam.train.callbacks import Throughput

    th = Throughput(flops_per_token=1.0, precision="32-true", peak_override=1.0, log_every=1)
    module = SimpleNamespace(final_val={"ar": {"loss": 3.0, "bpb": 2.0}}, log=lambda *a, **k: None)
    trainer = SimpleNamespace(global_step=10, world_size=1, optimizers=[], callbacks=[th],
                              state=SimpleNamespace(fn="fit"), precision="32-true")
    batch = torch.zeros(2, 9, dtype=torch.long)
    th.on_train_batch_start(trainer, module, batch, 0)
    th.on_validation_start(trainer, module)
    th.on_validation_end(trainer, module)  # a real validation at step 10: one curve point
    assert [p["step"] for p in th.curve] == [10]

    trainer.global_step = 15
    ev = EC.EvalDuringTraining.__new__(EC.EvalDuringTraining)
    ev.cfg, ev.tokenizer, ev.tokens_per_step, ev._scored_step = None, None, 16, None
    ev.plan = SimpleNamespace(tasks=["t"])
    monkeypatch.setattr(EC.harness, "evaluate", lambda *a, **k: (time.sleep(0.3), {"t": {"acc": 0.5}})[1])
    before = th.train_seconds
    assert ev._run(trainer, SimpleNamespace(model=None, **vars(module))) == {"t": {"acc": 0.5}}
    assert [p["step"] for p in th.curve] == [10]  # no point with step 10's scores at step 15
    th.on_train_batch_end(trainer, module, None, batch, 0)
    assert th.train_seconds - before < 0.2  # the 0.3 s evaluation is not training time

    th.on_save_checkpoint(trainer, module, {})
    time.sleep(0.3)  # the write
    th.on_train_batch_start(trainer, module, batch, 1)
    th.on_train_batch_end(trainer, module, None, batch, 1)
    assert th.train_seconds - before < 0.2
    assert th.tokens == 2 * 2 * 8
