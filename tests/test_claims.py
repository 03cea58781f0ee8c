"""The evidence code: Student's t, paired and Welch tests, Holm, the verdict rule and its worked
example, claim arms paired by seed, "learns faster" over the curve, provenance and the refusal
to mix commits in one arm, and the english8k base's Arabic share."""
from __future__ import annotations

import json
import math
import random
import subprocess

import pytest

from allam import claims as C
from allam import curves as CV
from allam import claims_report as CR
from allam import results as R
from allam import stats as S


# --------------------------------------------------------------------------- Student's t
@pytest.mark.parametrize("q,df,table", [(0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 4, 2.776),
                                         (0.95, 10, 1.812), (0.975, 30, 2.042), (0.995, 5, 4.032)])
def test_t_quantile_matches_printed_tables(q, df, table):
    assert S.t_ppf(q, df) == pytest.approx(table, abs=5e-4)
    assert S.t_ppf(1 - q, df) == pytest.approx(-table, abs=5e-4)


@pytest.mark.parametrize("t", [-7.0, -1.3, 0.0, 0.4, 2.5, 30.0])
def test_t_cdf_matches_closed_forms(t):
    """df = 1 is the Cauchy distribution, df = 2 has F(t) = 1/2 + t / (2 sqrt(2 + t^2))."""
    assert S.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    assert S.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    assert S.betainc(2.5, 1.0, 0.3) == pytest.approx(0.3 ** 2.5)  # I_x(a, 1) = x^a


def test_paired_test_worked_example_by_hand():
    """D = 0.10, 0.12, 0.08: mean 0.1, s = 0.02, SE = 0.02/sqrt(3), t = 5 sqrt(3) at 2 df;
    one-sided p = 1/2 - t/(2 sqrt(2 + t^2)) = 1/2 - 5 sqrt(3)/(2 sqrt(77)) = 0.006536;
    95% CI 0.1 +- 4.3027 SE = [0.0503, 0.1497]."""
    t = S.paired_test([0.10, 0.12, 0.08])
    se = 0.02 / math.sqrt(3)
    assert (t.kind, t.n, t.df) == ("paired", "3", 2.0)
    assert t.mean == pytest.approx(0.1) and t.se == pytest.approx(se) and t.t == pytest.approx(5 * math.sqrt(3))
    assert t.p == pytest.approx(0.5 - 5 * math.sqrt(3) / (2 * math.sqrt(77)), rel=1e-9)
    assert t.p == pytest.approx(0.006536, abs=1e-6) and t.p + t.p_opposite == pytest.approx(1.0)
    assert t.ci == pytest.approx((0.1 - 4.302653 * se, 0.1 + 4.302653 * se), abs=1e-6)
    assert t.ci == pytest.approx((0.0503, 0.1497), abs=1e-4)
    assert S.paired_test([0.1]) is None  # one pair: no spread, no test


def test_welch_test_by_hand():
    """a = 1, 2, 3 (var 1), b = 2, 4, 6, 8, 10 (var 10): SE^2 = 1/3 + 2, df = (7/3)^2 /
    ((1/3)^2/2 + 2^2/4) = 4.9 (Welch-Satterthwaite)."""
    t = S.welch_test([1, 2, 3], [2, 4, 6, 8, 10])
    assert t.kind == "welch" and t.n == "3+5"
    assert t.mean == pytest.approx(-4.0) and t.se == pytest.approx(math.sqrt(7 / 3))
    assert t.df == pytest.approx((7 / 3) ** 2 / ((1 / 3) ** 2 / 2 + 4 / 4))
    assert t.p_opposite == pytest.approx(S.t_cdf(-4 / math.sqrt(7 / 3), t.df)) and t.p_opposite < 0.05 < t.p
    scipy_stats = pytest.importorskip("scipy.stats")  # a cross-check where scipy happens to be installed
    ref = scipy_stats.ttest_ind([1, 2, 3], [2, 4, 6, 8, 10], equal_var=False, alternative="less")
    assert t.p_opposite == pytest.approx(float(ref.pvalue), rel=1e-9)


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> kept monotone: 0.03, 0.06, 0.06
    assert S.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert S.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and S.holm([]) == []
    # a NaN p counts as 1: the others keep their ranks (x2, x1 of the two valid ones after it)
    assert S.holm([float("nan"), 0.001, 0.02]) == pytest.approx([1.0, 0.003, 0.04])


