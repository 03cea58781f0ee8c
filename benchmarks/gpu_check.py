"""Everything GPU-only, checked in one go (benchmarks/gpu_check.sh runs this; see it for the wheels a
bare GPU machine needs). Each check runs in its own process with a time limit; the last line
printed is one JSON summary with each check's JSON and the issue's targets marked true/false.

1. attention backends agree (benchmarks/attention_check.py): sdpa vs eager; xformers where its
   kernels load, else the reason;
2. the loss implementations (benchmarks/cross_entropy.py): plain vs chunked vs Liger's fused;
3. throughput (benchmarks/throughput.py): ``--model 1b`` (seq 2048) and ``--model 7b`` (seq 4096,
   bf16, AdamW8bit, activation checkpointing), one GPU;
4. a 20-step FSDP2 training run on synthetic text (the demo corpora need not be installed) with
   sharded checkpoints every 10 steps, a resume from step 10 whose losses must repeat the first
   run's, the run's own export and ``task=export`` of the step-10 checkpoint, both loaded back with
   ``AutoModelForCausalLM``.

``--cpu-smoke``: the same on the CPU with tiny shapes (tests/test_speed.py runs it).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(ROOT))

TINY = ["model.hidden_size=64", "model.intermediate_size=128", "model.num_layers=2", "model.num_heads=4",
        "model.seq_len=64"]
# (mode) -> the commands of checks 1-3 and the FSDP run's overrides
PLANS = {
    "gpu": {
        "attention": ["--device", "cuda", "--dtype", "bfloat16", "--seq", "1024"],
        "cross_entropy": ["--device", "cuda", "--dtype", "bfloat16", "--tokens", "16384", "--hidden", "2048",
                          "--vocab", "32000", "--chunk", "1024"],
        # the raw-loop arm (Lightning's overhead, a CPU target) is left out to stay within 8 minutes
        "throughput": {"1b": ["--model", "1b", "--arms", "hf_loop,project"],
                       "7b": ["--model", "7b", "--arms", "hf_loop,project"]},
        "fsdp": ["trainer=fsdp", "trainer.devices=1", "model=1b", "model.num_layers=4", "data.batch_size=4",
                 "trainer.compile=true", "model.activation_checkpointing=selective", "tokenizer.english_vocab_size=2048"],
        "resume_tolerance": 5e-2,  # bf16 kernels need not be bitwise deterministic
        "timeout": 420,
    },
    "cpu-smoke": {
        "attention": ["--seq", "64"],
        "cross_entropy": ["--tokens", "512", "--hidden", "64", "--vocab", "4096", "--chunk", "128"],
        "throughput": {"tiny": ["--model", "tiny", "--steps", "2", "--warmup", "1", *TINY, "model.vocab_size=512",
                                "data.batch_size=2"]},
        "fsdp": ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.devices=1", *TINY,
                 "data.batch_size=2", "tokenizer.english_vocab_size=512", "data.val_bytes=4000",
                 "model.activation_checkpointing=selective"],
        "resume_tolerance": 1e-5,
        "timeout": 300,
    },
}


def last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def run_json(args: list[str], timeout: int, log: Path) -> dict:
    """Run a command; its last JSON line, or what went wrong (with the tail of stderr)."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        log.write_text(f"{exc.stdout or ''}\n{exc.stderr or ''}")
        return {"error": f"timed out after {timeout} s", "log": str(log)}
    log.write_text(proc.stdout + "\n" + proc.stderr)
    out = last_json(proc.stdout)
    if proc.returncode != 0 or out is None:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-3:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)[-600:], "log": str(log)}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


