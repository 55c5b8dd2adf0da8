"""The text of ``smallbatch report``: the Markdown table of :func:`~smallbatch.analysis.aggregate.
aggregate`'s cells with its caption, its one-line reading and the runs' timing line."""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..eval_modes import DEFAULT_EVAL, EVAL_MODES
from ..naming import cli_value
from ..results import DEFAULT_METRIC as DEFAULT_MEASURE
from ..results import UNRECORDED_MACHINE, metric_keys, metric_labels
from .aggregate import (
    METRICS,
    CellStats,
    batch_free_cell,
    is_column_key,
    row_order,
    short_key,
)
from .stats import FEW_SEEDS, interval_text, t975


def _fmt(stats: CellStats | None, mark_single: bool = False) -> str:
    if stats is None:
        return "–"
    if stats.mean is None:
        return "diverged" if stats.diverged else "failed"
    text = f"{100 * stats.mean:.2f}" + interval_text(stats.ci95, len(stats.values), mark_single)
    if stats.diverged:
        text += f" ({stats.diverged} div.)"
    return text


def _seed_count(cells: list[CellStats]) -> str:
    counts = sorted({len(c.values) for c in cells})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


def caption(
    stats: list[CellStats],
    metric: str,
    invalid: list[tuple[str, str]],
    mode: str = DEFAULT_EVAL,
    measure: str = DEFAULT_MEASURE,
) -> str:
    """The table's caption: what each number is (``measure``'s ``metric`` summary, or the final
    weights in ``mode``), how seeds are averaged, and what was left out."""
    keys, description = metric_keys(measure), METRICS[metric]
    key = keys[metric]
    if mode != DEFAULT_EVAL:
        description = f"final weights evaluated with {EVAL_MODES[mode].description}"
        key = f"{keys['eval']}.{mode}"
    text = (
        f"{metric_labels(measure)[0]} (%), {description} (`{key}`), mean ± 95% confidence "
        "half-width over "
        "seeds (Student t, exact quantile; no interval from one seed); the last column counts "
        "the seeds per row. Columns are the normalization batch b (samples per normalization "
        "group)."
    )
    modes = {s.mode for s in stats if not s.flat}
    if len(modes) == 1 and (mode := modes.pop()):
        text += f" Every {'other ' if any(s.flat for s in stats) else ''}row uses {mode}."
    elif len(modes) > 1:
        text += " Rows differ in how b is formed: their labels say so."
    if any(s.flat == "batch-free" for s in stats):
        text += (
            " Batch-free rows compute the same thing at every b: run once per seed, one value"
            " for all columns, drawn as a flat line."
        )
    if any(s.flat == "reference" for s in stats):
        text += (
            " Rows with statistics over the whole batch normalize all of it at once, as"
            " synchronized statistics over the emulated devices would: a reference line."
        )
    if any(len(s.values) == FEW_SEEDS for s in stats):
        text += (
            f" An interval from {FEW_SEEDS} seeds is marked (n={FEW_SEEDS}): with "
            f"t = {t975(FEW_SEEDS - 1):.1f} it says little beyond the two values."
        )
    if any(len(s.values) == 1 for s in stats) and any(len(s.values) > 1 for s in stats):
        text += " A value from one seed (no interval) is marked (n=1)."
    if any(s.diverged for s in stats):
        text += (
            " Diverged runs (a non-finite loss, or a non-finite evaluation in this mode) are "
            "not averaged; `n div.` counts them."
        )
    if differences := norm_specific_settings(stats):
        text += f" Set for some norms only: {differences}."
    if dropped := sum(s.duplicates for s in stats):
        text += (
            f" {dropped} repeated run(s) of a seed left out: a seed counts once per setting "
            "(the newest finished run)."
        )
    few = min((s.evaluations for s in stats if s.evaluations), default=5)
    if metric == "median_last5" and few < 5:
        text += f" Some runs made only {few} evaluations: their median is over those {few}."
    if invalid:
        text += f" Not included: {len(invalid)} invalid result file(s), listed below the table."
    return text


def _is_norm_key(key: str) -> bool:
    return key == "model.norm" or key.startswith("model.norm_args")


