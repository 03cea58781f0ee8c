"""W&B sweeps as W&B's agent runs them, and the SLURM launcher through Hydra's submitit plugin."""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import time

import pytest
import yaml
from omegaconf import OmegaConf

from allam.config import ROOT, validate

TINY = ["model=micro", "data.batch_size=2", "data.val_bytes=3000", "trainer.progress_bar=false", "export=false"]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
CLAIM_AXES = {"init", "tokenizer", "new_embeddings", "lr_recipe", "ar_ratio", "translated_share"}


def agent_argument_lists(spec: dict) -> list[list[str]]:
    """The argument lists W&B's agent passes for ``${args_no_hyphens}``: the grid expanded as the
    controller does, each run's parameters formatted by wandb's own function."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    assert spec["method"] == "grid"
    params = spec["parameters"]
    axes = [[(k, v) for v in (p["values"] if "values" in p else [p["value"]])] for k, p in params.items()]
    return [create_sweep_command_args({"args": {k: {"value": v} for k, v in combo}})["args_no_hyphens"]
            for combo in itertools.product(*axes)]


def test_one_sweep_file_per_claim_axis():
    assert {f.stem for f in SWEEPS} == CLAIM_AXES
    for f in SWEEPS:
        spec = yaml.safe_load(f.read_text())
        assert spec["program"] == "run.py" and spec["command"][-1] == "${args_no_hyphens}", f
        # each agent run gets its own folder, named by the run id the agent sets (runs started in
        # the same second shared outputs/<date>/<time>)
        run_dir = spec["command"][-2]
        assert run_dir.startswith("hydra.run.dir=") and not run_dir.startswith("${"), f
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("WANDB_RUN_ID", "abc123")
            assert OmegaConf.create({"d": run_dir.split("=", 1)[1]}).d == "outputs/sweeps/abc123"


def test_an_agent_run_logs_under_the_run_id_the_agent_gave(tmp_path, monkeypatch):
    """Under an agent the W&B run id is WANDB_RUN_ID (its controller waits for that run); elsewhere
    the run folder's own, made once and read on every resume."""
    from allam.tasks.builders import WANDB_ID_FILE, wandb_run_id

    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    (tmp_path / "a").mkdir()
    own = wandb_run_id(tmp_path / "a")
    assert wandb_run_id(tmp_path / "a") == own == (tmp_path / "a" / WANDB_ID_FILE).read_text().strip()
    monkeypatch.setenv("WANDB_RUN_ID", "agent42")
    (tmp_path / "b").mkdir()
    assert wandb_run_id(tmp_path / "b") == "agent42" == (tmp_path / "b" / WANDB_ID_FILE).read_text().strip()


def test_a_run_ends_its_w_and_b_run_with_its_exit_code_and_gives_back_its_wandb_mode(make_cfg, tmp_path, monkeypatch):
    """A preempted (75) or failed (1) run is not recorded as finished (wandb.finish without a code
    said 0), and the WANDB_MODE a job set is gone for the next job of a multirun."""
    import sys
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from allam.tasks import builders
    from allam.tasks import train as train_task

    finished, seen = [], []
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(run=object(), finish=lambda exit_code: finished.append(exit_code)))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for outcome, code in ((SystemExit(75), 75), (RuntimeError("x"), 1), (None, 0)):
        def fake(cfg, out, outcome=outcome):
            builders.build_logger(OmegaConf.create({"name": "wandb", "project": "p", "entity": None, "mode": "offline",
                                                    "tags": [], "run_name": "r", "group": "g"}), out, {})
            seen.append(os.environ.get("WANDB_MODE"))
            if outcome is not None:
                raise outcome
            return {}
        monkeypatch.setattr(train_task, "_train", fake)
        with pytest.raises(type(outcome)) if outcome is not None else contextlib.nullcontext():
            train_task.run(make_cfg(out=tmp_path / f"run{code}"))
        assert finished[-1] == code and "WANDB_MODE" not in os.environ
    assert seen == ["offline"] * 3
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the user's own stays
    train_task.run(make_cfg(out=tmp_path / "mine"))
    assert seen[-1] == os.environ["WANDB_MODE"] == "disabled"


