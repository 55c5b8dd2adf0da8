"""Executors: one map from a grid file's ``executor.kind`` to the class that runs its cells.

An executor is built from the grid and its results store (and whether to wait for submitted
jobs), says how many cells it runs at once (``cells_at_once``: the dry run's estimate divides by
it) and runs a list of runnable cells (``run(todo, on_event, on_progress)``), reporting each
cell's ``start`` and ``finish`` and, where it can, its progress lines. The executor keys a grid
file may use are the union of the classes' ``keys``. Adding a kind is a class with ``kind``,
``keys``, ``cells_at_once`` and ``run``, and one entry in :data:`EXECUTORS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Protocol

from .local import LocalExecutor
from .slurm import SlurmExecutor
from .spec import GridSpec, spec_error
from .store import CellState, ResultsStore


class Executor(Protocol):
    kind: ClassVar[str]
    keys: ClassVar[frozenset[str]]  # the ``executor`` keys it reads (``kind`` aside)

    def __init__(self, spec: GridSpec, store: ResultsStore, wait: bool = True) -> None: ...

    @property
    def cells_at_once(self) -> int: ...

    def run(
        self,
        todo: list[CellState],
        on_event: Callable[[str, CellState], None],
        on_progress: Callable[[CellState, str], None] | None = None,
    ) -> None: ...


EXECUTORS: dict[str, type[Executor]] = {
    LocalExecutor.kind: LocalExecutor,
    SlurmExecutor.kind: SlurmExecutor,
}


def executor_keys() -> set[str]:
    """Every key a grid file's ``executor`` may hold."""
    return {"kind"}.union(*(cls.keys for cls in EXECUTORS.values()))


def check_executor_keys(path: Path, executor: dict) -> None:
    """An unknown ``executor.kind`` or key fails the grid file with one line."""
    keys = executor_keys()
    bad = set(executor) - keys
    if bad:
        raise spec_error(path, f"executor.{sorted(bad)[0]}", f"unknown; accepted: {sorted(keys)}")
    if executor.get("kind", "local") not in EXECUTORS:
        kinds = tuple(EXECUTORS)
        raise spec_error(path, "executor.kind", f"{executor['kind']!r} is not one of {kinds}")


def executor_for(spec: GridSpec, store: ResultsStore, wait: bool = True) -> Executor:
    """The executor of the grid's ``executor.kind``."""
    check_executor_keys(spec.source or Path("grid"), spec.executor)
    return EXECUTORS[spec.executor.get("kind", "local")](spec, store, wait)
