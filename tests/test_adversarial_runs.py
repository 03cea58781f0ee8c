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


# --------------------------------------------------------------------------- long sequences, stop requests
def test_long_sequences_are_refused_by_the_preflight(make_cfg):
    from allam.tasks.preflight import check_memory

    for seq in (32768, 100000):
        cfg = make_cfg(f"model.seq_len={seq}", "trainer.max_steps=1")
        with pytest.raises(ConfigError) as err:
            check_memory(cfg, 8192)
        line = _one_line(err.value)
        assert "model.seq_len" in line and "run.memory_check=false" in line, line
    check_memory(make_cfg("trainer.max_steps=1"), 8192)  # the default tiny run passes


def test_every_experiment_passes_the_preflight_on_its_hardware(make_cfg):
    """CPU experiments pass the memory and step-time checks here; the GPU ones get no step-time
    check and no eager-attention term (their attention is memory-efficient)."""
    from allam.config.derived import device_type
    from allam.model.plan import attention_score_bytes
    from allam.tasks.preflight import check_memory, check_step_time

    names = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
    assert len(names) > 10
    for name in names:
        cfg = make_cfg(f"experiment={name}")
        if device_type(cfg.trainer) == "cpu":
            check_memory(cfg, 16384)
        else:
            check_step_time(cfg, 1e30)  # not checked off the CPU
            assert str(cfg.model.attention) != "eager"
            assert attention_score_bytes(str(cfg.model.attention), 1, 32, cfg.model.seq_len, 2, 1) == 0


def test_eager_attention_scores_grow_with_the_square_of_the_sequence(make_cfg):
    from allam.model.plan import make_plan

    def activations(seq, attention):
        cfg = make_cfg(f"model.seq_len={seq}", f"model.attention={attention}")
        plan = make_plan(cfg.model, cfg.trainer, batch_size=1, optimizer="adamw", vocab_size=8192, world=1,
                         tokens_per_step=seq)
        return plan.memory_gib["activations"]

    m = make_cfg().model
    extra = activations(2048, "eager") - activations(2048, "sdpa")
    assert extra == pytest.approx(2 * m.num_heads * 2048**2 * 4 * m.num_layers / 1024**3)
    assert activations(4096, "sdpa") == pytest.approx(2 * activations(2048, "sdpa"))  # linear without eager


def _preemption(ckpts: Path, grace: float):
    from allam.train.guards import Preemption

    p = Preemption(ckpts, grace_s=grace)
    calls = []
    p._exit = calls.append
    return p, calls


def test_a_stop_request_waits_at_most_the_grace_or_until_a_second_signal(finished, monkeypatch, capsys):
    import os
    import signal
    import time

    from allam.train import guards

    ckpts = finished / "checkpoints"
    p, calls = _preemption(ckpts, 0.3)  # a step that never reaches its boundary
    p.request_stop("SIGTERM")
    time.sleep(1.0)
    assert calls == [guards.EXIT_PREEMPTED]
    p._reached_boundary()  # the real exit would have ended the process: the wakeup fd is this test's to reset
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no step boundary within 0 s of SIGTERM" in err[0] and "last.ckpt" in err[0], err

    p, calls = _preemption(ckpts, 0.3)  # the boundary is reached in time: no exit
    p.request_stop("SIGTERM")
    p._reached_boundary()
    time.sleep(0.6)
    assert calls == []

    monkeypatch.setattr(guards, "REPEAT_AFTER_S", 0.0)
    previous = signal.signal(signal.SIGUSR2, lambda *a: None)  # a Python handler: the C handler writes the wakeup fd
    try:
        p, calls = _preemption(ckpts, 60.0)
        p.request_stop("SIGTERM")
        t0 = time.monotonic()
        os.kill(os.getpid(), signal.SIGUSR2)
        while not calls and time.monotonic() - t0 < 5:
            time.sleep(0.05)
        assert calls == [guards.EXIT_PREEMPTED] and time.monotonic() - t0 < 5
        assert "second signal SIGUSR2" in capsys.readouterr().err
        p._reached_boundary()
    finally:
        signal.signal(signal.SIGUSR2, previous)