def test_the_w_and_b_config_is_flat_so_a_swept_group_replaces_nothing(make_cfg):
    """W&B merges an agent's parameters over the run's config key by key: with a nested config a
    swept ``optim=rewarm_cosine`` replaced the whole optim subtree (optim.lr gone) and a swept
    ``data.ar_ratio`` appeared twice. The config is dotted keys plus choices.<group>."""
    from allam.tasks.builders import group_choices, wandb_config

    cfg = make_cfg("optim=rewarm_cosine", "data.ar_ratio=0.2")
    flat = wandb_config(cfg)
    assert not any(isinstance(v, dict) and v for v in flat.values())
    assert flat["data.ar_ratio"] == 0.2 and "optim.lr" in flat and "optim" not in flat and "data" not in flat
    assert {k: v for k, v in flat.items() if k.startswith("choices.")} == {f"choices.{g}": c for g, c in group_choices(cfg).items()}


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.stem)
def test_every_agent_command_composes(sweep, make_cfg):
    """Every run the agent would start composes against the real config and passes validate()."""
    runs = agent_argument_lists(yaml.safe_load(sweep.read_text()))
    assert len(runs) > 1
    for args in runs:
        assert all("=" in a and not a.startswith("-") for a in args), args
        cfg = make_cfg(*args)
        validate(cfg)
        for key, value in (a.split("=", 1) for a in args if "." in a.split("=", 1)[0]):
            assert str(OmegaConf.select(cfg, key)) == value, (sweep.stem, key, value)  # arrived as meant


def _run(args, cache_dir, timeout=300, env=None):
    env = {**os.environ, "ALLAM_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "WANDB_SILENT": "true", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


@pytest.mark.slow  # W&B's service makes this a 30-40 s run; every agent command composes in the fast suite
def test_one_agent_cell_runs_and_is_named_by_its_overrides(tmp_path, cache_dir):
    """One cell of the LR-recipe sweep as the agent starts it (its exact arguments, W&B offline):
    it trains, and its W&B run is named by its overrides and grouped without the seed."""
    spec = yaml.safe_load((ROOT / "sweeps" / "ar_ratio.yaml").read_text())
    spec["parameters"].pop("init.checkpoint")
    spec["parameters"]["experiment"] = {"value": "claim7_mix_only"}  # from scratch: needs no base run
    args = agent_argument_lists(spec)[0]
    args = [a.replace("logger.mode=online", "logger.mode=offline") for a in args]
    out = tmp_path / "cell"
    proc = _run([*args, *TINY, "trainer.max_steps=2", "trainer.val_every_steps=1", f"hydra.run.dir={out}"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "finished" and res["train.steps"] == 2
    assert res["config"]["data"]["ar_ratio"] == 0.2 and res["config"]["data"]["seed"] == 1
    name = ",".join(sorted(a for a in [*args, *TINY[:-2], "trainer.max_steps=2", "trainer.val_every_steps=1", "export=false"]))
    group = ",".join(a for a in name.split(",") if not a.startswith("data.seed="))
    deadline = time.time() + 60  # W&B's service process may still be writing the offline record
    while True:
        run_files = sorted(out.rglob("run-*.wandb"))  # W&B's offline record of the run
        record = b"".join(p.read_bytes() for p in run_files)
        if (name.encode() in record and group.encode() in record) or time.time() > deadline:
            break
        time.sleep(1)
    assert run_files, "no W&B offline run written"
    assert "data.seed=1" in name and name.encode() in record  # named by its overrides (Hydra's override_dirname)
    assert group.encode() in record  # grouped by them without the seed


def test_slurm_launcher_config_composes():
    """hydra/launcher=slurm: the submitit plugin's SLURM launcher with one task per GPU."""
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "trainer=gpu", "trainer.devices=4",
                                           "trainer.num_nodes=2", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert OmegaConf.select(cfg, "hydra.launcher.tasks_per_node") == 4
    assert OmegaConf.select(cfg, "hydra.launcher.gpus_per_node") == 4
    assert OmegaConf.select(cfg, "hydra.launcher.nodes") == 2
    assert launcher.partition == "gpu" and launcher.max_num_timeout > 0


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_two_cell_multirun(tmp_path, cache_dir):
    """The plugin's submitit_local launcher (the SLURM launcher's local twin) runs each cell as a
    submitit job: two cells, two finished runs."""
    sweep = tmp_path / "sweep"
    proc = _run(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "data.ar_ratio=0,1",
                 "trainer.max_steps=2", "logger=none", *TINY, f"hydra.sweep.dir={sweep}"], cache_dir, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted(sweep.glob("*/results.json"))
    assert len(results) == 2
    assert sorted(json.loads(p.read_text())["config"]["data"]["ar_ratio"] for p in results) == [0.0, 1.0]
    assert list((sweep / ".submitit").glob("*/*_result.pkl"))  # ran through submitit
