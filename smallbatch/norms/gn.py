"""Group-wise norms (Wu & He 2018, arXiv 1803.08494), torch's ``GroupNorm`` kernel for all three.

Per sample, y = γ_c·(x − μ_g)/sqrt(σ²_g + ε) + β_c with statistics over the channels of group g
and H, W. GN: 32 groups; LN (as in the GN paper): one group over (C, H, W) with per-channel
affine; IN: one channel per group. No batch statistics: train and eval compute the same thing.
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import BatchStatsError, layer_label
from .registry import NormConfigError


class _GroupStats(nn.GroupNorm):
    """torch's GroupNorm with a clear error where a group holds one value (C/G·H·W = 1: a
    1×1 map with one channel per group), instead of torch's "Expected more than 1 value"."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4 and self.num_channels // self.num_groups * x.shape[2] * x.shape[3] == 1:
            raise BatchStatsError(
                f"{layer_label(self)} ({type(self).__name__}) got a 1x1 feature map with one "
                "channel per group: a group needs more than one value. Use fewer groups "
                "(num_groups), a larger input or the CIFAR stem (--model.cifar_stem true)"
            )
        return super().forward(x)


class GroupNorm2d(_GroupStats):
    """GroupNorm with ``num_groups`` groups (capped at the channel count)."""

    def __init__(
        self, num_features: int, num_groups: int = 32, eps: float = 1e-5, affine: bool = True
    ) -> None:
        if num_groups < 1:
            raise NormConfigError(f"GroupNorm needs num_groups >= 1, got {num_groups}")
        groups = min(num_groups, num_features)
        if num_features % groups:
            divisors = [g for g in range(1, num_features + 1) if num_features % g == 0]
            raise NormConfigError(
                f"GroupNorm: {num_groups} groups do not divide {num_features} channels; "
                f"num_groups must divide every swapped layer's channels "
                f"(for {num_features}: {divisors})"
            )
        super().__init__(groups, num_features, eps=eps, affine=affine)


class LayerNorm2d(_GroupStats):
    """LayerNorm for conv features: one group over (C, H, W), per-channel affine."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(1, num_features, eps=eps, affine=affine)


class InstanceNorm2d(_GroupStats):
    """InstanceNorm as GroupNorm with one channel per group, per-channel affine."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_features, num_features, eps=eps, affine=affine)
