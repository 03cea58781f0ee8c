"""The ALLaM paper's claims as seeded toy experiments, and their verdicts.

Each claim names its arms (experiment configs ``conf/experiment/claim*.yaml``) and the
comparisons that decide it. :func:`run_claims_report` reads the runs' results.json files only
(through :mod:`allam.results`), groups runs that differ only by seed (mean, std, n), compares
arms at the end, at matched training tokens or at matched total FLOPs (the base model's
included) by interpolating each run's validation curve (results.json ``curve``), and writes
CLAIMS.md and one plot per claim (validation curves per arm, a band of ±1 std across seeds).

The verdict rule (:func:`verdict`): every comparison is "arm B is better (lower) than arm A on a
metric". d = mean(A) - mean(B) (> 0 supports the claim), SE = sqrt(s_A^2/n_A + s_B^2/n_B)
(unpaired, sample std). Reproduced when d > 2 SE, not reproduced when d < -2 SE, otherwise
inconclusive; fewer than 2 seeds in either arm is inconclusive. A claim is reproduced when all
its deciding comparisons are, not reproduced when any is not, otherwise inconclusive.
"""
from __future__ import annotations

import json
from functools import lru_cache
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from allam.config.schema import SEED_KEYS
from allam.results import CURVE_KEY, collect_runs

BASE = "claims_english_base"  # the English base every adapted arm starts from (one per seed)
Z = 2.0  # a difference counts when it exceeds Z standard errors

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
AT_LABEL = {"end": "at the end", "tokens": "at matched training tokens", "flops": "at matched total FLOPs",
            "start": "at step 0"}


@dataclass(frozen=True)
class Comparison:
    """`better` is claimed lower than `worse` on `metric` (bits per byte and the like: lower is
    better). `at`: end (results.json key), tokens / flops (the validation curve interpolated at
    the largest tokens / total FLOPs every run of both arms reached). `decides`: False for a
    comparison shown for context only."""

    metric: str
    better: str
    worse: str
    at: str = "end"
    decides: bool = True


@dataclass(frozen=True)
class Claim:
    number: int
    title: str
    paper: str
    comparisons: tuple[Comparison, ...]

    @property
    def arms(self) -> list[str]:
        return list(dict.fromkeys(a for c in self.comparisons for a in (c.better, c.worse)))


