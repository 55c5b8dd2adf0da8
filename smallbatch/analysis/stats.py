"""The confidence interval of every table and difference the suite reports: the mean over seeds
with the half-width of its two-sided 95% Student t interval, t₀.₉₇₅,ₙ₋₁ · s/√n, with the exact
quantile (scipy.stats.t). From two seeds t₀.₉₇₅,₁ = 12.71: such an interval is printed, marked
(:data:`FEW_SEEDS`); from one seed there is none."""

from __future__ import annotations

import math
from functools import cache
from statistics import fmean, stdev

from scipy.stats import t as student_t

FEW_SEEDS = 2  # an interval from this many seeds is marked as such in every table


@cache
def t975(df: int) -> float:
    """Two-sided 95% Student t quantile for ``df`` ≥ 1 degrees of freedom (exact)."""
    if df < 1:
        raise ValueError(f"a t quantile needs >= 1 degree of freedom, got {df}")
    return float(student_t.ppf(0.975, df))


def mean_ci95(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, 95% half-width) of ``values``; (None, None) when empty, half-width None for one."""
    if not values:
        return None, None
    n = len(values)
    half = t975(n - 1) * stdev(values) / math.sqrt(n) if n > 1 else None
    return fmean(values), half


def interval_text(half: float | None, n: int, mark_single: bool = False) -> str:
    """What follows a mean (in %) in a table: `` ± h``; `` ± h (n=2)`` where only two seeds
    give it; nothing for one seed, or `` (n=1)`` with ``mark_single`` (a table whose other
    values have intervals)."""
    if n == 1 or half is None:
        return " (n=1)" if n == 1 and mark_single else ""
    text = f" ± {100 * half:.2f}"
    return f"{text} (n={n})" if n <= FEW_SEEDS else text
