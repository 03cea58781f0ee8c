"""The GPU check works the first time it meets a GPU (issue 22, part 1): missing packages and
uncarried wheels are named in its JSON, results come back even when a deadline cuts the run,
failing pieces fall back or are recorded, and random init draws only a rank's own rows."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402


def _blocker(folder: Path, *modules: str) -> Path:
    """A sitecustomize that makes `modules` unimportable, as on an image without them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(f"import sys\nfor n in {modules!r}:\n    sys.modules[n] = None\n")
    return folder


def _lines(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


# --------------------------------------------------------------------------- packages and wheels
def test_missing_module_without_wheels_fails_loudly_in_json(tmp_path):
    """No .whl/ and no hydra: the check stops at once (exit 2) with a JSON line that names the
    missing modules, the wheels to carry and that none were carried, in stdout and under $OUT."""
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    out = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_WHEELS_DIR": str(empty), "OUT": str(out), "PYTHON": sys.executable,
           "PYTHONPATH": str(_blocker(tmp_path / "site", "hydra", "omegaconf"))}
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--cpu-smoke"], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    packages = summary["packages"]
    assert set(packages["missing"]) == {"hydra", "omegaconf"} and packages["carried_wheels"] == []
    assert "hydra-core wheel" in packages["error"] and "no wheels were carried" in packages["error"]
    assert summary["ok"] is False and summary["skipped"] == ["attention", "cross_entropy", "throughput_tiny", "fsdp_run", "dpo_run"]
    assert _lines(out / "checks.jsonl")[0]["check"] == "packages"
    assert json.loads((out / "summary.json").read_text())["packages"]["missing"] == packages["missing"]


def test_gpu_wheels_refuses_above_the_carry_limit(tmp_path):
    """gpu_wheels.sh prints the folder's size and refuses (exit 1, .whl/ removed) over the limit.
    A copy of the script in a throwaway repository, with a pip that only writes a 2 MiB file."""
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    (repo / "benchmarks" / "gpu_wheels.sh").write_text((BENCH / "gpu_wheels.sh").read_text())
    fake = tmp_path / "fakepy"
    fake.write_text("#!/usr/bin/env bash\n"  # `python -m pip show|download|wheel ...`: versions, and one big wheel
                    "if [[ $3 == show ]]; then echo 'Version: 1.0'; exit 0; fi\n"
                    "d=.whl; head -c 2097152 /dev/zero > $d/big-1.0-py3-none-any.whl\n")
    fake.chmod(0o755)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    env = {**os.environ, "PYTHON": str(fake)}
    ok = subprocess.run(["bash", "benchmarks/gpu_wheels.sh"], capture_output=True, text=True, cwd=repo,
                        env={**env, "WHEEL_LIMIT_MIB": "3"}, timeout=60)
    assert ok.returncode == 0 and "wheels: 205" in ok.stdout and (repo / ".whl" / "big-1.0-py3-none-any.whl").exists()
    refused = subprocess.run(["bash", "benchmarks/gpu_wheels.sh"], capture_output=True, text=True, cwd=repo,
                             env={**env, "WHEEL_LIMIT_MIB": "1"}, timeout=60)
    assert refused.returncode == 1 and "exceed the 1 MiB carry limit" in refused.stderr and not (repo / ".whl").exists()
    bare = tmp_path / "barepy"  # a Python without the project's packages: `pip show` finds nothing
    bare.write_text("#!/usr/bin/env bash\nexit 1\n")
    bare.chmod(0o755)
    (repo / ".whl").mkdir()
    (repo / ".whl" / "kept.whl").write_text("from an earlier fetch")
    wrong = subprocess.run(["bash", "benchmarks/gpu_wheels.sh"], capture_output=True, text=True, cwd=repo,
                           env={**os.environ, "PYTHON": str(bare)}, timeout=60)
    assert wrong.returncode == 1 and wrong.stderr.startswith(f"error: hydra-core is not installed for {bare}")
    assert (repo / ".whl" / "kept.whl").exists()  # nothing fetched, nothing removed (it asked pip for hydra-core==)