# --------------------------------------------------------------------------- a stop after training
RUN2 = ["trainer.max_steps=2", "trainer.checkpoint_every_steps=2", "trainer.val_every_steps=1000"]


def test_a_stop_during_the_final_validation_says_what_is_complete(tmp_path, cache_dir, monkeypatch, capsys):
    import os
    import signal

    from allam.train.module import CausalLM

    real = CausalLM.validation_step

    def stopped_once(self, *args, **kwargs):  # SIGTERM arrives inside the validation after fit
        if self.trainer.state.fn == "validate" and not getattr(CausalLM, "_sent", False):
            CausalLM._sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(CausalLM, "validation_step", stopped_once)
    monkeypatch.setattr(CausalLM, "_sent", False, raising=False)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:  # validation at step 2 in fit, the final one after fit
        _train(out, cache_dir, "trainer.max_steps=3", "trainer.val_every_steps=2")
    assert stop.value.code == 75
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "SIGTERM: stopped during the final validation: checkpoint at step 3 is complete" in line, line
    assert "run the same command again to finish" in line
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "preempted" and res["stopped_during"] == "final validation"
    assert res["checkpoint"].endswith("last.ckpt")


def test_a_stop_during_the_export_leaves_no_partial_folder_and_the_same_command_finishes(
        tmp_path, cache_dir, monkeypatch, capsys):
    import os
    import signal

    from allam.model import export

    real = export.write_hf_folder

    def stopped(tensors, config, out, **kw):
        def stream():
            for i, item in enumerate(tensors):
                if i == 2:
                    os.kill(os.getpid(), signal.SIGTERM)  # the export is writing
                yield item
        return real(stream(), config, out, **kw)

    monkeypatch.setattr(export, "write_hf_folder", stopped)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        _train(out, cache_dir, *RUN2)
    assert stop.value.code == 75
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "stopped during the export: checkpoint at step 2 is complete" in line, line
    assert json.loads((out / "results.json").read_text())["status"] == "preempted"
    assert not list((out / "hf").glob("*.safetensors")) and not list((out / "hf").glob("part-*"))
    monkeypatch.setattr(export, "write_hf_folder", real)
    res = _train(out, cache_dir, *RUN2)  # the same command again: nothing to train, validate and export
    assert res["status"] == "finished" and res["train.steps"] == 2
    assert (out / "hf" / "model.safetensors").exists()
    assert json.loads((out / "results.json").read_text())["status"] == "finished"


# --------------------------------------------------------------------------- a full disk
def test_a_full_disk_during_a_checkpoint_save_fails_in_one_line_keeping_the_earlier_ones(
        tmp_path, cache_dir, monkeypatch):
    import errno

    from allam.config import RunFailed
    from allam.train.checkpointing import TMP, verify

    real, saves = torch.save, []

    def full_after_one(obj, f, *a, **kw):
        if "checkpoints" in str(getattr(f, "name", "")):
            saves.append(f.name)
            if len(saves) > 1:
                f.write(b"x" * 1000)  # part of the file is written, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_after_one)
    out = tmp_path / "run"
    with pytest.raises(RunFailed) as err:
        _train(out, cache_dir, "trainer.max_steps=3", "trainer.checkpoint_every_steps=1")
    line = _one_line(err.value)
    assert "No space left on device" in line and "GiB free in" in line and str(out / "checkpoints") in line, line
    assert "earlier checkpoints are complete" in line
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "failed" and "No space left" in res["error"]
    assert verify(out / "checkpoints" / "step1.ckpt") is None  # the checkpoint before is whole
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(TMP)]  # no partial write left


# --------------------------------------------------------------------------- task=export of damaged or missing checkpoints
def _export(cfg_out: Path, cache_dir: Path, ckpt) -> dict:
    from allam.tasks import export

    return export.run(_cfg(cfg_out, cache_dir, "task=export", f"ckpt={ckpt}"))


