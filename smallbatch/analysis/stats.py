"""The confidence interval of every table and difference the suite reports: the mean over seeds
with the half-width of its two-sided 95% Student t interval, t₀.₉₇₅,ₙ₋₁ · s/√n."""

from __future__ import annotations

import math
from statistics import fmean, stdev

# Student t 97.5% quantiles for 1..30 degrees of freedom (two-sided 95% interval).
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t975(df: int) -> float:
    """Two-sided 95% Student t quantile for ``df`` degrees of freedom (normal beyond 30)."""
    return T975[df - 1] if df <= len(T975) else 1.96


def mean_ci95(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, 95% half-width) of ``values``; (None, None) when empty, half-width None for one."""
    if not values:
        return None, None
    n = len(values)
    half = t975(n - 1) * stdev(values) / math.sqrt(n) if n > 1 else None
    return fmean(values), half
