"""Evaluation modes: the ways a run's final weights are evaluated, declared once (name → how to
compute it, how the report describes it, its place in the attribution of a drop).

The final evaluation (:mod:`smallbatch.run.final_eval`) computes every mode into result.json's
``eval_<metric>``; the report's ``--eval``/``--diff`` choices, its captions and the attribution's
chain all read this map. Adding a mode is one entry and its function: the function gets the
final weights (:class:`FinalWeights`, which the final evaluation provides) and returns the task's
metric (top-1 accuracy, mIoU). This module imports nothing (the report reads it without torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class FinalWeights(Protocol):
    """What a mode's function may ask of the final weights (the final evaluation's object):
    the cell's normalization batch b, and the task's metric (top-1 accuracy, mIoU) on the
    evaluation set with each layer's statistics as recomputed by ``estimator`` (a key of
    :func:`smallbatch.run.population.population_statistics`), or with each test group of
    ``group`` samples (default b) normalized by its own statistics."""

    normalization_batch: int

    def with_statistics(self, estimator: str) -> float: ...

    def with_batch_statistics(self, group: int | None = None) -> float: ...


@dataclass(frozen=True)
class EvalMode:
    """One evaluation mode. ``evaluate``: the final weights' metric in this mode (None for the
    fit's own evaluation, which the run records as it trains). ``attribution``: the name of the
    step from the previous mode of the attribution chain to this one (None: not in the chain;
    the first mode of the chain has ``""``)."""

    description: str
    evaluate: Callable[[FinalWeights], float] | None = None
    attribution: str | None = None


def _precise(final: FinalWeights) -> float:
    return final.with_statistics("precise")


def _precise_pooled(final: FinalWeights) -> float:
    return final.with_statistics("precise_pooled")


def _batch(final: FinalWeights) -> float:
    return final.with_batch_statistics()


EVAL_MODES: dict[str, EvalMode] = {
    "ema": EvalMode("running (EMA) statistics, as trained", attribution=""),
    "precise": EvalMode(
        "population statistics recomputed with frozen weights, mean of per-group statistics",
        _precise,
        attribution="estimate",
    ),
    "precise_pooled": EvalMode(
        "population statistics recomputed with frozen weights, pooled", _precise_pooled
    ),
    "batch": EvalMode(
        "batch statistics of each test group of b samples", _batch, attribution="inconsistency"
    ),
}
DEFAULT_EVAL = "ema"  # the fit's own evaluation


def attribution_chain() -> list[tuple[str, str]]:
    """(mode, name of the step into it) in the attribution's order: the first mode, then each
    mode whose accuracy minus the previous one's is a named part of the drop."""
    return [(name, m.attribution) for name, m in EVAL_MODES.items() if m.attribution is not None]


def computed_modes() -> dict[str, Callable[[FinalWeights], float]]:
    """The modes the final evaluation computes (all but the fit's own), in declaration order."""
    return {name: m.evaluate for name, m in EVAL_MODES.items() if m.evaluate is not None}
