"""The ALLaM paper's claims as seeded toy experiments, and their verdicts.

Each claim says where it comes from (the paper's abstract, a model card, or a secondary summary
of the paper), what exactly is compared, and names its arms (experiment configs
``conf/experiment/claim*.yaml`` and the English base ``claims_english_base``).
The runs' results (results.json files only, read through :mod:`allam.results`) are grouped by
:func:`allam.claim_runs.group_by_seed` (runs that differ only by seed are one arm), and :func:`evaluate` compares
arms at the end, at step 0, at matched training tokens or total FLOPs (the base's included), or
over the Arabic curve (its mean over the budget, the tokens needed to reach a bpb every run reaches);
:func:`allam.claims_report.run_claims_report` writes CLAIMS.md and one plot per claim from them.

The verdict rule (:data:`RULE`, :func:`evaluate`): every comparison claims arm B lower (better)
than arm A on a metric, optionally within a margin (B < A + margin). D = A + margin - B (> 0
supports the claim). Arms that start from the same base checkpoint are compared seed by seed
(paired t-test on the per-seed D over the seeds both arms have); others (from scratch, or
different bases) by Welch's t-test. Each test gives the mean D, a two-sided 95% t-interval and
one-sided p-values (for D > 0, the claim, and for D < 0, its opposite) from :mod:`allam.stats`.
Within a claim, the p-values of its deciding comparisons are Holm-corrected (each direction
separately). A claim is reproduced when every deciding comparison is significant (adjusted
p < 0.05) in the claimed direction, not reproduced when any is significant in the opposite
direction, inconclusive otherwise (also with fewer than 2 seeds per arm or a missing arm of a
deciding comparison). Comparisons marked context are shown with their uncorrected p-values and
decide nothing; a value that is not a finite number (a diverged run's NaN) is left out of a test.

Runs of one arm must come from one git commit (results.json ``code.commit`` and ``code.dirty``;
a run written before those keys existed counts as the commit "unknown commit", under the same
rule); otherwise the report refuses, naming the runs, unless ``mix_commits`` is set. An arm
holding two runs of one seed (a copied run folder) is refused the same way, without an override.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from allam import stats as S
from allam.claim_runs import (  # noqa: F401  (the runs' grouping and checks, used with the claims)
    UNKNOWN_COMMIT,
    arm_name,
    check_commits,
    check_seeds,
    commit_label,
    group_by_seed,
    pairs,
    seed_group_key,
    seed_of,
    shares_base,
)
from allam.config import ConfigError  # noqa: F401  (callers catch it as claims.ConfigError)
from allam.config.schema import SEED_KEYS  # noqa: F401  (the suite sets them per seed: experiments/reproduce.py)
from allam.curves import common_range, matched_x, reach_level, metric_value

BASE = "claims_english_base"  # the English base every adapted arm starts from (one per seed)
# Claim 1's English tolerance (bpb): the adapted model's English may end at most this much worse
# than its English base's. The paper says "without any catastrophic forgetting" and gives no
# number; 0.02 bpb is about 1% of the toy base's English bpb (~2.0), about 3.6 times the seed
# spread of that bpb (std 0.0055 over 3 seeds, experiments/CLAIMS.md), and far below what a harmful
# start does (random new rows: +0.52 at step 0, experiments/base_arabic_share.json).
EN_TOLERANCE = 0.02

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
AT_LABEL = {"end": "at the end", "tokens": "at matched training tokens", "flops": "at matched total FLOPs",
            "start": "at step 0", "auc": "mean over the curve", "reach": "tokens to reach"}
CURVE_AT = ("tokens", "flops", "auc", "reach")  # read from the validation curves
ABSTRACT, MODEL_CARD, SECONDARY = "abstract", "model card", "secondary summary"


@dataclass(frozen=True)
class Comparison:
    """`better` is claimed lower than `worse` (+ `margin`) on `metric` (bits per byte and the
    like: lower is better). `at`: end or start (results.json keys); tokens / flops (the validation
    curve interpolated at the largest training tokens / total FLOPs every run of both arms
    reached); auc (the curve's mean over the token range every run covers: the area under it
    over the budget); reach (the training tokens a run needs to first reach the highest bpb
    every run reaches, interpolated on its curve). `decides`: False for context only."""

    metric: str
    better: str
    worse: str
    at: str = "end"
    decides: bool = True
    margin: float = 0.0


@dataclass(frozen=True)
class Claim:
    """`source`: abstract, model card or secondary summary; `paper`: what that source says;
    `compared`: exactly what is compared here."""

    number: int
    title: str
    source: str
    paper: str
    compared: str
    comparisons: tuple[Comparison, ...]

    @property
    def arms(self) -> list[str]:
        return list(dict.fromkeys(a for c in self.comparisons for a in (c.better, c.worse)))

    @property
    def deciding_arms(self) -> list[str]:
        """The arms of the comparisons that decide the verdict (not the context rows')."""
        return list(dict.fromkeys(a for c in self.comparisons if c.decides for a in (c.better, c.worse)))


C = Comparison
CLAIMS: tuple[Claim, ...] = (
    Claim(1, "Adapting an English model beats training from scratch at equal continued tokens, keeping English",
          ABSTRACT,
          "Vocabulary expansion and continued pretraining on Arabic and English steer a model towards Arabic "
          "\"without any catastrophic forgetting in the original language (English)\" (abstract). That adapting "
          "Llama-2 beats training from scratch on the same continued tokens is a secondary summary of the paper's "
          "early experiments (issue 12).",
          f"Arabic and English bpb of the adapted model against a from-scratch model after the same continued "
          f"tokens (Welch: different starts); the adapted model's final English bpb against its English base's, "
          f"within a tolerance of {EN_TOLERANCE} bpb (paired by seed).",
          (C("val.ar.bpb", "claim1_adapt", "claim1_scratch", "tokens"),
           C("val.en.bpb", "claim1_adapt", "claim1_scratch", "tokens"),
           C("val.en.bpb", "claim1_adapt", BASE, margin=EN_TOLERANCE),
           C("val.ar.bpb", "claim1_adapt", "claim1_scratch_flops", "flops", decides=False))),
    Claim(2, "Vocabulary expansion beats keeping the base vocabulary",
          SECONDARY,
          "Expanding Llama-2's tokenizer with Arabic pieces makes Arabic text shorter in tokens and trains Arabic "
          "better per unit of compute than keeping the base vocabulary.",
          "Arabic bpb at matched total FLOPs and Arabic tokens per byte, expanded against base vocabulary, both "
          "adapted from the same English base (paired by seed).",
          (C("val.ar.bpb", "claim1_adapt", "claim2_base_vocab", "flops"),
           C("val.ar.tokens_per_byte", "claim1_adapt", "claim2_base_vocab"),
           C("val.en.bpb", "claim1_adapt", "claim2_base_vocab", "flops", decides=False))),
    Claim(3, "Sub-token-mean rows keep English and learn Arabic faster",
          SECONDARY,
          "New embedding rows initialized from the mean of the base embeddings of each new token's sub-pieces "
          "keep English at step 0 and learn Arabic faster than other initializations.",
          "English bpb at step 0, and the Arabic bpb curve's mean over the continued-training budget (the area "
          "under it), sub-token-mean rows against mean rows and against random rows, all from the same English "
          "base (paired by seed). The tokens to reach a common Arabic bpb, the step-0 Arabic bpb and the final "
          "Arabic bpb are context.",
          (C("start.val.en.bpb", "claim1_adapt", "claim3_mean_rows", "start"),
           C("start.val.en.bpb", "claim1_adapt", "claim3_random_rows", "start"),
           C("val.ar.bpb", "claim1_adapt", "claim3_mean_rows", "auc"),
           C("val.ar.bpb", "claim1_adapt", "claim3_random_rows", "auc"),
           C("val.ar.bpb", "claim1_adapt", "claim3_mean_rows", "reach", decides=False),
           C("val.ar.bpb", "claim1_adapt", "claim3_random_rows", "reach", decides=False),
           C("start.val.ar.bpb", "claim1_adapt", "claim3_mean_rows", "start", decides=False),
           C("start.val.ar.bpb", "claim1_adapt", "claim3_random_rows", "start", decides=False),
           C("val.ar.bpb", "claim1_adapt", "claim3_mean_rows", "tokens", decides=False),
           C("val.ar.bpb", "claim1_adapt", "claim3_random_rows", "tokens", decides=False))),
    Claim(4, "A constant low LR forgets less English than re-warming",
          SECONDARY,
          "Continued pretraining at a constant low learning rate (Llama-2's final LR) forgets less English "
          "than re-warming with cosine decay.",
          "The change of English bpb from step 0 to the end, constant LR against re-warm and cosine, from the "
          "same English base (paired by seed).",
          (C("delta.val.en.bpb", "claim1_adapt", "claim4_rewarm"),
           C("val.ar.bpb", "claim1_adapt", "claim4_rewarm", decides=False))),
    Claim(5, "The Arabic share trades Arabic against English monotonically",
          SECONDARY,
          "More Arabic in the mix (data.ar_ratio) gives better Arabic and worse English, monotonically.",
          "Final Arabic and English bpb at 20%, 45% and 70% Arabic, neighbours compared, from the same English "
          "base (paired by seed).",
          (C("val.ar.bpb", "claim1_adapt", "claim5_ar20"),
           C("val.ar.bpb", "claim5_ar70", "claim1_adapt"),
           C("val.en.bpb", "claim5_ar20", "claim1_adapt"),
           C("val.en.bpb", "claim1_adapt", "claim5_ar70"))),
    Claim(6, "Translated Arabic content helps",
          ABSTRACT,
          "\"the effectiveness of using parallel/translated data to aid the process of knowledge alignment "
          "between languages\" (abstract).",
          "Final Arabic bpb with the Arabic sources by size (translated ones included) against natural Arabic "
          "only, from the same English base (paired by seed). The held-out Arabic includes translated sources' "
          "documents, so in-domain data favours the first arm.",
          (C("val.ar.bpb", "claim1_adapt", "claim6_no_translated"),
           C("val.en.bpb", "claim1_adapt", "claim6_no_translated", decides=False))),
    Claim(7, "From scratch: English first, then the mix, against the mix from the start",
          MODEL_CARD,
          "ALLaM-7B from scratch was trained on 4T English tokens, then 1.2T mixed Arabic/English tokens, which "
          "\"retains the English capabilities of the model without catastrophic forgetting\" (model card); no "
          "toy-comparable ablation is reported.",
          "English bpb at the same total tokens, English first then the mix against the mix from the start, both "
          "from scratch (Welch).",
          (C("val.en.bpb", "claim1_scratch", "claim7_mix_only", "tokens"),
           C("val.ar.bpb", "claim1_scratch", "claim7_mix_only", "tokens", decides=False))),
    Claim(8, "Given enough compute, training from scratch overtakes adaptation",
          SECONDARY,
          "After the adapted models, ALLaM trained a 7B from scratch (4T English + 1.2T mixed tokens) that "
          "\"improved significantly over the continued 7B\" (secondary summary; that comparison is not "
          "compute-matched).",
          "Arabic bpb of a from-scratch model given the total FLOPs of the English base plus the adaptation, "
          "against the adapted model (Welch). English bpb and the equal-continued-tokens comparison are context.",
          (C("val.ar.bpb", "claim1_scratch_flops", "claim1_adapt", "flops"),
           C("val.en.bpb", "claim1_scratch_flops", "claim1_adapt", "flops", decides=False),
           C("val.ar.bpb", "claim1_scratch", "claim1_adapt", "tokens", decides=False))),
)


def claims_by_number(numbers: Optional[list[int]] = None, lang: str = "ar") -> list[Claim]:
    """The claims (all, or these numbers), for target language ``lang`` (see :func:`for_language`)."""
    return [for_language(c, lang) for c in CLAIMS if numbers is None or c.number in numbers]


# the claims that carry over to another target language: the same arms on that language's data
# preset (conf/data/bible_<code>.yaml); 5-8 are about Arabic data choices (its shares, translated
# content, the from-scratch schedule) that the presets do not vary
TRANSFERABLE = (2, 3, 4)


def for_language(claim: Claim, lang: str) -> Claim:
    """The claim re-tested on another target language: its metrics and what is compared read that
    language (val.hi.bpb for val.ar.bpb, "Hindi" for "Arabic"); what the paper reports stays as
    the paper says it (about Arabic)."""
    if lang == "ar":
        return claim
    from dataclasses import replace

    from allam.config.langs import lang_name

    name = lang_name(lang)
    comps = tuple(replace(c, metric=c.metric.replace(".ar.", f".{lang}.")) for c in claim.comparisons)
    return replace(claim, title=claim.title.replace("Arabic", name), compared=claim.compared.replace("Arabic", name),
                   comparisons=comps)


def arms_of(claims: list[Claim]) -> list[str]:
    return list(dict.fromkeys(a for c in claims for a in c.arms))


# --------------------------------------------------------------------------- statistics
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


def _finite(v) -> bool:
    """A value a test can use: a number, not NaN or infinite (a diverged run records NaN)."""
    return isinstance(v, (int, float)) and math.isfinite(v)


def stat(values: list) -> Stat:
    vals = [float(v) for v in values if _finite(v)]
    if not vals:
        return Stat(None, None, 0)
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return Stat(mean, std, len(vals), vals)


def direction(p: Optional[float], p_opposite: Optional[float]) -> str:
    """One comparison's verdict from its (adjusted) one-sided p-values."""
    if p is not None and p < S.ALPHA:
        return REPRODUCED
    if p_opposite is not None and p_opposite < S.ALPHA:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def claim_verdict(verdicts: list[str]) -> str:
    """All deciding comparisons reproduced: reproduced; any significantly the other way: not
    reproduced; otherwise inconclusive."""
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if NOT_REPRODUCED in verdicts:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def where(comp: Comparison, runs: list[dict]):
    """Where a comparison reads its runs: the matched x, the (lo, hi) token range, the level."""
    if comp.at in ("tokens", "flops"):
        return matched_x(runs, comp.at, comp.metric)
    if comp.at == "auc":
        return common_range(runs, "tokens", comp.metric)
    if comp.at == "reach":
        return reach_level(runs, comp.metric)
    return None


# --------------------------------------------------------------------------- evaluation
def compare(comp: Comparison, groups: dict[str, list[dict]]) -> dict:
    """One comparison: each arm's values, the test of D = A + margin - B (paired over shared
    seeds when the arms share a base, else Welch) and its unadjusted verdict."""
    a, b = groups.get(comp.worse, []), groups.get(comp.better, [])
    x = where(comp, a + b)
    value = lambda r: metric_value(r, comp.metric, comp.at, x)  # noqa: E731
    sw, sb = stat([value(r) for r in a]), stat([value(r) for r in b])
    matched = pairs(a, b)
    test = None
    if comp.at not in CURVE_AT or x is not None:
        if matched is not None:
            diffs = [(value(ra), value(rb)) for ra, rb in matched]
            test = S.paired_test([va + comp.margin - vb for va, vb in diffs if _finite(va) and _finite(vb)])
        else:
            test = S.welch_test([v + comp.margin for v in sw.values], sb.values)
    return {"comparison": comp, "x": x, "better": sb, "worse": sw, "test": test,
            "verdict": direction(test.p, test.p_opposite) if test else INCONCLUSIVE}


def evaluate(claims: list[Claim], groups: dict[str, list[dict]]) -> list[dict]:
    """Every claim's comparisons with their tests, the Holm-adjusted p-values of the deciding
    ones (each direction separately), their verdicts, and the claim's verdict."""
    out = []
    for claim in claims:
        rows = [compare(comp, groups) for comp in claim.comparisons]
        deciding = [r for r in rows if r["comparison"].decides]
        tested = [r for r in deciding if r["test"] is not None]
        for r, p, po in zip(tested, S.holm([r["test"].p for r in tested]), S.holm([r["test"].p_opposite for r in tested])):
            r["p_holm"], r["p_opposite_holm"] = p, po
            r["verdict"] = direction(p, po)
        missing = [arm for arm in claim.arms if not groups.get(arm)]  # reported; context arms decide nothing
        undecided = [arm for arm in claim.deciding_arms if not groups.get(arm)]
        out.append({"claim": claim, "rows": rows, "missing": missing,
                    "verdict": claim_verdict([r["verdict"] for r in deciding]) if not undecided else INCONCLUSIVE})
    return out


def worked_example() -> dict:
    """The rule on made-up numbers (CLAIMS.md prints it): a claim with two deciding paired
    comparisons over 3 seeds, per-seed differences D = A - B."""
    d1, d2 = [0.10, 0.12, 0.08], [0.08, 0.03, 0.05]
    t1, t2 = S.paired_test(d1), S.paired_test(d2)
    adj = S.holm([t1.p, t2.p])
    adj_opp = S.holm([t1.p_opposite, t2.p_opposite])
    verdicts = [direction(p, po) for p, po in zip(adj, adj_opp)]
    return {"differences": (d1, d2), "tests": (t1, t2), "holm": adj, "verdicts": verdicts,
            "claim": claim_verdict(verdicts)}