C = Comparison
CLAIMS: tuple[Claim, ...] = (
    Claim(1, "Adapting an English model beats training from random init",
          "Continued pretraining of Llama-2 with an expanded vocabulary beats training from scratch at the same "
          "continued tokens, and also at the same total FLOPs counting the base's pretraining (issue 12's summary "
          "of the paper; the paper's own comparison is at 7B scale, not reproduced here).",
          (C("val.ar.bpb", "claim1_adapt", "claim1_scratch", "tokens"),
           C("val.en.bpb", "claim1_adapt", "claim1_scratch", "tokens"),
           C("val.ar.bpb", "claim1_adapt", "claim1_scratch_flops", "flops"),
           C("val.en.bpb", "claim1_adapt", "claim1_scratch_flops", "flops", decides=False))),
    Claim(2, "Vocabulary expansion beats keeping the base vocabulary",
          "Expanding the tokenizer with Arabic pieces gives better Arabic per training FLOP and fewer tokens "
          "per Arabic word than the base vocabulary.",
          (C("val.ar.bpb", "claim1_adapt", "claim2_base_vocab", "flops"),
           C("val.ar.tokens_per_byte", "claim1_adapt", "claim2_base_vocab"),
           C("val.en.bpb", "claim1_adapt", "claim2_base_vocab", "flops", decides=False))),
    Claim(3, "Sub-token-mean rows keep English and learn Arabic faster",
          "New embedding rows initialized from the mean of the base embeddings of each new token's sub-pieces "
          "keep English at step 0 and learn Arabic faster than mean or random rows.",
          (C("start.val.en.bpb", "claim1_adapt", "claim3_mean_rows", "start"),
           C("start.val.en.bpb", "claim1_adapt", "claim3_random_rows", "start"),
           C("val.ar.bpb", "claim1_adapt", "claim3_mean_rows", "tokens"),
           C("val.ar.bpb", "claim1_adapt", "claim3_random_rows", "tokens"))),
    Claim(4, "A constant low LR forgets less English than re-warming",
          "Continued pretraining at a constant low learning rate (Llama-2's final LR) forgets less English "
          "than re-warming with cosine decay.",
          (C("delta.val.en.bpb", "claim1_adapt", "claim4_rewarm"),
           C("val.ar.bpb", "claim1_adapt", "claim4_rewarm", decides=False))),
    Claim(5, "The Arabic share trades Arabic against English monotonically",
          "More Arabic in the mix (data.ar_ratio) gives better Arabic and worse English, monotonically.",
          (C("val.ar.bpb", "claim1_adapt", "claim5_ar20"),
           C("val.ar.bpb", "claim5_ar70", "claim1_adapt"),
           C("val.en.bpb", "claim5_ar20", "claim1_adapt"),
           C("val.en.bpb", "claim1_adapt", "claim5_ar70"))),
    Claim(6, "Translated Arabic content helps",
          "Machine-translated English content in the Arabic data helps (data.translated_share > 0 against 0). "
          "Here: the Arabic sources by size (translated ones included) against natural Arabic only; the "
          "held-out Arabic includes translated sources' documents, so in-domain data favours the first arm.",
          (C("val.ar.bpb", "claim1_adapt", "claim6_no_translated"),
           C("val.en.bpb", "claim1_adapt", "claim6_no_translated", decides=False))),
    Claim(7, "From scratch: English first, then the mix, against the mix from the start",
          "The paper trains from scratch on English first (4T tokens), then the mix (1.2T); it reports no toy-"
          "comparable ablation. Tested here: English first keeps English better at the same total tokens.",
          (C("val.en.bpb", "claim1_scratch", "claim7_mix_only", "tokens"),
           C("val.ar.bpb", "claim1_scratch", "claim7_mix_only", "tokens", decides=False))),
)


def claims_by_number(numbers: Optional[list[int]] = None) -> list[Claim]:
    return [c for c in CLAIMS if numbers is None or c.number in numbers]


def arms_of(claims: list[Claim]) -> list[str]:
    return list(dict.fromkeys(a for c in claims for a in c.arms))


# --------------------------------------------------------------------------- grouping and statistics
# what differs between the seeds of one arm without making it another arm: the seeds, the base
# checkpoint's path (one base per seed) and where and how the run logged
_NOT_ARM = (*SEED_KEYS, "init.checkpoint", "paths", "trainer.progress_bar", "logger")


@lru_cache(maxsize=1)
def _schema_defaults() -> str:
    from omegaconf import OmegaConf

    from allam.config.schema import AllamConfig

    return json.dumps(OmegaConf.to_container(OmegaConf.structured(AllamConfig), throw_on_missing=False), default=str)


def _with_defaults(config: dict, defaults: dict) -> dict:
    """`config` with every key it lacks taken from `defaults` (a run recorded before a key existed
    ran with that key's default)."""
    for key, value in defaults.items():
        if key not in config:
            config[key] = value
        elif isinstance(value, dict) and value and isinstance(config[key], dict):
            _with_defaults(config[key], value)
    return config


def seed_group_key(run: dict) -> str:
    """What a run is apart from its seed: its resolved config (keys it lacks at their schema
    defaults) without the keys above."""
    config = _with_defaults(json.loads(json.dumps(run.get("config", {}), default=str)), json.loads(_schema_defaults()))
    for dotted in _NOT_ARM:
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return json.dumps(config, sort_keys=True)


def arm_name(run: dict) -> str:
    return (run.get("choices") or {}).get("experiment") or Path(run["_path"]).parent.name


