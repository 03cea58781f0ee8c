"""Post-training through the same trainer (objective=sft | dpo): the loss only on answer tokens,
equal to a hand computation; resume at the same position; DPO's first step against references
computed by hand; SFT then DPO then export end to end; the global batch independent of the number
of ranks (datamodule positions; 2-process FSDP2 runs equal one process); the recipes' sizing."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import run_inprocess
from hydra import compose, initialize_config_dir

from allam.config import CONF_DIR, ROOT

# a micro model (english_checkpoint: 2 layers, 64 wide, 128 positions), 32 or 16 demo examples
POST = ["model=micro", "model.seq_len=128", "data.batch_size=4", "trainer.log_every_n_steps=1", "logger=csv",
        "trainer.progress_bar=false", "optim.warmup_steps=1"]
SFT = ["objective=sft", "objective.max_examples=32", "trainer.max_steps=4", "trainer.checkpoint_every_steps=2", *POST]
DPO = ["objective=dpo", "objective.max_examples=16", "objective.epochs=1", *POST]


def _rows(run_dir: Path) -> list[dict]:
    return list(csv.DictReader((Path(run_dir) / "csv" / "metrics.csv").open()))


def _train(run_dir: Path, key: str = "train/loss") -> list[float]:
    return [float(r[key]) for r in _rows(run_dir) if r.get(key)]


def _results(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


def _compose(cache_dir: Path, *overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        return compose("config", overrides=[f"paths.cache_dir={cache_dir}", "paths.output_dir=/nonexistent", *overrides])


def _datamodule(cache_dir: Path, *overrides: str):
    """The post-training datamodule a run with these overrides builds, and its tokenizer."""
    from allam.tasks import builders

    cfg = _compose(cache_dir, *overrides)
    tok = builders.build_tokenizer(cfg).tokenizer
    dm = builders.build_datamodule(cfg, tok, max_seq_len=128)
    dm.prepare()
    return dm, tok


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory, cache_dir, english_checkpoint):
    """One 4-step SFT run from the tiny English checkpoint (checkpoints at steps 2 and 4), shared."""
    out = tmp_path_factory.mktemp("sft-run")
    assert run_inprocess([*SFT, "init=pretrained", f"init.checkpoint={english_checkpoint}"], cache_dir, out) is None
    return out


def test_sft_trains_on_answer_tokens_only(sft_run, cache_dir, english_checkpoint):
    """Step 0's logged loss equals the summed cross-entropy of the starting model over the answer
    tokens of the first global batch divided by their number, and the labels are the answers."""
    from transformers import AutoModelForCausalLM

    res = _results(sft_run)
    assert res["status"] == "finished" and res["objective"] == "sft" and res["train.steps"] == 4
    assert res["val.sft.loss"] < res["start.val.sft.loss"]  # four steps at LR 1e-3 already lower the held-out loss
    assert (sft_run / "hf" / "chat_template.jinja").exists()  # the export ships the template

    dm, tok = _datamodule(cache_dir, *SFT, "init=pretrained", f"init.checkpoint={english_checkpoint}")
    batch = dm.train_batch(0)
    labels = batch["labels"]
    for i in range(len(labels)):
        scored = [t for t in labels[i].tolist() if t != -100]
        text = tok.decode(scored, skip_special_tokens=True)
        prompt = tok.decode([t for t, l in zip(batch["input_ids"][i].tolist(), labels[i].tolist())
                             if l == -100 and t != dm.pad], skip_special_tokens=True)
        assert text.strip() and text.strip() not in prompt  # the answer is scored, the prompt is not
    model = AutoModelForCausalLM.from_pretrained(english_checkpoint, dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                            ignore_index=-100, reduction="sum")
    assert int(batch["label_tokens"]) == int((targets != -100).sum())  # one rank, no accumulation
    assert abs(_train(sft_run)[0] - float(nll) / int(batch["label_tokens"])) < 1e-4
    # train.tokens counts every position the model ran, train.padding the padded ones among them
    batches = [dm.train_batch(i) for i in range(4)]
    assert res["train.tokens"] == sum(b["input_ids"].numel() for b in batches)
    assert 0 < res["train.padding"] == sum(int((b["attention_mask"] == 0).sum()) for b in batches) < res["train.tokens"]


def test_sft_resume_continues_at_the_same_position(sft_run, tmp_path, cache_dir, english_checkpoint):
    """Resumed from its step-2 checkpoint, the run trains steps 2 and 3 on the same examples: the same losses."""
    out = tmp_path / "resumed"
    assert run_inprocess([*SFT, "init=pretrained", f"init.checkpoint={english_checkpoint}", "export=false",
                          f"ckpt={sft_run / 'checkpoints' / 'step2.ckpt'}"], cache_dir, out) is None
    assert _results(out)["train.steps"] == 4
    assert _results(out)["train.padding"] == _results(sft_run)["train.padding"]  # counted across the resume
    tail, full = _train(out), _train(sft_run)
    assert len(tail) == 2 and max(abs(a - b) for a, b in zip(tail, full[2:])) < 1e-5, (tail, full)


def test_dpo_first_step_and_export_after_sft(sft_run, tmp_path, cache_dir, monkeypatch):
    """DPO from the SFT export: step 0's loss is log 2 with reward accuracy and margin 0 (the policy
    is the reference), its logged chosen/rejected log-probabilities equal the export's scored by
    hand, the references are kept in the checkpoint, the run exports a chat model, and task=generate samples from the export through its template."""
    from transformers import AutoModelForCausalLM

    from allam.train.dpo import dpo_loss, pair_logps

    from allam.train import post

    start = sft_run / "hf"
    out = tmp_path / "dpo"
    # two micro-batches of 2 pairs per step: the logged step metrics cover all 4 pairs
    args = [*(a for a in DPO if a != "data.batch_size=4"), "data.batch_size=2", "trainer.accumulate_grad_batches=2",
            "init=pretrained", f"init.checkpoint={start}", "trainer.max_steps=2", "trainer.checkpoint_every_steps=1"]
    scored = []  # policy forwards outside training: the start validation reads the references instead
    monkeypatch.setattr(post, "pair_logps", lambda *a, **k: (scored.append(torch.is_grad_enabled()), pair_logps(*a, **k))[1])
    assert run_inprocess(args, cache_dir, out) is None
    val_batches = len(list(_datamodule(cache_dir, *args)[0].shared_batches("val")))
    assert scored.count(False) == val_batches and scored.count(True) == 4  # the final validation; two steps of two
    # resumed after step 1, the references come from the checkpoint, not from the trained weights: the same step 2
    resumed = tmp_path / "resumed"
    assert run_inprocess([*args, "export=false", f"ckpt={out / 'checkpoints' / 'step1.ckpt'}"], cache_dir, resumed) is None
    assert len(_train(resumed)) == 1 and abs(_train(resumed)[0] - _train(out)[1]) < 1e-5
    first = _rows(out)
    first = next(r for r in first if r.get("train/loss"))
    assert abs(float(first["train/loss"]) - math.log(2)) < 1e-5
    assert float(first["train/reward_accuracy"]) == 0.0 and abs(float(first["train/margin"])) < 1e-6

    dm, _ = _datamodule(cache_dir, *args)
    micro = [dm.train_batch(0), dm.train_batch(1)]  # step 1's two micro-batches
    model = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32).eval()
    with torch.no_grad():
        chosen, rejected = (torch.cat(side) for side in zip(*(pair_logps(model, b) for b in micro)))
    batch = {"index": torch.cat([b["index"] for b in micro])}
    assert len(batch["index"]) == 4
    loss, metrics = dpo_loss(chosen, rejected, chosen, rejected, beta=0.1)
    assert abs(float(first["train/chosen_logps"]) - float(metrics["logps/chosen"])) < 1e-3
    assert abs(float(first["train/rejected_logps"]) - float(metrics["logps/rejected"])) < 1e-3
    assert abs(float(first["train/loss"]) - float(loss)) < 1e-5

    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ref = ckpt["dpo_reference"]["train"][batch["index"]]
    assert torch.allclose(ref[:, 0], chosen.double(), atol=1e-3) and torch.allclose(ref[:, 1], rejected.double(), atol=1e-3)
    res = _results(out)
    assert res["objective"] == "dpo" and res["start.val.dpo.reward_accuracy"] == 0.0
    assert res["train.cross_entropy"] == "plain"  # pairs are scored from the whole logits
    assert res["val.dpo.pairs"] == len(dm.val) and 0.0 <= res["val.dpo.reward_accuracy"] <= 1.0
    assert (out / "hf" / "model.safetensors").exists() and (out / "hf" / "chat_template.jinja").exists()
    # and task=generate talks to the export through its chat template (the run was trained with dpo)
    gen = tmp_path / "generate"
    assert run_inprocess(["task=generate", f"ckpt={out / 'hf'}", "prompt=Translate into Arabic: In the beginning",
                          "generate.temperature=0", "generate.max_new_tokens=4"], cache_dir, gen) is None
    said = _results(gen)
    assert said["task"] == "generate" and said["generate.chat"] is True and said["source_run"] == str(out.resolve())
    assert said["generate.prompt_text"].endswith("[/INST]") and 1 <= said["generate.tokens"] <= 4


def test_dpo_references_run_in_the_steps_precision(tmp_path, cache_dir, english_checkpoint):
    """Under bf16-mixed the policy's forwards run in autocast (Lightning's step context); the
    reference table must too, or step 0 (policy = reference) already shows rewards (its reward
    accuracy was 0.25 here): a fixed per-pair offset for the whole run."""
    out = tmp_path / "bf16"
    args = [*DPO, "init=pretrained", f"init.checkpoint={english_checkpoint}", "trainer.precision=bf16-mixed",
            "trainer.max_steps=1", "objective.val=null", "export=false"]
    assert run_inprocess(args, cache_dir, out) is None
    first = next(r for r in _rows(out) if r.get("train/loss"))
    # equal up to float32 sums over differently padded batches (without the context: 4.8e-5 off log 2)
    assert float(first["train/loss"]) == pytest.approx(math.log(2), abs=1e-5)
    assert float(first["train/reward_accuracy"]) == 0.0 and abs(float(first["train/margin"])) < 1e-5


def test_global_batch_does_not_depend_on_ranks(cache_dir, english_checkpoint):
    """Two ranks of 2 examples read exactly the examples of one rank of 4 (and 1 rank x 2 x 2
    accumulated), with the same label-token count of the global batch, in a new order each epoch."""
    from allam.data.post_datamodule import PostTrainingDataModule

    dm, tok = _datamodule(cache_dir, *SFT, "init=pretrained", f"init.checkpoint={english_checkpoint}")
    obj = SimpleNamespace(name="sft", train="demo", val=None, epochs=2, max_examples=32)

    def make(batch, accumulate, world, rank):
        d = PostTrainingDataModule(obj, tok, max_length=128, batch_size=batch, accumulate=accumulate, world=world,
                                   seed=1234, cache_dir=dm.cache_dir)
        d.prepare()
        d.rank = rank
        return d

    one = make(4, 1, 1, 0)
    two = [make(2, 1, 2, r) for r in range(2)]
    acc = make(2, 2, 1, 0)
    assert one.steps == two[0].steps == acc.steps == 16  # 32 examples x 2 epochs / 4
    for step in range(one.steps):
        ref = one.example_at(one.micro_positions(step)).tolist()
        assert [i for d in two for i in d.example_at(d.micro_positions(step)).tolist()] == ref
        assert [i for m in (2 * step, 2 * step + 1) for i in acc.example_at(acc.micro_positions(m)).tolist()] == ref
        labels = int(one.train_batch(step)["label_tokens"])
        assert labels == int(two[1].train_batch(step)["label_tokens"]) == int(acc.train_batch(2 * step + 1)["label_tokens"])
    epoch0 = one.example_at(np.arange(32))
    assert sorted(epoch0.tolist()) == list(range(32)) and (epoch0 != one.example_at(np.arange(32, 64))).any()
    state = one.state_dict()
    assert state["examples_consumed"] == 0 and state["fingerprint"] == make(4, 1, 1, 0).fingerprint()


def test_own_training_data_is_not_scored_on_the_demo_by_default(tmp_path, cache_dir, english_checkpoint):
    """objective.val=auto (the sft and dpo groups' value) scores the demo's held-out set only when
    training on the demo: with one's own file nothing held out is scored unless named (it scored
    the demo translation set, unsaid); an explicit val is kept, and a run saved with val=demo on
    the demo compares equal on resume."""
    from allam.config import to_dict
    from allam.data.chat_demo import write_jsonl
    from allam.tasks.rundir import changed_keys

    def chats(n, word):
        return [{"messages": [{"role": "user", "content": f"Say {word} {i}."},
                              {"role": "assistant", "content": f"{word} {i}"}]} for i in range(n)]

    own, held = write_jsonl(chats(8, "hello"), tmp_path / "chats.jsonl"), write_jsonl(chats(3, "bye"), tmp_path / "held.jsonl")
    init = ["init=pretrained", f"init.checkpoint={english_checkpoint}"]
    dm, _ = _datamodule(cache_dir, *SFT, *init, f"objective.train={own}")
    assert len(dm.train) == 8 and dm.val == []
    dm, _ = _datamodule(cache_dir, *SFT, *init, f"objective.train={own}", f"objective.val={held}")
    assert len(dm.val) == 3
    dm, _ = _datamodule(cache_dir, *SFT, *init)  # demo training data: the demo's held-out set
    assert len(dm.val) > 0
    current = to_dict(_compose(cache_dir, *SFT, *init))
    assert current["objective"]["val"] == "auto"
    saved = {**current, "objective": {**current["objective"], "val": "demo"}}
    assert changed_keys(saved, current) == []
    mine = to_dict(_compose(cache_dir, *SFT, *init, f"objective.train={own}"))
    assert changed_keys({**mine, "objective": {**mine["objective"], "val": "demo"}}, mine) == ["objective.val"]


def test_wrong_data_kind_and_missing_init_are_one_line(cli, tmp_path, english_checkpoint):
    """A preference file for sft is the reader's one line, and so is no data, before any model is built; sft from
    random init, a DPO beta of 0 and the settings counted in pretraining tokens are refused at compose time."""
    from allam.data.chat_demo import demo_preferences, write_jsonl

    prefs = write_jsonl(demo_preferences("train", 4), tmp_path / "prefs.jsonl")
    err = cli(*SFT, "init=pretrained", f"init.checkpoint={english_checkpoint}", f"objective.train={prefs}")
    assert err is not None and "holds preference data" in err and "chat data" in err and "\n" not in err
    assert not (tmp_path / "run" / "config.yaml").exists()
    err = cli(*SFT, "init=pretrained", f"init.checkpoint={english_checkpoint}", "objective.train=null")
    assert err == ("error: objective.train=None: objective=sft needs training data: a JSONL/parquet file, a folder "
                   "or glob of them, or demo")
    err = cli(*SFT)
    assert err == ("error: init=random: objective=sft continues a trained model: use init=pretrained "
                   "init.checkpoint=<run>/hf (or a Hugging Face folder)")
    err = cli("objective=dpo", "init=pretrained", f"init.checkpoint={english_checkpoint}", "objective.beta=0")
    assert err == "error: objective.beta=0.0: must be a number > 0"
    # settings counted in pretraining tokens ran on a nominal batch x seq_len count under post-training
    init = ["init=pretrained", f"init.checkpoint={english_checkpoint}"]
    err = cli(*SFT, *init, "eval.every_tokens=4096")
    assert err.startswith("error: eval.every_tokens=4096: counts pretraining tokens; objective=sft trains on padded")
    err = cli("objective=dpo", *init, "init.embedding_warmup_tokens=1000")
    assert err.startswith("error: init.embedding_warmup_tokens=1000: applies to continued pretraining of new rows")
    # a token budget was logged as unused: epochs (or trainer.max_steps) set post-training's steps
    err = cli(*SFT, *init, "trainer.max_tokens=100000")
    assert err == ("error: trainer.max_tokens=100000: objective=sft trains objective.epochs=1 passes over its examples "
                   "(or trainer.max_steps steps), not a token budget: leave trainer.max_tokens unset")
    assert cli("trainer.max_tokens=null") == ("error: trainer.max_tokens=None: objective=pretrain needs a training "
                                              "budget: set trainer.max_tokens (or trainer.max_steps)")


@pytest.mark.parametrize("experiment", ["allam7b_sft", "allam7b_dpo"])
def test_plan_sizes_the_recipes(cli, experiment, capsys):
    assert cli("task=plan", f"experiment={experiment}") is None
    out = capsys.readouterr().out
    assert "model=7b" in out and "memory/GPU" in out and "32 ranks" in out
    cfg = _compose(Path("/tmp"), f"experiment={experiment}")
    t = cfg.trainer
    assert cfg.data.batch_size * t.accumulate_grad_batches * t.devices * t.num_nodes == (1024 if experiment.endswith("sft") else 512)
    if experiment.endswith("dpo"):  # a pair is two sequences: twice the tokens and activations of one
        from allam.tasks import plan as plan_task

        pairs, single = plan_task.run(cfg), plan_task.run(_compose(Path("/tmp"), f"experiment={experiment}", "objective=sft"))
        assert pairs["plan.tokens_per_step"] == 2 * single["plan.tokens_per_step"]
        assert pairs["plan.memory_gib"]["total"] > single["plan.memory_gib"]["total"] and "2 sequences per pair" in capsys.readouterr().out
        # DPO scores pairs from the whole logits (not trainer.cross_entropy's chunks), and the
        # run's own memory check plans the same as task=plan
        from allam.model.plan import GiB, loss_bytes
        from allam.tasks.preflight import planned

        tokens = 2 * cfg.data.batch_size * cfg.model.seq_len
        assert pairs["plan.memory_gib"]["logits"] == pytest.approx(loss_bytes("plain", 0, tokens, 32000, 0, 2, True) / GiB)
        assert planned(cfg, 32000).memory_gib == pytest.approx(pairs["plan.memory_gib"])


# --------------------------------------------------------------------------- 2-process FSDP2
FSDP2 = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.val_every_steps=null",
         "trainer.checkpoint_every_steps=2"]


def _run_ranks(args, cache_dir, timeout=600):
    env = {**__import__("os").environ, "ALLAM_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], check=False, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow  # a 2-rank launch costs about 25 s, which the fast suite's 5 minutes do not hold
@pytest.mark.parametrize("objective", ["sft", "dpo"])
def test_fsdp_two_ranks_equal_one_process(objective, sft_run, tmp_path, cache_dir, english_checkpoint):
    """2 FSDP2 ranks of 2 examples equal one process of 4: the same losses, held-out scores and
    weights (DPO's references are also gathered and resumed on 1 rank)."""
    from safetensors.torch import load_file

    start = english_checkpoint if objective == "sft" else sft_run / "hf"
    steps = 2 if objective == "sft" else 3
    common = [f"objective={objective}", "objective.max_examples=16", f"trainer.max_steps={steps}", *POST[:2],
              "trainer.log_every_n_steps=1", "logger=csv", "trainer.progress_bar=false", "optim.warmup_steps=1",
              "init=pretrained", f"init.checkpoint={start}"]
    two = tmp_path / "two"
    _run_ranks([*FSDP2, "trainer.devices=2", "data.batch_size=2", *common, f"hydra.run.dir={two}"], cache_dir)
    one = tmp_path / "one"
    assert run_inprocess(["data.batch_size=4", *common], cache_dir, one) is None
    a, b = _train(two), _train(one)
    assert len(a) == len(b) == steps and max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (a, b)
    ra, rb = _results(two), _results(one)
    assert abs(ra["train.loss"] - rb["train.loss"]) < 1e-4  # the global batch's loss, not rank 0's share
    assert abs(ra[f"val.{objective}.loss"] - rb[f"val.{objective}.loss"]) < 1e-4
    wa, wb = load_file(two / "hf" / "model.safetensors"), load_file(one / "hf" / "model.safetensors")
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wb) < 1e-4
    if objective == "dpo":  # the 2-rank sharded checkpoint carries the references: resumed on 1 rank, the same step 3
        resumed = tmp_path / "resumed"
        _run_ranks([*FSDP2, "trainer.devices=1", "data.batch_size=4", *common, "export=false",
                    f"ckpt={two / 'checkpoints' / 'step2.ckpt'}", f"hydra.run.dir={resumed}"], cache_dir)
        assert len(_train(resumed)) == 1 and abs(_train(resumed)[0] - a[2]) < 1e-4


