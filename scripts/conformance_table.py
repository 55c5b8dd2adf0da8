"""Run the conformance kit (``smallbatch check-norm``) on every built-in norm, quick and full,
and write one table: a row per norm, a column per check, and how long each run took.

    .venv/bin/python scripts/conformance_table.py [--norms bn gn ...] [--out FOLDER]

Writes ``conformance.md`` (the table, the reasons of every skip and failure, the commit, the
command, the UTC times, the CPU and its load) and ``conformance.json`` under ``--out``,
atomically. Timings on a shared machine vary with its load, which the file records.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from smallbatch.norms import builtin_norms
from smallbatch.results import write_atomic, write_json_atomic
from smallbatch.run.cell import code_version
from smallbatch.run.result_writer import machine, utc_now
from smallbatch.testing import check_norm, norm_checks

MARK = {"pass": "✓", "fail": "✗", "skip": "–"}


def run(norms: list[str]) -> dict:
    started, commit = time.time(), code_version()  # the code as it is when the checks start
    load_before = os.getloadavg()
    rows = []
    for norm in norms:
        fast = check_norm(norm, fast=True)
        full = check_norm(norm)
        print(full.table(), flush=True)
        rows.append({
            "norm": norm,
            "fast_seconds": round(fast.seconds, 1),
            "full_seconds": round(full.seconds, 1),
            "results": [{"check": r.check, "status": r.status, "reason": r.reason}
                        for r in full.results],
        })  # fmt: skip
    return {
        "commit": commit,
        "command": " ".join(["python", "scripts/conformance_table.py", *sys.argv[1:]]),
        "started_utc": utc_now(started),
        "finished_utc": utc_now(),
        "machine": machine(),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "norms": rows,
    }


def markdown(record: dict) -> str:
    checks = [c.__name__.removeprefix("check_") for c in norm_checks()]
    m, load = record["machine"], record["load_average_before_after"]
    amx = "yes" if m.get("cpu_amx") else "no"
    lines = [
        "# Conformance kit on the built-in norms",
        "",
        f"Written by `{record['command']}` at commit `{record['commit']}`, "
        f"{record['started_utc']} – {record['finished_utc']} (UTC), on "
        f"{m.get('cpu', '?')} ({m.get('cpus', '?')} CPUs, AMX {amx}, torch {m.get('torch')}; "
        f"1-min load average {load[0]} before, {load[1]} after). ✓ pass, ✗ fail, – skip (reasons "
        "below). Times: `check_norm(norm, fast=True)` and `check_norm(norm)`, each from start.",
        "",
        "| norm | " + " | ".join(checks) + " | --fast (s) | full (s) |",
        "|---" * (len(checks) + 3) + "|",
    ]
    notes = []
    for row in record["norms"]:
        by = {r["check"]: r for r in row["results"]}
        marks = [MARK[by[c]["status"]] if c in by else "" for c in checks]
        lines.append(f"| {row['norm']} | " + " | ".join(marks)
                     + f" | {row['fast_seconds']} | {row['full_seconds']} |")  # fmt: skip
        notes += [f"- {row['norm']} · {r['check']} ({r['status']}): {r['reason']}"
                  for r in row["results"] if r["reason"]]  # fmt: skip
    return "\n".join([*lines, "", "Reasons and measurements:", "", *notes, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norms", nargs="*", default=None, help="default: every built-in")
    parser.add_argument("--out", default="docs/results/conformance", help="folder to write to")
    args = parser.parse_args(argv)
    record = run(args.norms or builtin_norms())
    os.makedirs(args.out, exist_ok=True)
    write_json_atomic(os.path.join(args.out, "conformance.json"), record)
    write_atomic(os.path.join(args.out, "conformance.md"), markdown(record))
    failed = [row["norm"] for row in record["norms"]
              if any(r["status"] == "fail" for r in row["results"])]  # fmt: skip
    print(f"wrote {args.out}/conformance.md; failing: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
