"""The aggregation behind ``smallbatch report``: every ``result.json`` under a folder grouped into
table cells (:class:`CellStats`), one row per setting, one column per normalization batch b.

Runs are averaged only when their resolved configs (``setting`` in result.json) are identical
apart from the seed; settings of one norm that differ in anything else (``norm_args``, epochs,
...) become rows of their own, labelled by what differs. A cell's value is the mean over seeds
with its 95% confidence half-width (:mod:`smallbatch.analysis.stats`). The default metric is the
final evaluation's accuracy; ``best`` (the best evaluation, picked on the same data it reports:
optimistic) stays available and is labelled as such.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

from ..errors import UserError
from ..eval_modes import DEFAULT_EVAL
from ..naming import RECIPE_KEY, UNIFORM_RECIPE, cli_value, is_setting_key, stable_digest
from ..results import (
    DONE_STATUSES,
    RUNNING_MARKER,
    InvalidResult,
    Status,
    load_result_file,
    machine_kind,
    metric_keys,
    metric_of,
    normalization_batch_of,
)
from .stats import mean_ci95

METRICS = {  # which of the fit's evaluations a table shows (result.json's <summary>_val_<metric>)
    "final": "final evaluation",
    "median_last5": "median of the last 5 evaluations (GN paper)",
    "best": "best evaluation, picked on the evaluation data (optimistic)",
}
DEFAULT_METRIC = "final"


def value_of(result: dict[str, Any], metric: str = DEFAULT_METRIC, mode: str = DEFAULT_EVAL):
    """The value a table shows for one run (of its task's metric: accuracy, mIoU): ``metric``
    (final, median_last5, best) of the fit's evaluations (``ema``), or the final weights
    evaluated in ``mode`` (None where the run has no such evaluation)."""
    keys = metric_keys(metric_of(result))
    if mode == DEFAULT_EVAL:
        return result.get(keys[metric])
    return (result.get(keys["eval"]) or {}).get(mode)


def measure_of(results: list[dict[str, Any]]) -> str:
    """The one metric these results measure (``acc``, ``miou``); a table never mixes two."""
    found = sorted({metric_of(r) for r in results})
    if len(found) > 1:
        raise UserError(f"these results measure different metrics ({', '.join(found)}): report "
                        "each task's runs from its own folder")  # fmt: skip
    return found[0] if found else "acc"


# Keys that define the column (the normalization batch), not the row.
COLUMN_KEYS = ("model.norm_batch", "data.batch_size", "data.init_args.batch_size")


@dataclass
class Loaded:
    """The readable results under a folder, and the files that were not (path, reason)."""

    results: list[dict[str, Any]] = field(default_factory=list)
    invalid: list[tuple[str, str]] = field(default_factory=list)
    # runs of a grid folder whose cell the grid no longer has (its axes changed since): left
    # out of every table, listed (their cell folders)
    outside: list[str] = field(default_factory=list)


def grid_cells(run_dir: Path) -> set[str] | None:
    """The cell folders of the grid as last run (``cells.json``, written by ``smallbatch
    grid``); None for a folder without one (any tree of runs, a published copy)."""
    try:
        cells = json.loads((run_dir / "cells.json").read_text())
        return {str(c["folder"]) for c in cells}
    except (OSError, ValueError, TypeError, KeyError):
        return None


def running_attempt(cell: Path) -> dict[str, Any] | None:
    """The grid's marker of an attempt running in this cell folder now (``running.json``), or
    None: no marker, or one left by a process on this host that is gone."""
    try:
        marker = json.loads((cell / RUNNING_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict):
        return None
    if marker.get("host") == socket.gethostname() and isinstance(marker.get("pid"), int):
        try:
            os.kill(marker["pid"], 0)
        except ProcessLookupError:
            return None  # left behind by a killed grid
        except PermissionError:
            pass  # alive, another user's
    return marker


def load_results(run_dir: str | Path) -> Loaded:
    """Every result.json under ``run_dir`` (a grid run folder or any tree of runs); in a grid's
    folder, the runs of cells its grid file no longer has are set aside (``outside``)."""
    out = Loaded()
    root = Path(run_dir)
    current = grid_cells(root)
    for path in sorted(root.rglob("result.json")):
        cell = path.parent
        if current is not None and cell.parent == root / "cells" and cell.name not in current:
            out.outside.append(cell.name)
            continue
        try:
            result = load_result_file(path)
            if (marker := running_attempt(cell)) is not None:
                result["running_now"] = marker  # its status is an earlier attempt's
            out.results.append(result)
        except (OSError, InvalidResult) as exc:
            out.invalid.append((str(path.relative_to(root)), str(exc).splitlines()[0]))
    return out


def setting_of(result: dict[str, Any]) -> dict[str, Any]:
    """The run's setting (flat resolved config without the seed, location and null values;
    every valid result has one: :func:`smallbatch.results.validate_result`)."""
    # null values are dropped, so an option added later with default None (absent from older
    # results) does not split a setting; so are keys that stopped counting as settings
    setting = result.get("setting") or {}
    return {k: v for k, v in setting.items() if v is not None and is_setting_key(k)}


def _expand(flat: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dict values become dotted keys too (``model.norm_args.momentum``)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if isinstance(value, dict) and value:
            out.update(_expand(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def is_column_key(key: str) -> bool:
    """Whether a setting key defines the column (the normalization batch), not the row."""
    return key in COLUMN_KEYS


def short_key(key: str) -> str:
    """The last component of a dotted setting key (``model.norm_args.momentum`` → momentum)."""
    return key.rsplit(".", 1)[-1]


@dataclass
class CellStats:
    """One table cell: the runs of one setting (all its seeds) at normalization batch b."""

    row: str
    norm: str
    normalization_batch: int  # b, the column
    batch_sizes: set[int]
    values: list[float]
    diverged: int
    failed: int  # seeds without a result (interrupted, failed, running): not in the mean
    mode: str = ""  # how b relates to the per-device batch in this row ("" = the same)
    # in a table of ghost-batch rows, a row run once at the whole per-device batch: "batch-free"
    # (the same computation at every b: drawn flat) or "reference" (statistics over all of it)
    flat: str = ""
    seeds: list[Any] = field(default_factory=list)  # the seed of each value
    machines: list[str] = field(default_factory=list)  # the machine kind of each value
    duplicates: int = 0  # repeated runs of a seed left out
    evaluations: int = 0  # the fewest evaluations a run of this cell made
    setting: dict[str, Any] = field(default_factory=dict)  # the cell's setting (dotted keys)

    @property
    def mean(self) -> float | None:
        return fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return stdev(self.values) if len(self.values) > 1 else (0.0 if self.values else None)

    @property
    def ci95(self) -> float | None:
        """Half-width of the 95% confidence interval of the mean (Student t); None for n < 2."""
        return mean_ci95(self.values)[1]


def one_run_per_seed(results: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """A seed counts once per setting: of repeated runs of one seed the newest finished one
    (by ``ended_utc``; else the newest of any status) is kept. Returns (kept, dropped count)."""
    by_seed: dict[Any, list[dict[str, Any]]] = {}
    for r in results:
        by_seed.setdefault(r.get("seed"), []).append(r)
    kept = []
    for seed, runs in by_seed.items():
        if seed is None or len(runs) == 1:
            kept += runs
            continue
        ranked = sorted(runs, key=lambda r: (r.get("status") == Status.FINISHED,
                                             str(r.get("ended_utc") or "")))  # fmt: skip
        kept.append(ranked[-1])
    return kept, len(results) - len(kept)


@dataclass
class _Setting:
    setting: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0  # repeated runs of a seed left out (one_run_per_seed)
    incomplete: int = 0  # seeds of this setting with no result yet (split_incomplete)

    @property
    def first(self) -> dict[str, Any]:
        return self.results[0]

    @property
    def normalization_batch(self) -> int:
        return normalization_batch_of(self.first)

    @property
    def ghost(self) -> bool:
        if "model.norm_batch" in self.setting:
            return self.setting["model.norm_batch"] is not None
        return self.normalization_batch != self.first["batch_size"]


def _varying(settings: list[_Setting], columns_too: bool) -> list[str]:
    """The setting keys that tell a norm's rows apart. A recipe (``recipe`` in the setting)
    names its row whenever one of them ran one, and stands for the keys it sets: a key whose
    value is the same within each recipe's settings is left out of the label."""
    keys = sorted({k for s in settings for k in s.setting})
    varying = [
        k
        for k in keys
        if (columns_too or not is_column_key(k))
        and len({cli_value(s.setting.get(k)) for s in settings}) > 1
    ]
    if not any(s.setting.get(RECIPE_KEY) for s in settings):
        return varying
    by_recipe: dict[Any, list[_Setting]] = {}
    for s in settings:
        by_recipe.setdefault(s.setting.get(RECIPE_KEY), []).append(s)
    within = [  # keys that still differ between settings of one recipe
        k
        for k in varying
        if any(len({cli_value(s.setting.get(k)) for s in g}) > 1 for g in by_recipe.values())
    ]
    return [RECIPE_KEY, *(k for k in within if k != RECIPE_KEY)]