def _listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def norm_specific_settings(stats: list[CellStats]) -> str:
    """Settings the same within each norm but not across norms (a grid override such as
    ``compile_mode`` for some norms), which no row label shows: "`key` is v for n1 and n2 (w for
    the others)" per key, the most common value as "the others"; '' when all norms share them."""
    rows = row_order(stats)
    by_norm: dict[str, list[dict[str, Any]]] = {}
    for s in sorted(stats, key=lambda s: rows.index(s.row)):  # norms in the table's order
        by_norm.setdefault(s.norm, []).append(s.setting)
    parts = []
    for key in sorted({k for s in stats for k in s.setting}):
        if is_column_key(key) or _is_norm_key(key):
            continue
        values = {n: {cli_value(st.get(key)) for st in sts} for n, sts in by_norm.items()}
        if any(len(v) > 1 for v in values.values()) or len(set().union(*values.values())) < 2:
            continue  # varies within a norm (its row labels say so) or is shared by all norms
        groups: dict[str, list[str]] = {}
        for norm, value in values.items():
            groups.setdefault("unset" if (v := value.pop()) == "null" else v, []).append(norm)
        *few, (common, _) = sorted(groups.items(), key=lambda g: len(g[1]))
        text = "; ".join(f"{v} for {_listing(norms)}" for v, norms in few)
        parts.append(f"`{short_key(key)}` is {text} ({common} for the others)")
    return "; ".join(parts)


def markdown_table(
    stats: list[CellStats],
    metric: str,
    invalid: list[tuple[str, str]] | None = None,
    mode: str = DEFAULT_EVAL,
    incomplete: list[str] | None = None,
    measure: str = DEFAULT_MEASURE,
) -> str:
    """Rows: norm settings; columns: normalization batch (largest first); then seed counts;
    ``incomplete``: the lines of :func:`incomplete_lines` (runs left out)."""
    invalid = invalid or []
    by_key = {(s.row, s.normalization_batch): s for s in stats}
    batches = sorted({s.normalization_batch for s in stats}, reverse=True)
    head = "| norm | " + " | ".join(f"b={b}" for b in batches) + " | seeds |"
    rule = "|" + "---|" * (len(batches) + 2)
    lines = [caption(stats, metric, invalid, mode, measure), "", head, rule]
    mixed = rows_on_mixed_machines(stats)
    mark_single = any(len(s.values) > 1 for s in stats)  # then a value from one seed says so
    for row in row_order(stats):
        cells = [by_key.get((row, b)) for b in batches]
        flat = batch_free_cell(stats, row)
        if flat is not None:
            cells = [flat] * len(batches)
        seeds = _seed_count([c for c in cells if c is not None])
        label = f"{row} {MIXED_MARK}" if row in mixed else row
        marked = " | ".join(_fmt(c, mark_single) for c in cells)
        lines.append(f"| {label} | {marked} | {seeds} |")
    if machines := machine_lines(stats):
        lines += ["", *machines]
    if line := reading(stats):
        lines += ["", line]
    if incomplete:
        lines += ["", *incomplete]
    if invalid:
        lines += ["", "Invalid result files (not in the table):"]
        lines += [f"- `{path}`: {reason}" for path, reason in invalid]
    return "\n".join(lines) + "\n"


MIXED_MARK = "†"


def _machines_of_rows(stats: list[CellStats]) -> dict[str, Counter[str]]:
    """Row → how many of its values ran on each kind of machine."""
    rows: dict[str, Counter[str]] = {}
    for s in stats:
        rows.setdefault(s.row, Counter()).update(s.machines)
    return rows


def rows_on_mixed_machines(stats: list[CellStats]) -> set[str]:
    """The rows whose values come from more than one kind of machine."""
    return {row for row, kinds in _machines_of_rows(stats).items() if len(kinds) > 1}


def machine_lines(stats: list[CellStats]) -> list[str]:
    """Which machines the table's values ran on: one line when they all ran on one kind, else
    each row's kinds with counts, rows that mix kinds marked (a machine alone moves a cell about
    0.2 points: a difference between such rows, or inside one, may be the hardware's)."""
    rows = _machines_of_rows(stats)
    kinds = Counter()
    for counts in rows.values():
        kinds.update(counts)
    if not kinds:
        return []
    if len(kinds) == 1:
        kind = next(iter(kinds))
        if kind == UNRECORDED_MACHINE:
            return ["Machine: not recorded (results written before 2026-12)."]
        return [f"Machine: every value ran on {kind}."]
    lines = [
        f"Machines: the values ran on {len(kinds)} kinds of machine; a machine alone moves a "
        f"cell about 0.2 points. {MIXED_MARK}: the row's values come from more than one kind "
        "(select one with `--machine`)."
    ]
    for row in row_order(stats):
        counts = rows.get(row)
        if not counts:
            continue
        listed = ", ".join(f"{kind} × {n}" for kind, n in sorted(counts.items()))
        lines.append(f"- {row}{f' {MIXED_MARK}' if len(counts) > 1 else ''}: {listed}")
    return lines