def test_a_pretraining_checkpoint_from_before_the_objective_group_resumes(tmp_path):
    """A pretraining checkpoint whose recorded config has no `objective` is checked without it (no
    changed key); one that records an objective is checked with it, so sft cannot resume as pretrain."""
    from allam.config import to_dict
    from allam.tasks.rundir import changed_keys
    from allam.tasks.train import resume_config

    cfg = _compose(tmp_path)
    old = to_dict(cfg)
    old.pop("objective")
    path = tmp_path / "old.ckpt"
    torch.save({"allam": {"config": old}, "global_step": 3}, path)
    assert changed_keys(old, resume_config(cfg, path)) == []
    sft = {**to_dict(cfg), "objective": {**to_dict(cfg)["objective"], "name": "sft"}}
    torch.save({"allam": {"config": sft}, "global_step": 3}, path)
    assert changed_keys(sft, resume_config(cfg, path)) == ["objective.name"]


def test_ipo_scores_answers_per_token(cache_dir, english_checkpoint):
    """objective.loss_type=ipo: the step's log-probabilities are per answer token (TRL's IPO form), the
    sigmoid loss's are sums, each against the reference table the checkpoint keeps."""
    from transformers import AutoModelForCausalLM

    from allam.train.dpo import pair_logps
    from allam.train.post import PostTrainingLM

    dm, _ = _datamodule(cache_dir, *DPO, "init=pretrained", f"init.checkpoint={english_checkpoint}", "objective.val=null")
    batch = dm.train_batch(0)
    model = AutoModelForCausalLM.from_pretrained(english_checkpoint, dtype=torch.float32).eval()
    table = torch.arange(2 * len(dm.train), dtype=torch.float64).view(-1, 2)
    for loss_type, average in (("ipo", True), ("sigmoid", False)):
        obj = SimpleNamespace(name="dpo", beta=0.1, label_smoothing=0.0, loss_type=loss_type)
        module = PostTrainingLM(model, SimpleNamespace(grad_clip=1.0), obj, total_steps=1, token_bytes=np.ones(8))
        module.reference = {"train": table}
        with torch.no_grad():
            pc, pr, rc, rr = module._dpo(batch, "train")
            want = pair_logps(model, batch, average=average)
        assert torch.allclose(pc, want[0]) and torch.allclose(pr, want[1])
        assert torch.equal(rc.double(), table[batch["index"], 0]) and torch.equal(rr.double(), table[batch["index"], 1])


