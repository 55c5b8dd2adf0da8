"""``smallbatch report RUN_DIR``: the command. It reads a folder of runs into table cells
(:mod:`~smallbatch.analysis.aggregate`), writes the table (:mod:`~smallbatch.analysis.render`),
the CSV and the plot (:mod:`~smallbatch.analysis.outputs`), the paired differences and the
attribution (:mod:`~smallbatch.analysis.attribution`), and optionally the W&B summary run.

Columns are the normalization batch b; values are mean ± 95% confidence half-width over seeds.
Writes ``report/results.md``, ``report/results.csv`` and ``report/error_vs_batch.png`` (top-1
error against b on a log2 axis, largest b left, as in the GN paper's Figure 1)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from ..errors import UserError, did_you_mean
from ..eval_modes import DEFAULT_EVAL, EVAL_MODES
from ..results import machine_kind, metric_labels, write_atomic
from .aggregate import (
    DEFAULT_METRIC,
    METRICS,
    aggregate,
    incomplete_lines,
    load_results,
    measure_of,
)
from .attribution import attribution_table, paired_difference_table, row_difference_table
from .outputs import log_to_wandb, plot, write_csv
from .render import markdown_table, timing_line


def main(argv: list[str] | None = None) -> int:
    """Run ``smallbatch report`` with ``argv``; 0 on success (bad input: argparse exits 2)."""
    parser = argparse.ArgumentParser(prog="smallbatch report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="grid run folder (or any folder of runs)")
    parser.add_argument(
        "--metric",
        choices=list(METRICS),
        default=DEFAULT_METRIC,
        help="final (default): last evaluation; median_last5: median of the last 5 (GN paper); "
        "best: best evaluation, selected on the evaluation data (optimistic)",
    )
    parser.add_argument(
        "--eval",
        dest="mode",
        type=lambda v: v.replace("-", "_"),
        choices=list(EVAL_MODES),
        default=DEFAULT_EVAL,
        help="how the final weights are evaluated (default %(default)s): "
        + "; ".join(f"{name}: {mode.description}" for name, mode in EVAL_MODES.items()),
    )
    parser.add_argument(
        "--diff",
        nargs=2,
        metavar=("A", "B"),
        help="also print B − A per b, paired by seed: two evaluation modes for every row "
        "(--diff ema precise), or two rows of the table: norms or row labels (--diff bn gn)",
    )
    parser.add_argument(
        "--attribution",
        action="store_true",
        help="also print each drop from BN at the largest b split into estimate, "
        "inconsistency and remaining (docs/results.md)",
    )
    parser.add_argument(
        "--reference",
        default="bn",
        metavar="ROW",
        help="with --attribution: the row whose value at the largest b each drop is measured "
        "from (default bn; a segmentation grid: e.g. 'frozen_bn+bn')",
    )
    parser.add_argument(
        "--machine",
        default=None,
        metavar="TEXT",
        help="only runs whose machine kind contains TEXT (case-insensitive), e.g. 'EPYC' or "
        "'AMX': a table of one kind of machine (the report lists the kinds it read)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (default RUN_DIR/report); file names carry a metric or evaluation "
        "other than the default, and --machine (results-precise.md, results-machine-epyc.md)",
    )
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="update the grid's W&B summary run and, with a W&B key, save its workspace view",
    )
    parser.add_argument(
        "--project",
        default=None,
        help="W&B project for --wandb (default: the one the grid's cells logged to)",
    )
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        parent = run_dir.parent if run_dir.parent.is_dir() else None
        near = [str(parent / p.name) for p in parent.iterdir() if p.is_dir()] if parent else []
        hint = did_you_mean(str(run_dir), near)
        parser.error(f"{run_dir} is not a folder{hint}; give a grid run folder "
                     "(runs/grid/<name>) or any folder that holds result.json files")  # fmt: skip
    loaded = load_results(run_dir)
    if not loaded.results:
        found = f" ({len(loaded.invalid)} invalid)" if loaded.invalid else ""
        parser.error(f"no valid result.json under {run_dir}{found}: run the grid first")
    if args.machine is not None:
        kinds = sorted({machine_kind(r) for r in loaded.results})
        loaded.results = [
            r for r in loaded.results if args.machine.lower() in machine_kind(r).lower()
        ]
        if not loaded.results:
            parser.error(f"--machine {args.machine!r} matches no run under {run_dir}; its runs "
                         f"ran on: {'; '.join(kinds)}")  # fmt: skip
    if args.mode != DEFAULT_EVAL and args.metric != DEFAULT_METRIC:
        parser.error("--eval modes other than ema evaluate the final weights: use --metric final")
    diff_modes = [v.replace("-", "_") for v in args.diff or []]
    if sum(m in EVAL_MODES for m in diff_modes) == 1:
        parser.error(f"--diff: give two evaluation modes ({', '.join(EVAL_MODES)}) or two rows, "
                     f"not one of each: {args.diff}")  # fmt: skip
    try:
        measure = measure_of(loaded.results)
    except UserError as exc:
        parser.error(str(exc))
    stats = aggregate(loaded.results, args.metric, args.mode)
    extra = []
    if args.diff and all(m in EVAL_MODES for m in diff_modes):
        extra.append(paired_difference_table(loaded.results, *diff_modes))
    elif args.diff:
        try:
            extra.append(row_difference_table(loaded.results, *args.diff, args.metric, args.mode))
        except UserError as exc:
            parser.error(str(exc))
    if args.attribution:
        try:
            extra.append(attribution_table(loaded.results, reference=args.reference))
        except UserError as exc:
            parser.error(str(exc))
    grid_file = run_dir / "grid.json"
    try:
        manifest = json.loads(grid_file.read_text()) if grid_file.exists() else {}
        if not isinstance(manifest, dict):
            raise ValueError(f"expected a JSON object, got {type(manifest).__name__}")
    except (OSError, ValueError) as exc:  # the results are fine: report them all the same
        print(f"note: {grid_file} is unreadable ({str(exc).splitlines()[0]}); the grid is "
              f"named after its folder", file=sys.stderr)  # fmt: skip
        manifest = {}
    name = str(manifest.get("name") or run_dir.name)
    out = Path(args.out) if args.out else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    incomplete = incomplete_lines(loaded.results)
    if loaded.outside:
        incomplete += [
            f"Not in the grid's cells any more, left out ({len(loaded.outside)}; the grid file "
            "changed after they ran, e.g. a seed removed): "
            + ", ".join(f"`{name}`" for name in loaded.outside[:12])
            + (", ..." if len(loaded.outside) > 12 else "")
        ]
    table = markdown_table(stats, args.metric, loaded.invalid, args.mode, incomplete, measure)
    if times := timing_line(loaded.results):
        table += f"\n{times}\n"
    suffix = "".join(
        f"-{v}" for v, d in ((args.metric, DEFAULT_METRIC), (args.mode, DEFAULT_EVAL)) if v != d
    )
    if args.machine is not None:  # a table of some runs never overwrites the table of all
        suffix += "-machine-" + (re.sub(r"[^a-z0-9]+", "_", args.machine.lower()).strip("_") or "x")
    md, csv_path = out / f"results{suffix}.md", out / f"results{suffix}.csv"
    write_atomic(md, f"# {name}\n\n{table}")
    write_csv(stats, csv_path, args.metric)
    png = out / f"error_vs_batch{suffix}.png"
    label = args.metric if args.mode == DEFAULT_EVAL else f"{args.mode} evaluation"
    plot(stats, png, f"{name}: error vs normalization batch", label, metric_labels(measure)[1])
    print(table)
    for text in extra:
        print(text)
    if extra:
        write_atomic(out / f"differences{suffix}.md", f"# {name}\n\n" + "\n".join(extra))
    print(f"table: {md}\ncsv:   {csv_path}\nplot:  {png}")
    if args.wandb:
        from .dashboard import grid_project

        base = manifest.get("base_config")
        project = args.project or grid_project(loaded.results, base and Path(base)) or "smallbatch"
        print(log_to_wandb(stats, png, project, name, args.metric, measure))
    return 0
