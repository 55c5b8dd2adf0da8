"""SLURM executor through submitit: one job array, Lightning runs DDP inside each job.

Per-job resources come from the grid file's ``executor`` (``slurm_partition``, ``nodes``,
``gpus_per_node`` = tasks per node, ``timeout_min``, ``cpus_per_task``, ``mem_gb``,
``array_parallelism``, ``signal_delay_s``, ``slurm_additional_parameters``). On timeout or
pre-emption submitit requeues the job (``checkpoint``), and the rerun resumes from the cell's
newest readable checkpoint. ``cluster: debug`` (or ``local``) runs the same code path without
SLURM, for tests. Clusters without accounting (``sacct`` refused) are polled with ``squeue``.
"""

from __future__ import annotations

import getpass
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

from ..results import GRID_BASE_ENV, read_result
from .spec import Cell, GridSpec
from .store import RUNNABLE, CellState, CellStatus, ResultsStore, checkpoint_mtime

GONE = "LEFT_QUEUE"  # a job squeue no longer lists: over; its result file says how it ended


class QueueWatcher(SlurmInfoWatcher):
    """submitit's job-state poller, asking ``squeue`` where accounting is off.

    submitit polls ``sacct``; on a cluster without accounting storage that fails on every poll
    with a warning ("Bypassing sacct error") and leaves every job UNKNOWN, so a job that died
    without writing its result would be waited on for ever. Here a job that has left squeue is
    over, and submitit then reads its result file or raises that it produced none.
    """

    def __init__(self, delay_s: int = 60) -> None:
        super().__init__(delay_s)
        self._accounting: bool | None = None

    def accounting(self) -> bool:
        if self._accounting is None:
            try:
                done = subprocess.run(
                    ["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True, timeout=60
                )
                self._accounting = done.returncode == 0
            except (OSError, subprocess.SubprocessError):
                self._accounting = False
        return self._accounting

    def _make_command(self) -> list[str] | None:
        if self.accounting():
            return super()._make_command()
        if not self._registered - self._finished:
            return None
        return ["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T|%N"]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        if self.accounting():
            return super().read_info(string)
        text = string.decode() if isinstance(string, bytes) else string
        listed = {}
        for line in text.splitlines():
            job_id, state, nodes = (line.split("|") + ["", ""])[:3]
            listed[job_id.strip()] = {"JobID": job_id.strip(), "State": state, "NodeList": nodes}
        for job_id in self._registered - self._finished:
            listed.setdefault(job_id, {"JobID": job_id, "State": GONE, "NodeList": ""})
        return listed


class CellSlurmJob(SlurmJob):
    watcher = QueueWatcher(delay_s=60)


class CellJob:
    """A picklable, requeue-able cell run: ``smallbatch fit`` in the job's own process."""

    def __init__(self, spec: GridSpec) -> None:
        self.spec = spec

    def __call__(self, cell: Cell) -> dict[str, Any] | None:
        import torch

        from ..run.cell import lightning_main

        cfg = self.spec.executor  # SLURM may not pin CPUs: use the job's share, not every core
        torch.set_num_threads(int(cfg.get("threads_per_job") or cfg.get("cpus_per_task", 8)))
        store = ResultsStore(self.spec)
        args = self.spec.cli_args(cell)
        os.environ[GRID_BASE_ENV] = str(self.spec.base_config)  # the cell stamps what it reads
        resume = store.resume_args(store.state(cell), say=lambda m: print(m, flush=True))
        if resume:
            print(f"[grid] {cell.folder}: resuming from {resume[1]}", flush=True)
        lightning_main(args + resume)
        return read_result(store.cell_dir(cell))

    def checkpoint(self, cell: Cell) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on timeout/pre-emption: requeue; the rerun resumes from the
        cell's checkpoint (last.ckpt is written at every epoch end)."""
        return submitit.helpers.DelayedSubmission(self, cell)


DEFAULT_ARRAY_PARALLELISM = 64  # SLURM array tasks at once when the grid file names none


def array_parallelism(spec: GridSpec) -> int:
    """The job array's tasks at once: the grid's ``executor.array_parallelism`` or 64."""
    return int(spec.executor.get("array_parallelism", DEFAULT_ARRAY_PARALLELISM))


def sbatch_resources(spec: GridSpec) -> list[str]:
    """The sbatch options of one cell's job, from the grid file's ``executor`` (the SLURM
    executor's keys and defaults): nodes, one task per GPU (one for a CPU job), GPUs, CPUs per
    task, time limit, memory. For ``jobs/array.sbatch``, whose own #SBATCH lines they override."""
    cfg = spec.executor
    gpus = int(cfg.get("gpus_per_node", 1))
    args = [
        f"--nodes={int(cfg.get('nodes', 1))}",
        f"--ntasks-per-node={max(gpus, 1)}",
        f"--gres=gpu:{gpus}" if gpus else "--gres=none",
        f"--cpus-per-task={int(cfg.get('cpus_per_task', 8))}",
        f"--time={int(cfg.get('timeout_min', 240))}",
    ]
    if cfg.get("mem_gb"):
        args.append(f"--mem={int(cfg['mem_gb'])}G")
    if cfg.get("slurm_partition"):
        args.append(f"--partition={cfg['slurm_partition']}")
    return args


def slurm_executor(spec: GridSpec) -> submitit.AutoExecutor:
    cfg = spec.executor
    executor = submitit.AutoExecutor(
        folder=Path(spec.run_dir) / "submitit" / "%j", cluster=cfg.get("cluster")
    )
    gpus = int(cfg.get("gpus_per_node", 1))
    params: dict[str, Any] = {
        "name": f"smallbatch-{spec.name}",
        "timeout_min": int(cfg.get("timeout_min", 240)),
        "nodes": int(cfg.get("nodes", 1)),
        "tasks_per_node": max(gpus, 1),
        "cpus_per_task": int(cfg.get("cpus_per_task", 8)),
    }
    if executor.cluster == "slurm":
        params["gpus_per_node"] = gpus
        # a rank that dies (a node lost, SIGKILL) ends its job step at once, instead of leaving
        # the other ranks blocked in a collective until their timeout
        params["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
        params["slurm_array_parallelism"] = array_parallelism(spec)
        if cfg.get("signal_delay_s") is not None:
            params["slurm_signal_delay_s"] = int(cfg["signal_delay_s"])
        if cfg.get("slurm_partition"):
            params["slurm_partition"] = cfg["slurm_partition"]
        if cfg.get("mem_gb"):
            params["mem_gb"] = int(cfg["mem_gb"])
        if cfg.get("slurm_additional_parameters"):
            params["slurm_additional_parameters"] = dict(cfg["slurm_additional_parameters"])
        executor._executor.job_class = CellSlurmJob  # squeue polling where sacct is off
    executor.update_parameters(**params)
    return executor


def submit_cells(spec: GridSpec, cells: list[Cell]) -> list[submitit.Job]:
    """Submit the cells as one job array; returns the jobs (wait with ``job.results()``)."""
    executor = slurm_executor(spec)
    jobs = executor.map_array(CellJob(spec), cells)
    if executor.cluster != "slurm":
        return jobs
    # submitit makes an array's jobs plain SlurmJob (not the executor's job class), whose
    # watcher polls sacct: rebuilt as CellSlurmJob, they are polled with squeue where
    # accounting is off, like a single job
    folder = executor._executor.folder
    return [
        job if isinstance(job, CellSlurmJob)
        else CellSlurmJob(folder=folder, job_id=job.job_id, tasks=job._tasks)
        for job in jobs
    ]  # fmt: skip


class SlurmExecutor:
    """Runs a grid's cells as SLURM job arrays through submitit (``executor.kind: slurm``):
    one array of the runnable cells; while any cell can run again (it failed within
    ``retries``, or it was stopped after writing a newer checkpoint), an array of those.
    Without ``wait`` (``grid --no-wait``) on a real cluster it returns after submitting."""

    kind = "slurm"
    keys = frozenset({
        "retries", "cluster", "slurm_partition", "gpus_per_node", "nodes", "timeout_min",
        "cpus_per_task", "mem_gb", "array_parallelism", "signal_delay_s", "threads_per_job",
        "slurm_additional_parameters", "step_time_s",
    })  # fmt: skip

    def __init__(self, spec: GridSpec, store: ResultsStore, wait: bool = True) -> None:
        self.spec, self.store, self.wait = spec, store, wait

    @property
    def cells_at_once(self) -> int:
        return array_parallelism(self.spec)

    def run(
        self,
        todo: list[CellState],
        on_event: Callable[[str, CellState], None],
        on_progress: Callable[[CellState, str], None] | None = None,
    ) -> None:
        spec, store = self.spec, self.store
        while todo:
            for state in todo:
                store.prepare_start(state)
            before = {s.cell.digest: checkpoint_mtime(s.folder) for s in todo}
            started = time.time()
            jobs = submit_cells(spec, [s.cell for s in todo])
            print(f"submitted {len(jobs)} cells as job array {jobs[0].job_id.split('_')[0]}")
            if not self.wait and spec.executor.get("cluster") not in ("debug", "local"):
                print("not waiting; re-run `smallbatch grid` later to see results or retry "
                      "failures")  # fmt: skip
                return
            for state in todo:
                on_event("start", state)
            for state, job in zip(todo, jobs, strict=True):
                try:
                    job.results()  # one per task: a cell over several nodes has several
                except Exception as exc:  # noqa: BLE001 - one failed cell must not stop the grid
                    first = (str(exc).strip().splitlines() or [""])[0]
                    print(f"  cell {state.cell.folder} failed: {type(exc).__name__}: {first}")
                if store.state(state.cell).status != CellStatus.DONE:
                    store.record_attempt(state.cell, None, started, before[state.cell.digest])
                on_event("finish", store.state(state.cell))
            todo = [store.state(s.cell) for s in todo]
            todo = [s for s in todo if s.status in RUNNABLE]