def test_seeds_for_power_by_hand_and_by_simulation():
    """Effect size 1 (mean D 0.1, SD 0.1), one-sided 0.05, 80% power: n = 8 by the approximation
    ((1.895 + 0.896) x 0.1/sqrt(8) = 0.0987 <= 0.1; at n = 7, 0.1077 > 0.1), as power tables give
    for a paired test; two deciding comparisons (threshold 0.025) need more; a Welch comparison
    uses df 2n - 2; simulated paired tests at the returned n find the effect at least ~80% of the time."""
    t = S.paired_test([0.0, 0.1, 0.2])  # mean 0.1, SD 0.1
    assert t.sd == pytest.approx(0.1)
    assert S.seeds_for_power(t) == 8 and S.seeds_for_power(t, comparisons=2) > 8
    assert S.seeds_for_power(S.paired_test([0.1, 0.1, 0.1])) == 2  # no spread
    assert S.seeds_for_power(S.paired_test([-0.1, 0.0, 0.1])) is None  # no difference
    w = S.welch_test([1.0, 1.1, 1.2], [0.9, 1.0, 1.1])  # mean 0.1, per-seed spread sqrt(0.01 + 0.01)
    assert w.sd == pytest.approx(math.sqrt(0.02)) and S.seeds_for_power(w) == 14
    rng, n = random.Random(0), S.seeds_for_power(t)
    hits = sum(S.paired_test([rng.gauss(0.1, 0.1) for _ in range(n)]).p < S.ALPHA for _ in range(2000))
    assert 0.77 <= hits / 2000 <= 0.9


def test_worked_example_is_printed_at_the_top_of_claims_md():
    ex = C.worked_example()
    t1, t2 = ex["tests"]
    # comparison 2: D = 0.08, 0.03, 0.05: mean 0.05333, s = 0.025166, t = 3.6706, p = 0.03343
    assert t2.t == pytest.approx(0.16 / 3 / (math.sqrt(((0.08 - 0.16 / 3) ** 2 + (0.03 - 0.16 / 3) ** 2
                                                        + (0.05 - 0.16 / 3) ** 2) / 2) / math.sqrt(3)))
    assert t2.p == pytest.approx(0.5 - t2.t / (2 * math.sqrt(2 + t2.t ** 2)))
    assert ex["holm"] == pytest.approx([2 * t1.p, t2.p]) and ex["claim"] == C.REPRODUCED
    md = CR.claims_markdown([], {}, "python experiments/reproduce.py")
    rule = md.index("**Verdict rule.**")
    assert rule < md.index("| claim | source | verdict |")
    for text in ("p = 0.0065, Holm-adjusted 0.0131: reproduced", "[+0.0503, +0.1497]", "p = 0.0334, Holm-adjusted 0.0334",
                 "4.303·SE", "one-sided", "Welch"):
        assert text in md, text


# --------------------------------------------------------------------------- claims on made-up runs
def _run(arm, seed, values, curve=None, start="base", **extra):
    run_dir = f"/x/seed{seed}/{arm}"
    init = {"seed": seed, "checkpoint": f"/x/seed{seed}/{C.BASE}/hf" if start == "base" else None}
    return {"task": "train", "status": "finished", "_path": f"{run_dir}/results.json", "run_dir": run_dir,
            "choices": {"experiment": arm}, "config": {"trainer": {"seed": seed}, "init": init, "data": {"seed": seed},
                                                       "arm": arm},
            **values, **({"curve": curve} if curve else {}), **extra}


def _claim(*comparisons):
    return C.Claim(99, "test", C.SECONDARY, "made up", "made up", tuple(comparisons))


