"""Milestones of a norm's training schedule (BRN's ramp, CBN's burn-in, MABN's switches).

One rule for all of them: training steps are numbered 0 … T−1, a milestone ``m`` (in steps) is
reached at the first step ``>= m``, so a run of ``T`` steps reaches it iff ``m < T``. Given as

- ``steps``: used as they are when the last one is < T, refused otherwise (naming the fix);
- ``fraction``: shares of the run, ``m · T``;
- ``auto``: steps when the last one is < T, else the same shape scaled so that the last
  milestone lands at ``auto_end · T`` (a short run still goes through the whole schedule).
"""

from __future__ import annotations

from collections.abc import Mapping

from .registry import NormConfigError

MILESTONE_UNITS = ("auto", "steps", "fraction")


def _listing(values: Mapping[str, float]) -> str:
    return ", ".join(f"{name}={value:g}" for name, value in values.items())


def check_milestones(
    owner: str, unit: str, values: Mapping[str, float], units: tuple[str, ...] = MILESTONE_UNITS
) -> None:
    """Refuse an unknown ``unit``, a negative milestone, or a fraction above 1."""
    if unit not in units:
        raise NormConfigError(f"{owner} unit {unit!r} is not one of {units}")
    if any(v < 0 for v in values.values()):
        raise NormConfigError(f"{owner} milestones must be >= 0, got {_listing(values)}")
    if unit == "fraction" and any(v > 1 for v in values.values()):
        raise NormConfigError(
            f"{owner} milestones with unit='fraction' must be shares of the run in [0, 1], "
            f"got {_listing(values)}"
        )


def reaches(milestone: float, total_steps: int) -> bool:
    """True when a run of ``total_steps`` steps (numbered 0 … T−1) reaches step ``milestone``."""
    return milestone < total_steps


def place_milestones(
    owner: str,
    unit: str,
    values: Mapping[str, float],
    total_steps: int | None,
    *,
    fraction_example: str,
    auto_end: float | None = None,
    units: tuple[str, ...] = MILESTONE_UNITS,
) -> tuple[float, ...]:
    """The milestones in steps for a run of ``total_steps`` steps (None or 0: not known yet),
    by the module's rule; ``fraction_example`` is the ``norm_args`` the refusal suggests and
    ``units`` the units the layer accepts (``auto`` is suggested only when among them)."""
    given = tuple(float(v) for v in values.values())
    if unit == "fraction":
        if not total_steps or total_steps <= 0:
            raise NormConfigError(
                f"{owner} milestones with unit='fraction' need the run's total steps; the "
                "LightningModule sets them at fit start, or call set_total_steps(n) yourself"
            )
        return tuple(m * total_steps for m in given)
    last = max(given, default=0.0)
    if not total_steps or reaches(last, total_steps):
        return given
    if unit == "auto" and auto_end is not None:
        scale = auto_end * total_steps / last
        return tuple(m * scale for m in given)
    auto = " or use unit: auto," if "auto" in units else ""
    raise NormConfigError(
        f"{owner} milestones ({_listing(values)} steps) reach beyond this run's {total_steps} "
        f"steps (its last step is {total_steps - 1}), so the schedule would not complete. Give "
        f"them as shares of the run, e.g. norm_args {fraction_example},{auto} or smaller "
        "milestones"
    )
