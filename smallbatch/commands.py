"""Small sub-commands of the ``smallbatch`` entry point that are not Lightning CLI runs."""

from __future__ import annotations

import argparse

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
