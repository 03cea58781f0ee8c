#!/usr/bin/env python
"""Kill a training run at random moments, resume it, and check the result equals an
uninterrupted run bit for bit.

    python experiments/kill_resume.py --trials 20          # prints one JSON line

Each trial trains a tiny model for --steps optimizer steps with a checkpoint after every step
and `run.resume=auto`, so the same command continues the run. A trial kills the run one to three
times: with SIGKILL at a random step, with SIGKILL while a checkpoint is being written (caught by
watching for the temporary file), or with SIGTERM (the run must then exit with status 75 and a
checkpoint). After every kill, every checkpoint left in the run directory is verified (a corrupt
one would count in ``corrupt_checkpoints``). The finished run's final weights are compared with
an uninterrupted reference run's, tensor by tensor, for exact equality.
"""
from __future__ import annotations

import argparse
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
SMALL = ["model.hidden_size=64", "model.intermediate_size=128", "model.num_layers=2", "model.num_heads=4",
         "model.seq_len=64", "data.batch_size=2", "data.val_bytes=2000", "trainer.progress_bar=false",
         "logger=none", "export=false", "trainer.checkpoint_every_steps=1", "run.resume=auto"]


def command(run: Path, steps: int) -> list[str]:
    return [sys.executable, str(ROOT / "run.py"), *SMALL, f"trainer.max_steps={steps}", f"hydra.run.dir={run}"]


def env(cache: str) -> dict:
    return {**os.environ, "ALLAM_CACHE": cache, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def newest_step(ckpts: Path) -> int:
    steps = [int(p.name[4:-5]) for p in ckpts.glob("step*.ckpt") if p.name[4:-5].isdigit()]
    return max(steps, default=0)


def weights(path: Path) -> dict:
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in ckpt["state_dict"].items()}


def kill_once(run: Path, steps: int, cache: str, how: str, rng: random.Random) -> dict:
    """Start the command, kill it the chosen way, report what happened."""
    ckpts = run / "checkpoints"
    start = newest_step(ckpts)
    target = rng.randint(start + 1, max(start + 1, steps - 2))
    proc = subprocess.Popen(command(run, steps), cwd=ROOT, env=env(cache), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    killed_in_write = False
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if how == "sigkill_in_write":
            if ckpts.is_dir() and any(p.name.startswith(".tmp-") for p in ckpts.iterdir()) and newest_step(ckpts) >= start:
                proc.send_signal(signal.SIGKILL)
                killed_in_write = True
                break
        elif newest_step(ckpts) >= target:
            proc.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
            break
        time.sleep(0.001)
    _, err = proc.communicate(timeout=300)
    return {"how": how, "returncode": proc.returncode, "in_write": killed_in_write, "stderr": err[-500:]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=os.environ.get("ALLAM_CACHE", str(ROOT / ".cache")))
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    from allam.train.checkpointing import candidates, verify

    work = Path(args.workdir or tempfile.mkdtemp(prefix="kill-resume-"))
    ref = work / "reference"
    subprocess.run(command(ref, args.steps), cwd=ROOT, env=env(args.cache), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reference = weights(ref / "checkpoints" / "last.ckpt")
    report = {"trials": 0, "kills": 0, "kills_during_write": 0, "sigterm": 0, "sigterm_exit_75": 0,
              "corrupt_checkpoints": 0, "equal": 0, "unequal": [], "failures": []}
    for trial in range(args.trials):
        run = work / f"trial{trial}"
        kinds = ["sigkill", "sigkill_in_write", "sigterm"]
        for _ in range(rng.randint(1, 3)):
            how = rng.choice(kinds)
            res = kill_once(run, args.steps, args.cache, how, rng)
            if res["returncode"] == 0:
                break  # the run finished before the kill came
            report["kills"] += 1
            report["kills_during_write"] += int(res["in_write"])
            if how == "sigterm":
                report["sigterm"] += 1
                report["sigterm_exit_75"] += int(res["returncode"] == 75)
            elif res["returncode"] != -signal.SIGKILL:
                report["failures"].append({"trial": trial, **res})
            for c in candidates(run / "checkpoints"):
                if verify(c) is not None:
                    report["corrupt_checkpoints"] += 1
        final = subprocess.run(command(run, args.steps), cwd=ROOT, env=env(args.cache), capture_output=True, text=True)
        if final.returncode != 0:
            report["failures"].append({"trial": trial, "final": final.stderr[-800:]})
            continue
        got = weights(run / "checkpoints" / "last.ckpt")
        same = got.keys() == reference.keys() and all((got[k] == reference[k]).all() for k in got)
        report["equal" if same else "unequal"] = report["equal"] + 1 if same else report["unequal"] + [trial]
        report["trials"] += 1
        shutil.rmtree(run, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
