"""Small sub-commands of the ``smallbatch`` entry point that are not Lightning CLI runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .norms import available_norms


def norms_command(argv: list[str]) -> int:
    """``smallbatch norms``: every registered norm with its description and defaults."""
    parser = argparse.ArgumentParser(prog="smallbatch norms", description=norms_command.__doc__)
    parser.add_argument("--plain", action="store_true", help="tab-separated, no table")
    args = parser.parse_args(argv)
    entries = available_norms()
    if args.plain:
        for e in entries.values():
            defaults = ", ".join(f"{k}={v!r}" for k, v in e.defaults.items())
            print(f"{e.name}\t{e.source}\t{e.description}\t{defaults}")
        return 0
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
    from .grid import GridBusyError, GridSpecError, load_grid, run_grid

    parser = argparse.ArgumentParser(prog="smallbatch grid", description=grid_command.__doc__)
    parser.add_argument("--config", required=True, help="grid file (configs/grid/*.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print cells and commands only")
    parser.add_argument("--emit", action="store_true", help="write cells.txt for jobs/ scripts")
    parser.add_argument("--no-wait", action="store_true", help="SLURM: submit and return")
    parser.add_argument("--run-root", default=None, help="override the grid file's run_root")
    args = parser.parse_args(argv)
    try:
        spec = load_grid(args.config)
    except GridSpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.run_root:
        spec.run_root = Path(args.run_root)
    try:
        return run_grid(spec, dry_run=args.dry_run, emit=args.emit, wait=not args.no_wait)
    except GridBusyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3


def report_command(argv: list[str]) -> int:
    """``smallbatch report RUN_DIR``: norm × batch-size table (Markdown, CSV) and plot (PNG)."""
    from .report import main as report_main

    return report_main(argv)


def bench_command(argv: list[str]) -> int:
    """``smallbatch bench``: step time, images/s and memory per norm, ratios to BN."""
    from .bench import main as bench_main

    return bench_main(argv)
