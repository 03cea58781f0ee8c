"""Validation curves of claim runs (results.json's curve: tokens, total FLOPs and bits per byte per
language at each validation): values at matched x by linear interpolation, never extrapolated; the
mean over a common range; the tokens a run needs to reach a level."""
from __future__ import annotations

from typing import Optional

from allam.results import CURVE_KEY

def curve_points(run: dict, x: str, metric: str) -> list[tuple[float, float]]:
    """(x, metric) along a run's validation curve, x = "tokens" or "flops", sorted by x; of two
    points at one x (a curve written twice at a step) the later one."""
    pts = {float(p[x]): float(p[metric]) for p in run.get(CURVE_KEY) or [] if p.get(metric) is not None}
    return sorted(pts.items())


def interpolate(points: list[tuple[float, float]], x: float) -> Optional[float]:
    """Linear interpolation inside the curve's range (never extrapolated)."""
    if not points or x < points[0][0] or x > points[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def common_range(runs: list[dict], x: str, metric: str) -> Optional[tuple[float, float]]:
    """(lo, hi): the x range every run's curve covers, or None."""
    curves = [curve_points(r, x, metric) for r in runs]
    if not curves or any(not c for c in curves):
        return None
    lo, hi = max(c[0][0] for c in curves), min(c[-1][0] for c in curves)
    return (lo, hi) if hi >= lo else None


def matched_x(runs: list[dict], x: str, metric: str) -> Optional[float]:
    """The largest x every run's curve reaches, if every curve starts at or below it."""
    span = common_range(runs, x, metric)
    return span[1] if span else None


def curve_mean(points: list[tuple[float, float]], lo: float, hi: float) -> Optional[float]:
    """The mean of the linearly interpolated curve over [lo, hi] (trapezoids): the area under it
    divided by hi - lo."""
    if hi <= lo:
        return None
    xs = [lo, *[px for px, _ in points if lo < px < hi], hi]
    ys = [interpolate(points, px) for px in xs]
    if any(y is None for y in ys):
        return None
    area = sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]))
    return area / (hi - lo)


def reach_level(runs: list[dict], metric: str) -> Optional[float]:
    """The highest of the runs' best (lowest) values along their token curves: a level every run
    reaches."""
    curves = [curve_points(r, "tokens", metric) for r in runs]
    if not curves or any(not c for c in curves):
        return None
    return max(min(y for _, y in c) for c in curves)


def tokens_to_reach(points: list[tuple[float, float]], level: float) -> Optional[float]:
    """The training tokens at which a curve first comes down to `level` (interpolated between
    the validation points around the crossing); None when it never does."""
    if not points:
        return None
    for (x0, y0), (x1, y1) in zip([points[0], *points], points):
        if y1 <= level:
            return x1 if y1 == y0 or y0 <= level else x0 + (x1 - x0) * (y0 - level) / (y0 - y1)
    return None


def metric_value(run: dict, metric: str, at: str = "end", x=None) -> Optional[float]:
    """A run's value of `metric`: at the end / start (results.json; ``val.<lang>.tokens_per_byte``
    derived from the validation text's tokens and bytes), at `x` tokens / FLOPs on its curve, the
    curve's mean over `x` = (lo, hi) (auc), or the tokens it needs to reach level `x` (reach)."""
    if at in ("tokens", "flops"):
        return interpolate(curve_points(run, at, metric), x) if x is not None else None
    if at == "auc":
        return curve_mean(curve_points(run, "tokens", metric), *x) if x is not None else None
    if at == "reach":
        return tokens_to_reach(curve_points(run, "tokens", metric), x) if x is not None else None
    if metric.endswith(".tokens_per_byte"):
        lang = metric.split(".")[1]
        tokens, nbytes = run.get(f"val.{lang}.tokens"), run.get(f"val.{lang}.bytes")
        return tokens / nbytes if tokens and nbytes else None
    v = run.get(metric)
    return float(v) if isinstance(v, (int, float)) else None
