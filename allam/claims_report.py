"""What a claims report writes: CLAIMS.md (the rule, every arm's numbers, each comparison's
t-test (paired over seeds, or Welch's) and each claim's verdict) and one plot per claim, from the verdicts of
:mod:`allam.claims`. :func:`run_claims_report` is what experiments/reproduce.py and task=report call."""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Optional

from allam import stats as S
from allam.claims import (
    AT_LABEL,
    BASE,
    UNKNOWN_COMMIT,
    Claim,
    arms_of,
    check_commits,
    check_seeds,
    claims_by_number,
    commit_label,
    evaluate,
    group_by_seed,
    worked_example,
    stat,
)
from allam.claim_runs import left_out
from allam.config.langs import lang_name
from allam.curves import curve_points, interpolate, metric_value
from allam.results import collect_runs

log = logging.getLogger("allam")


def rule_text() -> str:
    """The verdict rule with the worked example, as CLAIMS.md states it."""
    ex = worked_example()
    (d1, d2), (t1, t2), adj = ex["differences"], ex["tests"], ex["holm"]
    tc = S.t_ppf(0.5 + S.LEVEL / 2, 2)

    def line(name, d, t, p_adj, v):
        return (f"{name}: D = {', '.join(f'{v_:+.2f}' for v_ in d)}; mean {t.mean:+.4f}, SE = s/√n = {t.se:.4f}, "
                f"t = {t.t:.3f} (df {t.df:g}), 95% CI mean ± {tc:.3f}·SE = [{t.ci[0]:+.4f}, {t.ci[1]:+.4f}], "
                f"one-sided p = {t.p:.4f}, Holm-adjusted {p_adj:.4f}: {v}")
    return "\n".join([
        "**Verdict rule.** Each comparison claims arm B lower (better) than arm A on a metric, some within a "
        "margin (B < A + margin). D = A + margin - B, so D > 0 supports the claim. Arms that start from the same "
        "English base are compared seed by seed: a paired t-test on the per-seed D over the seeds both arms have. "
        "Arms with different starts (from scratch) are compared by Welch's t-test (Welch-Satterthwaite degrees of "
        f"freedom). Each row shows the mean difference A - B with a two-sided {S.LEVEL:.0%} t-interval (t critical "
        "value at the test's degrees of freedom, e.g. 4.303 at 2) and the **one-sided** p-value for the claimed "
        "direction (every claim here is directional). Within a claim the deciding comparisons' p-values are "
        f"Holm-corrected (each direction separately). A comparison is **reproduced** when its adjusted p < "
        f"{S.ALPHA:g} in the claimed direction, **not reproduced** when the adjusted one-sided p of the opposite "
        f"direction is < {S.ALPHA:g}, **inconclusive** otherwise (and with fewer than 2 seeds). A claim is reproduced when "
        "all its deciding comparisons are, not reproduced when any is not, otherwise inconclusive. Rows marked "
        "*context* show uncorrected p-values and decide nothing. Matched tokens / FLOPs: each run's validation "
        "curve is interpolated linearly at the largest training tokens (or total FLOPs, the base's pretraining "
        "included) every run of both arms reached; *mean over the curve*: the curve's area over the common token "
        "range divided by its length; *tokens to reach*: the tokens at which a run's curve first comes down to the "
        "highest bpb every run of both arms reaches. A one-sided test at 0.05 can pass while the two-sided 95% "
        "interval still includes 0 (comparison 2 below). *Seeds for 80% power*: planning arithmetic for the next "
        "run, reading the measured mean difference and its per-seed spread as the truth: the fewest seeds per arm "
        "with which a one-sided t-test at the strictest Holm threshold (0.05 / the claim's deciding comparisons) "
        "finds that difference 80% of the time (`allam.stats.seeds_for_power`); it is not evidence by itself.",
        "",
        "*Worked example* (computed by `allam.claims.worked_example`; a claim with two deciding paired comparisons, "
        "3 seeds):",
        "",
        "- " + line("comparison 1", d1, t1, adj[0], ex["verdicts"][0]),
        "- " + line("comparison 2", d2, t2, adj[1], ex["verdicts"][1]),
        f"- Holm: the smaller p ({min(t1.p, t2.p):.4f}) is multiplied by 2, the larger by 1 (kept at least the "
        f"first): claim **{ex['claim']}**.",
    ])

