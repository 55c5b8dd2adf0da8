"""Plain progress lines for non-interactive logs (CI, SLURM, grid cells): one per epoch, and
one every few percent or minutes of training with the step, loss and time left."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

SHOWN = ("train/loss_step", "val/loss", "val/acc", "val/acc_best", "val/miou", "val/miou_best")
PROGRESS_PREFIX = "progress:"  # the grid echoes a cell's lines that start with this


@rank_zero_only
def say(line: str) -> None:
    """One line on stdout, flushed at once (a cell's stdout.log is a file, block-buffered)."""
    print(line, flush=True)


def duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class LogLineProgressBar(ProgressBar):
    """Lightning's progress bar for logs: ``epoch E/N step S train/loss_step=… val/acc=… (Ts)``
    after each validation, and ``progress: step S/T (P%) epoch E/N loss L | elapsed, ETA`` every
    ``percent`` % of the run's optimizer steps or every ``seconds``, whichever comes first. The
    ETA is the time per step of this attempt so far times the steps left; reading the loss is
    the only host sync, and only on a printed step. Being the trainer's progress bar (one
    callback, not a disabled TQDM bar beside two printers), it costs a step one hook call."""

    def __init__(self, percent: float = 5.0, seconds: float = 120.0) -> None:
        super().__init__()
        self.percent, self.seconds = percent, seconds
        self._enabled = True
        self._start = self._last = self._fit_start = time.time()
        self._first_step = 0
        self._next_step = 0

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def disable(self) -> None:  # Lightning's call on ranks other than 0
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.time()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self._enabled:
            return
        metrics = trainer.callback_metrics
        parts = [f"{k}={float(metrics[k]):.4f}" for k in SHOWN if k in metrics]
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        rank_zero_info(
            f"epoch {trainer.current_epoch + 1}/{epochs} step {trainer.global_step} "
            f"{' '.join(parts)} ({time.time() - self._fit_start:.1f}s)"
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._last = time.time()
        self._first_step = trainer.global_step  # a resumed run starts later
        self._next_step = trainer.global_step + self._every(trainer)

    def _every(self, trainer: pl.Trainer) -> int:
        total = int(trainer.estimated_stepping_batches)
        return max(int(total * self.percent / 100), 1)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        step, now = trainer.global_step, time.time()
        if step < self._next_step and now - self._last < self.seconds:
            return
        self._next_step = step + self._every(trainer)
        self._last = now
        if self._enabled:
            say(self.line(trainer, outputs, now))

    def line(self, trainer: pl.Trainer, outputs: Any, now: float) -> str:
        total = int(trainer.estimated_stepping_batches)
        step = trainer.global_step
        done = step - self._first_step
        elapsed = now - self._start
        eta = elapsed / done * (total - step) if done > 0 else None
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        loss_text = f" loss {float(loss):.4f}" if loss is not None else ""
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        return (
            f"{PROGRESS_PREFIX} step {step}/{total} ({100 * step / max(total, 1):.0f}%) "
            f"epoch {trainer.current_epoch + 1}/{epochs}{loss_text} | {duration(elapsed)} "
            f"elapsed, ETA {duration(eta) if eta is not None else '?'}"
        )
