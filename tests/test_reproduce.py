"""experiments/reproduce.py and allam/claims.py: claim cells, seeds, FLOPs carried from the base,
curves at matched tokens / FLOPs, verdicts and the generated CLAIMS.md."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from allam import claims as C
from allam import curves as CV
from allam import claims_report as CR
from allam import stats as S
from allam.config import CONF_DIR, ROOT, validate


def _run(kind, arm, seed, values, curve=None, **extra):
    return {"task": "train", "status": "finished", "_path": f"/x/seed{seed}/{arm}/results.json",
            "choices": {"experiment": arm},
            "config": {"trainer": {"seed": seed}, "init": {"seed": seed, "checkpoint": f"/x/seed{seed}/base/hf"},
                       "data": {"seed": seed}, "arm": kind},
            **values, **({"curve": curve} if curve else {}), **extra}


def test_every_claim_cell_composes_alone(make_cfg):
    """Each arm a claim names is an experiment config that composes and validates on its own."""
    arms = C.arms_of(list(C.CLAIMS))
    assert {f.stem for f in (CONF_DIR / "experiment").glob("claim*.yaml")} == {*arms, C.BASE}
    for arm in [*arms, C.BASE]:
        cfg = make_cfg(f"experiment={arm}", "init.checkpoint=/some/base/hf")
        validate(cfg)
        assert cfg.trainer.val_every_steps, arm  # a validation curve, not only the end


def test_verdict_rule():
    """Paired over seeds from one base: a consistent difference is reproduced, the reverse is not,
    one within noise is inconclusive, a single seed gives no test; a claim needs all its
    deciding comparisons."""
    lo, hi = C.stat([1.0, 1.1, 0.9]), C.stat([2.0, 2.1, 1.9])
    assert (lo.mean, lo.n) == (1.0, 3) and abs(lo.std - 0.1) < 1e-9 and abs(hi.mean - 2.0) < 1e-9
    runs = [_run("a", "lo", s, {"m": v}) for s, v in zip((1, 2, 3), (1.0, 1.1, 0.9))]
    runs += [_run("b", "hi", s, {"m": v}) for s, v in zip((1, 2, 3), (2.0, 2.13, 1.9))]
    runs += [_run("c", "noise", s, {"m": v}) for s, v in zip((1, 2, 3), (1.05, 1.0, 1.1))]
    runs += [_run("d", "one", 1, {"m": 3.0})]
    groups = C.group_by_seed(runs)

    def verdict(better, worse):
        claim = C.Claim(0, "t", C.SECONDARY, "p", "c", (C.Comparison("m", better, worse),))
        return C.evaluate([claim], groups)[0]["verdict"]
    assert verdict("lo", "hi") == C.REPRODUCED and verdict("hi", "lo") == C.NOT_REPRODUCED
    assert verdict("lo", "noise") == C.INCONCLUSIVE and verdict("lo", "one") == C.INCONCLUSIVE
    assert C.claim_verdict([C.REPRODUCED, C.INCONCLUSIVE]) == C.INCONCLUSIVE
    assert C.claim_verdict([C.REPRODUCED, C.NOT_REPRODUCED]) == C.NOT_REPRODUCED


def test_matched_flops_interpolates_the_curves_never_extrapolates():
    # adapted: starts at the base's 100 FLOPs; scratch: reaches 200 FLOPs
    a = _run("a", "claim1_adapt", 1, {}, [{"tokens": 0, "flops": 100.0, "val.ar.bpb": 3.0},
                                          {"tokens": 10, "flops": 150.0, "val.ar.bpb": 2.0}])
    s = _run("s", "claim1_scratch_flops", 1, {}, [{"tokens": 10, "flops": 50.0, "val.ar.bpb": 4.0},
                                                  {"tokens": 40, "flops": 200.0, "val.ar.bpb": 2.5}])
    x = CV.matched_x([a, s], "flops", "val.ar.bpb")
    assert x == 150.0
    assert CV.metric_value(s, "val.ar.bpb", "flops", x) == pytest.approx(4.0 - 1.5 * 100 / 150)
    assert CV.interpolate(CV.curve_points(a, "flops", "val.ar.bpb"), 160.0) is None


def test_runs_differing_only_by_seed_are_one_arm_and_claims_get_verdicts(tmp_path):
    runs = []
    for seed, (a, r) in enumerate([(0.10, 0.30), (0.11, 0.32), (0.09, 0.31)], start=1):
        runs.append(_run("const", "claim1_adapt", seed, {"delta.val.en.bpb": a, "val.ar.bpb": 2.0 + a}))
        runs.append(_run("rewarm", "claim4_rewarm", seed, {"delta.val.en.bpb": r, "val.ar.bpb": 1.9}))
    groups = C.group_by_seed(runs)
    assert {k: len(v) for k, v in groups.items()} == {"claim1_adapt": 3, "claim4_rewarm": 3}
    (result,) = C.evaluate(C.claims_by_number([4]), groups)
    assert result["verdict"] == C.REPRODUCED and result["rows"][0]["better"].n == 3
    md = CR.claims_markdown([result], groups, "python experiments/reproduce.py")
    assert "**Verdict: reproduced.**" in md and "0.1000 ± 0.0100 (n=3)" in md and "not run" not in md


@pytest.mark.slow
def test_smoke_suite_end_to_end_resumes_and_writes_claims(tmp_path, cache_dir):
    """--smoke for claim 4 over 2 seeds: the base once per seed, its FLOPs carried into the runs
    started from it, a validation curve in every results.json, CLAIMS.md and a plot; run again,
    every cell is skipped."""
    out, md = tmp_path / "claims", tmp_path / "CLAIMS.md"
    # --mix-commits: in a shared checkout, commits can land between the cells of this run
    cmd = [sys.executable, str(ROOT / "experiments" / "reproduce.py"), "--smoke", "--claims", "4", "--seeds", "2",
           "--out", str(out), "--claims-md", str(md), "--mix-commits", "--no-competence"]
    env = {**os.environ, "ALLAM_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("[run]") == 6  # 2 seeds x (base, constant LR, re-warm)
    for seed in (1, 2):
        base = json.loads((out / f"seed{seed}" / C.BASE / "results.json").read_text())
        assert base["train.base_flops"] is None and base["train.total_flops"] == base["train.flops"] > 0
        adapt = json.loads((out / f"seed{seed}" / "claim1_adapt" / "results.json").read_text())
        assert adapt["config"]["trainer"]["seed"] == seed and adapt["config"]["init"]["checkpoint"].endswith(
            f"seed{seed}/{C.BASE}/hf")
        assert adapt["train.base_flops"] == base["train.total_flops"]
        assert adapt["train.total_flops"] == pytest.approx(adapt["train.base_flops"] + adapt["train.flops_per_token"]
                                                           * adapt["train.tokens"])
        curve = adapt["curve"]
        assert [p["tokens"] for p in curve] == [0, 512, 1024]  # the start, every 4 steps of 128 tokens
        assert curve[0]["flops"] == adapt["train.base_flops"] and curve[-1]["flops"] == adapt["train.total_flops"]
        assert curve[-1]["val.en.bpb"] == pytest.approx(adapt["val.en.bpb"])
    text = md.read_text()
    assert "## Claim 4" in text and "(n=2)" in text and "Verdict rule" in text and "paired n=2" in text
    assert adapt["code.commit"] and adapt["versions.torch"]  # provenance recorded
    assert any(v in text for v in ("**Verdict: reproduced.**", "**Verdict: not reproduced.**", "**Verdict: inconclusive.**"))
    assert (tmp_path / "claims_plots" / "claim4.png").stat().st_size > 5000
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert again.returncode == 0 and again.stdout.count("[skip]") == 6 and "[run]" not in again.stdout


@pytest.mark.slow
def test_smoke_suite_scores_the_competence_tier_into_claims_md(tmp_path, cache_dir):
    """--smoke for claim 4 over 1 seed with the competence phase: the base and both arms scored on
    eval=competence (8 items a task) into <cell>/eval_competence, shown in claim 4's section; run
    again, nothing is trained or scored."""
    out, md = tmp_path / "claims", tmp_path / "CLAIMS.md"
    cmd = [sys.executable, str(ROOT / "experiments" / "reproduce.py"), "--smoke", "--claims", "4", "--seeds", "1",
           "--out", str(out), "--claims-md", str(md), "--mix-commits"]
    env = {**os.environ, "ALLAM_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("[eval]") == 3
    for cell in (C.BASE, "claim1_adapt", "claim4_rewarm"):
        res = json.loads((out / "seed1" / cell / "eval_competence" / "results.json").read_text())
        assert res["source_run"] == str(out / "seed1" / cell) and res["eval.word_order_ar.n"] == 8
    section = md.read_text().split("## Claim 4")[1].split("## Arms")[0]
    assert "Context: the competence tier" in section and section.count("| 1 | 8 | ") == 3
    assert "Item by item against the base" in section and section.count(f"` − `{C.BASE}` | ") == 2
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert again.returncode == 0 and "[eval]" not in again.stdout and "[run]" not in again.stdout


def test_competence_phase_commands_and_cells(make_cfg):
    """The cells scored are claims 1-5's arms and the base (not claim 6-8's own arms); the command
    composes into task=eval on the cell's checkpoint with the budget's items."""
    sys.path.insert(0, str(ROOT / "experiments"))
    import reproduce as rp

    cells = rp.cells_for(list(C.CLAIMS))
    scored = rp.competence_cells(list(C.CLAIMS), cells)
    assert scored[0] == C.BASE and "claim4_rewarm" in scored and "claim5_ar70" in scored
    assert not {"claim6_no_translated", "claim7_mix_only"} & set(scored) and "claim1_scratch_flops" in scored
    assert rp.competence_cells(C.claims_by_number([6, 7]), rp.cells_for(C.claims_by_number([6, 7]))) == []
    args = rp.competence_args(ROOT / "outputs" / "x" / "claim1_adapt", 8)
    cfg = make_cfg(*[a for a in args if not a.startswith("hydra.")])
    assert cfg.task == "eval" and cfg.eval.name == "competence" and cfg.eval.limit == 8
    assert str(cfg.ckpt).endswith("claim1_adapt") and args[-1].endswith("claim1_adapt/eval_competence")



def test_task_report_adds_claim_verdicts_for_claim_runs(make_cfg, tmp_path):
    """task=report over a folder holding every arm of claim 4 (three seeds each) writes CLAIMS.md
    and a verdict next to its table; a folder without claim arms gets no claims section."""
    from allam import results as R
    from allam.tasks import report as report_task

    root = tmp_path / "runs"
    for seed, (a, r) in enumerate([(0.10, 0.30), (0.11, 0.32), (0.09, 0.31)], start=1):
        for arm, kind, delta in (("claim1_adapt", "const", a), ("claim4_rewarm", "rewarm", r)):
            run = _run(kind, arm, seed, {"delta.val.en.bpb": delta, "val.ar.bpb": 1.9 + delta, "val.en.bpb": 1.5})
            run.pop("_path")
            (root / f"seed{seed}" / arm).mkdir(parents=True)
            R.write(root / f"seed{seed}" / arm, run)
    for seed in (1, 2, 3):  # competence results of claim1_adapt (a stale one first) and of seed 1's re-warm run
        for arm, name, acc in (("claim1_adapt", "eval_0_old", 0.9), ("claim1_adapt", "eval_competence", 0.30 + seed / 100),
                               ("claim4_rewarm", "eval_competence", 0.5)):
            if arm == "claim4_rewarm" and seed > 1:
                continue
            scores = {f"eval.{t}.{k}": v for t in CR.COMPETENCE_TASKS
                      for k, v in (("acc", acc), ("acc_stderr", 0.02 + seed / 1000), ("n", 400))}
            (root / f"seed{seed}" / arm / name).mkdir(parents=True)
            R.write(root / f"seed{seed}" / arm / name, {"task": "eval", "eval.suite": "competence",
                                                         "source_run": str(root / f"seed{seed}" / arm), **scores})
    res = report_task.run(make_cfg("task=report", f"report_dir={root}", out=tmp_path / "report"))
    assert res["runs"] == 6 and res["claims"] == {"4": C.REPRODUCED}
    text = (tmp_path / "report" / "CLAIMS.md").read_text()
    assert "## Claim 4" in text and "(n=3)" in text and "report_dir=" in text
    section = text.split("## Claim 4")[1]
    assert "Context: the competence tier" in section
    assert "| `claim1_adapt` | 3 | 400 | 0.320 ± 0.022 | 0.320 ± 0.022 |" in section  # per run the last in path order (as the table), averaged
    assert "| `claim4_rewarm` | 1 | 400 | 0.500 ± 0.021 |" in section and "claims_english_base` |" not in section
    other = tmp_path / "other"
    (other / "one").mkdir(parents=True)
    R.write(other / "one", {k: v for k, v in _run("x", "english_base", 1, {"val.en.bpb": 1.0}).items() if k != "_path"})
    assert "claims" not in report_task.run(make_cfg("task=report", f"report_dir={other}", out=tmp_path / "report2"))


def test_a_run_recorded_before_a_key_existed_groups_with_its_default():
    """Seeds run across a code change that added a key (at its default) are still one arm; a
    non-default value of that key is another arm."""
    old = _run("a", "claim1_adapt", 1, {"val.ar.bpb": 1.0})
    new = _run("a", "claim1_adapt", 2, {"val.ar.bpb": 1.1})
    new["config"]["model"] = {"arch": "llama", "head_dim": None}
    other = _run("a", "claim1_adapt", 3, {"val.ar.bpb": 1.2})
    other["config"]["model"] = {"arch": "qwen2"}
    groups = C.group_by_seed([old, new, other])
    assert {k: len(v) for k, v in groups.items()} == {"claim1_adapt": 2, "claim1_adapt#2": 1}


def test_cells_run_the_base_once_first_and_the_flops_cell_last():
    sys.path.insert(0, str(ROOT / "experiments"))
    import reproduce

    cells = reproduce.cells_for(C.claims_by_number([1, 8]))
    assert cells == [C.BASE, "claim1_adapt", "claim1_scratch", "claim1_scratch_flops"]
    assert reproduce.cells_for(C.claims_by_number([7])) == ["claim1_scratch", "claim7_mix_only"]  # no base needed


def test_report_only_refuses_mixed_commits_unless_mix_commits(tmp_path, capsys):
    """reproduce.py --report-only over runs of claim 4 where one seed came from another commit:
    a one-line error naming the runs; with --mix-commits, CLAIMS.md with the commits listed."""
    sys.path.insert(0, str(ROOT / "experiments"))
    import reproduce

    out = tmp_path / "runs"
    for seed, (a, r) in enumerate([(0.10, 0.30), (0.11, 0.32), (0.09, 0.31)], start=1):
        for arm, delta in (("claim1_adapt", a), ("claim4_rewarm", r)):
            run = _run(arm, arm, seed, {"delta.val.en.bpb": delta}, **{"code.commit": "c" * 40 if seed < 3 else "d" * 40,
                                                                      "code.dirty": False})
            run.pop("_path")
            (out / f"seed{seed}" / arm).mkdir(parents=True)
            (out / f"seed{seed}" / arm / "results.json").write_text(json.dumps(run))
    args = ["--report-only", "--claims", "4", "--out", str(out), "--claims-md", str(tmp_path / "CLAIMS.md")]
    assert reproduce.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: claims: arm claim1_adapt") and "\n" not in err and "seed3/claim1_adapt (dddddddddddd)" in err
    assert reproduce.main([*args, "--mix-commits"]) == 0
    text = (tmp_path / "CLAIMS.md").read_text()
    assert "**Verdict: reproduced.**" in text and "cccccccccccc, dddddddddddd" in text and "paired n=3" in text


def test_task_report_refuses_an_arm_of_two_commits_unless_report_mix_commits(make_cfg, tmp_path):
    from allam import results as R
    from allam.config import ConfigError
    from allam.tasks import report as report_task

    root = tmp_path / "runs"
    for seed, (a, r) in enumerate([(0.10, 0.30), (0.11, 0.32), (0.09, 0.31)], start=1):
        for arm, delta in (("claim1_adapt", a), ("claim4_rewarm", r)):
            run = _run(arm, arm, seed, {"delta.val.en.bpb": delta}, **{"code.commit": "e" * 40 if seed == 1 else "f" * 40})
            run.pop("_path")
            (root / f"seed{seed}" / arm).mkdir(parents=True)
            R.write(root / f"seed{seed}" / arm, run)
    with pytest.raises(ConfigError, match="report_mix_commits=true"):
        report_task.run(make_cfg("task=report", f"report_dir={root}", out=tmp_path / "report"))
    res = report_task.run(make_cfg("task=report", f"report_dir={root}", "report_mix_commits=true", out=tmp_path / "report2"))
    assert res["claims"] == {"4": C.REPRODUCED}


def test_competence_is_compared_item_by_item_with_the_base_of_the_same_seed():
    """A worked example: arm A beats the base on 2 of 4 items and loses 1 in seed 1, ties in seed 2:
    each item's difference averaged over the 2 seeds (+1/2, +1/2, -1/2, 0), tested over the 4
    items, not as 8 independent ones; a seed whose items differ (items_sha) is left out."""
    from allam.claims_report import competence_paired

    def ev(seed, correct, sha="s1"):
        return {"config": {"trainer": {"seed": seed}}, "eval.word_order_ar.correct": correct,
                "eval.word_order_ar.items_sha": sha}

    by_arm = {C.BASE: [ev(1, "0010"), ev(2, "1100"), ev(3, "0000")],
              "A": [ev(1, "1100"), ev(2, "1100"), ev(3, "1111", sha="other")]}
    table = competence_paired(by_arm, [C.BASE, "A"], C.BASE)
    row = next(line for line in table.splitlines() if line.startswith("| `A`"))
    cells = [c.strip() for c in row.split("|")[2:-1]]
    d = [0.5, 0.5, -0.5, 0.0]
    t = S.paired_test(d)
    assert int(t.n) == 4
    assert cells[0] == f"{t.mean:+.3f} [{t.ci[0]:+.3f}, {t.ci[1]:+.3f}], p {t.p:.4f}" and t.mean == 0.125
    assert cells[1:] == ["n/a"] * 3  # no per-item records of the other tasks
    assert competence_paired({C.BASE: [ev(1, "0")]}, [C.BASE], C.BASE) == ""


def test_a_copied_suite_folder_keeps_its_competence_tier():
    """experiments/claims_full_runs: the runs copied out of outputs/; an eval's source_run names the
    old place, so the eval is matched to the training run whose folder holds it."""
    from allam.claims_report import competence_by_arm

    runs = [_run("a", "claim1_adapt", s, {}, _path=f"/copy/seed{s}/claim1_adapt/results.json") for s in (1, 2)]
    groups = C.group_by_seed(runs)
    evals = [{"task": "eval", "eval.suite": "competence", "source_run": f"/gone/seed{s}/claim1_adapt",
              "_path": f"/copy/seed{s}/claim1_adapt/eval_competence/results.json", "seed": s} for s in (1, 2)]
    evals.append({"task": "eval", "eval.suite": "competence", "source_run": "/gone/other",
                  "_path": "/copy/seed1/elsewhere/eval_competence/results.json"})  # no training run holds it
    assert [e["seed"] for e in competence_by_arm(groups, evals)["claim1_adapt"]] == [1, 2]


def test_claims_re_tested_on_another_language(tmp_path, capsys):
    """--lang hi: claims 2-4 read Hindi's metrics and the cells run on data=bible_hi, the English
    base with a 1% Hindi share in place of Arabic's; other claims or a language without a preset
    are one line."""
    sys.path.insert(0, str(ROOT / "experiments"))
    import reproduce

    (claim,) = C.claims_by_number([3], "hi")
    assert {c.metric for c in claim.comparisons} == {"start.val.en.bpb", "val.hi.bpb", "start.val.hi.bpb"}
    assert "Hindi" in claim.title and "Arabic" not in claim.compared and "Arabic" in claim.paper
    assert reproduce.main(["--lang", "hi", "--dry-run", "--seeds", "1", "--out", str(tmp_path)]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[run]")]
    assert len(lines) == 6 and all("data=bible_hi" in ln for ln in lines)
    assert "data.mix.hi=0.01" in lines[0] and "+tokenizer.base_mix.hi=0.01" in lines[0] and "claims_english_base" in lines[0]
    assert reproduce.competence_args(tmp_path, 400, "hi")[2] == "eval=competence_hi"
    assert CR.competence_tasks("hi") == ("word_order_hi", "next_word_hi", "word_order_en", "next_word_en")
    assert reproduce.main(["--lang", "hi", "--claims", "5", "--dry-run", "--out", str(tmp_path)]) == 2
    assert reproduce.main(["--lang", "sw", "--dry-run", "--out", str(tmp_path)]) == 2
    assert "error: --lang sw" in capsys.readouterr().err


def test_each_seed_is_scored_on_the_competence_tier_before_the_next_seed_runs(tmp_path, capsys):
    """--full scores every seed: a finished seed 1's cells are scored before seed 2's first run
    (a suite cut off later keeps them); the default budget scores seed 1 only."""
    sys.path.insert(0, str(ROOT / "experiments"))
    import reproduce
    from allam import results as R

    cells = reproduce.cells_for(C.claims_by_number([4]))
    for cell in cells:
        (tmp_path / "seed1" / cell).mkdir(parents=True)
        R.write(tmp_path / "seed1" / cell, {"task": "train", "status": "finished"})
    assert reproduce.main(["--full", "--claims", "4", "--seeds", "2", "--dry-run", "--out", str(tmp_path)]) == 0
    lines = [ln.split(":")[0] for ln in capsys.readouterr().out.splitlines() if ln.startswith("[")]
    assert lines == ([f"[skip] seed 1 {c}" for c in cells] + [f"[eval] seed 1 {c}" for c in cells]
                     + [f"[run]  seed 2 {c}" for c in cells])
    for cell in cells:  # seed 2 finished too: --full scores it, the default budget does not
        (tmp_path / "seed2" / cell).mkdir(parents=True)
        R.write(tmp_path / "seed2" / cell, {"task": "train", "status": "finished"})
    assert reproduce.main(["--full", "--claims", "4", "--seeds", "2", "--dry-run", "--out", str(tmp_path)]) == 0
    assert any(ln.startswith("[eval] seed 2") for ln in capsys.readouterr().out.splitlines())
    assert reproduce.main(["--claims", "4", "--seeds", "2", "--dry-run", "--out", str(tmp_path)]) == 0
    assert not any(ln.startswith("[eval] seed 2") for ln in capsys.readouterr().out.splitlines())
    # --competence-only: seed 3 has not trained: nothing runs for it, the finished seeds are scored
    assert reproduce.main(["--full", "--claims", "4", "--seeds", "3", "--dry-run", "--competence-only",
                           "--out", str(tmp_path)]) == 0
    lines = [ln.split(":")[0] for ln in capsys.readouterr().out.splitlines() if ln.startswith("[")]
    assert not any(ln.startswith("[run]") for ln in lines)
    assert [ln for ln in lines if ln.startswith("[eval]")] == [f"[eval] seed {s} {c}" for s in (1, 2) for c in cells]
    assert reproduce.main(["--competence-only", "--no-competence", "--out", str(tmp_path)]) == 2


def test_the_committed_full_report_is_what_the_committed_runs_make(tmp_path):
    """experiments/CLAIMS_FULL.md (its verdicts are quoted in the README) is the report this code
    writes from the committed runs in experiments/claims_full_runs, line for line; a change to the
    claims, the statistics or the report's layout fails here until the file is regenerated
    (`python experiments/reproduce.py --full --report-only --out experiments/claims_full_runs
    --claims-md experiments/CLAIMS_FULL.md`). The header line, which names the machine's cores,
    is taken from the committed file; its counts are checked against the runs."""
    from allam.results import collect_runs

    committed = (ROOT / "experiments" / "CLAIMS_FULL.md").read_text(encoding="utf-8")
    header = next(line for line in committed.splitlines() if line.startswith("Budget `full`"))
    runs = collect_runs(ROOT / "experiments" / "claims_full_runs")
    assert f"; {len(runs)} runs, {sum(r.get('train.tokens_this_run') or 0 for r in runs):,} training tokens" in header
    md = tmp_path / "CLAIMS_FULL.md"
    rep = CR.run_claims_report(ROOT / "experiments" / "claims_full_runs", tmp_path / "claims_full_plots", None,
                               "python experiments/reproduce.py --full", header, md)
    assert md.read_text(encoding="utf-8") == committed
    assert rep["verdicts"] == {1: "not reproduced", 2: "reproduced", 3: "not reproduced", 4: "reproduced",
                               5: "reproduced", 6: "reproduced", 7: "reproduced", 8: "reproduced"}
