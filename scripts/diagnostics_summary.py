"""Summarize the norm diagnostics a grid's cells logged to W&B (offline run files).

    .venv/bin/python scripts/diagnostics_summary.py docs/results/fashion_repro/cells [--keys norm/]

For every cell folder with an offline W&B run, prints the mean of each ``norm/*`` key over the
first, second and last third of training (by global step), e.g. BRN's r/d clip rates, CBN's
compensation and entries used, the batch-vs-running statistics gap. Reads the files W&B wrote;
needs no key and no network.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from statistics import fmean

from smallbatch.run.wandb_offline import read_offline_run


def thirds(rows: list[dict], key: str, total: int) -> list[float | None]:
    """Mean of ``key`` over rows in each third of [0, total) global steps."""
    out = []
    for i in range(3):
        lo, hi = i * total / 3, (i + 1) * total / 3
        vals = [
            float(r[key]) for r in rows if key in r and lo <= r.get("trainer/global_step", -1) < hi
        ]
        out.append(fmean(vals) if vals else None)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cells", help="a grid's cells folder (or any folder of run folders)")
    parser.add_argument("--keys", default="norm/", help="prefix of the history keys to summarize")
    args = parser.parse_args(argv)
    folders = sorted(p for p in Path(args.cells).iterdir() if (p / "wandb").is_dir())
    if not folders:
        print(f"no run folder with W&B files under {args.cells}", file=sys.stderr)
        return 1
    print("| cell | key | first third | second third | last third |")
    print("|---|---|---|---|---|")
    for folder in folders:
        runs = sorted((folder / "wandb").glob("offline-run-*"))
        rows = [row for run in runs for row in read_offline_run(run, wait_s=0)["history"]]
        total = max((r.get("trainer/global_step", 0) for r in rows), default=0) + 1
        keys = sorted({k for r in rows for k in r if k.startswith(args.keys)})
        for key in keys:
            cells = ["—" if v is None else f"{v:.4g}" for v in thirds(rows, key, total)]
            print(f"| {folder.name} | {key} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
