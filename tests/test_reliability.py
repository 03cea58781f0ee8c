"""Reliability as a cluster user meets it: preemption signals checkpoint and exit non-zero,
non-finite numbers stop (or are skipped), checkpoints are complete or absent, a refused command
never touches a finished run, two commands never share a run directory, and every bad input ends
in one line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from allam.config import ROOT

from conftest import run_inprocess

SMALL = ["model=micro", "data.batch_size=2", "data.val_bytes=2000", "trainer.progress_bar=false",
         "trainer.log_every_n_steps=1", "logger=csv"]


def _env(cache_dir) -> dict:
    return {**os.environ, "ALLAM_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
            "WANDB_API_KEY": "", "NETRC": "/nonexistent"}


def _cmd(args) -> list[str]:
    return [sys.executable, str(ROOT / "run.py"), *args]


def _one_line_error(proc) -> str:
    """The last line of a failed command (a subprocess, or the line run_inprocess returns)."""
    if proc is None or isinstance(proc, str):
        assert proc is not None and proc.startswith("error: ") and "\n" not in proc, proc
        return proc
    assert proc.returncode != 0
    last = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1]
    assert last.startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return last


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def _snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run directory (Hydra's own per-command folder aside) with its bytes."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and ".hydra" not in p.parts and p.name != "run.log"}


# --------------------------------------------------------------------------- preemption
@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGUSR1, marks=pytest.mark.slow),
                                 pytest.param(signal.SIGUSR2, marks=pytest.mark.slow),
                                 pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_signals_checkpoint_at_a_step_boundary_and_exit_75(tmp_path, cache_dir, sig):
    run = tmp_path / "run"
    args = [*SMALL, "trainer.max_steps=100000", f"hydra.run.dir={run}"]
    proc = subprocess.Popen(_cmd(args), cwd=ROOT, env=_env(cache_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = run / "csv" / "metrics.csv"
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") > 3):
        time.sleep(0.5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    res = _results(run)
    assert res["status"] == "preempted" and res["train.steps"] > 0
    ckpt = run / "checkpoints" / "last.ckpt"
    meta = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    assert meta["global_step"] == res["train.steps"]
    assert "allam" in meta and meta["allam"]["config"]["model"]["hidden_size"] == 64
    assert not list((run / "checkpoints").glob(".tmp-*"))
    if sig == signal.SIGTERM:  # the same command continues the run to its end
        assert run_inprocess([*SMALL, f"trainer.max_steps={res['train.steps'] + 3}"], cache_dir, run) is None
        done = _results(run)
        assert done["status"] == "finished" and done["train.steps"] == res["train.steps"] + 3
        assert done["resumed_from"].endswith("last.ckpt")


# --------------------------------------------------------------------------- non-finite numbers
def test_nonfinite_loss_stops_with_one_line_and_exports_nothing(tmp_path, cli):
    """...and a run that failed inside fit leaves the process's stop-signal handlers as it found
    them (Lightning's teardown, after on_exception, put the run's handler back: Ctrl+C in the same
    process, e.g. the next job of a multirun, then asked a finished run to stop)."""
    import signal

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    run = tmp_path / "run"
    line = _one_line_error(cli(*SMALL, "trainer.max_steps=6", "optim.lr=1e6", "optim.warmup_steps=0"))
    assert {s: signal.getsignal(s) for s in before} == before
    assert "non-finite" in line and "at step" in line and "last good checkpoint" in line
    res = _results(run)
    assert res["status"] == "failed" and "non-finite" in res["error"]
    assert not (run / "hf").exists()


def test_nonfinite_skip_keeps_weights_finite(tmp_path, cli):
    run = tmp_path / "run"
    assert cli(*SMALL, "trainer.max_steps=6", "optim.lr=1e6", "optim.warmup_steps=0", "train.nonfinite=skip",
               "train.max_nonfinite_skips=10") is None
    res = _results(run)
    assert res["status"] == "finished" and res["train.nonfinite_skips"] >= 1
    from safetensors.torch import load_file

    weights = load_file(str(run / "hf" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    # with a smaller limit the same run stops, naming the limit
    again = cli(*SMALL, "trainer.max_steps=6", "optim.lr=1e6", "optim.warmup_steps=0", "train.nonfinite=skip",
                "train.max_nonfinite_skips=1", f"hydra.run.dir={tmp_path / 'again'}")
    assert "train.max_nonfinite_skips" in _one_line_error(again)


# --------------------------------------------------------------------------- atomic checkpoints
def test_a_failed_checkpoint_write_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    from allam.train import checkpointing

    path = tmp_path / "checkpoints" / "last.ckpt"
    checkpointing.atomic_torch_save({"global_step": 1, "w": torch.ones(3)}, path)
    good = path.read_bytes()

    def broken(obj, f):
        f.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpointing.torch, "save", broken)
    with pytest.raises(OSError):
        checkpointing.atomic_torch_save({"global_step": 2}, path)
    assert path.read_bytes() == good  # the previous checkpoint, untouched
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no orphan


def test_newest_valid_checkpoint_passes_over_broken_ones(tmp_path, make_cfg):
    from allam.tasks import train as train_task
    from allam.train.checkpointing import newest_valid, verify

    run = tmp_path / "run"
    train_task.run(make_cfg(*SMALL[:1], "data.batch_size=2", "data.val_bytes=2000", "trainer.max_steps=4",
                            "trainer.checkpoint_every_steps=2", "export=false", out=run))
    ckpts = run / "checkpoints"
    assert verify(ckpts / "step2.ckpt") is None and verify(ckpts / "last.ckpt") is None
    (ckpts / "step4.ckpt").write_bytes((ckpts / "step4.ckpt").read_bytes()[:1000])  # truncated
    (ckpts / "last.ckpt").write_bytes(b"")  # empty
    (ckpts / ".tmp-step6.ckpt.123").write_bytes(b"junk")  # an unfinished write
    best, skipped = newest_valid(ckpts)
    assert best == ckpts / "step2.ckpt"
    assert any("step4.ckpt" in s and "unreadable" in s for s in skipped)
    assert any("last.ckpt" in s and "empty" in s for s in skipped)


# --------------------------------------------------------------------------- resume safety
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache_dir):
    """One finished 3-step run for the module; tests that change a run copy it first."""
    run = tmp_path_factory.mktemp("done")
    assert run_inprocess([*SMALL, "trainer.max_steps=3", "trainer.checkpoint_every_steps=3"], cache_dir, run) is None
    return run


def test_refused_commands_never_touch_a_finished_run(tmp_path, cache_dir, finished_run):
    run = finished_run
    before = _snapshot(run)
    ckpt = run / "checkpoints" / "last.ckpt"
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[:5000])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.ones(2)}, foreign)
    cases = {
        "changed optimizer": (["optim.lr=5e-4"], "optim.lr"),
        "changed model shape": (["model.hidden_size=128", "model.num_heads=4"], "does not fit"),
        "missing ckpt": ([f"ckpt={tmp_path / 'nope.ckpt'}"], "no such file"),
        "truncated ckpt": ([f"ckpt={truncated}"], "unreadable"),
        "foreign ckpt": ([f"ckpt={foreign}"], "allam model weights"),
        "folder ckpt": ([f"ckpt={tmp_path}"], "not a sharded checkpoint"),
        "never": (["run.resume=never"], "already holds a run"),
    }
    for name, (extra, expected) in cases.items():
        args = [*SMALL, "trainer.max_steps=3", *extra, f"hydra.run.dir={run}"]
        if name == "changed model shape":
            args = [a for a in args if not a.startswith("model.hidden_size")] + extra
        line = _one_line_error(run_inprocess(args, cache_dir, run))
        assert expected in line, (name, line)
        assert _snapshot(run) == before, name  # nothing written, deleted or overwritten


def test_changed_data_is_refused_before_writing(cache_dir, finished_run):
    before = _snapshot(finished_run)
    line = _one_line_error(run_inprocess([*SMALL, "trainer.max_steps=6", "data.ar_ratio=0.7"], cache_dir,
                                         finished_run))
    assert "data.ar_ratio" in line
    assert _snapshot(finished_run) == before


def test_a_longer_budget_continues_the_run(tmp_path, cache_dir, finished_run):
    import shutil

    finished_run = Path(shutil.copytree(finished_run, tmp_path / "copy"))
    assert run_inprocess([*SMALL, "trainer.max_steps=5"], cache_dir, finished_run) is None
    res = _results(finished_run)
    assert res["train.steps"] == 5 and res["config"]["trainer"]["max_steps"] == 5  # the record says what ran
    import csv

    rows = list(csv.DictReader((finished_run / "csv" / "metrics.csv").open()))
    steps = {int(r["step"]) for r in rows if r.get("train/loss")}
    assert {0, 2, 4} <= steps  # the csv was continued, not restarted


def test_one_command_at_a_time_in_a_run_directory(tmp_path, cli):
    run = tmp_path / "run"
    run.mkdir()
    import socket

    (run / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}))
    line = _one_line_error(cli(*SMALL, "trainer.max_steps=1"))
    assert f"in use by pid {os.getpid()}" in line
    # a lock whose process is gone is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "since": "then"}))
    assert cli(*SMALL, "trainer.max_steps=1", "export=false") is None
    assert not (run / ".lock").exists()


# --------------------------------------------------------------------------- one line for every bad input
@pytest.mark.parametrize("args, expected", [
    (["trainer=gpu"], "no CUDA GPU"),
    (["logger=wandb", "logger.mode=online"], "no W&B credentials"),
    (["model=7b"], "run.memory_check=false"),
    (["model.seq_len=100000", "model.max_position_embeddings=100000"], "needs about"),
    (["trainer.checkpoint_every_steps=-2"], "trainer.checkpoint_every_steps=-2: must be positive"),
    (["trainer.val_every_steps=-1"], "trainer.val_every_steps=-1: must be positive"),
    (["paths.cache_dir=/proc/allam-cache"], "paths.cache_dir=/proc/allam-cache: cannot write there"),
    (["tokenizer=bilingual", "tokenizer.vocab_size=50"], "tokenizer.vocab_size=50: below the"),
])
def test_bad_inputs_end_in_one_line(cli, args, expected):
    # the memory cases keep the default model and batch (the shapes a user would try)
    big = any(a.startswith(("model=", "model.seq_len")) for a in args)
    base = [a for a in SMALL if not a.startswith(("model=", "data.batch_size"))] if big else SMALL
    assert expected in _one_line_error(cli(*base, "trainer.max_steps=1", *args))


def test_bad_files_end_in_one_line(tmp_path, cli):
    bad = tmp_path / "notes.parquet"
    bad.write_text("not parquet at all")
    line = _one_line_error(cli(*SMALL, "trainer.max_steps=1", f"+data.sources.notes={{lang: en, loader: parquet, path: {bad}}}"))
    assert "data.sources.notes.path=" in line
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "is a file, not a folder" in _one_line_error(cli(*SMALL, f"hydra.run.dir={afile}"))


# --------------------------------------------------------------------------- exactness under kills
@pytest.mark.slow
def test_killed_and_resumed_runs_equal_the_uninterrupted_run(tmp_path, cache_dir):
    """experiments/kill_resume.py: SIGKILL at random moments and during checkpoint writes, SIGTERM;
    every resumed run ends with weights, optimizer state, training rows and token counts equal to
    an uninterrupted run's (validation rows may lack a point a SIGTERM cut off: see the README)."""
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "kill_resume.py"), "--trials", "2", "--steps",
                           "10", "--seed", "3", "--cache", str(cache_dir), "--workdir", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=900, cwd=ROOT, env=_env(cache_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["failures"] == [] and report["trials"] == 2
    equal = report["equal"]
    assert [equal[k] for k in ("weights", "optimizer_state", "metrics_csv_train_rows", "results_tokens_steps_val")] == [2] * 4
    assert report["kills"] >= 2 and report["corrupt_checkpoints"] == 0 and report["duplicate_csv_steps"] == 0
    assert report["kills_by_kind"]["sigterm"] == report["sigterm_exit_75"]
    assert report["unfinished_writes_after_final_run"] == 0
