"""SLURM executor through submitit: one job array, Lightning runs DDP inside each job.

Per-job resources come from the grid file's ``executor`` (``slurm_partition``, ``nodes``,
``gpus_per_node`` = tasks per node, ``timeout_min``, ``cpus_per_task``, ``mem_gb``,
``array_parallelism``, ``slurm_additional_parameters``). On timeout or pre-emption submitit
requeues the job (``checkpoint``), and the rerun resumes from the cell's ``last.ckpt``.
``cluster: debug`` (or ``local``) runs the same code path without SLURM, for tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import submitit

from ..results import read_result
from .spec import Cell, GridSpec


class CellJob:
    """A picklable, requeue-able cell run: ``smallbatch fit`` in the job's own process."""

    def __init__(self, spec: GridSpec) -> None:
        self.spec = spec

    def __call__(self, cell: Cell) -> dict[str, Any] | None:
        from ..lightning_cli import lightning_main

        folder = self.spec.run_dir / "cells" / cell.folder
        args = self.spec.cli_args(cell)
        last = folder / "checkpoints" / "last.ckpt"
        if last.exists():
            args += ["--ckpt_path", str(last)]
        lightning_main(args)
        return read_result(folder)

    def checkpoint(self, cell: Cell) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on timeout/pre-emption: requeue; the rerun resumes from last.ckpt."""
        return submitit.helpers.DelayedSubmission(self, cell)


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
        params["slurm_array_parallelism"] = int(cfg.get("array_parallelism", 64))
        if cfg.get("slurm_partition"):
            params["slurm_partition"] = cfg["slurm_partition"]
        if cfg.get("mem_gb"):
            params["mem_gb"] = int(cfg["mem_gb"])
        if cfg.get("slurm_additional_parameters"):
            params["slurm_additional_parameters"] = dict(cfg["slurm_additional_parameters"])
    executor.update_parameters(**params)
    return executor


def submit_cells(spec: GridSpec, cells: list[Cell]) -> list[submitit.Job]:
    """Submit the cells as one job array; returns the jobs (wait with ``job.result()``)."""
    executor = slurm_executor(spec)
    return executor.map_array(CellJob(spec), cells)
