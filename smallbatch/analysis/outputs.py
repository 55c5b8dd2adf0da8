"""The files and uploads of ``smallbatch report``: the CSV of the cells, the error-vs-b plot
(matplotlib) and the grid's W&B summary run."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ..results import write_atomic
from .aggregate import CellStats, batch_free_cell, row_order


def write_csv(stats: list[CellStats], path: Path, metric: str) -> None:
    order = {row: i for i, row in enumerate(row_order(stats))}
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(
        ["row", "norm", "normalization_batch", "batch_size", "metric", "mean", "std", "ci95", "n",
         "diverged", "failed"]
    )  # fmt: skip
    for s in sorted(stats, key=lambda s: (order[s.row], -s.normalization_batch)):
        per_device = "/".join(str(b) for b in sorted(s.batch_sizes))
        w.writerow(
            [s.row, s.norm, s.normalization_batch, per_device, metric, s.mean, s.std, s.ci95,
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
            (s for s in stats if s.row == row and s.mean is not None),
            key=lambda s: s.normalization_batch,
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
        xs = [s.normalization_batch for s in pts]
        ys = [100 * (1 - s.mean) for s in pts]
        errs = [100 * (s.ci95 or 0) for s in pts]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, color=colors[row], label=row)


def plot(
    stats: list[CellStats], path: Path, title: str, metric: str, error_label: str = "top-1 error"
) -> None:
    """The error, 100 · (1 − the task's metric) (``error_label``: top-1 error, 1 − mIoU),
    against the normalization batch, log2 axis, one line per row, 95% confidence bars; a log
    error axis when the errors span more than 4× (a collapse beside rows a point apart). Rows
    that use batch statistics and batch-free rows (one value at every b) are drawn in two
    panels side by side, on one error axis, when both are there."""
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
    batches = sorted({s.normalization_batch for s in stats})
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
        if not ax.get_legend_handles_labels()[0]:
            continue  # nothing drawn (every run of these rows diverged): no empty legend
        if wide:
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
    ax.set_ylabel(f"{error_label} (%), {metric}" + ("; bars: 95% CI" if bars else ", one seed"))
    if wide:
        fig.suptitle(title)
    else:
        ax.set_title(title)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    write_atomic(path, png.getvalue())


def log_to_wandb(
    stats: list[CellStats], png: Path, project: str, group: str, metric: str, measure: str = "acc"
) -> str:
    """Update the grid's one W&B summary run and, when it ran online (a key), save its
    workspace view (``smallbatch.analysis.dashboard``); returns what to tell the user."""
    from .dashboard import log_summary_run, save_workspace

    rows = [
        {
            "row": s.row,
            "norm": s.norm,
            "normalization_batch": s.normalization_batch,
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
        lines.append(f"W&B workspace view: {save_workspace(project, group, measure)}")
    else:
        lines.append("W&B workspace view: not saved (offline; it needs a W&B key)")
    return "\n".join(lines)
