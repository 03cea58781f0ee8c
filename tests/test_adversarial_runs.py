"""Run-lifecycle failures an adversarial trial found (issue 22, part 5), each ending in one line
with nothing lost, or working: resumes across trainer kinds, long sequences, damaged weight
files, a full disk, exports of damaged or missing checkpoints, an unreachable W&B host, stops
during the final validation or export, and the gradient norm in the metrics. In-process (real
Trainer, tiny model) except where a process boundary is what is tested."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from allam.config import CONF_DIR, ConfigError

SMALL = ["model.hidden_size=64", "model.intermediate_size=128", "model.num_layers=2", "model.num_heads=4",
         "model.seq_len=64", "data.batch_size=2", "data.val_bytes=2000", "trainer.progress_bar=false",
         "trainer.log_every_n_steps=1", "logger=csv"]


def _cfg(out: Path, cache_dir: Path, *overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        return compose("config", overrides=[f"paths.output_dir={out}", f"paths.cache_dir={cache_dir}", *SMALL,
                                            *overrides])


def _train(out: Path, cache_dir: Path, *overrides: str) -> dict:
    from allam.tasks import train

    return train.run(_cfg(out, cache_dir, *overrides))


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text, text
    return text


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache_dir) -> Path:
    """One finished 3-step CPU run (checkpoints at step 2 and 3, an export), shared read-only:
    tests that change a run work on a copy."""
    out = tmp_path_factory.mktemp("adv") / "done"
    res = _train(out, cache_dir, "trainer.max_steps=3", "trainer.checkpoint_every_steps=2")
    assert res["status"] == "finished"
    return out


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(".lock"))
    return dest


# --------------------------------------------------------------------------- resume across trainer kinds
FSDP_ON_CPU = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true",
               "logger=csv"]


def test_cpu_checkpoint_into_fsdp_trainer_is_refused_before_writing(finished, cache_dir):
    before = _snapshot(finished)
    with pytest.raises(ConfigError) as err:
        _train(finished, cache_dir, "trainer.max_steps=3", "trainer.checkpoint_every_steps=2", *FSDP_ON_CPU)
    line = _one_line(err.value)
    assert "single-file checkpoint" in line and "task=export" in line and "init=pretrained" in line, line
    assert _snapshot(finished) == before  # config.yaml, results and checkpoints untouched


def _as_sharded_folder(ckpt: Path, folder: Path) -> None:
    """The folder an FSDP2 run saves (torch.distributed.checkpoint tensors, meta.pt, COMPLETE),
    made from a single-file checkpoint's contents."""
    import torch.distributed.checkpoint as dcp

    from allam.train.checkpointing import MARKER, read_meta

    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    dcp.save({"state_dict": state}, checkpoint_id=str(folder), no_dist=True)
    torch.save(read_meta(ckpt), folder / "meta.pt")
    (folder / MARKER).write_text("ok\n")


def test_fsdp_folder_into_cpu_trainer_is_refused_before_writing(finished, cache_dir, tmp_path):
    from allam.train.checkpointing import verify

    run = _copy(finished, tmp_path / "sharded")
    for p in (run / "checkpoints").iterdir():
        p.unlink()
    _as_sharded_folder(finished / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")
    assert verify(run / "checkpoints" / "last.ckpt") is None  # a complete sharded checkpoint
    before = _snapshot(run)
    with pytest.raises(ConfigError) as err:
        _train(run, cache_dir, "trainer.max_steps=3", "trainer.checkpoint_every_steps=2")
    line = _one_line(err.value)
    assert "sharded FSDP checkpoint folder" in line and "single .ckpt files" in line, line
    assert _snapshot(run) == before
