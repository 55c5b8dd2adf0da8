"""The Task contract: what a kind of prediction (classification, segmentation) decides for the
suite's task-agnostic layers, which are the LightningModule, the final evaluations, result.json,
the report, W&B and the grid.

A task owns its model (backbone plus head), its loss, the score a training step keeps (hits out
of counted targets: images or pixels), its validation metrics (the first one is the task's
metric, higher is better, named ``metric``: result.json's ``best_val_<metric>``,
``eval_<metric>``, the report's "1 − metric" error) and the metric of the final evaluations.
The augmentation of an image together with its target is the data module's
(:meth:`smallbatch.data.SmallBatchDataModule.prepare_batch`), which a task's data provides.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchmetrics import Metric


def nonfinite_rows(output: Tensor) -> Tensor:
    """How many samples' outputs hold a NaN or Inf (a device scalar; argmax would count such a
    sample as class 0): the check of every evaluation, the fit's and the final ones."""
    return (~torch.isfinite(output)).flatten(1).any(dim=1).sum()


class NonFiniteOutputs(ArithmeticError):
    """An evaluation gave NaN/Inf outputs for some samples: it has no metric value (argmax
    would count them as class 0)."""


class Task(ABC):
    """One kind of prediction; subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    metric: ClassVar[str]  # result.json's key stem and the logged ``val/<metric>``
    metric_label: ClassVar[str]  # how tables and plots name it ("top-1 accuracy", "mIoU")
    train_score: ClassVar[str]  # what ``train/acc`` counts ("top-1 accuracy", "pixel accuracy")

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    @abstractmethod
    def build_model(self, **model_args: Any) -> nn.Module:
        """The network: ``backbone``, ``norm``, ``in_chans``, ``cifar_stem``,
        ``backbone_args``, ``norm_act`` and the norm's keyword arguments, plus the task's own
        (a segmentation head's norm)."""

    @abstractmethod
    def loss(self, output: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
        """The training loss of a batch."""

    @abstractmethod
    def hits(self, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        """(correct predictions as a device scalar, predictions counted): the training score."""

    @abstractmethod
    def val_metrics(self) -> dict[str, Metric]:
        """``val/<name>`` → torchmetrics metric; the first is the task's :attr:`metric`."""

    def score(self, forward: Callable[[Tensor], Tensor],
              batches: Iterable[tuple[Tensor, Tensor]]) -> float:  # fmt: skip
        """The task's metric of ``forward`` over (inputs, targets) batches, under ``no_grad``;
        raises :class:`NonFiniteOutputs` naming how many samples had a NaN/Inf output."""
        metric = None
        for out, y in checked_outputs(forward, batches):
            if metric is None:
                metric = next(iter(self.val_metrics().values())).to(out.device)
            metric.update(out, y)
        return float(metric.compute()) if metric is not None else 0.0


def checked_outputs(
    forward: Callable[[Tensor], Tensor], batches: Iterable[tuple[Tensor, Tensor]]
) -> Iterator[tuple[Tensor, Tensor]]:
    """(outputs, targets) of each batch under ``no_grad``; after the last, raises
    :class:`NonFiniteOutputs` if any sample's output held a NaN/Inf."""
    bad = total = 0
    with torch.no_grad():
        for x, y in batches:
            out = forward(x)
            bad += int(nonfinite_rows(out))
            total += int(y.shape[0])
            yield out, y
    if bad:
        raise NonFiniteOutputs(f"{bad} of {total} samples gave non-finite outputs")
