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
from pathlib import Path

from reproduce import ROOT, competence_args, evaluated, finished, run_cell  # the claims suite's runner

from allam import results as R  # noqa: E402  (importable once reproduce has put the project on sys.path)

KEYS = ("start.val.sft.loss", "val.sft.loss", "start.val.dpo.reward_accuracy", "val.dpo.reward_accuracy",
        "start.val.dpo.margin", "val.dpo.margin", "start.val.dpo.loss", "val.dpo.loss", "train.steps", "train.tokens",
        "train.padding", "wall_seconds")


def run(args: list[str], folder: Path, done) -> dict:
    """The results of ``run.py <args>`` in `folder`, run unless ``done(folder)`` (log: <folder>.log)."""
    if not done(folder):
        print("[run]", " ".join(args), flush=True)
        if run_cell([*args, f"hydra.run.dir={folder}"], Path(f"{folder}.log")) or not done(folder):
            raise SystemExit(f"failed: {folder} (see {folder}.log)")
    return R.read(folder / R.FILENAME) or {}


def competence(model_run: Path, items: int) -> dict:
    """The competence accuracies of a run's final model, scored into <run>/eval_competence."""
    args = competence_args(model_run, items)[:-1]  # its last argument is the run directory, which run() adds
    res = run(args, model_run / "eval_competence", evaluated)
    return {k: v for k, v in res.items() if k.startswith("eval.") and k.rsplit(".", 1)[-1] in ("acc", "acc_stderr")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--start", type=Path, default=ROOT / "outputs" / "claims" / "seed1" / "claim1_adapt")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "post_chain")
    p.add_argument("--items", type=int, default=400, help="competence items per task")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    start = a.out / "start"
    run(["task=export", f"ckpt={a.start}"], start, lambda d: (d / "hf" / "config.json").is_file())
    sft, dpo = a.out / "sft", a.out / "dpo"
    sft_res = run(["experiment=sft_toy", f"init.checkpoint={start / 'hf'}", "trainer.progress_bar=false"], sft, finished)
    dpo_res = run(["experiment=dpo_toy", f"init.checkpoint={sft / 'hf'}", "trainer.progress_bar=false"], dpo, finished)
    table = {
        "start": str(a.start),
        "sft": {k: sft_res[k] for k in KEYS if k in sft_res},
        "dpo": {k: dpo_res[k] for k in KEYS if k in dpo_res},
        "competence": {"start": competence(a.start, a.items), "sft": competence(sft, a.items),
                       "dpo": competence(dpo, a.items)},
    }
    print(json.dumps(table, indent=1))
    if a.json:
        a.json.write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
