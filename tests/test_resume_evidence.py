"""What the README promises about stopped and resumed runs, checked in this process with the real
Trainer: unfinished checkpoint writes are removed when a command takes the run directory (never
another live command's), a resumed run's metrics.csv has each step once with the values of an
uninterrupted run, and per-layer compilation gives all decoder layers one compiled graph."""
from __future__ import annotations

import csv
import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from allam.config import ConfigError

SMALL = ["model.hidden_size=64", "model.intermediate_size=128", "model.num_layers=2", "model.num_heads=4",
         "model.seq_len=64", "data.batch_size=2", "data.val_bytes=2000", "trainer.log_every_n_steps=1",
         "export=false"]
# columns that depend only on the step (not on the clock)
STEP_COLUMNS = ("train/loss", "train/lr", "train/tokens", "train/total_flops")


def _train(make_cfg, run: Path, *overrides: str) -> dict:
    from allam.tasks import train as train_task

    return train_task.run(make_cfg(*SMALL, *overrides, out=run))


def _rows(run: Path) -> list[dict]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _train_rows(run: Path) -> dict[int, dict]:
    """step -> the step-dependent columns of its training row; a step logged twice fails."""
    rows = [r for r in _rows(run) if r.get("train/loss")]
    steps = [int(r["step"]) for r in rows]
    assert len(steps) == len(set(steps)), f"steps logged more than once: {sorted(steps)}"
    return {int(r["step"]): {k: r[k] for k in STEP_COLUMNS} for r in rows}


def _dead_pid() -> int:
    import subprocess
    import sys

    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def _plant_unfinished_writes(ckpts: Path, step: int) -> list[Path]:
    """What a SIGKILL during a save leaves: a single-file write under a temporary name carrying the
    dead writer's pid, and a sharded write's temporary folder (shards, no COMPLETE marker)."""
    ckpts.mkdir(parents=True, exist_ok=True)
    single = ckpts / f".tmp-last.ckpt.{_dead_pid()}"
    single.write_bytes(b"PK\x03\x04" + os.urandom(3000))  # the first bytes of a zip, then nothing
    sharded = ckpts / f".tmp-step{step}.ckpt"
    sharded.mkdir()
    (sharded / "__0_0.distcp").write_bytes(os.urandom(2000))
    return [single, sharded]


def test_another_live_commands_writes_are_never_removed(make_cfg, tmp_path):
    """The run directory's lock decides: a command that cannot take it touches nothing."""
    run = tmp_path / "run"
    planted = _plant_unfinished_writes(run / "checkpoints", 2)
    live = run / "checkpoints" / f".tmp-step2.ckpt.{os.getpid()}"  # this process: alive, writing
    live.write_bytes(b"in flight")
    (run / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}))
    with pytest.raises(ConfigError, match="in use by pid"):
        _train(make_cfg, run, "trainer.max_steps=2", "logger=none")
    assert all(p.exists() for p in planted) and live.read_bytes() == b"in flight"


def test_a_sharded_write_cut_off_between_its_renames_is_completed(tmp_path):
    """Killed after the new folder was complete and the old one set aside, before the swap: the
    complete folder is moved into place, not deleted."""
    from allam.train.checkpointing import MARKER, OLD, TMP, clean_partial_writes

    ckpts = tmp_path / "checkpoints"
    done = ckpts / f"{TMP}last.ckpt"
    done.mkdir(parents=True)
    (done / MARKER).write_text("ok\n")
    (ckpts / f"{OLD}last.ckpt").mkdir()
    assert clean_partial_writes(ckpts) == []
    assert (ckpts / "last.ckpt" / MARKER).exists() and not done.exists()


def test_a_stopped_run_resumes_without_its_unfinished_writes_and_logs_each_step_once(make_cfg, tmp_path, caplog):
    """A run starts among the remains of a killed first save: they are removed. A copy of it is
    stopped after step 4 with its newest checkpoint at step 2 (what a kill between two checkpoints
    leaves: rows of steps 2 and 3, a cut-off last row, unfinished writes) and resumed: the remains
    are removed, the valid checkpoints kept byte for byte, steps 2 and 3 (and the validation after
    step 3) run and are logged again, and metrics.csv then holds each step once, equal to the
    uninterrupted run's rows in every step-dependent column."""
    from allam.train.checkpointing import verify

    common = ["trainer.max_steps=4", "trainer.checkpoint_every_steps=2", "trainer.val_every_steps=3", "logger=csv"]
    ref, run = tmp_path / "reference", tmp_path / "run"
    caplog.set_level("INFO", logger="allam")
    planted = _plant_unfinished_writes(ref / "checkpoints", 2)  # start
    _train(make_cfg, ref, *common)
    assert not any(p.exists() for p in planted)
    assert all(f"removed an unfinished checkpoint write: {p}" in caplog.text for p in planted)
    names = {"step2.ckpt", "step4.ckpt", "last.ckpt"}
    assert {p.name for p in (ref / "checkpoints").iterdir()} == names

    shutil.copytree(ref, run)  # resume
    for name in ("step4.ckpt", "last.ckpt"):
        (run / "checkpoints" / name).unlink()
    (run / "results.json").unlink()
    with open(run / "csv" / "metrics.csv", "a", newline="") as f:
        f.write("0.5,0.0001,7")  # a row cut off by the kill, no newline
    planted = _plant_unfinished_writes(run / "checkpoints", 4)
    step2 = (run / "checkpoints" / "step2.ckpt").read_bytes()
    caplog.clear()
    res = _train(make_cfg, run, *common)
    assert res["resumed_from"].endswith("step2.ckpt")
    assert not any(p.exists() for p in planted)
    assert all(f"removed an unfinished checkpoint write: {p}" in caplog.text for p in planted)
    assert {p.name for p in (run / "checkpoints").iterdir()} == names
    assert (run / "checkpoints" / "step2.ckpt").read_bytes() == step2 and verify(run / "checkpoints" / "last.ckpt") is None
    want, got = _train_rows(ref), _train_rows(run)
    assert sorted(got) == list(range(4)) and got == want
    val = [int(r["step"]) for r in _rows(run) if r.get("val/en/loss") or r.get("val/ar/loss")]
    assert val == [int(r["step"]) for r in _rows(ref) if r.get("val/en/loss") or r.get("val/ar/loss")]
    assert not list((run / "csv").glob(".tmp-*"))


