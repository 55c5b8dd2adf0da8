"""``result.json``: one small record per run, written atomically by rank 0 only."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

RESULT_FILE = "result.json"
STATUSES = ("finished", "diverged", "failed", "interrupted")


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON via a temporary file in the same folder and ``os.replace``: readers see the
    old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_result(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's result, or None when it has none (or an unreadable one)."""
    try:
        return json.loads((Path(run_dir) / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None


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

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.time()
        self._written = False

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        status = "diverged" if getattr(pl_module, "diverged", False) else "finished"
        if trainer.interrupted:
            status = "interrupted"
        self.write(trainer, pl_module, status)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        interrupted = isinstance(exception, KeyboardInterrupt | SystemExit) or (
            type(exception).__name__ == "SIGTERMException"  # Lightning's SIGTERM handling
        )
        self.write(trainer, pl_module, "interrupted" if interrupted else "failed", exception)

    def write(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        status: str,
        error: BaseException | None = None,
    ) -> None:
        if self._written or not trainer.is_global_zero:
            return
        self._written = True
        history = list(getattr(pl_module, "val_history", []))
        result = {
            "status": status,
            "best_val_acc": max(history) if history else None,
            "final_val_acc": history[-1] if history else None,
            "median_last5_val_acc": median(history[-5:]) if history else None,
            "val_acc_history": history,
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "wall_time_s": round(time.time() - self._start, 3),
            "config_digest": self.config_digest,
            "error": f"{type(error).__name__}: {error}" if error else None,
            **self.cell,
            "batch_free": getattr(pl_module, "batch_free", None),
            "devices": trainer.num_devices,
            "num_nodes": trainer.num_nodes,
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
        write_json_atomic(Path(trainer.default_root_dir) / RESULT_FILE, result)
        for logger in trainer.loggers:
            summary = getattr(getattr(logger, "experiment", None), "summary", None)
            if summary is not None and history:
                summary["val/acc_best"] = result["best_val_acc"]
                summary["val/acc_final"] = result["final_val_acc"]
                # the dashboard's y axis (smallbatch.dashboard): final top-1 error in %
                error = 100 * (1 - result["final_val_acc"])
                summary["val/error_final"] = error
                summary["status"] = status
                # one history row with the normalization batch, so W&B line plots can put it on
                # the x axis and average the runs of each norm (the dashboard's main panel)
                logger.experiment.log(
                    {
                        "norm_batch": self.cell.get("norm_batch"),
                        "val/error_final": error,
                        "trainer/global_step": trainer.global_step,
                    }
                )
