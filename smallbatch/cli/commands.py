"""The ``smallbatch`` commands, one runner each: the Lightning CLI runs (``fit``, ``validate``,
``test``, ``predict``: :mod:`smallbatch.run.cell`) and the suite's own (``grid``,
``report``, ``norms``, ``bench``). Heavy imports happen inside the runners, so listing the
commands imports neither torch nor Lightning."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def _lightning(subcommand: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        from ..run.cell import lightning_main

        lightning_main([subcommand, *[a for a in argv if a != "--debug"]])
        return 0

    return run


def norms_command(argv: list[str]) -> int:
    """``smallbatch norms``: every registered norm with its description and defaults."""
    parser = argparse.ArgumentParser(prog="smallbatch norms", description=norms_command.__doc__)
    parser.add_argument("--plain", action="store_true", help="tab-separated, no table")
    args = parser.parse_args(argv)
    from ..norms import available_norms

    entries = available_norms()
    if args.plain:
        for e in entries.values():
            defaults = ", ".join(f"{k}={v!r}" for k, v in e.defaults.items())
            print(f"{e.name}\t{e.source}\t{e.description}\t{defaults}")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(entries)} registered norms")
    for col in ("name", "source", "description", "defaults"):
        table.add_column(col, overflow="fold")
    for e in entries.values():
        defaults = ", ".join(f"{k}={v!r}" for k, v in e.defaults.items())
        table.add_row(e.name, e.source, e.description, defaults)
    Console(width=160).print(table)
    return 0


def grid_command(argv: list[str]) -> int:
    """``smallbatch grid --config FILE``: run (or resume) a grid of ``smallbatch fit`` cells."""
    parser = argparse.ArgumentParser(prog="smallbatch grid", description=grid_command.__doc__)
    parser.add_argument("--config", required=True, help="grid file (configs/grid/*.yaml)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print cells, commands and an estimate of the grid's time on this machine (from a "
        "few timed steps of each distinct cell); run nothing",
    )
    parser.add_argument(
        "--no-estimate", action="store_true", help="--dry-run without timing any step"
    )
    parser.add_argument("--emit", action="store_true", help="write cells.txt for jobs/ scripts")
    parser.add_argument("--no-wait", action="store_true", help="SLURM: submit and return")
    parser.add_argument("--run-root", default=None, help="override the grid file's run_root")
    args = parser.parse_args(argv)
    from ..grid import GridBusyError, GridSpecError, load_grid, run_grid

    try:
        spec = load_grid(args.config)
    except GridSpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.run_root:
        spec.run_root = Path(args.run_root)
    try:
        return run_grid(
            spec,
            dry_run=args.dry_run,
            emit=args.emit,
            wait=not args.no_wait,
            estimate=not args.no_estimate,
        )
    except GridBusyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3


def report_command(argv: list[str]) -> int:
    """``smallbatch report RUN_DIR``: norm × batch-size table (Markdown, CSV) and plot (PNG)."""
    from ..analysis.report import main as report_main

    return report_main(argv)


def bench_command(argv: list[str]) -> int:
    """``smallbatch bench``: step time, images/s and memory per norm, ratios to BN."""
    from ..analysis.bench import main as bench_main

    return bench_main(argv)


def check_norm_command(argv: list[str]) -> int:
    """``smallbatch check-norm NORM``: the norm-layer contract checked on any norm."""
    parser = argparse.ArgumentParser(
        prog="smallbatch check-norm",
        description="Run the conformance kit (smallbatch.testing) on a norm: one row per check "
        "(pass / fail / skip and why); exit 1 when a check fails.",
    )
    parser.add_argument("norm", help="registered name, class path or '{\"class_path\": ...}'")
    parser.add_argument("--norm-args", default="{}", help="JSON keyword arguments for the layer")
    parser.add_argument("--fast", action="store_true", help="the quick checks only (seconds)")
    args = parser.parse_args(argv)
    import json

    from ..norms import NormConfigError

    try:
        norm = json.loads(args.norm) if args.norm.lstrip().startswith("{") else args.norm
        norm_args = json.loads(args.norm_args)
    except ValueError as exc:
        raise NormConfigError(
            f"not valid JSON: {exc}; e.g. --norm-args '{{\"window\": 4}}'"
        ) from exc
    from ..testing import check_norm

    report = check_norm(norm, fast=args.fast, **norm_args)
    print(report.table())
    return 0 if report.ok else 1


# name -> (runner, one line of help); the order is the order of `smallbatch --help`
COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "fit": (_lightning("fit"), "train one cell (Lightning CLI: --config, --model.*, --data.*)"),
    "validate": (_lightning("validate"), "evaluate a checkpoint on the validation set"),
    "test": (_lightning("test"), "evaluate a checkpoint on the test set"),
    "predict": (_lightning("predict"), "run a checkpoint's predictions"),
    "grid": (grid_command, "run or resume a grid of cells (configs/grid/*.yaml)"),
    "report": (report_command, "table, CSV and plot of a grid's results"),
    "norms": (norms_command, "every registered norm, built-in or plugin"),
    "bench": (bench_command, "step time and memory per norm, ratios to BN"),
    "check-norm": (check_norm_command, "check a norm (yours too) against the layer contract"),
}