# settings that read as a word in a row label (no ``key=``) where the words tell the row's
# settings apart: a segmentation encoder started from a checkpoint or from scratch
LABEL_WORDS = {"model.backbone_weights": lambda v: "from scratch" if v is None else "pretrained"}


def _label_value(key: str, value: Any) -> str:
    """How a setting's value reads in a row label (no recipe: the uniform protocol)."""
    if key == RECIPE_KEY and value is None:
        return UNIFORM_RECIPE
    return cli_value(value)


def _label_part(key: str, value: str, settings: list[_Setting]) -> str:
    """``key=value`` in a row label, or the word :data:`LABEL_WORDS` gives the value when the
    words tell these settings apart as well as the values do."""
    word = LABEL_WORDS.get(key)
    if word is not None:
        values = {cli_value(s.setting.get(key)) for s in settings}
        words = {word(s.setting.get(key)) for s in settings}
        if len(words) == len(values):
            return word(None if value == "null" else value)
    return f"{short_key(key)}={value}"


def _ghost_mode(settings: list[_Setting]) -> str:
    """How a row's normalization batch relates to the per-device batch."""
    if not any(s.ghost for s in settings):
        return ""
    per_device = {s.first["batch_size"] for s in settings}
    if len(per_device) == 1:
        return f"ghost batches in a per-device batch of {per_device.pop()}"
    ratios = {s.first["batch_size"] // s.normalization_batch for s in settings}
    if len(ratios) == 1:
        return f"ghost batches, {ratios.pop()} per device"
    return "ghost batches"


def _flat_rows(rows: dict[tuple, list[_Setting]], modes: dict[tuple, str]) -> dict:
    """Rows run once at the whole per-device batch T in a table whose other rows use ghost
    batches inside that same T (the fixed-total-batch protocol): row id → (kind, label part)."""
    ghost_batches = {s.first["batch_size"] for i, g in rows.items() if modes[i] for s in g}
    if len(ghost_batches) != 1:
        return {}
    total = ghost_batches.pop()
    flats = {}
    for i, group in rows.items():
        if modes[i] or {s.normalization_batch for s in group} != {total}:
            continue
        if all(r.get("batch_free") for s in group for r in s.results):
            flats[i] = ("batch-free", "batch-free: the same at every b")
        else:
            flats[i] = ("reference", f"statistics over all {total}")
    return flats


def aggregate(
    results: list[dict[str, Any]], metric: str = DEFAULT_METRIC, mode: str = DEFAULT_EVAL
) -> list[CellStats]:
    """Group runs by setting (identical resolved config apart from the seed), then lay the
    settings out as rows (norm and whatever else differs) × normalization batch. Diverged runs
    are counted, never averaged; ``mode`` picks the evaluation (``smallbatch.eval_modes``)."""
    done, incomplete = split_incomplete(results)
    settings: dict[str, _Setting] = {}
    for r in done:
        setting = setting_of(r)
        digest = stable_digest(setting)
        settings.setdefault(digest, _Setting(_expand(setting))).results.append(r)
    for r in incomplete:  # counted beside a setting that has results, never a setting of its own
        if (known := settings.get(stable_digest(setting_of(r)))) is not None:
            known.incomplete += 1
    for s in settings.values():
        s.results, s.duplicates = one_run_per_seed(s.results)
    by_norm: dict[str, list[_Setting]] = {}
    for s in settings.values():
        by_norm.setdefault(s.first["norm"], []).append(s)
    rows: dict[tuple, list[_Setting]] = {}
    for norm, group in by_norm.items():
        for columns_too in (False, True):
            varying = _varying(group, columns_too)
            ids = [
                (norm, s.ghost, tuple((k, _label_value(k, s.setting.get(k))) for k in varying))
                for s in group
            ]
            cells = [(i, s.normalization_batch) for i, s in zip(ids, group, strict=True)]
            if len(set(cells)) == len(cells):  # one setting per row and column
                break
        for i, s in zip(ids, group, strict=True):
            rows.setdefault(i, []).append(s)
    modes = {i: _ghost_mode(group) for i, group in rows.items()}
    flats = _flat_rows(rows, modes)
    mixed = len({m for i, m in modes.items() if i not in flats}) > 1
    stats = []
    for (norm, ghost, diffs), group in rows.items():
        row_id = (norm, ghost, diffs)
        parts = [_label_part(k, v, by_norm[norm]) for k, v in diffs]
        if row_id in flats:
            parts.append(flats[row_id][1])
        elif mixed and modes[row_id]:
            parts.append(modes[row_id])
        label = f"{norm} ({', '.join(parts)})" if parts else norm
        flat = flats.get(row_id, ("", ""))[0]
        for s in group:
            cell = CellStats(
                label, norm, s.normalization_batch, set(), [], 0, 0, modes[row_id], flat
            )
            cell.duplicates = s.duplicates
            cell.failed = s.incomplete
            cell.setting = s.setting
            cell.evaluations = min(
                (len(r.get(metric_keys(metric_of(r))["history"]) or []) for r in s.results),
                default=0,
            )
            for r in s.results:
                cell.batch_sizes.add(r["batch_size"])
                if r["status"] == Status.DIVERGED or mode in (r.get("eval_errors") or {}):
                    cell.diverged += 1  # counted beside the mean, never in it (a NaN
                    continue  # evaluation in this mode included: it has no accuracy)
                value = value_of(r, metric, mode)
                if isinstance(value, int | float):
                    cell.values.append(float(value))
                    cell.seeds.append(r.get("seed"))
                    cell.machines.append(machine_kind(r))
            stats.append(cell)
    return stats


def split_incomplete(
    results: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(done, incomplete)``: runs with a result (finished or diverged), and runs that were
    interrupted, killed, failed or are being resumed. Incomplete runs are never a row of their
    own and never change another row's label; a seed that also has a done run is not listed."""
    done = [r for r in results if r.get("status") in DONE_STATUSES]
    have = {(stable_digest(setting_of(r)), r.get("seed")) for r in done}
    incomplete = [
        r
        for r in results
        if r.get("status") not in DONE_STATUSES
        and (stable_digest(setting_of(r)), r.get("seed")) not in have
    ]
    return done, incomplete


def incomplete_lines(results: list[dict[str, Any]]) -> list[str]:
    """The runs left out of the table as incomplete, one line each (run name, status, error)."""
    _, incomplete = split_incomplete(results)
    if not incomplete:
        return []
    lines = [f"Incomplete, not in the table ({len(incomplete)}; run the grid again to finish):"]
    for r in sorted(incomplete, key=lambda r: str(r.get("name"))):
        if running := r.get("running_now"):
            lines.append(
                f"- `{r.get('name')}` (seed {r.get('seed')}): running now (an attempt since "
                f"{running.get('started')}, pid {running.get('pid')} on {running.get('host')}; "
                f"the last one ended {r.get('status')})"
            )
            continue
        error = str(r.get("error") or "").strip().splitlines()
        why = f": {error[0][:160]}" if error else ""
        lines.append(f"- `{r.get('name')}` (seed {r.get('seed')}): {r.get('status')}{why}")
    return lines


def batch_free_cell(stats: list[CellStats], row: str) -> CellStats | None:
    """The one cell of a batch-free row run once at the whole batch (it stands at every b),
    or None for any other row."""
    return next((s for s in stats if s.row == row and s.flat == "batch-free"), None)


def row_order(stats: list[CellStats]) -> list[str]:
    """Rows in the registry's order of norms (built-ins as listed by ``smallbatch norms``)."""
    from ..norms.registry import available_norms

    order = list(available_norms(order="registration"))
    firsts: dict[str, str] = {}
    for s in stats:
        firsts.setdefault(s.row, s.norm)
    return sorted(
        firsts, key=lambda r: (order.index(firsts[r]) if firsts[r] in order else len(order), r)
    )
