"""EvoNorm-B0 (Liu et al. 2020, arXiv 2004.02967): timm's ``EvoNorm2dB0`` with ghost batches.

    y = x / max(√(σ²_B + ε), v·x + √(σ²_I + ε)) · γ + β

σ²_B is the batch variance per channel over (N, H, W) (running variance in eval, moved at rate
``momentum`` toward the unbiased batch variance), σ²_I the per-sample variance over (H, W), v a
learned per-channel vector; the max and v·x make it an activation as well (the backbone's ReLU
after it stays, as for EvoNorm-S0). Batch-dependent through σ²_B, so it takes ghost batches: each
group of ``norm_batch`` samples uses its own σ²_B and the running variance moves toward the
groups' average.
"""

from __future__ import annotations

from timm.layers import EvoNorm2dB0
from torch import Tensor

from .base import NormLayer, check_batch_stats, ghost_groups


class EvoNormB0(NormLayer, EvoNorm2dB0):
    """timm EvoNorm-B0 (batch variance, instance std, built-in activation), ghost batches."""

    supports_ghost_batch = True
    norm_batch: int | None = None

    def __init__(
        self, num_features: int, eps: float = 1e-3, momentum: float = 0.1, apply_act: bool = True
    ) -> None:
        super().__init__(num_features, apply_act=apply_act, momentum=momentum, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.v is None:
            return super().forward(x)
        check_batch_stats(x, self, self.norm_batch)
        groups = ghost_groups(x, self.norm_batch, self)
        if groups == 1:
            return super().forward(x)
        xg = x.view(groups, x.shape[0] // groups, *x.shape[1:])
        shape = (1, 1, -1, 1, 1)
        var = xg.float().var(dim=(1, 3, 4), unbiased=False, keepdim=True)  # σ²_B per group
        n = xg.shape[1] * x.shape[2] * x.shape[3]
        self.running_var.lerp_(
            var.detach().mean(dim=0).view(-1) * (n / max(n - 1, 1)), self.momentum
        )
        left = var.add(self.eps).sqrt().to(x.dtype)
        inst = xg.float().var(dim=(3, 4), unbiased=False, keepdim=True).add(self.eps).sqrt()
        right = xg * self.v.to(x.dtype).view(shape) + inst.to(x.dtype)
        y = xg / left.expand_as(xg).maximum(right)
        y = y * self.weight.to(x.dtype).view(shape) + self.bias.to(x.dtype).view(shape)
        return y.view_as(x)
