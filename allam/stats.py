"""The statistics claim verdicts rest on: Student's t (CDF and quantile, any real degrees of
freedom), the paired t-test, Welch's t-test and Holm's correction. Pure Python (no scipy: it is
not a dependency of this project).

Every test is of a difference D in the *claimed* direction (D > 0 supports the claim): it
returns the mean of D, its standard error, the degrees of freedom, a two-sided 95% t-interval
for the mean of D, the one-sided p-value for "mean D > 0" (the claim) and the one-sided p-value
for "mean D < 0" (its opposite).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

LEVEL = 0.95  # the confidence level of every interval
ALPHA = 0.05  # the significance level of every verdict (after Holm's correction)
POWER = 0.8  # the power the seeds-needed column of CLAIMS.md plans for


# --------------------------------------------------------------------------- Student's t
def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz evaluation)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), 0 <= x <= 1, a, b > 0."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` > 0 degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def t_ppf(q: float, df: float) -> float:
    """The q-quantile of Student's t with `df` degrees of freedom (bisection on t_cdf)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q={q}: must be strictly between 0 and 1")
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------- tests
@dataclass(frozen=True)
class TTest:
    """A t-test of a difference D in the claimed direction (D > 0 supports the claim).

    kind: "paired" (D per seed, both arms from the same base) or "welch" (two independent arms).
    n: pairs (paired) or the two arms' runs (welch, as "n_a+n_b")."""

    kind: str
    n: str
    mean: float
    se: float
    df: float
    t: float
    ci: tuple[float, float]
    p: float  # one-sided: mean D > 0 (the claim)
    p_opposite: float  # one-sided: mean D < 0 (the opposite of the claim)
    sd: float = 0.0  # the spread of one seed's D: the SD of D (paired), sqrt(s_a² + s_b²) (welch)


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _test(kind: str, n: str, mean: float, se: float, df: float, sd: float) -> TTest:
    if se == 0.0:  # no spread at all: the sign of the difference is certain
        p = 0.0 if mean > 0 else 1.0
        p_opp = 0.0 if mean < 0 else 1.0
        return TTest(kind, n, mean, 0.0, df, math.copysign(math.inf, mean) if mean else 0.0, (mean, mean), p, p_opp, sd)
    t = mean / se
    half = t_ppf(0.5 + LEVEL / 2.0, df) * se
    return TTest(kind, n, mean, se, df, t, (mean - half, mean + half), t_cdf(-t, df), t_cdf(t, df), sd)


def paired_test(differences: Sequence[float]) -> Optional[TTest]:
    """The paired t-test of per-seed differences D (None with fewer than 2 pairs)."""
    d = [float(v) for v in differences]
    if len(d) < 2:
        return None
    mean, sd = _mean_sd(d)
    return _test("paired", str(len(d)), mean, sd / math.sqrt(len(d)), len(d) - 1.0, sd)


def welch_test(a: Sequence[float], b: Sequence[float]) -> Optional[TTest]:
    """Welch's t-test of D = mean(a) - mean(b) for independent samples (None with fewer than 2 in
    either); degrees of freedom by Welch-Satterthwaite."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if len(a) < 2 or len(b) < 2:
        return None
    (ma, sa), (mb, sb) = _mean_sd(a), _mean_sd(b)
    va, vb = sa * sa / len(a), sb * sb / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1)) if se > 0 else len(a) + len(b) - 2.0
    return _test("welch", f"{len(a)}+{len(b)}", ma - mb, se, df, math.sqrt(sa * sa + sb * sb))


def seeds_for_power(test: TTest, comparisons: int = 1, power: float = POWER, max_seeds: int = 50) -> Optional[int]:
    """The fewest seeds (per arm) with which a one-sided t-test of a true difference of
    ``test.mean`` with ``test.sd`` spread per seed reaches significance at ALPHA / `comparisons`
    (Holm's strictest threshold among that many) with probability `power`; None when even
    `max_seeds` do not suffice or the difference is 0. Approximation: the smallest n with
    (t_{1-α', df} + t_{power, df}) · sd / √n ≤ |mean|, df = n - 1 (paired) or 2n - 2 (welch, equal
    arms). Planning arithmetic for the next run: it reads the measured effect as the true one."""
    mean, sd = abs(test.mean), test.sd
    if mean == 0.0:
        return None
    if sd == 0.0:
        return 2
    alpha = ALPHA / max(1, comparisons)
    for n in range(2, max_seeds + 1):
        df = n - 1.0 if test.kind == "paired" else 2.0 * n - 2.0
        if (t_ppf(1.0 - alpha, df) + t_ppf(power, df)) * sd / math.sqrt(n) <= mean:
            return n
    return None


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): the k-th smallest of m is
    multiplied by m - k + 1, kept monotone and capped at 1. A NaN p-value counts as 1 (it
    supports nothing), so it cannot reorder or erase the others."""
    m = len(pvalues)
    pvalues = [1.0 if math.isnan(p) else p for p in pvalues]
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
