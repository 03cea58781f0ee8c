#!/usr/bin/env python
"""Kill training runs at random moments, resume them, and check that each ends exactly where an
uninterrupted run ends.

    python experiments/kill_resume.py --trials 20 --out experiments/kill_resume.json

The reference is one uninterrupted run on the normal schedule: no checkpoint before the final
one, loader in the main process. Each trial runs the same training (same model, data, seed and
length) with a checkpoint every --every steps, two loader worker processes (`data.num_workers`)
and `run.resume=auto`, so the same command continues the run. The data has two stages (English
only, then the mix) switching at --switch; validation runs every --val steps. A trial kills the run
once or twice: with SIGKILL at a random moment of a random step, with SIGKILL while a
checkpoint is being written (caught by watching for the temporary file), or with SIGTERM (the run
must then exit with status 75 after a checkpoint). Of the SIGKILL and SIGTERM kills made while the
newest checkpoint is before the stage switch, about half are aimed just past the switch, so that
the resumed run crosses it (`kills_across_stage_switch` counts the SIGKILLs that did).
After every kill, every checkpoint left in the run directory is verified.

The finished trial is compared with the reference, each for exact equality:
- the final weights, tensor by tensor, and the optimizer state (every AdamW moment and step count);
- metrics.csv: each step's training row appears once, with the same loss, learning rate, token
  count and FLOPs as the reference's, and validation rows at the same steps with the same values;
- results.json: `train.tokens` and `train.steps`, and the final validation scores.
It also checks that the final command removed every unfinished write a kill left behind.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH, SEQ = 2, 64
MODEL = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=2", "model.num_heads=2",
         f"model.seq_len={SEQ}", f"data.batch_size={BATCH}", "data.val_bytes=1000", "trainer.progress_bar=false",
         "trainer.log_every_n_steps=1", "logger=csv", "export=false", "run.resume=auto"]
STEP_COLUMNS = ("train/loss", "train/lr", "train/tokens", "train/total_flops")


def command(run: Path, args, trial: bool) -> list[str]:
    stages = (f"data.stages=[{{tokens:{args.switch * BATCH * SEQ},ar_ratio:0.0}},"
              f"{{tokens:null,ar_ratio:0.5}}]")
    extra = [f"trainer.checkpoint_every_steps={args.every}", f"data.num_workers={args.workers}"] if trial else []
    return [sys.executable, str(ROOT / "run.py"), *MODEL, stages, f"trainer.max_steps={args.steps}",
            f"trainer.val_every_steps={args.val}", *extra, f"hydra.run.dir={run}"]


def env(cache: str) -> dict:
    return {**os.environ, "ALLAM_CACHE": cache, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "WANDB_MODE": "disabled"}


# --------------------------------------------------------------------------- reading a run
def newest_checkpoint_step(ckpts: Path) -> int:
    from allam.train.checkpointing import inspect, newest_valid

    best, _ = newest_valid(ckpts)
    return inspect(best)[1] if best else 0


def logged_step(run: Path) -> int:
    """The last step whose training row is in metrics.csv (-1: none yet)."""
    path = run / "csv" / "metrics.csv"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return -1
    if not lines:
        return -1
    header = lines[0].split(",")
    if "step" not in header or "train/loss" not in header:
        return -1
    s, l = header.index("step"), header.index("train/loss")
    for line in reversed(lines[1:]):
        cells = line.split(",")
        if len(cells) == len(header) and cells[l] and cells[s].isdigit():
            return int(cells[s])
    return -1


def rows(run: Path) -> list[dict]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def train_rows(run: Path) -> tuple[dict[int, tuple], list[int]]:
    """step -> its step-dependent columns, and the steps logged more than once."""
    seen, dup = {}, []
    for r in rows(run):
        if r.get("train/loss"):
            step = int(r["step"])
            if step in seen:
                dup.append(step)
            seen[step] = tuple(r.get(k, "") for k in STEP_COLUMNS)
    return seen, dup


def val_rows(run: Path) -> list[tuple]:
    return [(int(r["step"]), tuple(sorted((k, v) for k, v in r.items() if k.startswith("val/") and v)))
            for r in rows(run) if any(k.startswith("val/") and v for k, v in r.items())]


def final_state(path: Path) -> tuple[dict, list]:
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["state_dict"], ckpt["optimizer_states"]


def same_tensors(a, b) -> bool:
    """Exact equality of nested dicts/lists of tensors and plain values."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and bool(torch.equal(a, b)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b))
    return a == b


def results_view(run: Path) -> dict:
    res = json.loads((run / "results.json").read_text())
    return {k: v for k, v in res.items() if k in ("status", "train.steps", "train.tokens") or
            (k.startswith("val.") and k.endswith((".loss", ".bpb")))}


