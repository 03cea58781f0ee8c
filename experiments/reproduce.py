#!/usr/bin/env python
"""Every claim of the ALLaM paper as seeded toy experiments, then CLAIMS.md with verdicts.

    python experiments/reproduce.py                 # default budget, 3 seeds (over an hour on 2 cores, see README)
    python experiments/reproduce.py --full          # 4x the continued tokens, 5 seeds: stronger verdicts
    python experiments/reproduce.py --smoke         # a tiny model for a few steps (tests the machinery)
    python experiments/reproduce.py --claims 1,4 --seeds 2
    python experiments/reproduce.py --lang hi       # claims 2-4 re-tested on Hindi (data=bible_hi, eval=competence_hi)

Each cell is one ``python run.py experiment=<cell> ...`` into ``<out>/seed<S>/<cell>``; the English
base (``claims_english_base``) runs once per seed and every adapted cell of that seed starts from
its export. A cell whose results.json says finished is skipped, and an interrupted one resumes
from its checkpoint (run.resume=auto), so running the same command again continues the suite.
After each seed's cells, the final model of every cell of claims 1-5 (and the base) is scored on
``eval=competence`` (default budget: seed 1's cells; --full: every seed's)
into ``<cell>/eval_competence`` (skipped when done; ``--no-competence``: not at all;
``--competence-only``: only that, for the finished cells, training nothing). The report
(allam/claims.py, allam/claims_report.py) groups the runs by seed and writes CLAIMS.md, with the
competence accuracies as context in claims 1-5, and the plots.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from allam import claims as C  # noqa: E402
from allam import claims_report as CR  # noqa: E402
from allam import results as R  # noqa: E402
from allam.config import ConfigError  # noqa: E402

SCRATCH = ("claim1_scratch", "claim7_mix_only", "claim1_scratch_flops")  # random init: no base needed
MATCH_FLOPS = {"claim1_scratch_flops": ("claim1_adapt", "claim1_scratch")}  # cell: (FLOPs to match, same-model run)


@dataclass(frozen=True)
class Budget:
    name: str
    base_tokens: int  # the English base, per seed
    tokens: int  # every other cell (continued tokens for the adapted ones)
    val_every_steps: int
    base_val_every_steps: int
    seeds: int
    overrides: tuple[str, ...] = field(default_factory=tuple)  # applied to every cell
    competence_items: int = 400  # eval=competence items per task on claims 1-5's cells (0: none)
    competence_seeds: int | None = None  # score the cells of the first N seeds only (None: every seed)


TINY = ("model.hidden_size=64", "model.intermediate_size=128", "model.num_layers=2", "model.num_heads=4",
        "model.seq_len=64", "data.batch_size=2", "data.val_bytes=3000", "tokenizer.num_new_tokens=2000",
        "tokenizer.vocab_size=4096")
BUDGETS = {
    # 3 seeds x (393,216 base + 10 x 131,072 + ~618,496 matched-FLOPs scratch) = 7.0M tokens; the
    # adapted cells' 24k vocabulary makes each of their tokens ~1.7x the FLOPs of the base's
    # the competence tier scores seed 1's cells only
    "default": Budget("default", 393_216, 131_072, 16, 64, 3, competence_seeds=1),
    "full": Budget("full", 2_097_152, 524_288, 32, 128, 5, ("data.val_bytes=65536",)),
    "smoke": Budget("smoke", 2_048, 1_024, 4, 8, 2, TINY, competence_items=8),
}


def cells_for(claims: list[C.Claim]) -> list[str]:
    """The base first (when an adapted cell needs it), adapted cells, then the from-scratch ones
    (the matched-FLOPs cell last: it is sized from runs before it)."""
    arms = C.arms_of(claims)
    for cell, deps in MATCH_FLOPS.items():
        if cell in arms:
            arms += [d for d in deps if d not in arms]
    adapted = [a for a in arms if a not in SCRATCH and a != C.BASE]
    return ([C.BASE] if adapted or C.BASE in arms else []) + adapted + [s for s in SCRATCH if s in arms]


def stages(english_tokens: int, ar_ratio: float = 0.45, first_ar_ratio: float = 0.0) -> str:
    return (f"data.stages=[{{tokens:{english_tokens},ar_ratio:{first_ar_ratio}}},"
            f"{{tokens:null,ar_ratio:{ar_ratio}}}]")


def language_overrides(cell: str, lang: str) -> list[str]:
    """The overrides that move a cell to another target language: its data preset, and for the
    English base that language's 1% share in place of Arabic's (data and tokenizer text)."""
    if lang == "ar":
        return []
    out = [f"data=bible_{lang}"]
    if cell == C.BASE:
        out += ["data.ar_ratio=null", f"data.mix.{lang}=0.01", "tokenizer.base_ar_share=0.0", f"+tokenizer.base_mix.{lang}=0.01"]
    return out


def cell_overrides(cell: str, budget: Budget, seed_dir: Path, lang: str = "ar") -> list[str] | None:
    """run.py arguments of one cell at this budget (None: a cell it depends on has no results)."""
    seed = int(seed_dir.name.removeprefix("seed"))
    args = [f"experiment={cell}", f"hydra.run.dir={seed_dir / cell}", "trainer.progress_bar=false",
            *[f"{k}={seed}" for k in C.SEED_KEYS], *budget.overrides, *language_overrides(cell, lang)]
    if cell == C.BASE:
        return [*args, f"trainer.max_tokens={budget.base_tokens}", f"trainer.val_every_steps={budget.base_val_every_steps}",
                f"trainer.checkpoint_every_steps={budget.base_val_every_steps}"]
    if cell not in MATCH_FLOPS:
        args += [f"trainer.val_every_steps={budget.val_every_steps}"]
    if cell not in SCRATCH:
        return [*args, f"trainer.max_tokens={budget.tokens}", f"init.checkpoint={seed_dir / C.BASE / 'hf'}"]
    if cell == "claim1_scratch":
        return [*args, f"trainer.max_tokens={budget.tokens}", stages(budget.tokens // 2)]
    if cell in MATCH_FLOPS:  # from scratch for the FLOPs of the base + the adapted run
        target, same_model = (R.read(seed_dir / c / R.FILENAME) for c in MATCH_FLOPS[cell])
        if not target or not same_model:
            return None
        per_step = same_model["train.tokens"] / max(1, same_model["train.steps"])
        steps = math.ceil(target["train.total_flops"] / same_model["train.flops_per_token"] / per_step)
        # its first stage is the base's data (English with the base's small Arabic share)
        base = R.read(seed_dir / C.BASE / R.FILENAME) or {}
        base_ar = float(((base.get("config") or {}).get("data") or {}).get("ar_ratio") or 0.0)
        return [*args, f"trainer.max_tokens={int(steps * per_step)}", stages(budget.base_tokens, first_ar_ratio=base_ar),
                f"trainer.val_every_steps={budget.base_val_every_steps}"]
    return [*args, f"trainer.max_tokens={budget.tokens}"]


def competence_cells(claims: list[C.Claim], cells: list[str]) -> list[str]:
    """The cells whose final model the competence tier scores: the arms of the selected claims
    that show it (claims 1-5), and the English base they start from."""
    arms = C.arms_of([c for c in claims if c.number in CR.COMPETENCE_CLAIMS])
    return [c for c in cells if c in arms or (c == C.BASE and arms)]


def competence_args(run_dir: Path, items: int, lang: str = "ar") -> list[str]:
    """run.py arguments scoring a finished cell's final checkpoint on eval=competence (another
    target language: eval=competence_<code>) into <run dir>/eval_competence."""
    return ["task=eval", f"ckpt={run_dir}", f"eval={CR.competence_suite(lang)}", f"eval.limit={items}", "eval.batch_size=32",
            f"hydra.run.dir={run_dir / 'eval_competence'}"]


def finished(run_dir: Path) -> bool:
    res = R.read(run_dir / R.FILENAME)
    return bool(res) and res.get("status") == "finished"


def evaluated(eval_dir: Path, lang: str = "ar") -> bool:
    res = R.read(eval_dir / R.FILENAME) or {}
    return res.get("eval.suite") == CR.competence_suite(lang) and all(f"eval.{t}.acc" in res for t in CR.competence_tasks(lang))


def run_cell(args: list[str], log_path: Path) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        return subprocess.call([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="4x the continued tokens (5.3x the base's), 5 seeds (hours on 2 cores)")
    size.add_argument("--smoke", action="store_true", help="a tiny model for a few steps (the machinery only)")
    p.add_argument("--seeds", type=int, help="seeds per cell (default: 3; --full 5; --smoke 2)")
    p.add_argument("--claims", help="comma-separated claim numbers (default: all; with --lang: 2,3,4)")
    p.add_argument("--lang", default="ar", help="target language (default ar); another code re-tests claims 2-4 on "
                   "its Bible preset (conf/data/bible_<code>.yaml) into outputs/claims_<code> and CLAIMS_<CODE>.md")
    p.add_argument("--out", type=Path, help="runs folder (default: outputs/claims[_full|_smoke])")
    p.add_argument("--claims-md", type=Path, help="CLAIMS.md to write (default: experiments/CLAIMS.md; "
                   "--full: experiments/CLAIMS_FULL.md; --smoke: <out>/CLAIMS.md)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--report-only", action="store_true", help="no runs: the report from what exists")
    p.add_argument("--no-competence", action="store_true",
                   help="skip scoring claims 1-5's cells on eval=competence (their CLAIMS.md context tables)")
    p.add_argument("--competence-only", action="store_true",
                   help="train nothing: score the finished cells on eval=competence (those not scored yet), then "
                        "the report; e.g. with this checkout's items while a suite trains from another commit")
    p.add_argument("--mix-commits", action="store_true",
                   help="let one arm hold runs from different git commits (default: refuse and name them)")
    a = p.parse_args(argv)

    budget = BUDGETS["full" if a.full else "smoke" if a.smoke else "default"]
    seeds = a.seeds or budget.seeds
    numbers = [int(x) for x in a.claims.split(",")] if a.claims else None
    if a.competence_only and (a.no_competence or a.report_only):
        print("error: --competence-only scores the competence tier: not with --no-competence or --report-only",
              file=sys.stderr)
        return 2
    if a.lang != "ar":
        numbers = numbers or list(C.TRANSFERABLE)
        other = [n for n in numbers if n not in C.TRANSFERABLE]
        if other or not (ROOT / "conf" / "data" / f"bible_{a.lang}.yaml").is_file():
            print(f"error: --lang {a.lang}: claims {','.join(map(str, C.TRANSFERABLE))} on a language with a data preset "
                  f"(conf/data/bible_<code>.yaml); asked for claims {a.claims or 'default'}", file=sys.stderr)
            return 2
    claims = C.claims_by_number(numbers, a.lang)
    suffix = ("" if budget.name == "default" else f"_{budget.name}") + ("" if a.lang == "ar" else f"_{a.lang}")
    out = (a.out or ROOT / f"outputs/claims{suffix}").resolve()
    md = a.claims_md or (out / "CLAIMS.md" if a.smoke else ROOT / f"experiments/CLAIMS{suffix.upper()}.md")
    cells = cells_for(claims)

    t0, failed, ran = time.perf_counter(), [], 0
    if not a.report_only:
        for seed in range(1, seeds + 1):
            seed_dir = out / f"seed{seed}"
            for cell in cells:
                run_dir = seed_dir / cell
                if finished(run_dir):
                    print(f"[skip] seed {seed} {cell}: finished", flush=True)
                    continue
                if a.competence_only:
                    continue
                args = cell_overrides(cell, budget, seed_dir, a.lang)
                if args is None:
                    print(f"[skip] seed {seed} {cell}: a cell it depends on has no results", flush=True)
                    failed.append(f"seed{seed}/{cell}")
                    continue
                print(f"[run]  seed {seed} {cell}: python run.py {' '.join(args)}", flush=True)
                if a.dry_run:
                    continue
                t = time.perf_counter()
                rc = run_cell(args, run_dir / "run.log")
                ran += 1
                print(f"       {'ok' if rc == 0 else f'exit {rc} (see {run_dir}/run.log)'} in {time.perf_counter() - t:.0f} s",
                      flush=True)
                if rc != 0:
                    failed.append(f"seed{seed}/{cell}")
            # this seed's competence scores right away: a suite cut off later keeps them (the
            # checkpoints they need may be gone by then), and a partial report has its context
            if budget.competence_items and not a.no_competence and seed <= (budget.competence_seeds or seeds):
                for cell in competence_cells(claims, cells):
                    run_dir = seed_dir / cell
                    if not finished(run_dir) or evaluated(run_dir / "eval_competence", a.lang):
                        continue
                    args = competence_args(run_dir, budget.competence_items, a.lang)
                    print(f"[eval] seed {seed} {cell}: python run.py {' '.join(args)}", flush=True)
                    if a.dry_run:
                        continue
                    t = time.perf_counter()
                    rc = run_cell(args, run_dir / "eval_competence.log")
                    print(f"       {'ok' if rc == 0 else f'exit {rc} (see {run_dir}/eval_competence.log)'} in "
                          f"{time.perf_counter() - t:.0f} s", flush=True)
                    if rc != 0:
                        failed.append(f"seed{seed}/{cell}/eval_competence")
    if a.dry_run:
        return 0

    runs = R.collect_runs(out)
    wall = sum(r.get("wall_seconds") or 0 for r in runs)
    tokens = sum(r.get("train.tokens_this_run") or 0 for r in runs)
    command = ("python experiments/reproduce.py" + {"default": "", "full": " --full", "smoke": " --smoke"}[budget.name]
               + ("" if a.lang == "ar" else f" --lang {a.lang}"))
    header = (f"Budget `{budget.name}`: English base {budget.base_tokens:,} tokens per seed, every other cell "
              f"{budget.tokens:,} tokens (the matched-FLOPs scratch cell: the base's + the adapted run's FLOPs), "
              f"validation every {budget.val_every_steps} steps; seeds requested {seeds}; {len(runs)} runs, "
              f"{tokens:,} training tokens, {wall / 60:.1f} min of run wall time on {os.cpu_count()} CPU cores"
              + (f" ({' '.join(budget.overrides)})" if budget.overrides else "") + ".")
    try:
        rep = CR.run_claims_report(out, md.parent / f"{md.stem.lower()}_plots", numbers, command, header, md,
                                  mix_commits=a.mix_commits, lang=a.lang)
    except ConfigError as e:  # e.g. an arm mixing commits: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / "reproduce.json").write_text(json.dumps({**rep, "budget": budget.name, "seeds": seeds, "runs": len(runs),
                                                    "tokens": tokens, "run_wall_seconds": wall, "failed": failed,
                                                    "this_invocation_seconds": time.perf_counter() - t0,
                                                    "cells_run_now": ran}, indent=2) + "\n")
    for number, v in rep["verdicts"].items():
        print(f"claim {number}: {v}")
    print(f"{rep['claims_md']} ({len(runs)} runs, {wall / 60:.1f} min of run wall time)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