# --------------------------------------------------------------------------- the FSDP run
def synthetic_corpus(folder: Path, lines: int = 2000, seed: int = 0) -> dict:
    """Generated Arabic-script and Latin-script text (Zipf-distributed made-up words, one document a
    line) and the data sources that read it. Written once: a source's fingerprint covers its files'
    sizes and times, so a resume must find the same files."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    alphabets = {"ar": "ابتثجحخدذرزسشصضطظعغفقكلمنهوي", "en": "abcdefghijklmnopqrstuvwxyz"}
    sources = {}
    for lang, letters in alphabets.items():
        words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(3000)]
        weights = [1 / (i + 1) for i in range(len(words))]
        path = folder / f"{lang}.txt"
        sources[f"synthetic_{lang}"] = {"lang": lang, "loader": "text", "path": str(path)}
        if path.exists():
            continue
        with path.open("w", encoding="utf-8") as fh:
            for _ in range(lines):
                fh.write(" ".join(rng.choices(words, weights, k=rng.randint(30, 90))) + "\n")
    return sources


def train_task(out: Path, corpus: Path, overrides: list[str]) -> None:
    """Run an allam task (``task=train`` unless overridden) as run.py would, on the synthetic corpus
    instead of the demo sources (a group's sources cannot be replaced from the command line)."""
    from hydra import compose, initialize_config_dir

    from allam import tasks
    from allam.config import CONF_DIR, validate

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=[f"paths.output_dir={out}", f"paths.cache_dir={out.parent / 'cache'}",
                                           "trainer.progress_bar=false", *overrides])
    cfg.data.sources = synthetic_corpus(corpus)
    cfg.data.name = "synthetic"
    validate(cfg)
    print(json.dumps({"task": cfg.task, "result": str(tasks.run(cfg).get("run_dir", out))}))


