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

import torch
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
        n, c = x.shape[:2]
        # every variance from the per-sample moments over (H, W): σ²_I = E_i[x²] − E_i[x]²,
        # σ²_B of a group = E_g[x²] − E_g[x]² (two reductions over x instead of four)
        xf = x.float()
        mean_i, sqmean_i = xf.mean(dim=(2, 3)), xf.square().mean(dim=(2, 3))  # (N, C)
        mean_g = mean_i.view(groups, -1, c).mean(dim=1)
        var_b = (sqmean_i.view(groups, -1, c).mean(dim=1) - mean_g.square()).clamp_min(0)
        count = x[: n // groups, 0].numel()  # values per channel in a group
        with torch.no_grad():
            unbiased = var_b.mean(dim=0) * (count / max(count - 1, 1))
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        var_i = (sqmean_i - mean_i.square()).clamp_min(0)
        left = var_b.add(self.eps).sqrt().repeat_interleave(n // groups, dim=0)  # (N, C)
        shape = (1, -1, 1, 1)
        right = torch.addcmul(
            var_i.add(self.eps).sqrt().to(x.dtype)[..., None, None],
            x,
            self.v.to(x.dtype).view(shape),
        )
        y = x / torch.maximum(left.to(x.dtype)[..., None, None], right)
        return torch.addcmul(
            self.bias.to(x.dtype).view(shape), y, self.weight.to(x.dtype).view(shape)
        )
