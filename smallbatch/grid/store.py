"""Results store: ``<run_root>/<grid>/`` with ``grid.json``, ``cells.json`` and one folder per
cell (``cells/<label>-<digest>/``) holding config, logs, checkpoints, ``result.json`` and
``attempts.json``. Every JSON file is replaced atomically, so a killed grid corrupts nothing."""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..results import read_result, write_json_atomic
from .spec import Cell, GridSpec

DONE_STATUSES = ("finished", "diverged")  # a diverged run is a result, not a failure


class GridBusyError(RuntimeError):
    """Another grid process holds this run folder."""


@dataclass
class CellState:
    cell: Cell
    folder: Path
    status: str  # done | failed | resumable | new | exhausted
    attempts: int  # failed attempts (a grid that was killed does not count against its cells)
    result: dict[str, Any] | None

    @property
    def last_checkpoint(self) -> Path | None:
        path = self.folder / "checkpoints" / "last.ckpt"
        return path if path.exists() else None


class ResultsStore:
    """The folder of one grid run."""

    def __init__(self, spec: GridSpec) -> None:
        self.spec = spec
        self.root = spec.run_dir
        self._lock_fd: int | None = None

    def cell_dir(self, cell: Cell) -> Path:
        return self.root / "cells" / cell.folder

    def write_manifest(self) -> None:
        """Record the grid and its cells (with their exact commands) before anything runs."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            self.root / "grid.json",
            {
                "name": self.spec.name,
                "source": str(self.spec.source),
                "base_config": str(self.spec.base_config),
                "axes": self.spec.axes,
                "executor": self.spec.executor,
            },
        )
        write_json_atomic(
            self.root / "cells.json",
            [
                {
                    "folder": c.folder,
                    "digest": c.digest,
                    "overrides": c.overrides,
                    "command": self.spec.command_line(c),
                }
                for c in self.spec.cells()
            ],
        )

    def attempts(self, cell: Cell) -> int:
        try:
            return int(json.loads((self.cell_dir(cell) / "attempts.json").read_text())["attempts"])
        except (OSError, ValueError, KeyError):
            return 0

    def record_attempt(self, cell: Cell) -> int:
        n = self.attempts(cell) + 1
        write_json_atomic(self.cell_dir(cell) / "attempts.json", {"attempts": n})
        return n

    def state(self, cell: Cell) -> CellState:
        folder = self.cell_dir(cell)
        result = read_result(folder)
        attempts = self.attempts(cell)
        retries = int(self.spec.executor.get("retries", 1))
        if result and result.get("status") in DONE_STATUSES:
            status = "done"
        elif attempts > retries:
            status = "exhausted"
        elif (folder / "checkpoints" / "last.ckpt").exists():
            status = "resumable"
        else:
            status = "failed" if attempts else "new"
        return CellState(cell, folder, status, attempts, result)

    def states(self) -> list[CellState]:
        return [self.state(c) for c in self.spec.cells()]

    def lock(self) -> None:
        """Hold an exclusive lock on the run folder while this grid process runs."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".grid.lock", os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise GridBusyError(
                f"another `smallbatch grid` is running on {self.root}; wait for it or stop it"
            ) from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
