"""Image classification: a backbone's logits, cross-entropy, top-1 accuracy (``acc``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from ..models import create_model
from .base import Task, checked_outputs


class ClassificationTask(Task):
    """One label per image; the metric is top-1 accuracy over images (micro average), and
    top-5 is logged beside it when there are more than 5 classes."""

    name = "classification"
    metric = "acc"
    metric_label = "top-1 accuracy"
    train_score = "top-1 accuracy"

    def build_model(self, *, backbone: str, norm: Any, in_chans: int, cifar_stem: bool,
                    backbone_args: dict[str, Any] | None, norm_act: str,
                    **norm_args: Any) -> nn.Module:  # fmt: skip
        return create_model(backbone, norm, self.num_classes, in_chans, cifar_stem, backbone_args,
                            norm_act=norm_act, **norm_args)  # fmt: skip

    def loss(self, output: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
        return F.cross_entropy(output, target, label_smoothing=label_smoothing)

    def hits(self, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        return (output.argmax(dim=-1) == target).sum(), target.numel()

    def score(self, forward: Callable[[Tensor], Tensor],
              batches: Iterable[tuple[Tensor, Tensor]]) -> float:  # fmt: skip
        """Top-1 accuracy counted exactly: correct images / images."""
        correct = total = 0
        for out, y in checked_outputs(forward, batches):
            hits, n = self.hits(out, y)
            correct, total = correct + int(hits), total + n
        return correct / max(total, 1)

    def val_metrics(self) -> dict[str, Metric]:
        metrics: dict[str, Metric] = {"acc": MulticlassAccuracy(self.num_classes, average="micro")}
        if self.num_classes > 5:
            metrics["acc5"] = MulticlassAccuracy(self.num_classes, top_k=5, average="micro")
        return metrics
