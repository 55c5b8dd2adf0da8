"""Where a small-batch accuracy drop comes from, from the evaluation modes of each cell
(Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm"): paired differences between two modes,
and the split of each row's drop from BN at the largest b into

* **estimate**: ``precise − ema``, what recomputing the evaluation statistics with the weights
  frozen recovers (the EMA's estimation error);
* **inconsistency**: ``batch − precise``, what evaluating with each test group's own statistics,
  as in training, recovers (train/test inconsistency);
* **remaining**: ``BN(b_max) − batch``, what stays: the cost of training with those statistics.

The three add up to the drop ``BN(b_max) − ema``. Each figure is a mean over seeds of
differences paired by seed (the same seed's runs), with a 95% Student-t half-width.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from ..errors import UserError, did_you_mean
from ..eval_modes import attribution_chain
from ..results import metric_labels
from .aggregate import CellStats, aggregate, batch_free_cell, measure_of, row_order
from .stats import interval_text, mean_ci95


def _fmt(values: list[float], sign: bool = True) -> str:
    """Mean ± 95% half-width in percentage points; an interval from two seeds marked."""
    mean, ci = mean_ci95(values)
    if mean is None:
        return "–"
    text = f"{100 * mean:+.2f}" if sign else f"{100 * mean:.2f}"
    return text + interval_text(ci, len(values))


def _by_seed(cell: CellStats | None) -> dict[Any, float]:
    return dict(zip(cell.seeds, cell.values, strict=True)) if cell else {}


def _machine_of(cell: CellStats | None) -> dict[Any, str]:
    return dict(zip(cell.seeds, cell.machines, strict=True)) if cell else {}


def same_machine_seeds(*cells: CellStats | None) -> tuple[list[Any], int]:
    """(seeds every cell ran on one kind of machine, seeds they all ran but on different kinds):
    a machine alone moves a cell about 0.2 points, so a pair across machines is no pair."""
    machines = [_machine_of(c) for c in cells]
    common = [s for s in machines[0] if all(s in m for m in machines[1:])]
    same = [s for s in common if len({m[s] for m in machines}) == 1]
    return same, len(common) - len(same)


def _machine_note(skipped: int) -> list[str]:
    if not skipped:
        return []
    return [
        "",
        f"{skipped} seed pair(s) left out: the two runs of the seed ran on different kinds of "
        "machine (`smallbatch report --machine` selects one kind).",
    ]


def _cells(results: list[dict[str, Any]], mode: str) -> dict[tuple[str, int], CellStats]:
    return {(c.row, c.normalization_batch): c for c in aggregate(results, "final", mode)}


def paired_difference_table(results: list[dict[str, Any]], a: str, b: str) -> str:
    """Per row and normalization batch: accuracy in mode ``b`` minus mode ``a``, paired by
    seed (mean ± 95% CI, percentage points)."""
    first, second = _cells(results, a), _cells(results, b)
    stats = list(first.values())
    batches = sorted({c.normalization_batch for c in stats}, reverse=True)
    word = metric_labels(measure_of(results))[2]
    lines = [
        f"{word[0].upper()}{word[1:]} with `{b}` minus {word} with `{a}` evaluation (percentage "
        "points), paired "
        "by seed: mean ± 95% confidence half-width (Student t).",
        "",
        "| norm | " + " | ".join(f"b={n}" for n in batches) + " |",
        "|" + "---|" * (len(batches) + 1),
    ]
    for row in row_order(stats):
        cells = []
        for n in batches:
            x, y = _by_seed(first.get((row, n))), _by_seed(second.get((row, n)))
            cells.append(_fmt([y[s] - x[s] for s in x if s in y]))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def resolve_row(stats: list[CellStats], name: str) -> str:
    """The table row ``name`` means: a row label as printed, or a norm with a single row."""
    rows = row_order(stats)
    if name in rows:
        return name
    of_norm = [r for r in rows if next(s.norm for s in stats if s.row == r) == name]
    if len(of_norm) == 1:
        return of_norm[0]
    if of_norm:
        listed = ", ".join(repr(r) for r in of_norm)
        raise UserError(f"--diff: norm {name!r} has {len(of_norm)} rows ({listed}); give one "
                        "row label as the table prints it")  # fmt: skip
    norms = {s.norm for s in stats}
    raise UserError(
        f"--diff: {name!r} is no row of this table{did_you_mean(name, [*rows, *norms])} "
        f"(rows: {', '.join(repr(r) for r in rows)}; or an evaluation mode for both)"
    )


def row_difference_table(
    results: list[dict[str, Any]], a: str, b: str, metric: str = "final", mode: str = "ema"
) -> str:
    """Per normalization batch: row ``b``'s accuracy minus row ``a``'s, paired by seed (the
    same seed in both rows; mean ± 95% CI, percentage points). A batch-free row run once at
    the whole batch stands at every b."""
    stats = aggregate(results, metric, mode)
    row_a, row_b = resolve_row(stats, a), resolve_row(stats, b)
    if row_a == row_b:
        raise UserError(f"--diff: {a!r} and {b!r} are the same row ({row_a!r})")

    def cells(row: str) -> dict[int, CellStats]:
        flat = batch_free_cell(stats, row)
        if flat is not None:
            return {s.normalization_batch: flat for s in stats}
        return {s.normalization_batch: s for s in stats if s.row == row}

    first, second = cells(row_a), cells(row_b)
    batches = sorted(set(first) & set(second), reverse=True)
    lines = [
        f"`{row_b}` minus `{row_a}` ({metric}, {mode} evaluation; percentage points), paired "
        "by seed: mean ± 95% confidence half-width (Student t) over the seeds both rows ran.",
        "",
        f"| b | {row_a} | {row_b} | difference | seeds |",
        "|---|---|---|---|---|",
    ]
    skipped = 0
    for n in batches:
        x, y = _by_seed(first[n]), _by_seed(second[n])
        paired, across = same_machine_seeds(first[n], second[n])
        skipped += across
        diff = _fmt([y[s] - x[s] for s in paired])
        mean_a = _fmt([x[s] for s in paired], sign=False)
        mean_b = _fmt([y[s] for s in paired], sign=False)
        lines.append(f"| {n} | {mean_a} | {mean_b} | {diff} | {len(paired)} |")
    if not batches:
        lines.append("| – | no normalization batch in common | | | |")
    return "\n".join([*lines, *_machine_note(skipped)]) + "\n"


def attribution_table(
    results: list[dict[str, Any]],
    norms: list[str] | None = None,
    batches: list[int] | None = None,
    reference: str = "bn",
) -> str:
    """The drop of each row (at each b) from the ``reference`` row (BN) at the largest b, split
    into the steps of :func:`smallbatch.eval_modes.attribution_chain` (estimate,
    inconsistency) and what remains (module docstring). Raises :class:`UserError` when the
    table has no such row."""
    chain = attribution_chain()
    word = metric_labels(measure_of(results))[2]
    (first, _), (last, _) = chain[0], chain[-1]
    cells = {mode: _cells(results, mode) for mode, _ in chain}
    stats = list(cells[first].values())
    all_b = sorted({c.normalization_batch for c in stats}, reverse=True)
    b_max = all_b[0]
    ref_cell = cells[first].get((reference, b_max))
    if ref_cell is None and reference != "bn":
        rows = ", ".join(f"'{r}'" for r in row_order(stats))
        raise UserError(f"--reference {reference!r} is no row at b = {b_max} of this table "
                        f"(rows: {rows})")  # fmt: skip
    ref = _by_seed(ref_cell)
    ref_name = "BN" if reference == "bn" else reference
    steps = [f"{name} = {mode} − {before}" for (before, _), (mode, name) in pairwise(chain)]
    names = [name for _, name in chain[1:]]
    lines = [
        f"Drop from {ref_name} at b = {b_max} (`{first}`) and where it comes from, percentage "
        f"points (mean ± 95% CI over seeds, paired by seed and machine): {', '.join(steps)}, "
        f"remaining = {ref_name}(b={b_max}) − {last}; {' + '.join([*names, 'remaining'])} = drop. "
        f"The {word} column is over all the row's seeds; the others over the paired seeds "
        "(last column).",
        "",
        f"| norm | b | {first} {word} | drop | {' | '.join(names)} | remaining | paired seeds |",
        "|---|---|---|---|" + "---|" * len(names) + "---|---|",
    ]
    skipped = 0
    for row in row_order(stats):
        if norms and row not in norms:
            continue
        for n in batches or all_b:
            row_cells = [cells[mode].get((row, n)) for mode, _ in chain]
            acc = [_by_seed(c) for c in row_cells]
            if not acc[0]:
                continue
            seeds, across = same_machine_seeds(ref_cell, *row_cells)
            skipped += across
            parts = [
                _fmt(list(acc[0].values()), sign=False),
                _fmt([ref[s] - acc[0][s] for s in seeds]),
                *(_fmt([after[s] - before[s] for s in seeds]) for before, after in pairwise(acc)),
                _fmt([ref[s] - acc[-1][s] for s in seeds]),
                str(len(seeds)),
            ]
            lines.append(f"| {row} | {n} | " + " | ".join(parts) + " |")
    return "\n".join([*lines, *_machine_note(skipped)]) + "\n"