def _num(v: Optional[float], fmt: str = "{:.4f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def _x_text(at: str, x) -> str:
    if at in ("tokens", "flops"):
        if x is None:
            return f"at matched {'tokens' if at == 'tokens' else 'FLOPs'}: no common range"
        return f"at {x:,.0f} tokens" if at == "tokens" else f"at {x:.3g} FLOPs"
    if at == "auc":
        return f"mean over tokens {x[0]:,.0f}-{x[1]:,.0f}" if x else "mean over the curve: no common range"
    if at == "reach":
        return f"tokens to reach {x:.4f}" if x is not None else "tokens to reach: no curve"
    return AT_LABEL[at]


def _start_text(runs: list[dict], lang: str) -> str:
    """Step-0 bpb: scored (start.val.<lang>.bpb) for runs from a checkpoint; for random init,
    the uniform guess log2(vocabulary) x tokens/byte of the validation text (not scored)."""
    s = stat([metric_value(r, f"start.val.{lang}.bpb") for r in runs])
    if s.n:
        return s.text()
    uniform = stat([math.log2(r["tokenizer.vocab_size"]) * metric_value(r, f"val.{lang}.tokens_per_byte")
                    for r in runs if r.get("tokenizer.vocab_size") and metric_value(r, f"val.{lang}.tokens_per_byte")])
    return f"{uniform.mean:.3f} (uniform guess)" if uniform.n else "n/a"


def arms_table(groups: dict[str, list[dict]], arms: list[str], lang: str = "ar") -> str:
    name = lang_name(lang)
    lines = [f"| arm | n | {name} bpb | English bpb | step-0 {name} bpb | step-0 English bpb | English change | "
             f"{name} tokens/byte | training tokens | total FLOPs | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        runs = groups.get(arm, [])
        if not runs:
            lines.append(f"| `{arm}` | 0 | not run | | | | | | | | |")
            continue
        s = {m: stat([metric_value(r, m) for r in runs]) for m in
             (f"val.{lang}.bpb", "val.en.bpb", "delta.val.en.bpb", f"val.{lang}.tokens_per_byte", "train.tokens",
              "train.total_flops")}
        commits = ", ".join(sorted({commit_label(r) for r in runs}))
        lines.append(f"| `{arm}` | {len(runs)} | {s[f'val.{lang}.bpb'].text()} | {s['val.en.bpb'].text()} | "
                     f"{_start_text(runs, lang)} | {_start_text(runs, 'en')} | "
                     f"{s['delta.val.en.bpb'].text('{:+.4f}') if s['delta.val.en.bpb'].n else ''} | "
                     f"{s[f'val.{lang}.tokens_per_byte'].text('{:.4f}')} | {_num(s['train.tokens'].mean, '{:,.0f}')} | "
                     f"{_num(s['train.total_flops'].mean, '{:.3g}')} | {commits} |")
    return "\n".join(lines)


def _power_cell(row: dict, deciding: int) -> str:
    """The seeds per arm that the measured effect needs for 80% power (deciding rows only)."""
    if not row["comparison"].decides or row["test"] is None:
        return ""
    n = S.seeds_for_power(row["test"], deciding)
    return "> 50" if n is None else str(n)


def _test_cells(row: dict) -> str:
    t, comp = row["test"], row["comparison"]
    if t is None:
        return "| n/a | n/a | n/a | n/a |"
    shift = comp.margin  # the table shows A - B; the test is of A + margin - B
    margin = f" (+{comp.margin:g} margin)" if comp.margin else ""
    adj = f"{row['p_holm']:.4f}" if "p_holm" in row else "context"
    return (f"| {t.kind} n={t.n} | {t.mean - shift:+.4f} [{t.ci[0] - shift:+.4f}, {t.ci[1] - shift:+.4f}]{margin} | "
            f"{t.p:.4f} | {adj} |")


COMPETENCE_CLAIMS = (1, 2, 3, 4, 5)  # claims whose section shows the competence tier as context
COMPETENCE_TASKS = ("word_order_ar", "next_word_ar", "word_order_en", "next_word_en")


def competence_tasks(lang: str = "ar") -> tuple[str, ...]:
    """The competence tier's tasks for target language ``lang`` (its two, then English's two)."""
    return tuple(t.replace("_ar", f"_{lang}") for t in COMPETENCE_TASKS)


def competence_suite(lang: str = "ar") -> str:
    """The eval config (and results.json eval.suite) of that tier: competence, competence_<code>."""
    return "competence" if lang == "ar" else f"competence_{lang}"


def competence_by_arm(groups: dict[str, list[dict]], evals: list[dict], lang: str = "ar") -> dict[str, list[dict]]:
    """Each arm's ``eval=competence`` results (task=eval runs whose source_run is one of the arm's
    training runs, or, for a suite folder copied elsewhere, that lie in a folder of one:
    ``<run>/eval_competence/results.json``; per training run the last in path order, as in the
    report's table)."""
    arm_of = {str(Path(r["_path"]).resolve().parent): arm for arm, runs in groups.items() for r in runs if r.get("_path")}
    newest: dict[str, dict] = {}
    for e in evals:
        if e.get("eval.suite") != competence_suite(lang):
            continue
        places = [Path(e["source_run"]).resolve()] if e.get("source_run") else []
        places += [Path(e["_path"]).resolve().parent.parent] if e.get("_path") else []
        key = next((str(p) for p in places if str(p) in arm_of), None)
        if key is None:
            continue
        if key not in newest or str(e.get("_path")) > str(newest[key].get("_path")):
            newest[key] = e
    out: dict[str, list[dict]] = {}
    for src, e in sorted(newest.items()):
        out.setdefault(arm_of[src], []).append(e)
    return out


def competence_table(by_arm: dict[str, list[dict]], arms: list[str], lang: str = "ar") -> str:
    """Per arm: each competence task's accuracy (mean over the arm's seeds) ± the binomial standard
    error of one seed's accuracy over the task's items (the same items for every seed), the
    seeds and the items per task; "" when no arm has been evaluated."""
    rows = [a for a in arms if by_arm.get(a)]
    if not rows:
        return ""
    tasks = competence_tasks(lang)
    lines = ["| arm | seeds | items | " + " | ".join(f"`{t}`" for t in tasks) + " |",
             "|---|---|---|" + "---|" * len(tasks)]
    for arm in rows:
        evals = by_arm[arm]
        cells = []
        for task in tasks:
            acc = stat([e.get(f"eval.{task}.acc") for e in evals])
            se = stat([e.get(f"eval.{task}.acc_stderr") for e in evals])
            cells.append("n/a" if acc.mean is None else f"{acc.mean:.3f} ± {se.mean:.3f}")
        items = sorted({int(e[f"eval.{t}.n"]) for e in evals for t in tasks if f"eval.{t}.n" in e})
        lines.append(f"| `{arm}` | {len(evals)} | {'/'.join(map(str, items)) or 'n/a'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seed(e: dict):
    """The training seed of the run an eval scored (from the training config it records)."""
    return ((e.get("config") or {}).get("trainer") or {}).get("seed")


def competence_paired(by_arm: dict[str, list[dict]], arms: list[str], base: str, lang: str = "ar") -> str:
    """Per arm against `base`: each competence task's accuracy difference item by item (arm minus
    base on the same items, the base of the same seed), each item's difference averaged over the
    seeds (every seed scores the same items: counting them once per seed would shrink the interval
    by the root of the seeds without new evidence), with a 95% t-interval over the items and the
    one-sided p of "arm above base"; "" when no arm has per-item records. A seed's pair counts only
    when both scored the same items (``items_sha``); items of different item sets count apart."""
    bases = {_seed(e): e for e in by_arm.get(base, [])}
    tasks = competence_tasks(lang)
    lines = []
    for arm in arms:
        if arm == base or not by_arm.get(arm):
            continue
        cells, any_test = [], False
        for task in tasks:
            by_items: dict[str, list[list[int]]] = {}  # items_sha -> each seed's per-item differences
            for e in by_arm[arm]:
                b = bases.get(_seed(e))
                a_items, b_items = e.get(f"eval.{task}.correct"), (b or {}).get(f"eval.{task}.correct")
                if not a_items or not b_items or e.get(f"eval.{task}.items_sha") != b.get(f"eval.{task}.items_sha"):
                    continue
                by_items.setdefault(e.get(f"eval.{task}.items_sha"), []).append(
                    [int(x) - int(y) for x, y in zip(a_items, b_items)])
            diffs = [sum(col) / len(col) for seeds in by_items.values() for col in zip(*seeds)]
            t = S.paired_test(diffs)
            any_test |= t is not None
            cells.append("n/a" if t is None else f"{t.mean:+.3f} [{t.ci[0]:+.3f}, {t.ci[1]:+.3f}], p {t.p:.4f}")
        if any_test:
            lines.append(f"| `{arm}` − `{base}` | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    return "\n".join(["| difference (items pooled over seeds) | " + " | ".join(f"`{t}`" for t in tasks) + " |",
                      "|---|" + "---|" * len(tasks), *lines])


def claims_markdown(results: list[dict], groups: dict[str, list[dict]], command: str, header: str = "",
                    plots: Optional[dict[int, str]] = None, competence: Optional[dict[str, list[dict]]] = None,
                    lang: str = "ar") -> str:
    """CLAIMS.md: the rule with its worked example, a summary, then per claim its source, what
    is compared, the command, each comparison (arms' mean ± std and n, the test, the mean
    difference with its 95% t-interval, p-values, verdict) and the claim's verdict."""
    plots = plots or {}
    title = "# The ALLaM paper's claims at toy scale" + ("" if lang == "ar" else f", re-tested on {lang_name(lang)}")
    out = [title, "",
           "Generated from the runs' results.json files by `allam/claims_report.py` (through "
           "`experiments/reproduce.py` or `task=report`; the claims and the rule: `allam/claims.py`); "
           "do not edit by hand.", ""]
    if header:
        out += [header, ""]
    out += [rule_text(), "", "| claim | source | verdict |", "|---|---|---|"]
    out += [f"| {r['claim'].number}. {r['claim'].title} | {r['claim'].source} | **{r['verdict']}** |" for r in results]
    for r in results:
        claim = r["claim"]
        out += ["", f"## Claim {claim.number}: {claim.title}", "",
                f"**What the paper reports** ({claim.source}). {claim.paper}", "",
                f"**Compared here.** {claim.compared}", "",
                f"**Command.** `{command} --claims {claim.number}`; cells: "
                + ", ".join(f"`experiment={a}`" for a in claim.arms), "",
                "**Measured here.**", "",
                "| metric | where | B (claimed better) | A | test | A - B [95% CI] | p (one-sided) | Holm p | verdict | "
                f"seeds for {S.POWER:.0%} power |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        deciding = sum(1 for row in r["rows"] if row["comparison"].decides and row["test"] is not None)
        for row in r["rows"]:
            comp = row["comparison"]
            fmt = "{:,.0f}" if comp.at == "reach" else "{:.4f}"
            tag = "" if comp.decides else " *(context)*"
            out.append(f"| {comp.metric} | {_x_text(comp.at, row['x'])} | `{comp.better}` {row['better'].text(fmt)} | "
                       f"`{comp.worse}` {row['worse'].text(fmt)} {_test_cells(row)} {row['verdict']}{tag} | "
                       f"{_power_cell(row, deciding)} |")
        if r["missing"]:
            out += ["", "Not run: " + ", ".join(f"`{a}`" for a in r["missing"]) + "."]
        table = competence_table(competence or {}, list(dict.fromkeys([BASE, *claim.arms])), lang) \
            if claim.number in COMPETENCE_CLAIMS else ""
        if table:
            out += ["", f"*Context: the competence tier* (`eval={competence_suite(lang)}`, chance 0.25; accuracy, mean over the "
                    "arm's seeds ± the standard error of one seed's accuracy over the items; decides nothing):", "",
                    table]
            paired = competence_paired(competence or {}, list(dict.fromkeys([BASE, *claim.arms])), BASE, lang)
            if paired:
                out += ["", "Item by item against the base (accuracy difference, 95% t-interval over the items, "
                        "one-sided p of the arm above the base; items repeat word pairs, so these intervals are "
                        "narrower than the truth on `next_word_*`):", "", paired]
        out += ["", f"**Verdict: {r['verdict']}.**"]
        if claim.number in plots:
            out += ["", f"![claim {claim.number}]({plots[claim.number]})"]
    out += ["", "## Arms (mean ± std across seeds, n seeds)", "",
            "Step-0 bpb: scored before the first step for runs from a checkpoint; a random-init run's is the "
            "uniform guess log2(vocabulary) × tokens/byte (not scored). Commit: results.json `code.commit` "
            f"(\"{UNKNOWN_COMMIT}\": written before provenance was recorded).", "",
            arms_table(groups, arms_of([r["claim"] for r in results]), lang)]
    return "\n".join(out) + "\n"


def plot_claim(claim: Claim, groups: dict[str, list[dict]], path: Path, lang: str = "ar") -> bool:
    """Validation bits per byte (the target language, English) against training tokens, and against total
    FLOPs when a comparison is at matched FLOPs: per arm the mean across seeds with a ±1 std
    band, on the points where every seed of the arm has a curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = ["tokens"] + (["flops"] if any(c.at == "flops" for c in claim.comparisons) else [])
    arms = [a for a in claim.arms if groups.get(a) and a != BASE]  # the base's curve is its own pretraining
    if not arms:
        return False
    fig, axes = plt.subplots(len(xs), 2, figsize=(11, 3.8 * len(xs)), squeeze=False)
    for i, x in enumerate(xs):
        for j, code in enumerate((lang, "en")):
            ax = axes[i][j]
            metric = f"val.{code}.bpb"
            for arm in arms:
                curves = [curve_points(r, x, metric) for r in groups[arm]]
                curves = [c for c in curves if c]
                if not curves:
                    continue
                lo, hi = max(c[0][0] for c in curves), min(c[-1][0] for c in curves)
                grid = sorted({px for c in curves for px, _ in c if lo <= px <= hi})
                stats = [stat([interpolate(c, g) for c in curves]) for g in grid]
                mean = [s.mean for s in stats]
                line, = ax.plot(grid, mean, marker=".", label=f"{arm} (n={len(curves)})")
                if len(curves) > 1:
                    ax.fill_between(grid, [s.mean - (s.std or 0) for s in stats], [s.mean + (s.std or 0) for s in stats],
                                    color=line.get_color(), alpha=0.2)
            ax.set_xlabel("training tokens (this run)" if x == "tokens" else "total FLOPs (base included)")
            ax.set_ylabel(f"{lang_name(code)} validation bits/byte")
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.suptitle(f"Claim {claim.number}: {claim.title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run_claims_report(root: Path, out_dir: Path, numbers: Optional[list[int]] = None,
                      command: str = "python experiments/reproduce.py", header: str = "",
                      claims_md: Optional[Path] = None, mix_commits: bool = False, lang: str = "ar") -> dict:
    """Read every training run under `root`, write ``CLAIMS.md`` (or `claims_md`) and
    ``claim<N>.png`` into `out_dir`; returns the verdicts and each arm's commits. Raises
    ConfigError when an arm holds runs of different commits, unless `mix_commits`. `lang`: the
    target language the claims read (allam.claims.for_language). The function task=report can call."""
    root, out_dir = Path(root), Path(out_dir)
    groups = group_by_seed(collect_runs(root))
    claims = claims_by_number(numbers, lang)
    commits = check_commits(groups, arms_of(claims), mix_commits)
    check_seeds(groups, arms_of(claims))
    apart = left_out(groups, arms_of(claims))
    for name, labels in apart.items():
        log.warning("claims: %d run(s) of %s differ from that arm in more than seeds, budget-free layout or "
                    "logging, and are left out as %s: %s", len(labels), name.split("#")[0], name, ", ".join(labels))
    results = evaluate(claims, groups)
    competence = competence_by_arm(groups, collect_runs(root, task="eval"), lang)
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path = Path(claims_md) if claims_md else out_dir / "CLAIMS.md"
    plots = {}
    for claim in claims:
        png = out_dir / f"claim{claim.number}.png"
        if plot_claim(claim, groups, png, lang):
            plots[claim.number] = str(Path(_relpath(png, md_path.parent)))
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(claims_markdown(results, groups, command, header, plots, competence, lang), encoding="utf-8")
    return {"claims_md": str(md_path), "plots": plots,
            "verdicts": {r["claim"].number: r["verdict"] for r in results},
            "arms": {arm: len(runs) for arm, runs in groups.items()}, "commits": commits, "left_out": apart,
            "competence": {arm: len(e) for arm, e in competence.items()}}


def _relpath(path: Path, start: Path) -> str:
    return os.path.relpath(path.resolve(), start.resolve())