# --------------------------------------------------------------------------- deadline and partial results
def test_deadline_stops_checks_and_still_writes_the_summary(tmp_path, monkeypatch):
    """A check running into the deadline is killed (its whole process group) and recorded; the
    next is skipped; every finished check's line is on disk at once; the summary says what ran."""
    monkeypatch.setattr(gpu_check, "RESERVE_S", 0)
    monkeypatch.setattr(gpu_check, "MIN_CHECK_S", 1)
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    checks = gpu_check.Checks(out, work, deadline_s=4, mode="cpu-smoke")
    checks.summary["planned"] = ["packages", "attention", "cross_entropy", "fsdp_run"]
    quick = checks.run_json("attention", [sys.executable, "-c", "print('{\"sdpa_vs_eager\": {\"ok\": true}}')"], 60)
    checks.record("attention", quick)
    assert _lines(out / "checks.jsonl")[-1] == {"check": "attention", **quick}  # written before the next check starts
    pidfile = tmp_path / "grandchild.pid"
    t0 = time.monotonic()
    slow = checks.run_json("cross_entropy", ["bash", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], 60)
    assert time.monotonic() - t0 < 10 and "global deadline" in slow["error"]
    grandchild = int(pidfile.read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{grandchild}").exists() or "Z" in Path(f"/proc/{grandchild}/stat").read_text().split()[2]
    checks.record("cross_entropy", slow)
    assert "skipped" in checks.run_json("fsdp_run", [sys.executable, "-c", "print(1)"], 60)
    summary = checks.finish()
    assert summary["ok"] is False and summary["skipped"] == ["packages", "fsdp_run"]  # not reached; reached too late
    assert json.loads((out / "summary.json").read_text())["cross_entropy"]["error"] == slow["error"]
    assert [ln["check"] for ln in _lines(out / "checks.jsonl")] == ["attention", "cross_entropy"]
    assert "===== cross_entropy" in (out / "logs.txt").read_text()


def test_work_folder_must_stay_outside_the_output_folder(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--cpu-smoke", "--out", str(tmp_path),
                           "--work", str(tmp_path / "runs")], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "OUT"})
    assert proc.returncode != 0 and "must stay outside it" in proc.stderr