# --------------------------------------------------------------------------- killing
def kill_once(run: Path, args, how: str, rng: random.Random) -> dict:
    """Start the command, kill it the chosen way, report what happened."""
    ckpts = run / "checkpoints"
    start = newest_checkpoint_step(ckpts)
    if start < args.switch and rng.random() < 0.5:  # cross the stage switch in the killed stretch
        target = args.switch + rng.randint(0, 1)
    else:
        target = rng.randint(min(start, args.steps - 2), args.steps - 2)
    delay = rng.uniform(0.0, 0.05)  # a random moment inside the step, not at its boundary
    proc = subprocess.Popen(command(run, args, trial=True), cwd=ROOT, env=env(args.cache),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    in_write = False
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if how == "sigkill_in_write":
            if ckpts.is_dir() and any(p.name.startswith(".tmp-") and ".ckpt" in p.name for p in ckpts.iterdir()):
                proc.send_signal(signal.SIGKILL)
                in_write = True
                break
        elif logged_step(run) >= target:
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
            break
        time.sleep(0.005)
    killed_at = logged_step(run)
    _, err = proc.communicate(timeout=600)
    resume_from = newest_checkpoint_step(ckpts)
    return {"how": how, "returncode": proc.returncode, "in_write": in_write, "logged_step": killed_at,
            "resume_from": resume_from, "across_switch": resume_from < args.switch <= killed_at,
            "leftovers": sorted(p.name for p in ckpts.glob(".tmp-*")) if ckpts.is_dir() else [],
            "stderr": err[-500:]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--steps", type=int, default=16, help="optimizer steps of every run")
    ap.add_argument("--every", type=int, default=3, help="checkpoint every N steps in the killed runs")
    ap.add_argument("--switch", type=int, default=7,
                    help="step at which the data switches to its second stage (not a multiple of --every)")
    ap.add_argument("--val", type=int, default=8, help="validate every N steps (reference and trials)")
    ap.add_argument("--workers", type=int, default=2, help="data.num_workers of the killed runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=os.environ.get("ALLAM_CACHE", str(ROOT / ".cache")))
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None, help="also write the JSON report here")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    from allam.train.checkpointing import candidates, verify

    t0 = time.time()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kill-resume-"))
    ref = work / "reference"
    subprocess.run(command(ref, args, trial=False), cwd=ROOT, env=env(args.cache), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ref_ckpts = sorted(p.name for p in (ref / "checkpoints").iterdir())
    ref_weights, ref_optim = final_state(ref / "checkpoints" / "last.ckpt")
    ref_train, ref_dup = train_rows(ref)
    ref_val, ref_results = val_rows(ref), results_view(ref)
    assert not ref_dup and sorted(ref_train) == list(range(args.steps)), "the reference's metrics.csv is incomplete"
    report = {
        "setup": {"steps": args.steps, "model": MODEL[:4], "tokens_per_step": BATCH * SEQ,
                  "reference": {"checkpoints": ref_ckpts, "data.num_workers": 0},
                  "trials": {"trainer.checkpoint_every_steps": args.every, "data.num_workers": args.workers},
                  "stage_switch_step": args.switch, "val_every_steps": args.val, "seed": args.seed},
        "trials": 0, "kills": 0, "kills_by_kind": {"sigkill": 0, "sigkill_in_write": 0, "sigterm": 0},
        "kills_during_write": 0, "kills_across_stage_switch": 0, "sigterm_exit_75": 0,
        "corrupt_checkpoints": 0, "unfinished_writes_left_by_kills": 0, "unfinished_writes_after_final_run": 0,
        "equal": {"weights": 0, "optimizer_state": 0, "metrics_csv_train_rows": 0, "metrics_csv_val_rows": 0,
                  "results_tokens_steps_val": 0},
        "duplicate_csv_steps": 0, "unequal": [], "failures": []}
    for trial in range(args.trials):
        run = work / f"trial{trial}"
        for _ in range(rng.randint(1, 2)):
            how = rng.choice(list(report["kills_by_kind"]))
            res = kill_once(run, args, how, rng)
            if res["returncode"] == 0:
                break  # the run finished before the kill came
            report["kills"] += 1
            report["kills_by_kind"][how] += 1
            report["kills_during_write"] += int(res["in_write"])
            report["kills_across_stage_switch"] += int(res["across_switch"])
            report["unfinished_writes_left_by_kills"] += len(res["leftovers"])
            if how == "sigterm":
                report["sigterm_exit_75"] += int(res["returncode"] == 75)
                if res["returncode"] != 75:
                    report["failures"].append({"trial": trial, **res})
            elif res["returncode"] != -signal.SIGKILL:
                report["failures"].append({"trial": trial, **res})
            for c in candidates(run / "checkpoints"):
                if verify(c) is not None:
                    report["corrupt_checkpoints"] += 1
        final = subprocess.run(command(run, args, trial=True), cwd=ROOT, env=env(args.cache), capture_output=True,
                               text=True, check=False)
        if final.returncode != 0:
            report["failures"].append({"trial": trial, "final": final.stderr[-800:]})
            continue
        report["trials"] += 1
        report["unfinished_writes_after_final_run"] += len(list((run / "checkpoints").glob(".tmp-*")))
        weights, optim = final_state(run / "checkpoints" / "last.ckpt")
        got_train, dup = train_rows(run)
        report["duplicate_csv_steps"] += len(dup)
        checks = {
            "weights": same_tensors(weights, ref_weights),
            "optimizer_state": same_tensors(optim, ref_optim),
            "metrics_csv_train_rows": not dup and got_train == ref_train,
            "metrics_csv_val_rows": val_rows(run) == ref_val,
            "results_tokens_steps_val": results_view(run) == ref_results,
        }
        for k, ok in checks.items():
            report["equal"][k] += int(ok)
        if not all(checks.values()):
            detail = {k: ok for k, ok in checks.items() if not ok}
            if not checks["metrics_csv_train_rows"]:
                detail["missing_steps"] = sorted(set(ref_train) - set(got_train))
                detail["differing_steps"] = sorted(s for s in got_train if s in ref_train and got_train[s] != ref_train[s])
                detail["duplicate_steps"] = dup
            if not checks["results_tokens_steps_val"]:
                got = results_view(run)
                detail["results_diff"] = {k: [got.get(k), v] for k, v in ref_results.items() if got.get(k) != v}
            report["unequal"].append({"trial": trial, **detail})
            if args.workdir:
                continue  # kept for a look
        shutil.rmtree(run, ignore_errors=True)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = round(time.time() - t0, 1)
    line = json.dumps(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(line)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
