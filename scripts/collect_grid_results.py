"""Copy the files a published grid commits (grid.json, each cell's result.json and
base_config.json) from a grid's run folder into another, e.g. from a worktree that runs the
grid at a fixed commit into this checkout:

    .venv/bin/python scripts/collect_grid_results.py \
        ../grid-4fed34b/docs/results/fashion_repro docs/results/fashion_repro

Files are written atomically; a cell's files are copied only when its result.json says finished
or diverged (interrupted and failed cells run again in the grid; a running cell is never copied).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from smallbatch.results import DONE_STATUSES, read_result

COMMITTED = ("result.json", "base_config.json")


def copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dst.parent, delete=False, prefix=f".{dst.name}.") as tmp:
        shutil.copyfile(src, tmp.name)
    Path(tmp.name).replace(dst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the grid's run folder (holds grid.json)")
    parser.add_argument("target", type=Path, help="where the committed copy lives")
    args = parser.parse_args(argv)
    if not (args.source / "grid.json").exists():
        parser.error(f"{args.source} holds no grid.json: not a grid's run folder")
    copy_atomic(args.source / "grid.json", args.target / "grid.json")
    cells, unfinished = 0, 0
    for result in sorted(args.source.glob("cells/*/result.json")):
        if (read_result(result.parent) or {}).get("status") not in DONE_STATUSES:
            unfinished += 1  # interrupted or failed: the grid runs it again; nothing to publish
            continue
        for name in COMMITTED:
            if (result.parent / name).exists():
                copy_atomic(result.parent / name, args.target / "cells" / result.parent.name / name)
        cells += 1
    print(f"copied {cells} finished cells' results from {args.source} to {args.target} "
          f"({unfinished} unfinished left out)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