def group_by_seed(runs: list[dict]) -> dict[str, list[dict]]:
    """Finished runs that differ only by seed, named by their experiment (an experiment run with
    two different configs gets ``name#2`` for the second)."""
    groups: dict[str, list[dict]] = {}
    names: dict[str, str] = {}
    for r in runs:
        if r.get("status", "finished") != "finished":
            continue
        key = seed_group_key(r)
        if key not in names:
            name = arm_name(r)
            taken = sum(1 for n in names.values() if n.split("#")[0] == name)
            names[key] = name if not taken else f"{name}#{taken + 1}"
        groups.setdefault(names[key], []).append(r)
    return groups


@dataclass
class Stat:
    mean: Optional[float]
    std: Optional[float]
    n: int
    values: list[float] = field(default_factory=list)

    def text(self, fmt: str = "{:.4f}") -> str:
        if self.mean is None:
            return "n/a"
        std = "n/a" if self.std is None else fmt.format(self.std)
        return f"{fmt.format(self.mean)} ± {std} (n={self.n})"


def stat(values: list[float]) -> Stat:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return Stat(None, None, 0)
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return Stat(mean, std, len(vals), vals)


def verdict(worse: Stat, better: Stat) -> tuple[str, Optional[float], Optional[float]]:
    """(verdict, d, SE) for the claim "`better` is lower than `worse`" (see the module docstring)."""
    if worse.n < 2 or better.n < 2 or worse.mean is None or better.mean is None:
        return INCONCLUSIVE, (None if worse.mean is None or better.mean is None else worse.mean - better.mean), None
    d = worse.mean - better.mean
    se = math.sqrt(worse.std ** 2 / worse.n + better.std ** 2 / better.n)
    if d > Z * se and d > 0:
        return REPRODUCED, d, se
    if d < -Z * se and d < 0:
        return NOT_REPRODUCED, d, se
    return INCONCLUSIVE, d, se


def claim_verdict(verdicts: list[str]) -> str:
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if NOT_REPRODUCED in verdicts:
        return NOT_REPRODUCED
    return INCONCLUSIVE


# --------------------------------------------------------------------------- curves
def curve_points(run: dict, x: str, metric: str) -> list[tuple[float, float]]:
    """(x, metric) along a run's validation curve, x = "tokens" or "flops", sorted by x."""
    pts = [(float(p[x]), float(p[metric])) for p in run.get(CURVE_KEY) or [] if p.get(metric) is not None]
    return sorted(pts)


