"""run.py as a user runs it: Hydra multirun over an ablation axis, and DDP across two CPU processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from allam.config import ROOT
from conftest import run_inprocess

TINY = ["model=micro", "data.batch_size=2", "data.val_bytes=3000", "trainer.progress_bar=false", "logger=none",
        "export=false"]


def _run(args, cache_dir, timeout=300):
    env = {**os.environ, "ALLAM_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def test_multirun_sweeps_an_ablation_axis(tmp_path, cache_dir):
    proc = _run(["-m", "data.ar_ratio=0,1", "trainer.max_steps=2", *TINY, f"hydra.sweep.dir={tmp_path}"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted(tmp_path.glob("*/results.json"))
    assert len(results) == 2
    ratios = sorted(json.loads(p.read_text())["data"]["realized_ar_ratio"] for p in results)
    assert ratios == [0.0, 1.0]
    # the report finds the swept axis and tabulates both runs (in this process: its command line is run.py's)
    assert run_inprocess(["task=report", f"report_dir={tmp_path}"], cache_dir, tmp_path / "report") is None
    table = (tmp_path / "report" / "report.md").read_text()
    assert "data.ar_ratio" in table.splitlines()[0] and "val.ar.bpb" in table.splitlines()[0]
    assert len(table.splitlines()) == 4
    assert (tmp_path / "report" / "report.png").stat().st_size > 1000


@pytest.mark.slow  # multi-process training stays in the fast suite through FSDP2 (tests/test_fsdp.py)
def test_ddp_on_two_cpu_processes(tmp_path, cache_dir):
    out = tmp_path / "ddp"
    # with an embedding warm-up for the first step (2 ranks x 2 x 64 tokens): the body's LR is 0, which DDP allows
    proc = _run(["trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=3", "init.embedding_warmup_tokens=256",
                 *TINY, f"hydra.run.dir={out}"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("results: ") == 1  # only global rank 0 reports
    res = json.loads((out / "results.json").read_text())
    assert res["train.tokens"] == 2 * 3 * 2 * 64  # both ranks' tokens
    assert res["data"]["world_size"] == 2
    assert res["val.ar.loss"] > 0 and res["val.en.bpb"] > 0
