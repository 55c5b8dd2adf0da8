"""Local executor: cells as ``smallbatch fit`` subprocesses over the visible GPUs, or on CPU.

GPUs: each cell gets ``trainer.devices`` GPUs through ``CUDA_VISIBLE_DEVICES``; up to
``jobs_per_gpu`` cells share a GPU (batch-1 cells leave a GPU mostly idle). CPU: up to
``max_parallel`` cells at once. SIGTERM/SIGINT stop the grid: running cells get SIGTERM (Lightning
saves nothing half-written; ``result.json`` says "interrupted") and resume on the next run. A cell
also gets SIGTERM if the grid process dies (Linux parent-death signal), so no orphan keeps
running into a later grid run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..results import GRID_BASE_ENV, RUNNING_MARKER, write_json_atomic
from ..run.progress import PROGRESS_PREFIX
from .spec import GridSpec
from .store import CellState, CellStatus, ResultsStore, checkpoint_mtime, holder_record

PR_SET_PDEATHSIG = 1


def visible_gpus() -> list[str]:
    """GPU ids this process may use (``CUDA_VISIBLE_DEVICES`` or every CUDA device)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA means CPU
        return []


def _child_setup() -> None:  # runs in the child between fork and exec
    os.setsid()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Running:
    state: CellState
    proc: subprocess.Popen
    gpus: list[str]
    started: float = field(default_factory=time.time)
    checkpoint_mtime: float | None = None  # of last.ckpt when the run started (progress check)
    stopped_at: float | None = None  # when the executor sent SIGTERM for its time limit
    log_offset: int = 0  # how much of the cell's stdout.log the grid has read for progress


