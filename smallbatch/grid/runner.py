"""``smallbatch grid``: expand, skip finished cells, run the rest, show progress."""

from __future__ import annotations

import shlex
import sys
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..results import metric_keys, metric_of, write_atomic
from .executors import executor_for
from .spec import GridSpec
from .store import RUNNABLE, CellState, CellStatus, ResultsStore


def emit_cells(spec: GridSpec, store: ResultsStore, python: str | None = None) -> Path:
    """Write ``cells.txt``: one shell command per runnable cell, for ``jobs/array.sbatch``."""
    runnable = [s for s in store.states() if s.status in RUNNABLE]
    for state in runnable:
        store.prepare_start(state)
    lines = [shlex.join(spec.command(s.cell, python) + store.resume_args(s)) for s in runnable]
    path = store.root / "cells.txt"
    write_atomic(path, "".join(f"{line}\n" for line in lines))
    return path


class GridProgress:
    """Cells done/running/failed/left with an ETA: a rich bar on a terminal, lines otherwise."""

    def __init__(self, states: list[CellState], console: Console) -> None:
        self.console = console
        self.status = {s.cell.digest: s.status for s in states}
        self.interactive = console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]grid"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeRemainingColumn(),
            console=console,
            disable=not self.interactive,
        )
        self.task = self.progress.add_task(self._describe(), total=len(states))
        self.progress.update(self.task, completed=self._counts()[CellStatus.DONE])

    def _counts(self) -> Counter:
        return Counter(self.status.values())

    def _describe(self) -> str:
        c = self._counts()
        left = sum(c[k] for k in RUNNABLE)
        return f"running {c[CellStatus.RUNNING]} · failed {c[CellStatus.EXHAUSTED]} · left {left}"

    def event(self, kind: str, state: CellState) -> None:
        self.status[state.cell.digest] = CellStatus.RUNNING if kind == "start" else state.status
        self.progress.update(
            self.task, completed=self._counts()[CellStatus.DONE], description=self._describe()
        )
        if not self.interactive:
            result = state.result or {}
            detail = ""
            if kind == "finish":
                best = metric_keys(metric_of(result))["best"]
                acc = result.get(best)
                acc_text = f" {best}={acc:.4f}" if isinstance(acc, float) else ""
                detail = f" -> {result.get('status', state.status)}{acc_text}"
            c = self._counts()
            print(
                f"[grid] {kind} {state.cell.folder}{detail} "
                f"(done {c[CellStatus.DONE]}/{len(self.status)}, {self._describe()})",
                flush=True,
            )

    def cell_progress(self, state: CellState, line: str) -> None:
        """A running cell's progress line, echoed where no bar is drawn (logs, CI, nohup)."""
        if not self.interactive:
            print(f"[grid] {state.cell.folder} {line}", flush=True)


def cells_at_once(spec: GridSpec, store: ResultsStore) -> int:
    """How many cells the grid's executor runs at once (SLURM: its array parallelism)."""
    return executor_for(spec, store).cells_at_once


def run_grid(
    spec: GridSpec,
    dry_run: bool = False,
    emit: bool = False,
    wait: bool = True,
    estimate: bool = True,
) -> int:
    """Run the grid; returns 0 when every cell has a result (finished or diverged).
    ``dry_run`` prints the cells, their commands and, with ``estimate``, the time they will
    take on this machine (:mod:`smallbatch.grid.estimate`)."""
    console = Console(stderr=False)
    store = ResultsStore(spec)
    states = store.states()
    counts = Counter(s.status for s in states)
    print(
        f"grid {spec.name}: {len(states)} cells in {store.root} "
        f"({counts[CellStatus.DONE]} done, {sum(counts[k] for k in RUNNABLE)} to run, "
        f"{counts[CellStatus.EXHAUSTED]} failed beyond retries)"
    )
    if dry_run:
        for s in states:
            cmd = shlex.join(spec.command(s.cell) + store.resume_args(s, dry_run=True))
            print(f"[{s.status}] {s.cell.folder}\n  {cmd}")
        if estimate:
            from .estimate import estimate_lines

            todo = [s.cell for s in states if s.status in RUNNABLE]
            for line in estimate_lines(spec, todo, cells_at_once(spec, store)):
                print(line, flush=True)
        return 0
    for s in states:
        if s.invalid_result:
            print(f"  invalid result: {s.folder / 'result.json'}: {s.invalid_result} (runs again)")
    if counts[CellStatus.STALE]:
        print(
            f"  {counts[CellStatus.STALE]} cells ran under another version of "
            f"{spec.base_config}: they run again afresh (their old results and checkpoints are "
            "kept as *.stale-<time>)"
        )
    start = time.time()
    try:
        store.lock()  # before any write: a grid refused here changes nothing on disk
        store.write_manifest()
        if emit:
            path = emit_cells(spec, store)
            n = sum(1 for _ in path.open())
            print(f"wrote {n} cell commands to {path}")
            if n:
                from .slurm import sbatch_resources

                resources = " ".join(sbatch_resources(spec))
                print(f"sbatch args: {resources}")
                print(f"submit: sbatch --array=0-{n - 1} {resources} jobs/array.sbatch {path}")
            return 0
        todo = [s for s in states if s.status in RUNNABLE]
        executor = executor_for(spec, store, wait)
        progress = GridProgress(states, console)
        with progress.progress:
            executor.run(todo, progress.event, progress.cell_progress)
    except KeyboardInterrupt as exc:
        print(f"\n{exc or 'interrupted'}", file=sys.stderr)
        return 130
    except OSError as exc:  # disk full, permissions, ...: one line; finished cells are kept
        where = f"{exc.filename}: " if exc.filename else ""
        print(
            f"error: grid {spec.name} stopped: {where}{exc.strerror or exc}. Cells with results "
            "are kept; fix this and run the grid again to continue",
            file=sys.stderr,
        )
        return 1
    finally:
        store.unlock()
    final = Counter(s.status for s in store.states())
    print(
        f"grid {spec.name}: {final[CellStatus.DONE]}/{len(states)} cells have results, "
        f"{final[CellStatus.EXHAUSTED]} failed beyond retries, {time.time() - start:.0f}s"
    )
    for s in store.states():
        if s.status != CellStatus.DONE:
            why = s.last_error or (s.result or {}).get("error") or "not run"
            what = (
                "failed beyond retries"
                if s.status == CellStatus.EXHAUSTED
                else f"not finished ({s.status})"
            )
            print(f"  {what}: {s.cell.folder}: {why}")
    return 0 if final[CellStatus.DONE] == len(states) else 1
