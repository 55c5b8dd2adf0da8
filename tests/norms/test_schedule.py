"""One milestone rule for BRN's ramp, CBN's burn-in and MABN's switches (norms/schedule.py):
steps are numbered 0 … T−1 and a milestone m is reached iff m < T."""

import pytest

from smallbatch.norms import BatchRenorm2d, CrossIterationBatchNorm2d, MovingAverageBatchNorm2d
from smallbatch.norms.registry import NormConfigError
from smallbatch.norms.schedule import check_milestones, place_milestones, reaches

LAST = 100  # the last milestone, in steps


def brn(unit):
    layer = BatchRenorm2d(2, warmup=10, rmax_at=LAST, dmax_at=50, unit=unit)
    return layer, lambda: layer.ramp.milestones(layer._host_total)


def cbn(unit):
    layer = CrossIterationBatchNorm2d(2, window=3, burnin=LAST, unit=unit)
    return layer, lambda: (layer.burnin,)


def mabn(unit):
    layer = MovingAverageBatchNorm2d(2, warmup=10, renorm_after=LAST, unit=unit)
    return layer, lambda: (layer.warmup, layer.renorm_after)


FAMILIES = {"brn": brn, "cbn": cbn, "mabn": mabn}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_run_one_step_longer_than_the_last_milestone_keeps_it(family):
    layer, placed = FAMILIES[family]("steps")
    layer.set_total_steps(LAST + 1)  # its last step, index LAST, reaches the milestone
    assert max(placed()) == LAST


@pytest.mark.parametrize("family", FAMILIES)
def test_a_run_ending_at_the_last_milestone_does_not_reach_it(family):
    layer, _ = FAMILIES[family]("steps")
    with pytest.raises(NormConfigError, match=rf"beyond this run's {LAST} steps.*unit: fraction"):
        layer.set_total_steps(LAST)


@pytest.mark.parametrize("family", ["brn", "mabn"])
def test_auto_compresses_exactly_when_steps_would_be_refused(family):
    kept, placed_kept = FAMILIES[family]("auto")
    kept.set_total_steps(LAST + 1)
    assert max(placed_kept()) == LAST
    short, placed_short = FAMILIES[family]("auto")
    short.set_total_steps(LAST)
    assert max(placed_short()) < LAST  # compressed so the schedule completes within the run


def test_brn_reaches_its_final_limits_on_the_last_step_at_the_boundary():
    layer = BatchRenorm2d(2, warmup=10, rmax_at=LAST, dmax_at=50, unit="steps")
    layer.set_total_steps(LAST + 1)
    assert layer.ramp(LAST, LAST + 1) == (layer.ramp.rmax, layer.ramp.dmax)
    assert layer.ramp(LAST - 1, LAST + 1)[0] < layer.ramp.rmax


def test_rule_and_argument_checks():
    assert reaches(99, 100) and not reaches(100, 100)
    assert place_milestones("X", "fraction", {"a": 0.5}, 200, fraction_example="{}") == (100.0,)
    assert place_milestones("X", "steps", {"a": 500}, None, fraction_example="{}") == (500.0,)
    with pytest.raises(NormConfigError, match="need the run's total steps"):
        place_milestones("X", "fraction", {"a": 0.5}, None, fraction_example="{}")
    with pytest.raises(NormConfigError, match=r"use unit: auto"):
        place_milestones("X", "steps", {"a": 5}, 5, fraction_example="{}")
    with pytest.raises(NormConfigError) as refused:  # a layer without auto is not told to use it
        place_milestones("X", "steps", {"a": 5}, 5, fraction_example="{}", units=("steps",))
    assert "auto" not in str(refused.value)
    with pytest.raises(NormConfigError, match="is not one of"):
        check_milestones("X", "epochs", {"a": 1})
    with pytest.raises(NormConfigError, match=">= 0"):
        check_milestones("X", "steps", {"a": -1})
    with pytest.raises(NormConfigError, match=r"in \[0, 1\]"):
        check_milestones("X", "fraction", {"a": 1.5})