class LocalExecutor:
    """Runs a grid's cells as processes on this machine (``executor.kind: local``): over the
    visible GPUs (``jobs_per_gpu`` each), or ``max_parallel`` at a time on the CPU."""

    kind = "local"
    keys = frozenset({"max_parallel", "jobs_per_gpu", "threads_per_job", "retries", "timeout_min"})

    def __init__(self, spec: GridSpec, store: ResultsStore, wait: bool = True) -> None:
        self.spec = spec
        self.store = store
        cfg = spec.executor
        self.gpus = visible_gpus()
        self.jobs_per_gpu = int(cfg.get("jobs_per_gpu", 2))
        self.max_parallel = int(cfg.get("max_parallel", 1))
        # per-cell wall clock, as SLURM's time limit (the same key): the cell is stopped with
        # SIGTERM, saves nothing half-written, and resumes from its last checkpoint
        self.timeout_s = float(cfg["timeout_min"]) * 60 if cfg.get("timeout_min") else None
        self.load = {g: 0 for g in self.gpus}
        self.cpu_busy = 0
        self.stopping = False

    @property
    def cells_at_once(self) -> int:
        """How many single-device cells run at once: GPUs × ``jobs_per_gpu``, else
        ``max_parallel``."""
        return len(self.gpus) * self.jobs_per_gpu if self.gpus else self.max_parallel

    def _allocate(self, devices: int) -> list[str] | None:
        if not self.gpus:
            if self.cpu_busy + devices > max(self.max_parallel, devices):
                return None
            self.cpu_busy += devices
            return []
        free = sorted((n, g) for g, n in self.load.items() if n < self.jobs_per_gpu)
        if len(free) < devices:
            return None
        chosen = [g for _, g in free[:devices]]
        for g in chosen:
            self.load[g] += 1
        return chosen

    def _release(self, run: Running) -> None:
        (run.state.folder / RUNNING_MARKER).unlink(missing_ok=True)
        if self.gpus:
            for g in run.gpus:
                self.load[g] -= 1
        else:
            self.cpu_busy -= run.state.cell.devices

    def _start(self, state: CellState, gpus: list[str]) -> Running:
        env = dict(os.environ)
        env.pop("SMALLBATCH_RUN_DIR", None)
        env[GRID_BASE_ENV] = str(self.spec.base_config)  # the cell stamps what it reads
        # each cell its own W&B service: one shared with a killed attempt would still hold its
        # run ("run ID is in use") when the cell is resumed into the same W&B run
        env.pop("WANDB_SERVICE", None)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        threads = self.spec.executor.get("threads_per_job")
        if threads:  # e.g. 2 single-threaded cells on 2 cores beat 1 cell on 2 threads
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(int(threads))
        self.store.prepare_start(state, say=lambda m: print(m, flush=True))
        cmd = self.spec.command(state.cell) + self.store.resume_args(
            state, say=lambda m: print(m, flush=True)
        )
        with (
            open(state.folder / "stdout.log", "ab") as out,
            open(state.folder / "stderr.log", "ab") as err,
        ):
            out.write(f"\n$ {' '.join(cmd)}\n".encode())
            out.flush()
            offset = out.tell()  # progress lines are read from here on
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, preexec_fn=_child_setup)
        # who runs the cell now, for `smallbatch report` beside a running grid (removed when
        # the attempt ends): its result.json still holds the previous attempt's status
        write_json_atomic(state.folder / RUNNING_MARKER, {**holder_record(), "pid": proc.pid})
        mtime = checkpoint_mtime(state.folder)
        return Running(state, proc, gpus, checkpoint_mtime=mtime, log_offset=offset)

    @staticmethod
    def progress_lines(run: Running) -> list[str]:
        """The cell's new ``progress:`` lines (:mod:`smallbatch.run.progress`) since the last
        call, read from its stdout.log."""
        try:
            with open(run.state.folder / "stdout.log", "rb") as log:
                log.seek(run.log_offset)
                data = log.read()
        except OSError:
            return []
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits
        run.log_offset += len(complete)
        lines = complete.decode(errors="replace").splitlines()
        return [line.strip() for line in lines if line.startswith(PROGRESS_PREFIX)]

    def _enforce_time_limit(self, run: Running) -> None:
        """SIGTERM a cell past ``timeout_min`` (SIGKILL a minute later if it is still there)."""
        if self.timeout_s is None:
            return
        now = time.time()
        if run.stopped_at is None and now - run.started > self.timeout_s:
            limit = f"{self.timeout_s / 60:g} min"
            print(
                f"[grid] {run.state.cell.folder}: time limit of {limit} reached; stopping it "
                "(it resumes from its last checkpoint)",
                flush=True,
            )
            run.stopped_at = now
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGTERM)
        elif run.stopped_at is not None and now - run.stopped_at > 60:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGKILL)

    def _stop_all(self, running: list[Running]) -> None:
        for run in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGTERM)
        deadline = time.time() + 60
        for run in running:
            try:
                run.proc.wait(timeout=max(deadline - time.time(), 1))
            except subprocess.TimeoutExpired:
                os.killpg(run.proc.pid, signal.SIGKILL)
            (run.state.folder / RUNNING_MARKER).unlink(missing_ok=True)

    def run(
        self,
        todo: list[CellState],
        on_event: Callable[[str, CellState], None],
        on_progress: Callable[[CellState, str], None] | None = None,
    ) -> None:
        """Run ``todo`` to completion (or until SIGTERM/SIGINT); report start/finish events and
        each running cell's progress lines."""
        queue = list(todo)
        running: list[Running] = []

        def stop(signum, frame):
            self.stopping = True

        old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while (queue or running) and not self.stopping:
                while queue and not self.stopping:
                    gpus = self._allocate(queue[0].cell.devices)
                    if gpus is None:
                        break
                    state = queue.pop(0)
                    running.append(self._start(state, gpus))
                    on_event("start", state)
                for run in list(running):
                    code = run.proc.poll()
                    if on_progress is not None:
                        for line in self.progress_lines(run):
                            on_progress(run.state, line)
                    if code is None:
                        self._enforce_time_limit(run)
                        continue
                    running.remove(run)
                    self._release(run)
                    if self.stopping:
                        break
                    state = self.store.state(run.state.cell)
                    if state.status != CellStatus.DONE:
                        self.store.record_attempt(
                            run.state.cell, code, run.started, run.checkpoint_mtime
                        )
                        state = self.store.state(run.state.cell)
                    on_event("finish", state)
                    # again after the rest: resumed while it makes progress, and at most
                    # `retries` more times without progress
                    if state.status in (CellStatus.FAILED, CellStatus.RESUMABLE):
                        queue.append(state)
                time.sleep(0.2)
        finally:
            if running:
                self._stop_all(running)
            for s, handler in old.items():
                signal.signal(s, handler)
        if self.stopping:
            raise KeyboardInterrupt("grid stopped by signal; re-run it to continue")