def test_export_names_a_damaged_or_missing_checkpoint(finished, tmp_path, cache_dir):
    run = _copy(finished, tmp_path / "copy")
    step2 = run / "checkpoints" / "step2.ckpt"
    step2.write_bytes(step2.read_bytes()[:4000])  # truncated inside its run directory
    with pytest.raises(ConfigError) as err:
        _export(tmp_path / "x", cache_dir, step2)
    line = _one_line(err.value)
    assert line.startswith(f"ckpt={step2}: unreadable"), line

    res = _export(tmp_path / "y", cache_dir, run)  # a run directory: its newest valid checkpoint
    assert res["ckpt"].endswith("last.ckpt") and (tmp_path / "y" / "hf" / "model.safetensors").exists()

    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").mkdir()
    for target in (run, run / "checkpoints"):
        with pytest.raises(ConfigError) as err:
            _export(tmp_path / "z", cache_dir, target)
        line = _one_line(err.value)
        assert "a run directory with no complete checkpoint" in line and "model_config.json" not in line, line


# --------------------------------------------------------------------------- damaged pretrained weights
def _hf_folder(folder: Path, max_shard_bytes: int) -> list[str]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from allam.model.export import write_hf_folder

    cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg)
    write_hf_folder(model.state_dict().items(), model.config, folder, max_shard_bytes=max_shard_bytes)
    return sorted(p.name for p in folder.glob("*.safetensors"))


def test_damaged_safetensors_name_the_file_and_the_tensor(tmp_path):
    from allam.model.weights import PretrainedWeights, SafetensorsFolder

    sharded = tmp_path / "sharded"
    files = _hf_folder(sharded, 40_000)
    assert len(files) > 2
    assert len(SafetensorsFolder(sharded).files) > 10  # whole: reads
    index = json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    gone = files[1]
    (sharded / gone).unlink()
    with pytest.raises(ConfigError) as err:
        PretrainedWeights(sharded)
    line = _one_line(err.value)
    in_it = [k for k, v in index.items() if v == gone]
    assert line.startswith(f"init.checkpoint={sharded}: {gone} is missing") and in_it[0] in line, line

    single = tmp_path / "single"
    _hf_folder(single, 10**9)
    f = single / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError) as err:
        SafetensorsFolder(single)
    line = _one_line(err.value)
    assert "model.safetensors is truncated" in line and "tensor model." in line and "cut off" in line, line
    f.write_bytes(data[:5])
    with pytest.raises(ConfigError) as err:
        SafetensorsFolder(single)
    assert "header incomplete" in _one_line(err.value)


def test_a_truncated_pretrained_checkpoint_stops_a_run_in_one_line(english_checkpoint, tmp_path, cache_dir):
    folder = Path(shutil.copytree(english_checkpoint, tmp_path / "damaged"))  # the session's checkpoint stays whole
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(ConfigError) as err:
        _train(tmp_path / "run", cache_dir, "init=pretrained", f"init.checkpoint={folder}",
               "trainer.max_steps=1", "model.hidden_size=64", "model.intermediate_size=128", "model.num_heads=4")
    assert "model.safetensors is truncated" in _one_line(err.value)


# --------------------------------------------------------------------------- W&B without a network
def test_online_wandb_with_an_unreachable_server_ends_in_one_line(monkeypatch):
    import socket
    import time

    from omegaconf import OmegaConf

    from allam.tasks.preflight import check_wandb_login

    with socket.socket() as s:  # a localhost port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k in ("WANDB_MODE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    logger = OmegaConf.create({"name": "wandb", "mode": "online"})
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as err:
        check_wandb_login(logger)
    line = _one_line(err.value)
    assert line.startswith("logger.mode=online: cannot reach W&B at http://127.0.0.1:") and "logger.mode=offline" in line
    assert time.monotonic() - t0 < 10
    with socket.socket() as server:  # a server that answers: the check passes
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        check_wandb_login(logger)