def test_arms_from_one_base_are_paired_by_seed_and_scratch_arms_use_welch():
    """Seed effects (1.0, 1.5, 2.0) much larger than a consistent 0.05 difference: paired, the
    difference is clear; the same numbers from scratch (no shared base) are inconclusive (Welch)."""
    seeds = {1: 1.0, 2: 1.5, 3: 2.0}
    runs = [_run("good", s, {"val.ar.bpb": v}) for s, v in seeds.items()]
    runs += [_run("bad", s, {"val.ar.bpb": v + 0.05 + 0.01 * s}) for s, v in seeds.items()]
    runs += [_run("bad", 4, {"val.ar.bpb": 9.0})]  # a seed the other arm lacks: not in the pairs
    runs += [_run("scratch_good", s, {"val.ar.bpb": v}, start=None) for s, v in seeds.items()]
    runs += [_run("scratch_bad", s, {"val.ar.bpb": v + 0.05 + 0.01 * s}, start=None) for s, v in seeds.items()]
    groups = C.group_by_seed(runs)
    (res,) = C.evaluate([_claim(C.Comparison("val.ar.bpb", "good", "bad"))], groups)
    test = res["rows"][0]["test"]
    assert (test.kind, test.n) == ("paired", "3") and test.mean == pytest.approx(0.07)
    assert res["verdict"] == C.REPRODUCED
    (res,) = C.evaluate([_claim(C.Comparison("val.ar.bpb", "scratch_good", "scratch_bad"))], groups)
    assert res["rows"][0]["test"].kind == "welch" and res["verdict"] == C.INCONCLUSIVE


def test_seeds_differing_in_layout_logging_or_resume_are_one_arm_and_a_split_off_arm_is_named():
    """A seed resumed with ckpt=, run with other workers or evaluated at the end is still a seed of
    its arm (each was an arm#k the claims never read, silently); another budget is another arm,
    and the report names the runs it leaves out."""
    from allam.claim_runs import left_out

    runs = [_run("claim5_ar20", s, {"val.ar.bpb": 1.0}) for s in (1, 2, 3, 4, 5)]
    runs[2]["config"]["ckpt"] = "/x/seed3/claim5_ar20/checkpoints/last.ckpt"
    runs[3]["config"]["data"]["num_workers"] = 2
    runs[4]["config"]["eval"] = {"at_end": True}
    runs.append(_run("claim5_ar20", 6, {"val.ar.bpb": 1.0}))
    runs[5]["config"]["trainer"]["max_tokens"] = 4096
    groups = C.group_by_seed(runs)
    assert {k: len(v) for k, v in groups.items()} == {"claim5_ar20": 5, "claim5_ar20#2": 1}
    assert left_out(groups, ["claim5_ar20", "claim1_adapt"]) == {"claim5_ar20#2": ["seed6/claim5_ar20"]}
    # the layout may differ, the tokens per step it makes may not (another global batch is another schedule)
    shape = {"data": {"batch_size": 8}, "model": {"seq_len": 256}, "trainer": {"accumulate_grad_batches": 1,
                                                                                "devices": 1, "num_nodes": 1}}
    runs = [_run("claim4_rewarm", s, {"val.en.bpb": 2.0}) for s in (1, 2, 3)]
    for r in runs:
        for group, values in shape.items():
            r["config"].setdefault(group, {}).update(values)
    runs[1]["config"]["data"]["batch_size"], runs[1]["config"]["trainer"]["devices"] = 4, 2  # the same 2,048 tokens
    runs[2]["config"]["trainer"]["accumulate_grad_batches"] = 4  # 8,192 tokens a step
    assert {k: len(v) for k, v in C.group_by_seed(runs).items()} == {"claim4_rewarm": 2, "claim4_rewarm#2": 1}