def reading(stats: list[CellStats]) -> str:
    """One line on the table's main contrast: at the smallest normalization batch, each
    batch-statistics row against its own value at the largest b and the best batch-free row."""
    batches = sorted({s.normalization_batch for s in stats})
    if len(batches) < 2:
        return ""
    small, large = batches[0], batches[-1]
    by_key = {(s.row, s.normalization_batch): s for s in stats if s.mean is not None}
    flat = [s for s in stats if s.flat == "batch-free" and s.mean is not None]
    best_flat = max(flat, key=lambda s: s.mean, default=None)
    parts = []
    for row in row_order(stats):
        lo, hi = by_key.get((row, small)), by_key.get((row, large))
        if lo is None or hi is None or lo.flat:
            continue
        parts.append(
            f"{row} {100 * lo.mean:.1f}% ({100 * (lo.mean - hi.mean):+.1f} from b={large})"
        )
    if not parts:
        return ""
    text = f"Reading: at b={small}, " + ", ".join(parts)
    if best_flat is not None:
        text += f"; batch-free {best_flat.norm} {100 * best_flat.mean:.1f}% at every b"
    return text + "."


def busy_seconds(intervals: list[tuple[Any, Any]]) -> float:
    """Length of the union of [start, end] intervals: the time in which at least one run was
    going, so that gaps between sessions count nothing and parallel runs count once."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        reach = start if reach is None else max(reach, start)  # covered up to here already
        if end > reach:
            total += (end - reach).total_seconds()
            reach = end
    return total


def run_spans(result: dict[str, Any]) -> list[tuple[Any, Any]]:
    """When a run was going: its last attempt, [attempt start, end], and the earlier attempts'
    time (run time less the last attempt's) from its first start. A run resumed days later (an
    evaluation redone) is not busy in between."""
    from datetime import datetime, timedelta

    start = datetime.fromisoformat(result["started_utc"])
    end = datetime.fromisoformat(result["ended_utc"])
    attempt = result.get("attempt_started_utc")
    last = datetime.fromisoformat(attempt) if attempt else start
    spans = [(last, end)]
    earlier = float(result.get("run_time_s") or 0) - float(result.get("wall_time_s") or 0)
    if last > start and earlier > 0:
        spans.append((start, min(start + timedelta(seconds=earlier), last)))
    return spans


def timing_line(results: list[dict[str, Any]]) -> str:
    """The machine time of a set of runs from their records: the cells' summed run time, the
    wall clock from the first start to the last end, and the busy time (the union of the runs'
    :func:`run_spans`, per host when there are several); runs without times are counted."""
    from datetime import datetime

    timed = [r for r in results if r.get("started_utc") and r.get("ended_utc")]
    if not timed:
        return ""
    by_host: dict[str, list[tuple[datetime, datetime]]] = {}
    runs_on: Counter[str] = Counter()
    for r in timed:
        m = r.get("machine") or {}
        host = f"{m.get('host')} ({m.get('cpu')})"
        by_host.setdefault(host, []).extend(run_spans(r))
        runs_on[host] += 1
    spans = [span for host_spans in by_host.values() for span in host_spans]
    summed = sum(float(r.get("run_time_s") or r.get("wall_time_s") or 0) for r in timed)
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    # (the wall clock is from the first start to the last end, whatever happened between)
    busy = f"busy {busy_seconds(spans) / 3600:.2f} h (at least one run going)"
    if len(by_host) > 1:
        busy += ": " + "; ".join(
            f"{busy_seconds(own) / 3600:.2f} h on {host} ({runs_on[host]} runs)"
            for host, own in sorted(by_host.items())
        )
    else:
        busy += f", on {next(iter(by_host))}"
    untimed = len(results) - len(timed)
    return (
        f"Times: {len(timed)} runs, summed run time {summed / 3600:.2f} h, wall clock "
        f"{(last - first).total_seconds() / 3600:.2f} h from {first.isoformat()} to "
        f"{last.isoformat()}, {busy}"
        + (f"; {untimed} runs without recorded times" if untimed else "")
        + "."
    )
