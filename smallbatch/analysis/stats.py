"""The confidence interval of every table and difference the suite reports: the mean over seeds
with the half-width of its two-sided 95% Student t interval, t₀.₉₇₅,ₙ₋₁ · s/√n, with the exact
quantile. From two seeds t₀.₉₇₅,₁ = 12.71: such an interval is printed, marked
(:data:`FEW_SEEDS`); from one seed there is none.

The quantile solves P(|T| > t) = I_{ν/(ν+t²)}(ν/2, 1/2) = 0.05 with mpmath's regularized
incomplete beta function (mpmath comes with torch, through sympy); it equals
``scipy.stats.t.ppf(0.975, ν)`` to 1e-14. scipy itself is not a dependency: where it is installed,
torchmetrics imports ``scipy.signal`` in every process (0.9 s a start on a 2-core CPU).
"""

from __future__ import annotations

import math
from functools import cache
from statistics import fmean, stdev

import mpmath

FEW_SEEDS = 2  # an interval from this many seeds is marked as such in every table


@cache
def t975(df: int) -> float:
    """Two-sided 95% Student t quantile for ``df`` ≥ 1 degrees of freedom (exact)."""
    if df < 1:
        raise ValueError(f"a t quantile needs >= 1 degree of freedom, got {df}")

    def two_sided_tail_minus_5_percent(t):
        return mpmath.betainc(df / 2, 0.5, 0, df / (df + t * t), regularized=True) - 0.05

    # the quantile lies in [1.96, 12.71] for every df >= 1: bisection on [1, 20]
    root = mpmath.findroot(
        two_sided_tail_minus_5_percent, (mpmath.mpf(1), mpmath.mpf(20)), solver="bisect",
        tol=1e-30, maxsteps=200,
    )  # fmt: skip
    return float(root)


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
