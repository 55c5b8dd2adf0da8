"""Frozen BatchNorm (detectron2's ``FrozenBN``; torchvision's ``FrozenBatchNorm2d``): a trained
BN's statistics and affine as fixed buffers, y = (x − μ)·γ/sqrt(σ² + ε) + β in training and in
evaluation alike. Nothing is learned or estimated, so the layer is batch-free."""

from __future__ import annotations

from torch import nn
from torchvision.ops import FrozenBatchNorm2d as _TorchvisionFrozenBN

from .registry import NormConfigError


class FrozenBatchNorm2d(_TorchvisionFrozenBN):
    """torchvision's ``FrozenBatchNorm2d`` (buffers ``weight``, ``bias``, ``running_mean``,
    ``running_var``; a BN state dict loads into it, ``num_batches_tracked`` dropped), declared
    batch-free: ghost batches, population statistics and batch-statistics evaluation leave it
    alone. Built fresh it is the identity up to ε (μ = 0, σ² = 1, γ = 1, β = 0): load a trained
    BN's buffers (a pretrained backbone) or use :meth:`from_batch_norm`."""

    batch_free = True  # the suite's contract (norms/walk.py): no statistics from the batch

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        if not eps > 0:
            raise NormConfigError(f"FrozenBatchNorm needs eps > 0, got eps={eps}")
        super().__init__(num_features, eps=eps)

    @classmethod
    def from_batch_norm(cls, bn: nn.Module) -> FrozenBatchNorm2d:
        """A frozen copy of a trained BN layer: its running mean and variance, its γ and β
        (1 and 0 where it has no affine), its ε."""
        frozen = cls(bn.num_features, eps=bn.eps)
        frozen.running_mean.copy_(bn.running_mean.detach())
        frozen.running_var.copy_(bn.running_var.detach())
        if getattr(bn, "weight", None) is not None:
            frozen.weight.copy_(bn.weight.detach())
        if getattr(bn, "bias", None) is not None:
            frozen.bias.copy_(bn.bias.detach())
        return frozen.to(bn.running_mean.device)