def test_a_resumed_logger_replaces_only_the_rows_it_logs_again(tmp_path):
    """The logger alone: a stopped command logged steps 0-3 and a validation at step 3; the resumed
    command's first row is the validation of step 3 again (its in-fit validation was cut off), then
    steps 4-5. The training row of step 3 stays; the validation row of step 3 is replaced."""
    from allam.train.callbacks import AppendingCSVLogger

    first = AppendingCSVLogger(str(tmp_path), name="csv", version="")
    for step in range(4):
        first.log_metrics({"train/loss": 10.0 - step}, step=step)
    first.log_metrics({"val/en/loss": 9.5}, step=3)
    with open(first.experiment.metrics_file_path, "a") as f:
        f.write("0,4,")  # cut off by the kill
    second = AppendingCSVLogger(str(tmp_path), name="csv", version="")
    second.log_metrics({"val/en/loss": 9.25}, step=3)
    for step in (4, 5):
        second.log_metrics({"train/loss": 10.0 - step}, step=step)
    second.finalize("success")
    got = [(int(r["step"]), r["train/loss"], r["val/en/loss"]) for r in _rows(tmp_path)]
    assert got == [(0, "10.0", ""), (1, "9.0", ""), (2, "8.0", ""), (3, "7.0", ""), (3, "", "9.25"),
                   (4, "6.0", ""), (5, "5.0", "")]


# --------------------------------------------------------------------------- trainer.compile
_COMPILE_COUNT = """
import copy, json, sys
import torch, torch._dynamo as dynamo
from torch._dynamo.testing import CompileCounter
from transformers import LlamaConfig, LlamaForCausalLM
from allam.model.speed import apply_activation_checkpointing, compile_layers

for checkpointing in sys.argv[1:]:
    dynamo.reset()  # no graph of the previous mode stands in, and the counters start at zero
    dynamo.utils.counters.clear()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                                         num_attention_heads=2, max_position_embeddings=32)).train()
    eager = copy.deepcopy(model)
    names = list(model.state_dict())
    apply_activation_checkpointing(model, checkpointing)
    counter = CompileCounter()  # a Dynamo backend that counts the graphs it is given and runs them eagerly
    compile_layers(model, backend=counter)
    ids = torch.randint(0, 64, (2, 8))
    for m in (model, model, eager):  # a second step compiles nothing new; the eager copy gives the reference
        m(input_ids=ids, labels=ids, use_cache=False).loss.backward()  # as CausalLM calls it
    grads = {n: p.grad for n, p in eager.named_parameters()}
    same = all(torch.allclose(p.grad, 2 * grads[n], atol=1e-6, rtol=1e-5) for n, p in model.named_parameters())
    print(json.dumps({"checkpointing": checkpointing, "frames": counter.frame_count,
                      "graph_breaks": dict(dynamo.utils.counters["graph_break"]),
                      "names_kept": list(model.state_dict()) == names, "grads_match_eager": same,
                      "counters": {k: dict(v) for k, v in dynamo.utils.counters.items() if v}}, default=str))
"""


def test_per_layer_compile_gives_the_layers_one_graph():
    """README *Speed*: the decoder layers share one compiled graph (Dynamo traces the first layer's
    forward, the others reuse it: parameters are inputs), with no graph break; under selective
    activation checkpointing the checkpointed and the plain layers have one graph each, and the
    gradients equal the eager model's. CI counted 1 under selective checkpointing when transformers
    5.25 brought the ``kernels`` package (a graph break at its global; see ``compile_layers``). In a
    fresh process, with Dynamo reset between the two modes: Dynamo's caches are process-wide and
    Hugging Face's layers share one forward code object, so graphs compiled by earlier tests in the
    same worker could stand in."""
    import subprocess
    import sys

    from allam.config import ROOT

    proc = subprocess.run([sys.executable, "-c", _COMPILE_COUNT, "none", "selective"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(line) for line in proc.stdout.strip().splitlines() if line.startswith('{"checkpointing"')]
    assert [r["checkpointing"] for r in runs] == ["none", "selective"], proc.stdout[-3000:]
    for got, graphs in zip(runs, (1, 2)):
        assert got["frames"] == graphs, got
        assert not got["graph_breaks"] and got["names_kept"], got
        assert got["grads_match_eager"], got  # two compiled (and recomputed) steps accumulate twice the eager gradient

