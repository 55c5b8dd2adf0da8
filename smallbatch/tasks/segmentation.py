"""Semantic segmentation: per-pixel logits from an encoder and an FCN head
(:mod:`smallbatch.models.dense`), per-pixel cross-entropy, mean IoU over classes (``miou``:
torchmetrics' ``MulticlassJaccardIndex``, macro average, background included, as the PASCAL VOC
protocol counts it) and pixel accuracy beside it."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from ..models import create_segmentation_model, freeze_stages, load_backbone_weights
from .base import Task


class SegmentationTask(Task):
    """One label per pixel (target (N, H, W), int64); ``num_classes`` counts the background.

    Task arguments (the module's ``task_args``): ``head_norm`` (the head's norm; default the
    backbone's), ``head_norm_args`` (its arguments), ``head_channels`` (64),
    ``backbone_weights`` (a smallbatch classification checkpoint of the same backbone to start
    the encoder from), ``freeze_at`` (no gradient for the stem and the first stages, as
    detectron2's ``FREEZE_AT``; 0: none)."""

    name = "segmentation"
    metric = "miou"
    metric_label = "mIoU"
    train_score = "pixel accuracy"

    def __init__(self, num_classes: int, head_norm: Any = None, head_channels: int = 64,
                 backbone_weights: str | None = None, freeze_at: int = 0,
                 head_norm_args: dict[str, Any] | None = None) -> None:  # fmt: skip
        super().__init__(num_classes)
        self.head_norm = head_norm
        self.head_norm_args = head_norm_args
        self.head_channels = head_channels
        self.backbone_weights = backbone_weights
        self.freeze_at = freeze_at

    def build_model(self, *, backbone: str, norm: Any, in_chans: int, cifar_stem: bool,
                    backbone_args: dict[str, Any] | None, norm_act: str,
                    **norm_args: Any) -> nn.Module:  # fmt: skip
        model = create_segmentation_model(
            backbone, norm, self.num_classes, in_chans, cifar_stem, backbone_args,
            head_norm=self.head_norm, head_channels=self.head_channels, norm_act=norm_act,
            head_norm_args=self.head_norm_args, **norm_args,
        )  # fmt: skip
        if self.backbone_weights:
            load_backbone_weights(model, self.backbone_weights)
        if self.freeze_at:
            freeze_stages(model, self.freeze_at)
        return model

    def loss(self, output: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
        return F.cross_entropy(output, target, label_smoothing=label_smoothing)

    def hits(self, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
        return (output.argmax(dim=1) == target).sum(), target.numel()

    def val_metrics(self) -> dict[str, Metric]:
        return {
            "miou": MulticlassJaccardIndex(self.num_classes, average="macro"),
            "pixel_acc": MulticlassAccuracy(self.num_classes, average="micro"),
        }
