"""``smallbatch report RUN_DIR``: the norm × batch-size accuracy table and plot of a grid run.

Reads every ``result.json`` under RUN_DIR, aggregates over seeds (mean ± sample std), writes
``report/results.md``, ``report/results.csv`` and ``report/accuracy_vs_batch.png`` (top-1 error
against per-device batch on a log2 axis, largest batch left, as in the GN paper's Figure 1), and
optionally logs table and plot to a W&B summary run in the grid's group.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

METRICS = {
    "best": "best_val_acc",
    "final": "final_val_acc",
    "median_last5": "median_last5_val_acc",  # the GN paper's convention (median of last epochs)
}
NORM_ORDER = ["bn", "syncbn", "brn", "cbn", "gn", "ln", "in", "evonorm_s0", "frn"]


@dataclass
class CellStats:
    norm: str
    batch_size: int
    values: list[float]
    diverged: int
    failed: int

    @property
    def mean(self) -> float | None:
        return fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return stdev(self.values) if len(self.values) > 1 else (0.0 if self.values else None)


def load_results(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every result.json under ``run_dir`` (a grid run folder or any tree of runs)."""
    out = []
    for path in sorted(Path(run_dir).rglob("result.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def aggregate(results: list[dict[str, Any]], metric: str = "best") -> list[CellStats]:
    """Group by (norm, per-device batch) and collect the metric over seeds."""
    key = METRICS[metric]
    groups: dict[tuple[str, int], CellStats] = {}
    for r in results:
        batch = r.get("norm_batch") or r.get("batch_size")
        if r.get("norm") is None or batch is None:
            continue
        k = (str(r["norm"]), int(batch))
        stats = groups.setdefault(k, CellStats(k[0], k[1], [], 0, 0))
        status = r.get("status")
        if status == "diverged":
            stats.diverged += 1
        elif status != "finished":
            stats.failed += 1
            continue
        if isinstance(r.get(key), int | float):
            stats.values.append(float(r[key]))
    return list(groups.values())


def _norm_sort(norms: set[str]) -> list[str]:
    return sorted(norms, key=lambda n: (NORM_ORDER.index(n) if n in NORM_ORDER else 99, n))


def _fmt(stats: CellStats | None) -> str:
    if stats is None:
        return "–"
    if stats.mean is None:
        return "diverged" if stats.diverged else "failed"
    text = f"{100 * stats.mean:.2f}"
    if len(stats.values) > 1:
        text += f" ± {100 * stats.std:.2f}"
    if stats.diverged:
        text += f" ({stats.diverged} div.)"
    return text


def markdown_table(stats: list[CellStats], metric: str) -> str:
    """Rows: norms; columns: per-device batch (largest first); top-1 accuracy in %."""
    by_key = {(s.norm, s.batch_size): s for s in stats}
    batches = sorted({s.batch_size for s in stats}, reverse=True)
    norms = _norm_sort({s.norm for s in stats})
    seeds = max((len(s.values) for s in stats), default=0)
    head = "| norm | " + " | ".join(f"b={b}" for b in batches) + " |"
    lines = [
        f"Top-1 validation accuracy (%), {metric} ({METRICS[metric]}), mean ± std over up to "
        f"{seeds} seed(s); columns are the normalization (per-device or ghost) batch.",
        "",
        head,
        "|" + "---|" * (len(batches) + 1),
    ]
    for norm in norms:
        row = [_fmt(by_key.get((norm, b))) for b in batches]
        lines.append(f"| {norm} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_csv(stats: list[CellStats], path: Path, metric: str) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["norm", "batch_size", "metric", "mean", "std", "n", "diverged", "failed"])
        for s in sorted(stats, key=lambda s: (_norm_sort({s.norm}), -s.batch_size)):
            w.writerow(
                [s.norm, s.batch_size, metric, s.mean, s.std, len(s.values), s.diverged, s.failed]
            )
    tmp.replace(path)


def plot(stats: list[CellStats], path: Path, title: str, metric: str) -> None:
    """Top-1 error (%) against per-device batch, log2 axis, one line per norm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    for norm in _norm_sort({s.norm for s in stats}):
        pts = sorted(
            (s for s in stats if s.norm == norm and s.mean is not None), key=lambda s: s.batch_size
        )
        if not pts:
            continue
        xs = [s.batch_size for s in pts]
        ys = [100 * (1 - s.mean) for s in pts]
        errs = [100 * (s.std or 0) for s in pts]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=norm)
    batches = sorted({s.batch_size for s in stats})
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.invert_xaxis()
    ax.set_xlabel("normalization batch (images per worker)")
    ax.set_ylabel(f"top-1 validation error (%), {metric}")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def log_to_wandb(stats: list[CellStats], png: Path, project: str, group: str, metric: str) -> str:
    """A W&B summary run in the grid's group: the table, a line plot and the PNG."""
    import wandb

    from .wandb_setup import wandb_has_credentials

    mode = os.environ.get("WANDB_MODE") or ("online" if wandb_has_credentials() else "offline")
    run = wandb.init(
        project=project,
        group=group,
        name=f"{group}-summary",
        job_type="report",
        mode=mode,
        dir=str(png.parent),
        config={"metric": metric},
    )
    rows = [[s.norm, s.batch_size, s.mean, s.std, len(s.values)] for s in stats]
    table = wandb.Table(columns=["norm", "batch_size", "acc_mean", "acc_std", "n"], data=rows)
    norms = _norm_sort({s.norm for s in stats})
    batches = sorted({s.batch_size for s in stats})
    by_key = {(s.norm, s.batch_size): s for s in stats}
    ys = [
        [(by_key.get((n, b)).mean if by_key.get((n, b)) else None) for b in batches] for n in norms
    ]
    run.log(
        {
            "results": table,
            "accuracy_vs_batch": wandb.plot.line_series(
                xs=batches,
                ys=ys,
                keys=norms,
                title="top-1 accuracy vs per-device batch",
                xname="batch",
            ),
            "plot": wandb.Image(str(png)),
        }
    )
    run_dir = run.dir
    run.finish()
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smallbatch report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="grid run folder (or any folder of runs)")
    parser.add_argument("--metric", choices=sorted(METRICS), default="best")
    parser.add_argument("--out", default=None, help="output folder (default RUN_DIR/report)")
    parser.add_argument("--wandb", action="store_true", help="log a summary run to W&B")
    parser.add_argument("--project", default="smallbatch", help="W&B project for --wandb")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        parser.error(f"{run_dir} is not a folder")
    results = load_results(run_dir)
    if not results:
        parser.error(f"no result.json under {run_dir}: run the grid first")
    stats = aggregate(results, args.metric)
    grid_file = run_dir / "grid.json"
    name = json.loads(grid_file.read_text())["name"] if grid_file.exists() else run_dir.name
    out = Path(args.out) if args.out else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(stats, args.metric)
    md = out / "results.md"
    md.with_suffix(".tmp").write_text(f"# {name}\n\n{table}")
    md.with_suffix(".tmp").replace(md)
    write_csv(stats, out / "results.csv", args.metric)
    png = out / "accuracy_vs_batch.png"
    plot(stats, png, f"{name}: error vs per-device batch", args.metric)
    print(table)
    print(f"table: {md}\ncsv:   {out / 'results.csv'}\nplot:  {png}")
    if args.wandb:
        print(f"W&B summary run: {log_to_wandb(stats, png, args.project, name, args.metric)}")
    return 0