def test_the_base_pairs_with_the_runs_started_from_its_export_and_the_tolerance_decides():
    """Claim 1's English row: adapted within EN_TOLERANCE of its base is reproduced; adapted
    significantly more than the tolerance worse is not reproduced."""
    base = [_run(C.BASE, s, {"val.en.bpb": 2.0 + 0.1 * s}, start=None) for s in (1, 2, 3)]
    near = [_run("claim1_adapt", s, {"val.en.bpb": 2.0 + 0.1 * s + d}) for s, d in ((1, 0.001), (2, 0.003), (3, 0.002))]
    far = [_run("far", s, {"val.en.bpb": 2.0 + 0.1 * s + d}) for s, d in ((1, 0.05), (2, 0.06), (3, 0.055))]
    groups = C.group_by_seed(base + near + far)
    comp = C.Comparison("val.en.bpb", "claim1_adapt", C.BASE, margin=C.EN_TOLERANCE)
    (res,) = C.evaluate([_claim(comp)], groups)
    row = res["rows"][0]
    assert row["test"].kind == "paired" and row["test"].mean == pytest.approx(C.EN_TOLERANCE - 0.002)
    assert res["verdict"] == C.REPRODUCED
    (res,) = C.evaluate([_claim(C.Comparison("val.en.bpb", "far", C.BASE, margin=C.EN_TOLERANCE))], groups)
    assert res["verdict"] == C.NOT_REPRODUCED
    md = CR.claims_markdown([res], groups, "cmd")
    assert "-0.0550 [" in md and "(+0.02 margin)" in md  # A - B shown, the margin named


def test_holm_turns_two_marginal_comparisons_inconclusive_and_context_never_decides():
    """Two paired comparisons with one-sided p = 0.0334 each pass alone; Holm doubles the smaller
    to 0.0669: inconclusive. A context row significant the wrong way changes nothing."""
    d = {1: 0.08, 2: 0.03, 3: 0.05}
    runs = [_run("b", s, {"m": 1.0, "n": 1.0, "o": 1.0}) for s in d]
    runs += [_run("a", s, {"m": 1.0 + v, "n": 1.0 + v, "o": 0.0 - v}) for s, v in d.items()]
    groups = C.group_by_seed(runs)
    (one,) = C.evaluate([_claim(C.Comparison("m", "b", "a"))], groups)
    assert one["rows"][0]["test"].p == pytest.approx(0.03343, abs=1e-5) and one["verdict"] == C.REPRODUCED
    (two,) = C.evaluate([_claim(C.Comparison("m", "b", "a"), C.Comparison("n", "b", "a"),
                                C.Comparison("o", "b", "a", decides=False))], groups)
    assert [r.get("p_holm") for r in two["rows"][:2]] == pytest.approx([2 * 0.033431, 2 * 0.033431], abs=1e-5)
    assert two["verdict"] == C.INCONCLUSIVE and two["rows"][2]["verdict"] == C.NOT_REPRODUCED
    assert "p_holm" not in two["rows"][2]


def test_a_diverged_run_is_left_out_of_the_paired_test_and_decides_nothing_else():
    """Seed 4 of arm `a` diverged (NaN bpb): the paired test uses seeds 1-3, and the claim's other
    comparison, significant the wrong way, still makes the claim not reproduced."""
    d = {1: 0.10, 2: 0.12, 3: 0.08, 4: 0.11}
    runs = [_run("b", s, {"m": 1.0, "n": 1.0}) for s in d]
    runs += [_run("a", s, {"m": float("nan") if s == 4 else 1.0 + v, "n": 1.0 - v}) for s, v in d.items()]
    (res,) = C.evaluate([_claim(C.Comparison("m", "b", "a"), C.Comparison("n", "b", "a"))], C.group_by_seed(runs))
    m, n = res["rows"]
    assert (m["test"].n, m["test"].mean) == ("3", pytest.approx(0.10)) and math.isfinite(m["p_holm"])
    assert m["verdict"] == C.REPRODUCED and n["verdict"] == C.NOT_REPRODUCED
    assert res["verdict"] == C.NOT_REPRODUCED


def test_a_missing_context_arm_does_not_hold_back_the_verdict():
    """Claim 1's matched-FLOPs arm is context only: a suite without it still decides the claim,
    and the report names the arm as not run."""
    runs = [_run("b", s, {"m": 1.0}) for s in (1, 2, 3)]
    runs += [_run("a", s, {"m": 1.1 + 0.01 * s}) for s in (1, 2, 3)]
    groups = C.group_by_seed(runs)
    (res,) = C.evaluate([_claim(C.Comparison("m", "b", "a"), C.Comparison("m", "b", "ctx", decides=False))], groups)
    assert res["missing"] == ["ctx"] and res["verdict"] == C.REPRODUCED
    assert "Not run: `ctx`." in CR.claims_markdown([res], groups, "cmd")
    (res,) = C.evaluate([_claim(C.Comparison("m", "b", "a"), C.Comparison("m", "b", "gone"))], groups)
    assert res["missing"] == ["gone"] and res["verdict"] == C.INCONCLUSIVE  # a deciding arm missing


