"""EvoNorm-B0 (Liu et al. 2020, arXiv 2004.02967): timm's ``EvoNorm2dB0`` with ghost batches.

    y = x / max(√(σ²_B + ε), v·x + √(σ²_I + ε)) · γ + β

σ²_B is the batch variance per channel over (N, H, W) (running variance in eval, moved at rate
``momentum`` toward the unbiased batch variance), σ²_I the per-sample variance over (H, W), v a
learned per-channel vector; the max and v·x make it an activation as well: ``swap_norms``
removes the ReLU after it, and where no activation follows (before a residual add) builds the
non-activation form, y = γ·x + β with γ = 0 on a block's main branch (EvoNorm's reference ResNet,
tensorflow/tpu ``resnet_model.py``: ``nonlinearity=False, init_zero=True``; timm's
``apply_act=False``). Batch-dependent through σ²_B, so it takes ghost batches: each group of
``norm_batch`` samples uses its own σ²_B and the running variance moves toward the groups'
average. Variances are computed in two passes (timm's ``x.var``), exact where |mean| >> std.
"""

from __future__ import annotations

import torch
from timm.layers import EvoNorm2dB0
from torch import Tensor

from .base import NormLayer
from .groups import ghost_groups, normalization_groups


class EvoNormB0(NormLayer, EvoNorm2dB0):
    """timm EvoNorm-B0 (batch variance, instance std, built-in activation), ghost batches."""

    supports_ghost_batch = True
    replaces_activation = True
    zero_init_before_add = True
    diagnostics_prefix = "evonorm_b0"
    norm_batch: int | None = None

    def __init__(
        self, num_features: int, eps: float = 1e-3, momentum: float = 0.1, apply_act: bool = True
    ) -> None:
        super().__init__(num_features, apply_act=apply_act, momentum=momentum, eps=eps)

    @property
    def uses_eval_statistics(self) -> bool:
        """Only the activation form normalizes (with the running σ²_B in evaluation)."""
        return self.v is not None

    def input_diagnostics(self, x: Tensor) -> dict[str, float]:
        """``batch_share``: the fraction of activations whose divisor is the batch std (the left
        branch of the max) rather than v·x + instance std; 1 would make the layer BN-like."""
        if self.v is None:
            return {}
        groups = ghost_groups(x, self.norm_batch, self)
        var_b, var_i = self.batch_and_instance_variances(x.detach(), groups)
        xf = x.detach().to(var_i.dtype)
        left = var_b.add(self.eps).sqrt().repeat_interleave(x.shape[0] // groups, dim=0)
        right = xf * self.v.view(1, -1, 1, 1) + var_i.add(self.eps).sqrt()[..., None, None]
        left = left[..., None, None].expand_as(right)
        return {"batch_share": float((left >= right).float().mean())}

    def batch_and_instance_variances(self, x: Tensor, groups: int) -> tuple[Tensor, Tensor]:
        """(σ²_B per group, shape (G, C); σ²_I per sample, shape (N, C)), biased, in fp32 or
        better (float64 input stays float64). Each from per-sample moments over (H, W) computed
        in two passes (x − mean, then squares: exact also where |mean| >> std; cheaper than
        ``var_mean`` on CPU), σ²_B by the law of total variance: the mean of the σ²_I plus the
        spread of the sample means."""
        n, c = x.shape[:2]
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        mean_i = xf.mean(dim=(2, 3), keepdim=True)
        var_i = (xf - mean_i).square().mean(dim=(2, 3))  # (N, C)
        mean_ig = mean_i.view(groups, -1, c)
        spread = (mean_ig - mean_ig.mean(dim=1, keepdim=True)).square()
        return (var_i.view(groups, -1, c) + spread).mean(dim=1), var_i

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.v is None:
            return super().forward(x)
        groups = normalization_groups(x, self)
        n = x.shape[0]
        var_b, var_i = self.batch_and_instance_variances(x, groups)
        count = x[: n // groups, 0].numel()  # values per channel in a group
        with torch.no_grad():
            unbiased = var_b.mean(dim=0) * (count / max(count - 1, 1))
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
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
