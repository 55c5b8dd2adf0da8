"""The callback that writes a run's ``result.json`` (schema: :mod:`smallbatch.results`)."""

from __future__ import annotations

import os
import socket
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from statistics import median
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from ..hardware import cpu_record
from ..results import (
    DEFAULT_METRIC,
    DONE_STATUSES,
    NORMALIZATION_BATCH,
    RESULT_FILE,
    Status,
    metric_keys,
    read_result,
    write_json_atomic,
)


def finished_by_another_attempt(path: Path, attempt_id: str, started: float) -> str | None:
    """When ``path`` holds a finished (or diverged) result that another attempt than
    ``attempt_id`` wrote after this one ``started`` (an orphaned attempt that wakes up after
    the grid finished the cell again): when it ended. A run never writes over such a result;
    results older than the run are replaced as before."""
    result = read_result(path.parent)
    if not isinstance(result, dict) or result.get("status") not in DONE_STATUSES:
        return None
    if result.get("attempt_id") in (None, attempt_id) or not result.get("ended_utc"):
        return None
    ended = datetime.fromisoformat(result["ended_utc"]).timestamp()
    return result["ended_utc"] if ended >= int(started) else None


def utc_now(at: float | None = None) -> str:
    """An ISO 8601 UTC time stamp (seconds)."""
    return datetime.fromtimestamp(time.time() if at is None else at, timezone.utc).isoformat(
        timespec="seconds"
    )


def machine() -> dict[str, Any]:
    """Where a run ran: host, CPU model and what it computes natively
    (:func:`smallbatch.hardware.cpu_record`: PyTorch's kernel capability, native bf16, AMX),
    torch's version and threads, the accelerator."""
    import torch

    return {
        "host": socket.gethostname(),
        **cpu_record(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def node_name() -> str:
    """This process's node: SLURM's name for it where a SLURM job runs it (several nodes may
    share a host), else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def rank_nodes(trainer: pl.Trainer) -> list[str]:
    """Each rank's node name, in rank order (every rank must call it: a collective under DDP)."""
    import torch.distributed as dist

    name = node_name()
    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        names: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(names, name)
        return [str(n) for n in names]
    return [name]


def _reason(pl_module: pl.LightningModule, status: Status) -> str | None:
    """Why a diverged run diverged (the loss or an evaluation that went non-finite)."""
    return getattr(pl_module, "diverged_reason", None) if status == Status.DIVERGED else None


class ResultWriter(Callback):
    """Writes ``<default_root_dir>/result.json`` when a fit ends, diverges, fails or is stopped.

    Fields: status, best/final/median-of-last-epochs validation accuracy, the per-epoch history,
    epochs, global step, wall time, config digest, the cell's identity (norm, norm_args,
    per-device and normalization batch, devices, seed, backbone, dataset), ``batch_free``
    (no layer uses batch statistics), and ``setting`` / ``setting_digest`` (the flat config
    without seed, name and location: ``smallbatch report`` averages runs of equal setting).
    Also puts best and final accuracy in the W&B summary.
    """

    def __init__(self, config_digest: str = "", cell: dict[str, Any] | None = None) -> None:
        self.config_digest = config_digest
        self.cell = dict(cell or {})
        self._start = time.time()
        self._written = False
        self.attempt_id = uuid.uuid4().hex  # this process's attempt at the run
        self.rank_nodes: list[str] = [node_name()]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.time()
        self._written = False
        self.rank_nodes = rank_nodes(trainer)  # every rank is here: the one collective

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        status = Status.DIVERGED if getattr(pl_module, "diverged", False) else Status.FINISHED
        if trainer.interrupted:
            status = Status.INTERRUPTED
        self.write(trainer, pl_module, status)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        interrupted = isinstance(exception, KeyboardInterrupt | SystemExit) or (
            type(exception).__name__ == "SIGTERMException"  # Lightning's SIGTERM handling
        )
        self.write(
            trainer, pl_module, Status.INTERRUPTED if interrupted else Status.FAILED, exception
        )

    def write(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        status: Status,
        error: BaseException | None = None,
    ) -> None:
        if self._written or not trainer.is_global_zero:
            return
        self._written = True
        path = Path(trainer.default_root_dir) / RESULT_FILE
        later = finished_by_another_attempt(path, self.attempt_id, self._start)
        if later is not None:
            # an orphan of an earlier grid run woke up after a later attempt finished the cell
            print(f"result.json was finished by another attempt ({later}); not overwritten")
            return
        history = list(getattr(pl_module, "val_history", []))
        eval_values = dict(getattr(pl_module, "eval_values", {}) or {})
        summary = getattr(pl_module, "diagnostics_summary", None)
        task = getattr(pl_module, "task", None)
        metric = getattr(task, "metric", DEFAULT_METRIC)
        keys = metric_keys(metric)
        now = time.time()
        result = {
            "status": status.value,
            "task": getattr(task, "name", "classification"),
            "metric": metric,
            keys["best"]: max(history) if history else None,
            keys["final"]: history[-1] if history else None,
            keys["median_last5"]: median(history[-5:]) if history else None,
            keys["history"]: history,
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "wall_time_s": round(now - self._start, 3),  # this attempt
            # the run's time through its checkpoints (a resumed run adds its earlier attempts')
            "run_time_s": round(getattr(pl_module, "elapsed_before", 0.0) + now - self._start, 3),
            "started_utc": getattr(pl_module, "first_started_utc", None) or utc_now(self._start),
            "attempt_started_utc": utc_now(self._start),
            "ended_utc": utc_now(now),
            "machine": machine(),
            keys["eval"]: eval_values or None,
            "diagnostics": summary() if callable(summary) else None,
            "end_diagnostics": dict(getattr(pl_module, "end_diagnostics", {}) or {}) or None,
            "config_digest": self.config_digest,
            "error": f"{type(error).__name__}: {error}" if error else _reason(pl_module, status),
            "eval_errors": dict(getattr(pl_module, "eval_errors", {}) or {}) or None,
            "attempt_id": self.attempt_id,
            **self.cell,
            "batch_free": getattr(pl_module, "batch_free", None),
            "devices": trainer.num_devices,
            "num_nodes": trainer.num_nodes,
            "world_size": trainer.world_size,
            "rank_nodes": self.rank_nodes,  # each rank's node name, in rank order
        }
        runs = [
            {"project": run.project, "id": run.id, "group": run.group}
            for logger in trainer.loggers
            if type(logger).__name__ == "WandbLogger"
            and (run := getattr(logger, "experiment", None)) is not None
            and getattr(run, "id", None)
        ]
        if runs:  # where `smallbatch report --wandb` finds the grid's project
            result["wandb"] = runs[0]
        write_json_atomic(path, result)
        for logger in trainer.loggers:
            summary = getattr(getattr(logger, "experiment", None), "summary", None)
            if summary is not None and history:
                summary[f"val/{metric}_best"] = result[keys["best"]]
                summary[f"val/{metric}_final"] = result[keys["final"]]
                # the dashboard's y axis (smallbatch.analysis.dashboard): 100 · (1 − metric)
                error = 100 * (1 - result[keys["final"]])
                summary["val/error_final"] = error
                summary["status"] = status
                # one history row with the normalization batch, so W&B line plots can put it on
                # the x axis and average the runs of each norm (the dashboard's main panel)
                logger.experiment.log(
                    {
                        NORMALIZATION_BATCH: self.cell.get(NORMALIZATION_BATCH),
                        "val/error_final": error,
                        "trainer/global_step": trainer.global_step,
                    }
                )
