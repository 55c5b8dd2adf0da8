"""Results store: ``<run_root>/<grid>/`` with ``grid.json``, ``cells.json`` and one folder per
cell (``cells/<label>-<digest>/``) holding config, logs, checkpoints, ``result.json`` and
``attempts.json``. Every JSON file is replaced atomically, so a killed grid corrupts nothing.

Attempts: every run of a cell that ends without a result is recorded with its exit code, its
last error line and whether it made progress (wrote a newer ``last.ckpt``). Only attempts
*without* progress count against ``retries``: a cell that is killed now and then but keeps
advancing is resumed until it finishes.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import time
import zipfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from ..results import (
    BASE_STAMP,
    DONE_STATUSES,
    RESULT_FILE,
    InvalidResult,
    base_config_record,
    load_result_file,
    read_result,
    write_json_atomic,
)
from .spec import Cell, GridSpec

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
ATTEMPTS_FILE = "attempts.json"
LOCK_FILE = ".grid.lock"  # who holds the grid's lock (the lock itself is on the folder)
UNREADABLE = "unreadable-"  # prefix of a checkpoint set aside because it does not read back


class CellStatus(str, Enum):
    """Where a grid cell stands (``RUNNING`` only in the progress display)."""

    DONE = "done"  # it has a result: finished or diverged
    NEW = "new"  # never run
    FAILED = "failed"  # its last attempt ended without a result and without progress
    RESUMABLE = "resumable"  # it has a checkpoint to resume from
    EXHAUSTED = "exhausted"  # failed more than ``retries`` times without progress
    STALE = "stale"  # started under a base config that has changed since
    RUNNING = "running"

    def __str__(self) -> str:
        return self.value


RUNNABLE = (CellStatus.NEW, CellStatus.FAILED, CellStatus.RESUMABLE, CellStatus.STALE)


def holder_record() -> dict[str, Any]:
    """This grid process: PID, host and start time (the lock holder's record)."""
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip


class GridBusyError(RuntimeError):
    """Another grid process holds this run folder."""


@dataclass
class CellState:
    cell: Cell
    folder: Path
    status: CellStatus
    attempts: int  # attempts without progress (a killed grid does not count against its cells)
    result: dict[str, Any] | None
    invalid_result: str | None = None  # why result.json could not be used (it was moved aside)
    last_error: str | None = None  # the last attempt's error line

    @property
    def stale(self) -> bool:
        """Its result or checkpoint came from a base config that has changed since."""
        return self.status == CellStatus.STALE

    @property
    def last_checkpoint(self) -> Path | None:
        path = self.folder / LAST_CHECKPOINT
        return path if path.exists() else None


def set_aside(path: Path, tag: str) -> Path:
    """Rename ``path`` to ``<name>.<tag>-<time>`` beside it (kept, never read again)."""
    aside = path.with_name(f"{path.name}.{tag}-{time.strftime('%Y%m%d-%H%M%S')}")
    path.replace(aside)
    return aside


def set_aside_unreadable(checkpoint: Path) -> Path:
    """Rename a checkpoint that does not read back to ``unreadable-<time>-<name>`` beside it
    (kept for inspection; never resumed: both scans skip that prefix)."""
    aside = checkpoint.with_name(f"{UNREADABLE}{time.strftime('%Y%m%d-%H%M%S')}-{checkpoint.name}")
    checkpoint.replace(aside)
    return aside


def checkpoint_mtime(folder: Path) -> float | None:
    """When the cell in ``folder`` last wrote ``last.ckpt`` (None: it has none)."""
    try:
        return (folder / LAST_CHECKPOINT).stat().st_mtime
    except OSError:
        return None


def _no_progress_count(recorded: dict[str, Any]) -> int:
    try:
        return int(recorded.get("attempts", 0))
    except (TypeError, ValueError):
        return 0


def attempts_problem(data: Any) -> str | None:
    """Why ``data`` is not an attempts record ({"attempts": int, "history": [{...}, ...]}),
    or None."""
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    count = data.get("attempts", 0)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        return f"'attempts' must be an integer >= 0, got {count!r}"
    history = data.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        return f"'history' must be a list of objects, got {history!r}"
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a checkpoint to resume from (torch's zip format: truncated or
    corrupt files fail here), or None when it reads back whole."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return f"corrupt member {bad}" if bad else None


def last_error_line(folder: Path, returncode: int | None) -> str:
    """The line that says why a cell's run ended: result.json's error, else the last line of
    its stderr.log that names an error, else how the process ended."""
    result = read_result(folder)
    with_error = result.get("error") if isinstance(result, dict) else None
    if with_error:
        return str(with_error).splitlines()[0]
    try:
        lines = (folder / "stderr.log").read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in reversed(lines[-200:]):
        text = line.strip()
        if text.startswith("error:") or ("Error" in text.split(":")[0] and ":" in text):
            return text
    if returncode is not None and returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit code {returncode} with no error message (see {folder / 'stderr.log'})"


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
                "running": holder_record(),
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

    def _attempts_file(self, cell: Cell) -> dict[str, Any]:
        """The cell's attempts record, or {} when it has none or one of the wrong shape
        (:func:`attempts_problem` says why; it is set aside before the cell runs again)."""
        try:
            data = json.loads((self.cell_dir(cell) / ATTEMPTS_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return data if attempts_problem(data) is None else {}

    def invalid_attempts(self, cell: Cell) -> str | None:
        """Why the cell's attempts.json cannot be used (None: it is fine or absent)."""
        try:
            data = json.loads((self.cell_dir(cell) / ATTEMPTS_FILE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            return f"unreadable: {str(exc).splitlines()[0]}"
        return attempts_problem(data)

    def attempts(self, cell: Cell) -> int:
        """Attempts without progress (what ``retries`` bounds)."""
        return _no_progress_count(self._attempts_file(cell))

    def record_attempt(
        self,
        cell: Cell,
        returncode: int | None = None,
        started: float | None = None,
        checkpoint_before: float | None = None,
    ) -> int:
        """Record a run of ``cell`` that ended without a result; returns the attempts without
        progress. Progress: ``last.ckpt`` is newer than it was when the run started."""
        folder = self.cell_dir(cell)
        data = self._attempts_file(cell)
        mtime = checkpoint_mtime(folder)
        progress = mtime is not None and (checkpoint_before is None or mtime > checkpoint_before)
        history = list(data.get("history", []))[-20:]
        history.append(
            {
                "started": started,
                "ended": time.time(),
                "returncode": returncode,
                "progress": progress,
                "error": last_error_line(folder, returncode),
            }
        )
        n = _no_progress_count(data) + (0 if progress else 1)
        write_json_atomic(folder / ATTEMPTS_FILE, {"attempts": n, "history": history})
        return n

    def resume_args(self, state: CellState, say=print, dry_run: bool = False) -> list[str]:
        """``--ckpt_path`` for ``state``'s cell (:meth:`resume_checkpoint`), or nothing: the one
        path by which the local executor, SLURM, ``--emit`` and ``--dry-run`` resume a cell."""
        checkpoint = self.resume_checkpoint(state, say, dry_run)
        return ["--ckpt_path", str(checkpoint)] if checkpoint else []

    def resume_checkpoint(self, state: CellState, say=print, dry_run: bool = False) -> Path | None:
        """The checkpoint to resume ``state``'s cell from: ``last.ckpt`` when it reads back
        whole; an unreadable one is moved aside (kept, renamed, reported) and the newest
        readable other checkpoint of the cell is used, else the cell starts afresh. A stale
        cell resumes nothing (its checkpoints are set aside before it starts). ``dry_run``:
        only say what would happen; nothing is moved."""
        folder = state.folder / "checkpoints"
        last = state.folder / LAST_CHECKPOINT
        if state.stale or not last.exists():
            return None
        others = sorted(
            (p for p in folder.glob("*.ckpt") if p != last and not p.name.startswith(UNREADABLE)),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for path in [last, *others]:
            problem = checkpoint_problem(path)
            if problem is None:
                if path != last:
                    say(f"[grid] {state.cell.folder}: resuming from {path.name} instead")
                return path
            where = f"[grid] {state.cell.folder}: {path.name}"
            if dry_run:
                say(f"{where} is unreadable ({problem}); it would be moved aside")
                continue
            aside = set_aside_unreadable(path)
            say(f"{where} is unreadable ({problem}); moved to {aside}")
        say(f"[grid] {state.cell.folder}: no readable checkpoint; starting afresh")
        return None

    @staticmethod
    def read_cell_result(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
        """(the cell's result, None), or (None, why its result.json cannot be used)."""
        path = folder / RESULT_FILE
        if not path.exists():
            return None, None
        try:
            return load_result_file(path), None
        except InvalidResult as exc:
            return None, str(exc).splitlines()[0]
        except OSError as exc:
            return None, f"unreadable: {exc}"

    @staticmethod
    def set_aside_invalid_result(state: CellState) -> Path | None:
        """Keep an invalid result.json as ``result.json.invalid-<time>`` before the cell runs
        again (its run would overwrite it)."""
        path = state.folder / RESULT_FILE
        if state.invalid_result is None or not path.exists():
            return None
        return set_aside(path, "invalid")

    def _base_digest(self) -> str:
        """The base config's digest as the file is now (read each time: an edit while the grid
        runs makes the cells that ran before it stale, and those after it are stamped so)."""
        return self.spec.base_digest()

    def stamp_base(self, cell: Cell) -> None:
        """Record the base config a cell is (re)started under, read as it is now, just before
        the cell reads it (a base config edited while the grid runs is stamped as edited)."""
        write_json_atomic(
            self.cell_dir(cell) / BASE_STAMP, base_config_record(self.spec.base_config)
        )

    def _stale(self, folder: Path) -> bool:
        """The cell was started under another base config (cells from before stamps: no)."""
        try:
            stamp = json.loads((folder / BASE_STAMP).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(stamp, dict) and stamp.get("digest") != self._base_digest()

    @staticmethod
    def set_aside_stale(state: CellState) -> list[Path]:
        """Keep what a stale cell's earlier run left (result, checkpoints, attempts, W&B run
        id) under ``<name>.stale-<time>``, so that the cell starts afresh under the new base
        config: nothing of the old run is resumed or reported."""
        names = (RESULT_FILE, "checkpoints", ATTEMPTS_FILE, "wandb_run_id")
        paths = [state.folder / name for name in names]
        return [set_aside(path, "stale") for path in paths if path.exists()]

    def prepare_start(self, state: CellState, say=print) -> None:
        """Before a cell (re)starts: set aside an invalid result.json, or everything a stale
        run left, and stamp the base config it now runs under."""
        state.folder.mkdir(parents=True, exist_ok=True)
        for path in sorted((state.folder / "checkpoints").glob("*.ckpt")):
            # a checkpoint truncated by a full disk (best-*.ckpt and the like) is kept aside,
            # never resumed; last.ckpt is resume_checkpoint's to check (it falls back and says so)
            skip = path.name.startswith(UNREADABLE) or path == state.folder / LAST_CHECKPOINT
            problem = None if skip else checkpoint_problem(path)
            if problem is not None:
                aside = set_aside_unreadable(path)
                say(f"[grid] {state.cell.folder}: {path.name} is unreadable ({problem}); "
                    f"moved to {aside.name}")  # fmt: skip
        problem = self.invalid_attempts(state.cell)
        if problem is not None:
            aside = set_aside(state.folder / ATTEMPTS_FILE, "invalid")
            say(f"[grid] {state.cell.folder}: invalid attempts.json ({problem}) kept as "
                f"{aside.name}; its attempts start again from 0")  # fmt: skip
        aside = self.set_aside_invalid_result(state)
        if aside is not None:
            say(f"[grid] {state.cell.folder}: invalid result.json ({state.invalid_result}) "
                f"kept as {aside.name}; running the cell again")  # fmt: skip
        if state.stale:
            moved = ", ".join(p.name for p in self.set_aside_stale(state)) or "nothing"
            say(f"[grid] {state.cell.folder}: the base config changed since it ran; kept "
                f"{moved}; running the cell afresh")  # fmt: skip
        self.stamp_base(state.cell)

    def state(self, cell: Cell) -> CellState:
        folder = self.cell_dir(cell)
        if self._stale(folder):
            return CellState(cell, folder, CellStatus.STALE, 0, None)
        result, invalid = self.read_cell_result(folder)
        recorded = self._attempts_file(cell)
        attempts = _no_progress_count(recorded)
        history = recorded.get("history") or [{}]
        last_error = history[-1].get("error") if isinstance(history[-1], dict) else None
        retries = int(self.spec.executor.get("retries", 1))
        if result and result.get("status") in DONE_STATUSES:
            status = CellStatus.DONE
        elif attempts > retries:
            status = CellStatus.EXHAUSTED
        elif checkpoint_mtime(folder) is not None:
            status = CellStatus.RESUMABLE
        else:
            status = CellStatus.FAILED if attempts else CellStatus.NEW
        return CellState(cell, folder, status, attempts, result, invalid, last_error)

    def states(self) -> list[CellState]:
        return [self.state(c) for c in self.spec.cells()]

    def lock(self) -> None:
        """Hold an exclusive lock on the run folder while this grid process runs. The lock is
        on the folder itself (``flock`` of its descriptor), so deleting ``.grid.lock`` frees
        nothing; that file and grid.json's ``running`` name the holder (PID, host, start)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise GridBusyError(
                f"another `smallbatch grid` is running on {self.root} ({self.holder()}); wait "
                "for it or stop it"
            ) from None
        self._lock_fd = fd
        write_json_atomic(self.root / LOCK_FILE, holder_record())

    def holder(self) -> str:
        """Who holds the lock, as recorded in ``.grid.lock`` or else in grid.json."""
        for path, key in ((self.root / LOCK_FILE, None), (self.root / "grid.json", "running")):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            data = data.get(key) if key and isinstance(data, dict) else data
            if isinstance(data, dict) and data.get("pid"):
                return f"PID {data['pid']} on {data.get('host')}, since {data.get('started')}"
        return "its PID is not recorded"

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
