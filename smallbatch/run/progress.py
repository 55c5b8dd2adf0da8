"""Plain one-line-per-epoch progress for non-interactive logs (CI, SLURM, grid workers)."""

from __future__ import annotations

import time

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

SHOWN = ("train/loss_step", "val/loss", "val/acc", "val/acc_best")


class EpochLinePrinter(Callback):
    """Prints ``epoch E/N step S train/loss_epoch=… val/acc=… (Ts)`` after each validation."""

    def __init__(self) -> None:
        self._start = time.time()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.time()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        parts = [f"{k}={float(metrics[k]):.4f}" for k in SHOWN if k in metrics]
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        rank_zero_info(
            f"epoch {trainer.current_epoch + 1}/{epochs} step {trainer.global_step} "
            f"{' '.join(parts)} ({time.time() - self._start:.1f}s)"
        )