def test_a_run_copied_under_the_report_root_is_refused_not_counted_twice(tmp_path):
    root = tmp_path / "runs"
    for seed in (1, 2):
        for arm in ("claim1_adapt", "claim4_rewarm"):
            run = _run(arm, seed, {"delta.val.en.bpb": 0.1 if arm == "claim1_adapt" else 0.3 + 0.01 * seed})
            run.pop("_path")
            (root / f"seed{seed}" / arm).mkdir(parents=True)
            (root / f"seed{seed}" / arm / "results.json").write_text(json.dumps(run))
    assert CR.run_claims_report(root, tmp_path / "out", [4])["verdicts"] == {4: C.REPRODUCED}
    (root / "copy" / "claim4_rewarm").mkdir(parents=True)
    (root / "copy" / "claim4_rewarm" / "results.json").write_text((root / "seed2" / "claim4_rewarm" / "results.json").read_text())
    with pytest.raises(C.ConfigError) as err:
        CR.run_claims_report(root, tmp_path / "out", [4])
    msg = str(err.value)
    assert "claim4_rewarm holds two runs of seed 2" in msg and "seed2/claim4_rewarm" in msg and "copy/claim4_rewarm" in msg


def test_a_curve_point_written_twice_keeps_the_later_value():
    run = {"curve": [{"tokens": 0, "val.ar.bpb": 4.0}, {"tokens": 10, "val.ar.bpb": 3.0},
                     {"tokens": 10, "val.ar.bpb": 2.0}, {"tokens": 20, "val.ar.bpb": 2.0}]}
    pts = CV.curve_points(run, "tokens", "val.ar.bpb")
    assert pts == [(0.0, 4.0), (10.0, 2.0), (20.0, 2.0)]
    assert CV.curve_mean(pts, 0, 20) == pytest.approx((3.0 * 10 + 2.0 * 10) / 20) and CV.tokens_to_reach([], 2.0) is None


def test_learns_faster_scores_the_area_under_the_curve_and_the_tokens_to_reach():
    """Same final bpb, but `fast` comes down sooner: its curve mean over 0-100 tokens and the
    tokens it needs to reach 2.0 (the highest best bpb of all runs) are lower."""
    def curve(mid):
        return [{"tokens": 0, "flops": 0, "val.ar.bpb": 4.0}, {"tokens": 50, "flops": 1, "val.ar.bpb": mid},
                {"tokens": 100, "flops": 2, "val.ar.bpb": 2.0}]
    runs = [_run("fast", s, {"val.ar.bpb": 2.0}, curve(2.4 + 0.01 * s)) for s in (1, 2, 3)]
    runs += [_run("slow", s, {"val.ar.bpb": 2.0}, curve(3.5 + 0.02 * s)) for s in (1, 2, 3)]
    fast = runs[0]
    # trapezoids: (4 + 2.41)/2 * 50 + (2.41 + 2)/2 * 50 = 270.5 over 100 tokens
    assert CV.curve_mean(CV.curve_points(fast, "tokens", "val.ar.bpb"), 0, 100) == pytest.approx(2.705)
    # from 2.41 at 50 to 2.0 at 100: reaches 2.0 at 100; level 2.2 at 50 + 50 * 0.21/0.41
    assert CV.tokens_to_reach(CV.curve_points(fast, "tokens", "val.ar.bpb"), 2.2) == pytest.approx(50 + 50 * 0.21 / 0.41)
    groups = C.group_by_seed(runs)
    res = C.evaluate([_claim(C.Comparison("val.ar.bpb", "fast", "slow", "auc"),
                             C.Comparison("val.ar.bpb", "fast", "slow", "end"))], groups)[0]
    auc, end = res["rows"]
    assert auc["x"] == (0.0, 100.0) and auc["verdict"] == C.REPRODUCED and end["test"].mean == 0.0
    assert res["verdict"] == C.INCONCLUSIVE  # the final value alone does not separate them
    level = CV.reach_level(runs, "val.ar.bpb")
    assert level == 2.0 and CV.metric_value(runs[3], "val.ar.bpb", "reach", 2.2) > CV.metric_value(fast, "val.ar.bpb", "reach", 2.2)


