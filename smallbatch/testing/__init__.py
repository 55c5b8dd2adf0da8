"""A conformance kit for norm layers (``smallbatch check-norm``), in the manner of scikit-learn's
``check_estimator``: one call runs the ``NormLayer`` contract against any norm, built-in or a
plugin's, and says per check what holds, what breaks and why.

    from smallbatch.testing import check_norm, norm_checks
    report = check_norm("my_pkg.MyNorm", fast=True)     # list of CheckResult
    assert report.ok, report.table()

    @pytest.mark.parametrize("check", norm_checks(fast=True), ids=lambda c: c.__name__)
    def test_my_norm(check):                              # one pytest item per check
        result = check(NormUnderTest.build("my_pkg.MyNorm"))
        assert result.status != "fail", result.reason

Each check builds what it needs from a small conv → norm pair (``swap_norms``, so layers that
need their feeding conv get it) on small CPU inputs, and applies only where the layer's
declarations make it apply (``skip`` with the reason otherwise). A check fails with one line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..timeouts import TimeLimitExceeded, time_limit
from .checks import (
    check_batch_free,
    check_batch_one,
    check_bf16_autocast,
    check_compile,
    check_cost,
    check_eval_independent,
    check_ghost_batches,
    check_gradients,
    check_hooks,
    check_robustness,
    check_shape_dtype,
    check_state_round_trip,
)
from .ddp import check_ddp
from .harness import (
    CHANNELS,
    FAIL,
    PASS,
    SKIP,
    CheckResult,
    KitBuildError,
    NormUnderTest,
    Report,
    failure_reason,
)

FAST_CHECKS: list[Callable[[NormUnderTest], CheckResult]] = [
    check_shape_dtype, check_eval_independent, check_batch_free, check_batch_one,
    check_ghost_batches, check_state_round_trip, check_robustness, check_hooks,
]  # fmt: skip
FULL_CHECKS = [*FAST_CHECKS, check_bf16_autocast, check_gradients, check_compile, check_ddp,
               check_cost]  # fmt: skip


def norm_checks(fast: bool = False) -> list[Callable[[NormUnderTest], CheckResult]]:
    """The checks, for pytest parametrization in a plugin's own tests."""
    return list(FAST_CHECKS if fast else FULL_CHECKS)


def check_norm(spec: Any, fast: bool = False, **norm_args: Any) -> Report:
    """Run every check on ``spec`` (a registered name, class path or mapping)."""
    start = time.perf_counter()
    report = Report(str(spec.get("class_path") if isinstance(spec, dict) else spec))
    try:
        with time_limit(f"check-norm {report.norm}: building the layer"):
            n = NormUnderTest.build(spec, **norm_args)
    except KitBuildError as exc:  # one failure with the reason, not one per check
        report.results.append(CheckResult("build", FAIL, str(exc)))
        report.seconds = time.perf_counter() - start
        return report
    if n.channels != CHANNELS:
        report.results.append(CheckResult("build", PASS, f"{n.channels} channels (not buildable "
                                          f"with {CHANNELS})"))  # fmt: skip
    for check in norm_checks(fast):
        name = check.__name__.removeprefix("check_")
        try:
            with time_limit(f"check-norm {report.norm}: check {name!r}"):
                result = check(n)
        except TimeLimitExceeded:
            raise  # a hanging plugin ends the run, naming the check, not one timeout per check
        except Exception as exc:  # noqa: BLE001 - a check that crashes is a failure, said why
            result = CheckResult(name, FAIL, failure_reason(exc))  # whole, with file and line
        report.results.append(result)
    report.seconds = time.perf_counter() - start
    return report


__all__ = [
    "FAIL",
    "FAST_CHECKS",
    "FULL_CHECKS",
    "PASS",
    "SKIP",
    "CheckResult",
    "NormUnderTest",
    "Report",
    "check_ddp",
    "check_norm",
    "norm_checks",
]