def _losses(run_dir: Path) -> dict[int, float]:
    rows = csv.DictReader((run_dir / "csv" / "metrics.csv").open())
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def _load_export(folder: Path, device: str, corpus: Path) -> float:
    """Mean next-token loss of the exported model on generated English text (finite, sane)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    text = (corpus / "en.txt").read_text(encoding="utf-8").splitlines()[1]
    ids = torch.tensor([tok(text)["input_ids"][:256]], device=device)
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def fsdp_run(mode: str, out: Path) -> dict:
    plan, device = PLANS[mode], "cuda" if mode == "gpu" else "cpu"
    corpus, me = out / "corpus", [sys.executable, str(Path(__file__).resolve()), "_task"]
    common = [*plan["fsdp"], "logger=csv", "trainer.log_every_n_steps=1", "trainer.max_steps=20", "trainer.val_every_steps=null",
              "trainer.checkpoint_every_steps=10"]
    first, resumed = out / "first", out / "resumed"
    res = {"steps": None}
    step = run_json([*me, str(first), str(corpus), *common], plan["timeout"], out / "first.log")
    if "error" in step:
        return {**res, "error": f"first run: {step['error']}"}
    results = json.loads((first / "results.json").read_text())
    res.update(steps=results["train.steps"], tokens_per_s=results.get("train.tokens_per_second"),
               mfu=results.get("train.mfu"), val=dict((k, v) for k, v in results.items() if k.startswith("val.") and k.endswith(".loss")))
    ckpt = next(iter(sorted((first / "checkpoints").glob("step10*"))), None)
    if ckpt is None:
        return {**res, "error": "no step-10 checkpoint in " + str(first / "checkpoints")}
    res["sharded_checkpoint_files"] = len(list(ckpt.glob("*.distcp"))) if ckpt.is_dir() else 0
    step = run_json([*me, str(resumed), str(corpus), *common, f"ckpt={ckpt}", "export=false"], plan["timeout"],
                    out / "resumed.log")
    if "error" in step:
        return {**res, "error": f"resume: {step['error']}"}
    a, b = _losses(first), _losses(resumed)
    common_steps = sorted(set(a) & set(b))
    res["resumed_steps"] = json.loads((resumed / "results.json").read_text())["train.steps"]
    res["resume_compared_steps"] = len(common_steps)
    res["resume_max_loss_diff"] = max((abs(a[s] - b[s]) for s in common_steps), default=math.inf)
    exported = out / "exported"
    step = run_json([*me, str(exported), str(corpus), *plan["fsdp"], "task=export", f"ckpt={ckpt}"], plan["timeout"],
                    out / "export.log")
    if "error" in step:
        return {**res, "error": f"task=export: {step['error']}"}
    try:
        res["export_loss"] = _load_export(first / "hf", device, corpus)
        res["export_task_loss"] = _load_export(exported / "hf", device, corpus)
        res["export_loads"] = True
    except Exception as exc:  # the check reports, it does not stop
        res.update(export_loads=False, error=f"loading the export: {type(exc).__name__}: {exc}"[:600])
        return res
    res["ok"] = (res["steps"] == 20 and res["resumed_steps"] == 20 and res["resume_compared_steps"] >= 10
                 and res["resume_max_loss_diff"] < plan["resume_tolerance"]
                 and all(math.isfinite(res[k]) for k in ("export_loss", "export_task_loss")))
    return res


# --------------------------------------------------------------------------- summary
def targets(summary: dict) -> dict:
    """The issue's targets, true/false (None: not measured in this mode)."""
    t = summary.get("throughput", {})
    one, seven = t.get("1b", {}), t.get("7b", {})
    proj1, proj7 = one.get("project", {}), seven.get("project", {})

    def plan_within(run, arm="project"):
        r = run.get(arm, {}).get("plan_vs_measured")
        return None if r is None else abs(r - 1) <= 0.15

    def at_least(value, floor):
        return None if value is None else value >= floor

    return {
        "1b_at_least_1.5x_plain_loop": at_least(one.get("ratio_project_vs_hf"), 1.5),
        "1b_mfu_at_least_50%": at_least(proj1.get("mfu"), 0.5),
        "7b_trains_without_oom": None if not seven else ("error" not in seven and "tokens_per_s" in proj7),
        "7b_mfu_at_least_40%": at_least(proj7.get("mfu"), 0.4),
        "plan_within_15%_1b": plan_within(one) if one else None,
        "plan_within_15%_7b": plan_within(seven) if seven else None,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_task":  # one training/export run, in its own process
        train_task(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU")
    ap.add_argument("--out", type=Path, default=None, help="folder for logs and runs (default: a new temp folder)")
    args = ap.parse_args()
    mode = "cpu-smoke" if args.cpu_smoke else "gpu"
    plan = PLANS[mode]
    out = args.out or Path(os.environ.get("TMPDIR", "/tmp")) / f"allam-gpu-check-{int(time.time())}"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    import torch

    if mode == "gpu" and not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU here; run with --cpu-smoke to check the script on a CPU")
    py, limit = sys.executable, plan["timeout"]
    summary: dict = {"check": "gpu_check", "mode": mode, "torch": torch.__version__, "out": str(out),
                     "device": torch.cuda.get_device_name(0) if mode == "gpu" else "cpu"}
    summary["packages"] = {}
    for name in ("hydra", "omegaconf", "bitsandbytes", "liger_kernel", "xformers", "transformers", "lightning"):
        try:
            module = __import__(name)
            summary["packages"][name] = getattr(module, "__version__", "?")
        except Exception as exc:
            summary["packages"][name] = f"missing ({type(exc).__name__})"
    summary["attention"] = run_json([py, str(BENCH / "attention_check.py"), *plan["attention"]], limit, out / "attention.log")
    summary["cross_entropy"] = run_json([py, str(BENCH / "cross_entropy.py"), *plan["cross_entropy"]], limit,
                                        out / "cross_entropy.log")
    summary["throughput"] = {name: run_json([py, str(BENCH / "throughput.py"), *argv], limit, out / f"throughput_{name}.log")
                             for name, argv in plan["throughput"].items()}
    summary["fsdp_run"] = fsdp_run(mode, out)
    summary["targets"] = targets(summary)
    checks = [summary["attention"], summary["cross_entropy"], *summary["throughput"].values(), summary["fsdp_run"]]
    summary["ok"] = (all("error" not in c for c in checks)
                     and bool(summary["attention"].get("sdpa_vs_eager", {}).get("ok"))
                     and bool(summary["fsdp_run"].get("ok")))
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