def test_every_arm_reports_its_step0_bpb():
    runs = [_run("claim1_adapt", s, {"start.val.ar.bpb": 2.5, "start.val.en.bpb": 2.0, "val.ar.bpb": 1.8}) for s in (1, 2)]
    runs += [_run("claim1_scratch", s, {"val.ar.bpb": 1.9, "tokenizer.vocab_size": 8192, "val.ar.tokens": 100,
                                        "val.ar.bytes": 400, "val.en.tokens": 100, "val.en.bytes": 500}, start=None) for s in (1, 2)]
    table = CR.arms_table(C.group_by_seed(runs), ["claim1_adapt", "claim1_scratch"])
    assert "| 2.5000 ± 0.0000 (n=2) | 2.0000 ± 0.0000 (n=2) |" in table
    assert "| 3.250 (uniform guess) | 2.600 (uniform guess) |" in table  # 13 bits x 0.25, 13 x 0.2


# --------------------------------------------------------------------------- provenance
def test_results_record_commit_dirty_flag_and_versions(tmp_path, monkeypatch):
    path = R.write(tmp_path, {"task": "train", "val.ar.bpb": 1.0})
    res = json.loads(path.read_text())
    head = subprocess.run(["git", "-C", str(R.ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert res["code.commit"] == head and isinstance(res["code.dirty"], bool)
    import torch
    import transformers

    assert res["versions.torch"] == torch.__version__ and res["versions.transformers"] == transformers.__version__
    assert res["versions.lightning"] and res["versions.tokenizers"] and res["val.ar.bpb"] == 1.0
    kept = json.loads(R.write(tmp_path, {**res, "code.commit": "abc"}).read_text())
    assert kept["code.commit"] == "abc"  # a run's own record is never replaced
    monkeypatch.setattr(R, "ROOT", tmp_path)  # not a git checkout
    outside = json.loads(R.write(tmp_path / ".", {"task": "train"}).read_text())
    assert outside["code.commit"] is None and outside["code.dirty"] is None
    assert C.commit_label(outside) == "not a git checkout"


def test_an_arm_mixing_commits_is_refused_naming_runs_unless_allowed(tmp_path):
    root = tmp_path / "runs"
    for seed, commit in ((1, "a" * 40), (2, "b" * 40), (3, None)):
        for arm in ("claim1_adapt", "claim4_rewarm"):
            run = _run(arm, seed, {"delta.val.en.bpb": 0.1 if arm == "claim1_adapt" else 0.3 + 0.01 * seed})
            run.pop("_path")
            if commit:  # seed 3: written before provenance existed
                run.update({"code.commit": commit, "code.dirty": seed == 2})
            (root / f"seed{seed}" / arm).mkdir(parents=True)
            (root / f"seed{seed}" / arm / "results.json").write_text(json.dumps(run))
    with pytest.raises(C.ConfigError) as err:
        CR.run_claims_report(root, tmp_path / "out", [4])
    msg = str(err.value)
    assert "\n" not in msg and "claim1_adapt" in msg and "seed1/claim1_adapt (aaaaaaaaaaaa)" in msg
    assert "seed2/claim1_adapt (bbbbbbbbbbbb+dirty)" in msg and "seed3/claim1_adapt (unknown commit)" in msg
    assert "--mix-commits" in msg
    rep = CR.run_claims_report(root, tmp_path / "out", [4], mix_commits=True)
    assert rep["verdicts"] == {4: C.REPRODUCED}
    assert rep["commits"]["claim1_adapt"] == ["aaaaaaaaaaaa", "bbbbbbbbbbbb+dirty", "unknown commit"]
    assert "unknown commit" in (tmp_path / "out" / "CLAIMS.md").read_text()
    for seed in (1, 2):  # all three recorded before provenance: one "unknown commit", accepted
        for arm in ("claim1_adapt", "claim4_rewarm"):
            f = root / f"seed{seed}" / arm / "results.json"
            f.write_text(json.dumps({k: v for k, v in json.loads(f.read_text()).items() if not k.startswith("code.")}))
    assert CR.run_claims_report(root, tmp_path / "out", [4])["commits"]["claim1_adapt"] == ["unknown commit"]


# --------------------------------------------------------------------------- the toy base's Arabic share
def test_english_base_text_with_arabic_share_and_its_tokenizer(tmp_path):
    """tokenizer.base_ar_share=0.05: the english8k training text is 5% Arabic words, the cache key
    differs from English only, and the trained base holds Arabic pieces; 0.0 holds none."""
    from omegaconf import OmegaConf

    from allam.tokenizer import expand
    from allam.tokenizer.target_share import WithTargetShare
    from allam.tokenizer.variants import build_tokenizer

    rng = random.Random(0)

    def doc(letters):
        return " ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 7))) for _ in range(15))
    en = [doc("etaoinshrdlucmfw") for _ in range(400)]
    ar = [doc("ابتثجحخدذرزسشصضطظعغفقكلمنهوي") for _ in range(400)]

    class Texts:
        def __call__(self, lang):
            return iter(en if lang == "en" else ar)

        def key(self, lang):
            return lang

    mixed = WithTargetShare(Texts(), {"ar": 0.05}, "tokenizer.base_ar_share")
    docs = list(mixed("en"))
    ar_words = sum(len(d.split()) for d in docs if expand.has_arabic(d))
    assert ar_words / sum(len(d.split()) for d in docs) == pytest.approx(0.05, abs=0.01)
    assert mixed.key("en") != Texts().key("en") and mixed.key("ar") == "ar"
    assert not hasattr(WithTargetShare(lambda lang: iter(en), {"ar": 0.05}), "key")  # no key to extend
    with pytest.raises(C.ConfigError, match=r"tokenizer.base_ar_share=0.7: must be in \[0, 0.5\)"):
        WithTargetShare(Texts(), {"ar": 0.7}, "tokenizer.base_ar_share")
    with pytest.raises(C.ConfigError, match=r"tokenizer.base_mix=\{ar:0.3,hi:0.3\}: must be in \[0, 0.5\)"):
        WithTargetShare(Texts(), {"ar": 0.3, "hi": 0.3})
    two = list(WithTargetShare(Texts(), {"ar": 0.03, "hi": 0.02})("en"))
    assert sum(len(d.split()) for d in two if expand.has_arabic(d)) / sum(len(d.split()) for d in two) == pytest.approx(0.05, abs=0.01)
    with pytest.raises(C.ConfigError, match=r"^tokenizer\.base_mix=xx: unknown language code"):
        WithTargetShare(Texts(), {"xx": 0.1})
    none_ko = WithTargetShare(lambda lang: iter(en if lang == "en" else []), {"ko": 0.02})
    with pytest.raises(C.ConfigError, match=r"^tokenizer\.base_mix\.ko=0\.02: the configured sources have no Korean text"):
        list(none_ko("en"))

    def arabic_pieces(share):
        cfg = OmegaConf.create(dict(variant="base", base="english8k", english_vocab_size=600, base_ar_share=share,
                                    num_new_tokens=8, vocab_size=64, training_words=None, seed=0))
        tok = build_tokenizer(cfg, cache_dir=tmp_path, texts=Texts()).tokenizer
        return [p for p in tok.get_vocab() if expand.has_arabic(p)]

    assert arabic_pieces(0.0) == [] and len(arabic_pieces(0.05)) > 10
    both = OmegaConf.create(dict(variant="base", base="english8k", english_vocab_size=600, base_ar_share=0.05,
                                 base_mix={"hi": 0.01}, num_new_tokens=8, vocab_size=64, training_words=None, seed=0))
    with pytest.raises(C.ConfigError, match=r"^tokenizer\.base_ar_share=0\.05: applies only when tokenizer\.base_mix is empty"):
        build_tokenizer(both, cache_dir=tmp_path, texts=Texts())
