"""Keep the tables that docs quote equal to the report files they come from.

A Markdown file marks each quoted table with a comment naming the report file it quotes, right
above the table::

    <!-- table: results/fashion_repro/report/results-precise.md -->
    | norm | b=32 | ... |

(the path is relative to the Markdown file). The table is the first block of ``|`` lines in the
named file. Without options the script rewrites each marked table in place (atomically); with
``--check`` it only reports the tables that differ and exits 1 if any does.

    .venv/bin/python scripts/quote_published_tables.py docs/results.md [--check]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from smallbatch.results import write_atomic

MARKER = re.compile(r"^<!-- table: (?P<path>\S+) -->$")


def first_table(text: str) -> list[str]:
    """The first run of consecutive lines starting with ``|``."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if start is None:
        return []
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def quote_tables(doc: Path) -> tuple[str, list[str]]:
    """(the document with every marked table replaced by its source's, the sources that
    differed). A marker whose file is missing or holds no table is an error."""
    lines = doc.read_text().splitlines()
    out: list[str] = []
    changed: list[str] = []
    i = 0
    while i < len(lines):
        out.append(lines[i])
        match = MARKER.match(lines[i])
        i += 1
        if not match:
            continue
        source = doc.parent / match["path"]
        if not source.is_file():
            raise SystemExit(f"{doc}: the table marker names {match['path']}, which does not exist")
        table = first_table(source.read_text())
        if not table:
            raise SystemExit(f"{doc}: {match['path']} holds no table to quote")
        end = i
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        if lines[i:end] != table:
            changed.append(match["path"])
        out.extend(table)
        i = end
    return "\n".join(out) + "\n", changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("docs", nargs="+", type=Path, help="Markdown files with table markers")
    parser.add_argument("--check", action="store_true", help="only report tables that differ")
    args = parser.parse_args(argv)
    stale = 0
    for doc in args.docs:
        text, changed = quote_tables(doc)
        for path in changed:
            print(f"{doc}: the table from {path} {'differs' if args.check else 'updated'}")
        stale += len(changed)
        if changed and not args.check:
            write_atomic(doc, text)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