def test_a_self_hosted_w_and_b_login_is_found_where_wandb_keeps_it(monkeypatch, tmp_path):
    """`wandb login --host https://wandb.corp.example` writes a netrc entry for that host and its
    base_url into wandb's settings: the credentials check reads both (it asked for api.wandb.ai)."""
    from omegaconf import OmegaConf

    from allam.tasks.preflight import check_wandb_login, wandb_base_url

    for k in ("WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")  # the reachability check is the test above's
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb"))
    (tmp_path / "netrc").write_text("machine wandb.corp.example\n  login user\n  password " + "k" * 40 + "\n")
    (tmp_path / "wandb").mkdir()
    logger = OmegaConf.create({"name": "wandb", "mode": "online"})
    with pytest.raises(ConfigError, match=r"no api\.wandb\.ai entry in ~/\.netrc"):
        check_wandb_login(logger)  # the default server: this netrc has no login for it
    (tmp_path / "wandb" / "settings").write_text("[default]\nbase_url = https://wandb.corp.example\n")
    assert wandb_base_url() == "https://wandb.corp.example"
    check_wandb_login(logger)
    # the workspace settings (./wandb/settings, or ./.wandb/ where it exists) win over the global file, as in wandb
    (tmp_path / "project" / "wandb").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "project")
    (tmp_path / "project" / "wandb" / "settings").write_text("[default]\nbase_url = https://local.example\n")
    from wandb.sdk.wandb_settings import Settings

    def wandb_reads() -> str:  # what wandb itself makes of the same files
        settings = Settings(settings_system=str(tmp_path / "wandb" / "settings"))
        settings.update_from_system_settings()
        return settings.base_url

    assert wandb_base_url() == wandb_reads() == "https://local.example"
    (tmp_path / "project" / ".wandb").mkdir()
    assert wandb_base_url() == wandb_reads() == "https://wandb.corp.example"  # .wandb/settings then, which has none
    monkeypatch.setenv("WANDB_BASE_URL", "https://other.example")  # the environment wins, as in wandb
    with pytest.raises(ConfigError, match=r"no other\.example entry"):
        check_wandb_login(logger)
    # a server on a port (the local server's default): wandb keeps the login under host:port
    (tmp_path / "netrc").write_text("machine localhost:8080\n  login user\n  password " + "k" * 40 + "\n")
    monkeypatch.setenv("WANDB_BASE_URL", "http://localhost:8080")
    check_wandb_login(logger)


# --------------------------------------------------------------------------- the gradient norm
def test_the_gradient_norm_is_logged_every_step(finished):
    rows = [r for r in csv.DictReader((finished / "csv" / "metrics.csv").open()) if r.get("train/grad_norm")]
    assert sorted(int(r["step"]) for r in rows) == [0, 1, 2]
    norms = [float(r["train/grad_norm"]) for r in rows]
    assert all(n > 0 and n == n and n != float("inf") for n in norms), norms


def test_a_re_export_that_stops_or_fills_the_disk_keeps_the_earlier_export(tmp_path, monkeypatch):
    """Exporting into a folder that holds an earlier export (a finished run extended): the earlier
    weights go only once the new ones are complete, so a stop or a full disk leaves a loadable
    folder (results.json still points at it); a full disk is one line. The weights are stored with
    their dtype in config.json and are readable as the folder's other files are."""
    import errno

    from safetensors.torch import load_file
    from transformers import LlamaConfig

    from allam.config import RunFailed
    from allam.model import export

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    first = {"model.embed_tokens.weight": torch.ones(64, 16, dtype=torch.bfloat16), "lm_head.weight": torch.ones(64, 16, dtype=torch.bfloat16)}
    out = export.write_hf_folder(first.items(), cfg, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~export._umask()

    def stream(stop_at: int, exc: BaseException):
        for i, (name, t) in enumerate(first.items()):
            if i == stop_at:
                raise exc
            yield name, torch.zeros_like(t)

    with pytest.raises(KeyboardInterrupt):
        export.write_hf_folder(stream(1, KeyboardInterrupt()), cfg, out, max_shard_bytes=1)
    assert torch.equal(load_file(out / "model.safetensors")["lm_head.weight"], first["lm_head.weight"])
    assert not list(out.glob("part-*"))

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", full)
    with pytest.raises(RunFailed, match=r"^export to .*hf failed \(No space left on device; [\d.]+ GiB free there\); "
                                        r"an earlier export in that folder is kept$"):
        export.write_hf_folder(((n, torch.zeros_like(t)) for n, t in first.items()), cfg, out)
    assert torch.equal(load_file(out / "model.safetensors")["lm_head.weight"], first["lm_head.weight"])
    assert not list(out.glob("part-*"))