def interpolate(points: list[tuple[float, float]], x: float) -> Optional[float]:
    """Linear interpolation inside the curve's range (never extrapolated)."""
    if not points or x < points[0][0] or x > points[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def matched_x(runs: list[dict], x: str, metric: str) -> Optional[float]:
    """The largest x every run's curve reaches, if every curve starts at or below it."""
    curves = [curve_points(r, x, metric) for r in runs]
    if not curves or any(not c for c in curves):
        return None
    lo, hi = max(c[0][0] for c in curves), min(c[-1][0] for c in curves)
    return hi if hi >= lo else None


def metric_value(run: dict, metric: str, at: str = "end", x: Optional[float] = None) -> Optional[float]:
    """A run's value of `metric` at the end (results.json; ``val.<lang>.tokens_per_byte`` derived
    from the validation text's tokens and bytes) or at `x` tokens / FLOPs on its curve."""
    if at in ("tokens", "flops"):
        return interpolate(curve_points(run, at, metric), x) if x is not None else None
    if metric.endswith(".tokens_per_byte"):
        lang = metric.split(".")[1]
        tokens, nbytes = run.get(f"val.{lang}.tokens"), run.get(f"val.{lang}.bytes")
        return tokens / nbytes if tokens and nbytes else None
    v = run.get(metric)
    return float(v) if isinstance(v, (int, float)) else None


# --------------------------------------------------------------------------- evaluation
def evaluate(claims: list[Claim], groups: dict[str, list[dict]]) -> list[dict]:
    """Every claim's comparisons with statistics and verdicts, and the claim's verdict."""
    out = []
    for claim in claims:
        rows = []
        for comp in claim.comparisons:
            a, b = groups.get(comp.worse, []), groups.get(comp.better, [])
            x = matched_x(a + b, comp.at, comp.metric) if comp.at in ("tokens", "flops") else None
            sw = stat([metric_value(r, comp.metric, comp.at, x) for r in a])
            sb = stat([metric_value(r, comp.metric, comp.at, x) for r in b])
            v, d, se = verdict(sw, sb)
            if comp.at in ("tokens", "flops") and x is None and (a or b):
                v = INCONCLUSIVE
            rows.append({"comparison": comp, "x": x, "better": sb, "worse": sw, "verdict": v, "d": d, "se": se})
        decided = [r["verdict"] for r in rows if r["comparison"].decides]
        missing = [arm for arm in claim.arms if not groups.get(arm)]
        out.append({"claim": claim, "rows": rows, "missing": missing,
                    "verdict": claim_verdict(decided) if not missing else INCONCLUSIVE})
    return out


# --------------------------------------------------------------------------- outputs
def _num(v: Optional[float], fmt: str = "{:.4f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def _x_text(at: str, x: Optional[float]) -> str:
    if at == "tokens":
        return f"at {x:,.0f} tokens" if x is not None else "at matched tokens: no common range"
    if at == "flops":
        return f"at {x:.3g} FLOPs" if x is not None else "at matched FLOPs: no common range"
    return AT_LABEL[at]


def arms_table(groups: dict[str, list[dict]], arms: list[str]) -> str:
    lines = ["| arm | n | Arabic bpb | English bpb | English change | Arabic tokens/byte | training tokens | total FLOPs |",
             "|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        runs = groups.get(arm, [])
        if not runs:
            lines.append(f"| `{arm}` | 0 | not run | | | | | |")
            continue
        s = {m: stat([metric_value(r, m) for r in runs]) for m in
             ("val.ar.bpb", "val.en.bpb", "delta.val.en.bpb", "val.ar.tokens_per_byte", "train.tokens", "train.total_flops")}
        lines.append(f"| `{arm}` | {len(runs)} | {s['val.ar.bpb'].text()} | {s['val.en.bpb'].text()} | "
                     f"{s['delta.val.en.bpb'].text('{:+.4f}') if s['delta.val.en.bpb'].n else ''} | "
                     f"{s['val.ar.tokens_per_byte'].text('{:.4f}')} | {_num(s['train.tokens'].mean, '{:,.0f}')} | "
                     f"{_num(s['train.total_flops'].mean, '{:.3g}')} |")
    return "\n".join(lines)


def claims_markdown(results: list[dict], groups: dict[str, list[dict]], command: str, header: str = "",
                    plots: Optional[dict[int, str]] = None) -> str:
    """CLAIMS.md: the rule, a summary, then per claim what the paper reports, the command, what
    was measured (each comparison with mean ± std and n) and the verdict."""
    plots = plots or {}
    out = ["# The ALLaM paper's claims at toy scale", "",
           "Generated by `experiments/reproduce.py` from the runs' results.json files "
           "(`allam/claims.py`); do not edit by hand.", ""]
    if header:
        out += [header, ""]
    out += ["**Verdict rule.** Each comparison claims arm B lower (better) than arm A on a metric. "
            f"d = mean(A) - mean(B); SE = sqrt(s_A²/n_A + s_B²/n_B) across seeds (sample std, unpaired). "
            f"**reproduced** if d > {Z:g}·SE, **not reproduced** if d < -{Z:g}·SE, **inconclusive** otherwise or "
            "with fewer than 2 seeds per arm. Matched tokens / FLOPs: each run's validation curve is interpolated "
            "linearly at the largest training tokens (or total FLOPs, the base's pretraining included) that every "
            "run of both arms reached. A claim is reproduced when all its deciding comparisons are, not reproduced "
            "when any is not, otherwise inconclusive; comparisons marked *context* do not decide.", "",
            "| claim | verdict |", "|---|---|"]
    out += [f"| {r['claim'].number}. {r['claim'].title} | **{r['verdict']}** |" for r in results]
    for r in results:
        claim = r["claim"]
        out += ["", f"## Claim {claim.number}: {claim.title}", "",
                f"**What the paper reports.** {claim.paper}", "",
                f"**Command.** `{command} --claims {claim.number}`; cells: "
                + ", ".join(f"`experiment={a}`" for a in claim.arms), "",
                "**Measured here.**", "",
                "| metric | where | B (claimed better) | A | d = A - B | SE | verdict |", "|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            comp = row["comparison"]
            tag = "" if comp.decides else " *(context)*"
            out.append(f"| {comp.metric} | {_x_text(comp.at, row['x'])} | `{comp.better}` {row['better'].text()} | "
                       f"`{comp.worse}` {row['worse'].text()} | {_num(row['d'], '{:+.4f}')} | {_num(row['se'])} | "
                       f"{row['verdict']}{tag} |")
        if r["missing"]:
            out += ["", "Not run: " + ", ".join(f"`{a}`" for a in r["missing"]) + "."]
        out += ["", f"**Verdict: {r['verdict']}.**"]
        if claim.number in plots:
            out += ["", f"![claim {claim.number}]({plots[claim.number]})"]
    out += ["", "## Arms (mean ± std across seeds, n seeds)", "", arms_table(groups, arms_of([r["claim"] for r in results]))]
    return "\n".join(out) + "\n"


def plot_claim(claim: Claim, groups: dict[str, list[dict]], path: Path) -> bool:
    """Validation bits per byte (Arabic, English) against training tokens, and against total
    FLOPs when a comparison is at matched FLOPs: per arm the mean across seeds with a ±1 std
    band, on the points where every seed of the arm has a curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = ["tokens"] + (["flops"] if any(c.at == "flops" for c in claim.comparisons) else [])
    arms = [a for a in claim.arms if groups.get(a)]
    if not arms:
        return False
    fig, axes = plt.subplots(len(xs), 2, figsize=(11, 3.8 * len(xs)), squeeze=False)
    for i, x in enumerate(xs):
        for j, lang in enumerate(("ar", "en")):
            ax = axes[i][j]
            metric = f"val.{lang}.bpb"
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
            ax.set_ylabel(f"{'Arabic' if lang == 'ar' else 'English'} validation bits/byte")
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"Claim {claim.number}: {claim.title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run_claims_report(root: Path, out_dir: Path, numbers: Optional[list[int]] = None,
                      command: str = "python experiments/reproduce.py", header: str = "",
                      claims_md: Optional[Path] = None) -> dict:
    """Read every training run under `root`, write ``CLAIMS.md`` (or `claims_md`) and
    ``claim<N>.png`` into `out_dir`; returns the verdicts. The function task=report can call."""
    root, out_dir = Path(root), Path(out_dir)
    groups = group_by_seed(collect_runs(root))
    claims = claims_by_number(numbers)
    results = evaluate(claims, groups)
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path = Path(claims_md) if claims_md else out_dir / "CLAIMS.md"
    plots = {}
    for claim in claims:
        png = out_dir / f"claim{claim.number}.png"
        if plot_claim(claim, groups, png):
            plots[claim.number] = str(Path(_relpath(png, md_path.parent)))
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(claims_markdown(results, groups, command, header, plots), encoding="utf-8")
    return {"claims_md": str(md_path), "plots": plots,
            "verdicts": {r["claim"].number: r["verdict"] for r in results},
            "arms": {arm: len(runs) for arm, runs in groups.items()}}


def _relpath(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())