def test_a_dpo_resume_refuses_changed_held_out_pairs(tmp_path, cache_dir, english_checkpoint):
    """The held-out reference table is read by position; a checkpoint records which pairs it
    belongs to. The same objective.val path with other pairs behind it is refused in one line
    (the starting model that scored them is gone); the same pairs load."""
    from transformers import AutoModelForCausalLM

    from allam.config import ConfigError
    from allam.data.chat_demo import write_jsonl
    from allam.train.post import PostTrainingLM

    def pairs(words):
        return [{"prompt": f"Say {w}.", "chosen": w, "rejected": "no"} for w in words]

    held = write_jsonl(pairs(["yes", "hello", "one"]), tmp_path / "held.jsonl")
    args = [*DPO, "init=pretrained", f"init.checkpoint={english_checkpoint}", f"objective.val={held}"]
    dm, _ = _datamodule(cache_dir, *args)
    model = AutoModelForCausalLM.from_pretrained(english_checkpoint, dtype=torch.float32)
    obj = SimpleNamespace(name="dpo", beta=0.1, label_smoothing=0.0, loss_type="sigmoid")
    module = PostTrainingLM(model, SimpleNamespace(grad_clip=1.0), obj, total_steps=1, token_bytes=np.ones(8))
    module._trainer = SimpleNamespace(datamodule=dm)
    module.reference = {"train": torch.zeros(len(dm.train), 2, dtype=torch.float64), "val": torch.zeros(3, 2, dtype=torch.float64)}
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    module.on_load_checkpoint(checkpoint)  # the same pairs
    write_jsonl(pairs(["yes", "hello", "two"]), held)
    module._trainer = SimpleNamespace(datamodule=_datamodule(cache_dir, *args)[0])
    with pytest.raises(ConfigError, match=r"^objective\.val=.*held\.jsonl: other held-out pairs than the checkpoint's"):
        module.on_load_checkpoint(checkpoint)

