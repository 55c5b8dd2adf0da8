"""After a fit: the final model evaluated with population statistics (each estimator) and with
batch statistics at the cell's normalization batch (:mod:`smallbatch.run.population`), for
``result.json``'s ``eval_<metric>`` and ``end_diagnostics``."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..data.base import prepare_batch
from ..eval_modes import DEFAULT_EVAL, EVAL_MODES, computed_modes
from ..naming import normalization_batch
from ..tasks import NonFiniteOutputs
from .population import (
    population_statistics,
    stat_layers,
    using_batch_statistics,
    using_statistics,
)


def eager(module: nn.Module) -> Callable[[Tensor], Tensor]:
    """``module``'s call without ``torch.compile`` (hooks included): a compiled backbone would
    not see the hooks these passes add."""
    return getattr(module, "_call_impl", module)


@dataclass
class _FinalWeights:
    """The final weights as :mod:`smallbatch.eval_modes` asks for them (its ``FinalWeights``):
    ``val(n)`` yields labelled evaluation batches of n samples (None: the evaluation batch)."""

    backbone: nn.Module
    statistics: dict
    forward: Callable[[Tensor], Tensor]
    val: Callable[[int | None], Iterator[tuple[Tensor, Tensor]]]
    normalization_batch: int
    score: Callable[[Callable[[Tensor], Tensor], Iterator[tuple[Tensor, Tensor]]], float]

    def with_statistics(self, estimator: str) -> float:
        with using_statistics(self.backbone, self.statistics, estimator):
            return self.score(self.forward, self.val(None))

    def with_batch_statistics(self, group: int | None = None) -> float:
        with using_batch_statistics(self.backbone):  # each test group its own statistics
            return self.score(self.forward, self.val(group or self.normalization_batch))


class FinalEvaluation(Callback):
    """Evaluates the final weights in every mode of :data:`smallbatch.eval_modes.EVAL_MODES`
    when a fit finishes (not when it diverged or was stopped) and leaves the task's metric per
    mode in ``pl_module.eval_values``; ``ema`` (the default mode) is the fit's last evaluation.
    The statistics are recomputed from ``pl_module.hparams.precise_images`` training images (0:
    no final evaluation). Runs on the device the model is on, under the trainer's precision,
    single-device (each rank its own data under DDP; rank 0 writes the result)."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        history = list(getattr(pl_module, "val_history", []))
        if trainer.interrupted or getattr(pl_module, "diverged", False) or not history:
            return
        dm = trainer.datamodule
        images = int(pl_module.hparams.get("precise_images") or 0)
        if images <= 0 or dm is None or getattr(dm, "val_set", None) is None:
            return
        start = time.time()
        acc = {DEFAULT_EVAL: history[-1]}  # the fit's own evaluation
        backbone = pl_module.model
        device, was_training = pl_module.device, backbone.training
        forward = self._forward(trainer, pl_module)
        stats, gaps = population_statistics(backbone, self._inputs(dm, device), images, forward)
        pl_module.end_diagnostics = {f"end/{k}": v for k, v in gaps.items()}
        if not stat_layers(backbone):  # batch-free: every mode is the same computation
            pl_module.eval_values = {mode: history[-1] for mode in EVAL_MODES}
            return
        b = normalization_batch(pl_module.hparams.norm_batch, int(dm.batch_size))
        val = functools.partial(self._val, dm, device=device)
        final = _FinalWeights(backbone, stats, forward, val, b, pl_module.task.score)
        errors: dict[str, str] = {}
        try:
            backbone.eval()
            for mode, evaluate in computed_modes().items():
                try:
                    acc[mode] = evaluate(final)
                except NonFiniteOutputs as exc:  # no accuracy in this mode; the others stand
                    acc[mode] = None
                    errors[mode] = f"final evaluation, mode {mode}: {exc}"
                    rank_zero_info(f"warning: {errors[mode]}: recorded without an accuracy")
        finally:
            backbone.train(was_training)
        pl_module.eval_values = acc
        pl_module.eval_errors = errors
        pl_module.end_diagnostics["end/eval_s"] = round(time.time() - start, 3)
        rank_zero_info(
            "final evaluation: "
            + ", ".join(
                f"{mode} {100 * value:.2f}%" if value is not None else f"{mode} non-finite"
                for mode, value in acc.items()
            )
            + f" ({time.time() - start:.0f}s)"
        )

    @staticmethod
    def _forward(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Callable[[Tensor], Tensor]:
        call = eager(pl_module.model)
        channels_last = bool(pl_module.hparams.get("channels_last"))

        def forward(x: Tensor) -> Tensor:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with trainer.precision_plugin.forward_context():
                return call(x)

        return forward

    def _inputs(self, dm: Any, device: torch.device) -> Iterator[Tensor]:
        """Training inputs as training sees them (augmented), in per-device batches."""
        loader = DataLoader(dm.train_set, batch_size=int(dm.batch_size), shuffle=True,
                            drop_last=True, num_workers=0)  # fmt: skip
        for x, y in loader:
            yield prepare_batch(dm, x.to(device), y.to(device), training=True)[0]

    def _val(self, dm: Any, batch: int | None, device: torch.device):
        """The evaluation set as evaluation sees it, in batches of ``batch`` (None: the data
        module's evaluation batch, in order). Groups of a normalization batch b are drawn in a
        fixed random order (seed 0): a set stored by class (an image folder) would otherwise
        give groups of one class, whose batch statistics no training batch ever had."""
        if batch is None:
            loader = DataLoader(dm.val_set, batch_size=int(dm.val_batch_size), shuffle=False)
        else:
            order = torch.Generator().manual_seed(0)
            loader = DataLoader(dm.val_set, batch_size=batch, shuffle=True, generator=order)
        for x, y in loader:
            yield prepare_batch(dm, x.to(device), y.to(device), training=False)
