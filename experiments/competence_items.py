"""Is an adapted model measurably above its English base on Arabic, item by item?

Scores finished cells of a claims suite (``experiments/reproduce.py``) on ``eval=competence`` with
every item the tasks build (``eval.limit=null``: 1,004 Arabic and 1,808 English word-order
items, 400 next-word items each), into ``<cell>/eval_competence_all``, and compares each cell
with the base of the same seed item by item (``allam.claims_report.competence_paired``: the
accuracy difference over the pooled items, a 95% t-interval and the one-sided p of "above the
base"). Cells already scored are read back.

    python experiments/competence_items.py --suite outputs/claims --seeds 1 \
        --cells claims_english_base claim1_adapt --json experiments/competence_items.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from reproduce import evaluated, finished, run_cell  # the claims suite's runner (same folder)

from allam import claims_report as CR  # noqa: E402  (importable once reproduce has put the project on sys.path)
from allam import results as R  # noqa: E402
from allam.claims import BASE  # noqa: E402


def score(cell: Path) -> dict:
    out = cell / "eval_competence_all"
    if not evaluated(out):
        print("[eval]", cell, flush=True)
        args = ["task=eval", f"ckpt={cell}", "eval=competence", "eval.limit=null", "eval.batch_size=32",
                f"hydra.run.dir={out}"]
        if run_cell(args, Path(f"{out}.log")):
            raise SystemExit(f"failed: {out} (see {out}.log)")
    return R.read(out / R.FILENAME)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--suite", type=Path, nargs="+", required=True, help="claims suite output folders (--out of reproduce.py)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--cells", nargs="+", default=[BASE, "claim1_adapt"])
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    report = {}
    for suite in a.suite:
        by_arm: dict[str, list[dict]] = {}
        for seed in range(1, a.seeds + 1):
            for cell in a.cells:
                run = suite / f"seed{seed}" / cell
                if finished(run):
                    by_arm.setdefault(cell, []).append(score(run))
        arms = list(dict.fromkeys([BASE, *a.cells]))
        table, paired = CR.competence_table(by_arm, arms), CR.competence_paired(by_arm, arms, BASE)
        print(f"\n{suite}\n\n{table}\n\n{paired}\n")
        report[str(suite)] = {
            "tokens": {arm: [e["config"]["trainer"]["max_tokens"] for e in evals] for arm, evals in by_arm.items()},
            "accuracy": {arm: {t: [e.get(f"eval.{t}.acc") for e in evals] for t in CR.COMPETENCE_TASKS}
                         for arm, evals in by_arm.items()},
            "items": {arm: {t: [e.get(f"eval.{t}.n") for e in evals] for t in CR.COMPETENCE_TASKS}
                      for arm, evals in by_arm.items()},
            "paired_vs_base": paired, "commit": sorted({e.get("code.commit") for evals in by_arm.values() for e in evals}),
        }
    if a.json:
        a.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
