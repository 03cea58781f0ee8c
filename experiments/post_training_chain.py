"""What SFT and DPO do to a trained toy model: adapt -> sft_toy -> dpo_toy, each scored on
``eval=competence`` (English and Arabic word order and next word), with the post-training runs'
own held-out numbers (SFT answer loss; DPO reward accuracy and margin).

The start is a finished adaptation run (by default the claims suite's seed-1 ``claim1_adapt``
cell, which the suite does not export): its checkpoint is exported first. Steps already finished
are read back, so the script resumes.

    python experiments/post_training_chain.py --start outputs/claims/seed1/claim1_adapt \
        --out outputs/post_chain --json experiments/post_training_chain.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("start.val.sft.loss", "val.sft.loss", "start.val.dpo.reward_accuracy", "val.dpo.reward_accuracy",
        "start.val.dpo.margin", "val.dpo.margin", "start.val.dpo.loss", "val.dpo.loss", "train.steps", "wall_seconds")


def finished(folder: Path) -> dict | None:
    f = folder / "results.json"
    if f.is_file():
        res = json.loads(f.read_text())
        if res.get("status", "finished") == "finished":
            return res
    return None


def run(args: list[str], folder: Path, progress: bool = True) -> dict | None:
    res = finished(folder)
    if res is None:
        cmd = [sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={folder}"]
        cmd += ["trainer.progress_bar=false"] if progress else []
        print("[run]", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        res = finished(folder)
    return res


def competence(model: Path, folder: Path, items: int) -> dict:
    res = run(["task=eval", f"ckpt={model}", "eval=competence", f"eval.limit={items}", "eval.batch_size=32"], folder)
    return {k: v for k, v in res.items() if k.startswith("eval.") and k.rsplit(".", 1)[-1] in ("acc", "acc_stderr")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--start", type=Path, default=ROOT / "outputs" / "claims" / "seed1" / "claim1_adapt")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "post_chain")
    p.add_argument("--items", type=int, default=400, help="competence items per task")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    start = a.out / "start"
    if not (start / "hf" / "config.json").is_file():
        run(["task=export", f"ckpt={a.start}"], start, progress=False)
    sft = a.out / "sft"
    sft_res = run(["experiment=sft_toy", f"init.checkpoint={start / 'hf'}"], sft)
    dpo = a.out / "dpo"
    dpo_res = run(["experiment=dpo_toy", f"init.checkpoint={sft / 'hf'}"], dpo)
    table = {
        "start": str(a.start),
        "sft": {k: sft_res.get(k) for k in KEYS if k in sft_res},
        "dpo": {k: dpo_res.get(k) for k in KEYS if k in dpo_res},
        "competence": {name: competence(folder / "hf", a.out / f"eval_{name}", a.items)
                       for name, folder in (("start", start), ("sft", sft), ("dpo", dpo))},
    }
    print(json.dumps(table, indent=1))
    if a.json:
        a.json.write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
