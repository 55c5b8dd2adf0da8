"""``smallbatch report RUN_DIR``: the norm × normalization-batch accuracy table and plot.

Reads every ``result.json`` under RUN_DIR. Runs are averaged only when their resolved configs
(``setting`` in result.json) are identical apart from the seed; settings of one norm that differ
in anything else (``norm_args``, epochs, ...) become rows of their own, labelled by what differs.
Columns are the normalization batch b. Values are mean ± 95% confidence half-width over seeds
(Student t: t₀.₉₇₅,ₙ₋₁ · s/√n). Writes ``report/results.md``, ``report/results.csv`` and
``report/error_vs_batch.png`` (top-1 error against b on a log2 axis, largest b left, as in
the GN paper's Figure 1), and optionally logs them to a W&B summary run in the grid's group.

The default metric is the final evaluation's accuracy; ``best`` (the best evaluation, picked on
the same data it reports: optimistic) stays available and is labelled as such.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

from ..naming import is_setting_key, normalization_batch, stable_digest
from ..results import DONE_STATUSES, InvalidResult, Status, load_result_file, write_atomic

METRICS = {
    "final": ("final_val_acc", "final evaluation"),
    "median_last5": ("median_last5_val_acc", "median of the last 5 evaluations (GN paper)"),
    "best": ("best_val_acc", "best evaluation, picked on the evaluation data (optimistic)"),
}
DEFAULT_METRIC = "final"
# how the final weights were evaluated (result.json's eval_acc; "ema": the fit's own evaluation)
EVALS = {
    "ema": "running (EMA) statistics, as trained",
    "precise": "population statistics recomputed with frozen weights, mean of per-group statistics",
    "precise_pooled": "population statistics recomputed with frozen weights, pooled",
    "batch": "batch statistics of each test group of b samples",
}
DEFAULT_EVAL = "ema"


def value_of(result: dict[str, Any], metric: str = DEFAULT_METRIC, mode: str = DEFAULT_EVAL):
    """The accuracy a table shows for one run: ``metric`` of the fit's evaluations (``ema``),
    or the final weights evaluated in ``mode`` (None where the run has no such evaluation)."""
    if mode == DEFAULT_EVAL:
        return result.get(METRICS[metric][0])
    return (result.get("eval_acc") or {}).get(mode)


# Keys that define the column (the normalization batch), not the row.
COLUMN_KEYS = ("model.norm_batch", "data.batch_size", "data.init_args.batch_size")
# Student t 97.5% quantiles for 1..30 degrees of freedom (two-sided 95% interval).
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t975(df: int) -> float:
    """Two-sided 95% Student t quantile for ``df`` degrees of freedom (normal beyond 30)."""
    return T975[df - 1] if df <= len(T975) else 1.96


@dataclass
class Loaded:
    """The readable results under a folder, and the files that were not (path, reason)."""

    results: list[dict[str, Any]] = field(default_factory=list)
    invalid: list[tuple[str, str]] = field(default_factory=list)


def load_results(run_dir: str | Path) -> Loaded:
    """Every result.json under ``run_dir`` (a grid run folder or any tree of runs)."""
    out = Loaded()
    root = Path(run_dir)
    for path in sorted(root.rglob("result.json")):
        try:
            out.results.append(load_result_file(path))
        except (OSError, InvalidResult) as exc:
            out.invalid.append((str(path.relative_to(root)), str(exc).splitlines()[0]))
    return out


def setting_of(result: dict[str, Any]) -> dict[str, Any]:
    """The run's setting (flat resolved config without the seed, location and null values); for
    results written before settings were recorded, their identity fields."""
    if isinstance(result.get("setting"), dict):
        # null values are dropped, so an option added later with default None (absent from older
        # results) does not split a setting; so are keys that stopped counting as settings
        return {k: v for k, v in result["setting"].items() if v is not None and is_setting_key(k)}
    keys = ("norm", "norm_args", "batch_size", "norm_batch", "devices", "backbone", "dataset")
    return {f"cell.{k}": result.get(k) for k in keys}


def _expand(flat: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dict values become dotted keys too (``model.norm_args.momentum``)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if isinstance(value, dict) and value:
            out.update(_expand(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _is_column_key(key: str) -> bool:
    return key in COLUMN_KEYS or key in ("cell.batch_size", "cell.norm_batch")


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


@dataclass
class CellStats:
    """One table cell: the runs of one setting (all its seeds) at normalization batch b."""

    row: str
    norm: str
    norm_batch: int
    batch_sizes: set[int]
    values: list[float]
    diverged: int
    failed: int  # seeds without a result (interrupted, failed, running): not in the mean
    mode: str = ""  # how b relates to the per-device batch in this row ("" = the same)
    # in a table of ghost-batch rows, a row run once at the whole per-device batch: "batch-free"
    # (the same computation at every b: drawn flat) or "reference" (statistics over all of it)
    flat: str = ""
    seeds: list[Any] = field(default_factory=list)  # the seed of each value
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
        n = len(self.values)
        return t975(n - 1) * self.std / math.sqrt(n) if n > 1 else None


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
    def norm_batch(self) -> int:
        return normalization_batch(self.first.get("norm_batch"), self.first["batch_size"])

    @property
    def ghost(self) -> bool:
        if "model.norm_batch" in self.setting:
            return self.setting["model.norm_batch"] is not None
        return self.norm_batch != self.first["batch_size"]


def _varying(settings: list[_Setting], columns_too: bool) -> list[str]:
    keys = sorted({k for s in settings for k in s.setting})
    return [
        k
        for k in keys
        if (columns_too or not _is_column_key(k))
        and len({_value_text(s.setting.get(k)) for s in settings}) > 1
    ]


def _ghost_mode(settings: list[_Setting]) -> str:
    """How a row's normalization batch relates to the per-device batch."""
    if not any(s.ghost for s in settings):
        return ""
    per_device = {s.first["batch_size"] for s in settings}
    if len(per_device) == 1:
        return f"ghost batches in a per-device batch of {per_device.pop()}"
    ratios = {s.first["batch_size"] // s.norm_batch for s in settings}
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
        if modes[i] or {s.norm_batch for s in group} != {total}:
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
    are counted, never averaged; ``mode`` picks the evaluation (:data:`EVALS`)."""
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
                (norm, s.ghost, tuple((k, _value_text(s.setting.get(k))) for k in varying))
                for s in group
            ]
            cells = [(i, s.norm_batch) for i, s in zip(ids, group, strict=True)]
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
        parts = [f"{_short(k)}={v}" for k, v in diffs]
        if row_id in flats:
            parts.append(flats[row_id][1])
        elif mixed and modes[row_id]:
            parts.append(modes[row_id])
        label = f"{norm} ({', '.join(parts)})" if parts else norm
        flat = flats.get(row_id, ("", ""))[0]
        for s in group:
            cell = CellStats(label, norm, s.norm_batch, set(), [], 0, 0, modes[row_id], flat)
            cell.duplicates = s.duplicates
            cell.failed = s.incomplete
            cell.setting = s.setting
            cell.evaluations = min((len(r.get("val_acc_history") or []) for r in s.results),
                                   default=0)  # fmt: skip
            for r in s.results:
                cell.batch_sizes.add(r["batch_size"])
                if r["status"] == Status.DIVERGED:
                    cell.diverged += 1  # counted beside the mean, never in it
                    continue
                value = value_of(r, metric, mode)
                if isinstance(value, int | float):
                    cell.values.append(float(value))
                    cell.seeds.append(r.get("seed"))
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


def _fmt(stats: CellStats | None) -> str:
    if stats is None:
        return "–"
    if stats.mean is None:
        return "diverged" if stats.diverged else "failed"
    text = f"{100 * stats.mean:.2f}"
    if stats.ci95 is not None:
        text += f" ± {100 * stats.ci95:.2f}"
    if stats.diverged:
        text += f" ({stats.diverged} div.)"
    return text


def _seed_count(cells: list[CellStats]) -> str:
    counts = sorted({len(c.values) for c in cells})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


def caption(
    stats: list[CellStats], metric: str, invalid: list[tuple[str, str]], mode: str = DEFAULT_EVAL
) -> str:
    key, description = METRICS[metric]
    if mode != DEFAULT_EVAL:
        description = f"final weights evaluated with {EVALS[mode]}"
        key = f"eval_acc.{mode}"
    text = (
        f"Top-1 accuracy (%), {description} (`{key}`), mean ± 95% confidence half-width over "
        "seeds (Student t; no interval with one seed); the last column counts the seeds per "
        "row. Columns are the normalization batch b (samples per normalization group)."
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
    if any(s.diverged for s in stats):
        text += " Diverged runs are not averaged; `n div.` counts them."
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
    return key in ("model.norm", "cell.norm") or key.startswith(
        ("model.norm_args", "cell.norm_args")
    )


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
        if _is_column_key(key) or _is_norm_key(key):
            continue
        values = {n: {_value_text(st.get(key)) for st in sts} for n, sts in by_norm.items()}
        if any(len(v) > 1 for v in values.values()) or len(set().union(*values.values())) < 2:
            continue  # varies within a norm (its row labels say so) or is shared by all norms
        groups: dict[str, list[str]] = {}
        for norm, value in values.items():
            groups.setdefault("unset" if (v := value.pop()) == "null" else v, []).append(norm)
        *few, (common, _) = sorted(groups.items(), key=lambda g: len(g[1]))
        text = "; ".join(f"{v} for {_listing(norms)}" for v, norms in few)
        parts.append(f"`{_short(key)}` is {text} ({common} for the others)")
    return "; ".join(parts)


def markdown_table(
    stats: list[CellStats],
    metric: str,
    invalid: list[tuple[str, str]] | None = None,
    mode: str = DEFAULT_EVAL,
    incomplete: list[str] | None = None,
) -> str:
    """Rows: norm settings; columns: normalization batch (largest first); then seed counts;
    ``incomplete``: the lines of :func:`incomplete_lines` (runs left out)."""
    invalid = invalid or []
    by_key = {(s.row, s.norm_batch): s for s in stats}
    batches = sorted({s.norm_batch for s in stats}, reverse=True)
    head = "| norm | " + " | ".join(f"b={b}" for b in batches) + " | seeds |"
    lines = [caption(stats, metric, invalid, mode), "", head, "|" + "---|" * (len(batches) + 2)]
    for row in row_order(stats):
        cells = [by_key.get((row, b)) for b in batches]
        flat = batch_free_cell(stats, row)
        if flat is not None:
            cells = [flat] * len(batches)
        seeds = _seed_count([c for c in cells if c is not None])
        lines.append(f"| {row} | " + " | ".join(_fmt(c) for c in cells) + f" | {seeds} |")
    if line := reading(stats):
        lines += ["", line]
    if incomplete:
        lines += ["", *incomplete]
    if invalid:
        lines += ["", "Invalid result files (not in the table):"]
        lines += [f"- `{path}`: {reason}" for path, reason in invalid]
    return "\n".join(lines) + "\n"


def reading(stats: list[CellStats]) -> str:
    """One line on the table's main contrast: at the smallest normalization batch, each
    batch-statistics row against its own value at the largest b and the best batch-free row."""
    batches = sorted({s.norm_batch for s in stats})
    if len(batches) < 2:
        return ""
    small, large = batches[0], batches[-1]
    by_key = {(s.row, s.norm_batch): s for s in stats if s.mean is not None}
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


def timing_line(results: list[dict[str, Any]]) -> str:
    """The machine time of a set of runs from their records: the cells' summed run time, the
    wall clock from the first start to the last end, and the busy time (the union of the runs'
    intervals, per host when there are several); runs without times are counted."""
    from datetime import datetime

    timed = [r for r in results if r.get("started_utc") and r.get("ended_utc")]
    if not timed:
        return ""
    by_host: dict[str, list[tuple[datetime, datetime]]] = {}
    for r in timed:
        m = r.get("machine") or {}
        span = (datetime.fromisoformat(r["started_utc"]), datetime.fromisoformat(r["ended_utc"]))
        by_host.setdefault(f"{m.get('host')} ({m.get('cpu')})", []).append(span)
    spans = [span for host_spans in by_host.values() for span in host_spans]
    summed = sum(float(r.get("run_time_s") or r.get("wall_time_s") or 0) for r in timed)
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    busy = f"busy {busy_seconds(spans) / 3600:.2f} h (at least one run going)"
    if len(by_host) > 1:
        busy += ": " + "; ".join(
            f"{busy_seconds(own) / 3600:.2f} h on {host} ({len(own)} runs)"
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


def write_csv(stats: list[CellStats], path: Path, metric: str) -> None:
    order = {row: i for i, row in enumerate(row_order(stats))}
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(
        ["row", "norm", "norm_batch", "batch_size", "metric", "mean", "std", "ci95", "n",
         "diverged", "failed"]
    )  # fmt: skip
    for s in sorted(stats, key=lambda s: (order[s.row], -s.norm_batch)):
        per_device = "/".join(str(b) for b in sorted(s.batch_sizes))
        w.writerow(
            [s.row, s.norm, s.norm_batch, per_device, metric, s.mean, s.std, s.ci95,
             len(s.values), s.diverged, s.failed]
        )  # fmt: skip
    write_atomic(path, text.getvalue())


# error ticks a log axis is labelled with (%), those inside the data's range
NICE_TICKS = (1, 1.5, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17.5, 20, 25, 30, 40, 50,
              60, 70, 80, 90, 100)  # fmt: skip


def _row_color(i: int) -> Any:
    """One colour per row: matplotlib's ten, then tab20's light ones."""
    import matplotlib.pyplot as plt

    return f"C{i}" if i < 10 else plt.get_cmap("tab20")(2 * (i - 10) % 20 + 1)


def _draw_rows(ax: Any, stats: list[CellStats], rows: list[str], colors: dict[str, Any]) -> None:
    """Each row as error bars against b, or a horizontal line with its 95% band when it is one
    value for every b."""
    for row in rows:
        pts = sorted(
            (s for s in stats if s.row == row and s.mean is not None), key=lambda s: s.norm_batch
        )
        if not pts:
            continue
        if pts[0].flat:  # one value for every b: a horizontal line with its 95% band
            y, err = 100 * (1 - pts[0].mean), 100 * (pts[0].ci95 or 0)
            style = "-." if pts[0].flat == "batch-free" else "--"
            ax.axhline(y, linestyle=style, linewidth=1.5, color=colors[row], label=row)
            if err:
                ax.axhspan(y - err, y + err, color=colors[row], alpha=0.12)
            continue
        xs = [s.norm_batch for s in pts]
        ys = [100 * (1 - s.mean) for s in pts]
        errs = [100 * (s.ci95 or 0) for s in pts]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, color=colors[row], label=row)


def plot(stats: list[CellStats], path: Path, title: str, metric: str) -> None:
    """Top-1 error (%) against the normalization batch, log2 axis, one line per row, 95%
    confidence bars; a log error axis when the errors span more than 4× (a collapse beside
    rows a point apart). Rows that use batch statistics and batch-free rows (one value at
    every b) are drawn in two panels side by side, on one error axis, when both are there."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = row_order(stats)
    colors = {row: _row_color(i) for i, row in enumerate(order)}
    free = [r for r in order if batch_free_cell(stats, r) is not None]
    dependent = [r for r in order if r not in free]
    panels = (
        [(dependent, "batch statistics"), (free, "batch-free: the same at every b")]
        if free and dependent
        else [(order, "")]
    )
    wide = len(panels) > 1
    fig, axes = plt.subplots(
        1, len(panels), figsize=(11.5 if wide else 8.8, 5.2 if wide else 4.6), dpi=120,
        sharey=True, squeeze=False,
    )  # fmt: skip
    batches = sorted({s.norm_batch for s in stats})
    errors = [100 * (1 - s.mean) for s in stats if s.mean is not None]
    bars = any(s.ci95 for s in stats)
    for ax, (rows, subtitle) in zip(axes[0], panels, strict=True):
        _draw_rows(ax, stats, rows, colors)
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.invert_xaxis()
        ax.set_xlabel("normalization batch b (samples per normalization group)")
        ax.grid(True, alpha=0.3)
        if wide:
            ax.set_title(subtitle, fontsize="medium")
            ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
        else:
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                      borderaxespad=0)  # fmt: skip
    ax = axes[0][0]
    if errors and min(errors) > 0 and max(errors) / min(errors) > 4:
        # a collapse next to rows a point apart: a log axis keeps both readable, labelled
        # across the whole range of the data (not only at powers of ten)
        from matplotlib.ticker import FixedLocator, NullLocator

        ax.set_yscale("log")
        lo, hi = min(errors) / 1.1, max(errors) * 1.1
        ticks = [t for t in NICE_TICKS if lo <= t <= hi]
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_ylim(lo, hi)
    ax.set_ylabel(f"top-1 error (%), {metric}" + ("; bars: 95% CI" if bars else ", one seed"))
    if wide:
        fig.suptitle(title)
    else:
        ax.set_title(title)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    write_atomic(path, png.getvalue())


def log_to_wandb(stats: list[CellStats], png: Path, project: str, group: str, metric: str) -> str:
    """Update the grid's one W&B summary run and, when it ran online (a key), save its
    workspace view (``smallbatch.analysis.dashboard``); returns what to tell the user."""
    from .dashboard import log_summary_run, save_workspace

    rows = [
        {
            "row": s.row,
            "norm": s.norm,
            "norm_batch": s.norm_batch,
            "mean": 100 * s.mean,
            "ci95": None if s.ci95 is None else 100 * s.ci95,
            "n": len(s.values),
        }
        for s in stats
        if s.mean is not None
    ]
    run = log_summary_run(rows, png, project, group, metric)
    lines = [f"W&B summary run {run.id} in project {project!r}: {run.dir}"]
    if not run.offline:
        lines.append(f"W&B workspace view: {save_workspace(project, group)}")
    else:
        lines.append("W&B workspace view: not saved (offline; it needs a W&B key)")
    return "\n".join(lines)