@pytest.mark.slow
def test_cpu_smoke_under_a_short_deadline_leaves_partial_json(tmp_path):
    """gpu_check.sh --cpu-smoke with a deadline shorter than its run: the checks done before it
    are on disk as JSON lines, the rest are recorded as cut off, and summary.json is written."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPU_CHECK_DEADLINE": "45"}
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--cpu-smoke"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert time.monotonic() - t0 < 90, "the deadline did not stop the run"
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = _lines(out / "checks.jsonl")
    assert lines[0]["check"] == "packages" and len(lines) >= 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] is False and summary["deadline_s"] == 45
    cut = summary["skipped"] + [n for n in ("fsdp_run",) if "error" in summary.get(n, {})]
    assert cut, summary
    assert not any(out.glob("**/*.distcp")) and not (out / "first").exists()  # runs live in the work folder


# --------------------------------------------------------------------------- fallbacks and failing arms
def test_no_bitsandbytes_falls_back_to_fused_adamw(monkeypatch):
    from omegaconf import OmegaConf

    import fallbacks
    import throughput

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    ok, reason = fallbacks.adamw8bit_status("cpu")
    assert not ok and "bitsandbytes does not import" in reason
    cfg = OmegaConf.create({"trainer": {"compile": False}, "optim": {"name": "adamw8bit"}})
    chosen = throughput.choose_fallbacks(cfg, torch.device("cpu"), compiled_arm=False)
    assert chosen["overrides"] == ["optim=adamw"] and "fused AdamW" in chosen["optimizer_fallback"]
    assert chosen["compile_fallback"] is None


def test_failing_compile_probe_turns_compile_off_in_the_training_run():
    extra, named = gpu_check.fallback_overrides({"compile": {"ok": False, "reason": "InductorError: no compiler"}})
    assert extra == ["trainer.compile=false"] and named == {"compile_fallback": "eager: InductorError: no compiler"}
    assert gpu_check.fallback_overrides({"compile": {"ok": True, "reason": "fine"}}) == ([], {})


@pytest.mark.slow
def test_inductor_probe_without_a_compiler_says_eager(tmp_path):
    """No working C++ compiler (CXX=/bin/false, a fresh Inductor cache): the probe answers no, with why."""
    proc = subprocess.run([sys.executable, str(BENCH / "fallbacks.py")], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CXX": "/bin/false", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)})
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    assert probe["compile"]["ok"] is False and "compiler" in probe["compile"]["reason"].lower()


def test_a_failing_arm_is_recorded_and_a_working_one_measured():
    import throughput

    def broken(loader):
        raise RuntimeError("kernel image not found")

    def fine(loader):
        return [0.1 for _ in loader], 1.5

    cpu = torch.device("cpu")
    failed = throughput.measure_arm(broken, lambda: range(3), cpu)
    assert failed["error"] == "RuntimeError: kernel image not found" and failed["traceback_tail"]
    measured = throughput.measure_arm(fine, lambda: range(3), cpu)
    assert measured["step_s"] == [0.1, 0.1, 0.1] and measured["last_loss"] == 1.5 and measured["peak_memory_gib"] >= 0


# --------------------------------------------------------------------------- init speed
def test_random_rows_are_drawn_per_block_and_equal_the_whole():
    """Any slice of rows equals the same rows of the whole tensor, drawing only the blocks it
    overlaps; values depend on the seed and the parameter's name; N(0, std)."""
    from allam.model import weights as W

    shape = (3 * W.ROW_BLOCK + 17, 8)
    whole = W.normal_rows(0, "model.layers.0.mlp.up_proj.weight", shape, 0, shape[0], 0.02)
    for start, stop in [(0, 5), (W.ROW_BLOCK - 3, W.ROW_BLOCK + 3), (2 * W.ROW_BLOCK, shape[0]), (100, 600)]:
        assert torch.equal(W.normal_rows(0, "model.layers.0.mlp.up_proj.weight", shape, start, stop, 0.02), whole[start:stop])
    assert not torch.equal(W.normal_rows(1, "model.layers.0.mlp.up_proj.weight", shape, 0, 5, 0.02), whole[:5])
    assert not torch.equal(W.normal_rows(0, "model.layers.1.mlp.up_proj.weight", shape, 0, 5, 0.02), whole[:5])
    assert abs(whole.std().item() / 0.02 - 1) < 0.05
    drawn = []
    real = torch.randn

    def counting(*a, **k):
        drawn.append(a[0][0] if isinstance(a[0], tuple) else a[0])
        return real(*a, **k)

    import unittest.mock

    with unittest.mock.patch.object(W.torch, "randn", counting):
        W.normal_rows(0, "x", (10 * W.ROW_BLOCK, 4), 5 * W.ROW_BLOCK, 5 * W.ROW_BLOCK + 10, 1.0)
    assert drawn == [W.ROW_BLOCK]  # one block drawn for 10 of 2,560 rows


@pytest.mark.slow
def test_rehearsal_of_the_gpu_image_passes(tmp_path):
    """benchmarks/rehearse_gpu_image.sh: a fresh venv with only the image's packages (from the
    package index) and the carried wheels, then gpu_check.sh --cpu-smoke in it (about 5 minutes)."""
    proc = subprocess.run(["bash", str(BENCH / "rehearse_gpu_image.sh")], capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "OUT": str(tmp_path / "out"), "REHEARSAL_VENV": str(tmp_path / "venv")})
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0 and result["rehearsal"] == "passed", proc.stdout[-3000:]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["ok"]


@pytest.mark.slow
def test_compiled_hf_baseline_matches_the_eager_one():
    """throughput.py's hf_compiled arm (torch.compile of the same HF model) trains with the eager
    arm's losses, and the ratio against it is reported (30 s with a warm Inductor cache, 2 min cold)."""
    proc = subprocess.run([sys.executable, str(BENCH / "throughput.py"), "--model", "tiny", "--steps", "2", "--warmup", "1",
                           "--arms", "hf_loop,hf_compiled,project", "model.hidden_size=64", "model.intermediate_size=128",
                           "model.num_layers=2", "model.num_heads=4", "model.seq_len=64", "model.vocab_size=512",
                           "tokenizer.english_vocab_size=512", "data.batch_size=2"], capture_output=True, text=True, timeout=1200, cwd=ROOT)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["hf_compiled"]["tokens_per_s"] > 0 and out["compile_fallback"] is None
    assert abs(out["hf_compiled"]["last_loss"] - out["hf_loop"]["last_loss"]) < 1e-3
    assert out["ratio_project_vs_hf_compiled"] > 0
