"""Batch-Channel Normalization (Qiao et al. 2019, arXiv 1903.10520, section 4).

BCN first normalizes each channel with batch-level statistics, then applies GroupNorm:

    x̂ = γ_b · (x − μ̂_c)/√(σ̂²_c + ε) + β_b          (batch-channel step)
    y = GN(x̂) with per-channel γ_g, β_g              (channel step, ``num_groups`` groups)

With ``estimated=True`` (the paper's micro-batch variant) μ̂, σ̂² are *estimates* kept as
buffers and moved toward each training batch's statistics at rate ``momentum`` without carrying
gradient, so the layer also works at batch 1. With ``estimated=False`` the batch step uses the
current batch's statistics in training (BN) and the estimates in eval.

Plugin contract used here (``smallbatch.norms.NormLayer``): constructor
``(num_features, **kwargs)``; state in registered buffers (checkpointed); ghost batches:
``supports_ghost_batch`` + ``norm_batch``; a diagnostic of its own (``diagnostics()``, logged as
``norm/bcn_estimate_gap``); ``compile_safe`` declared; clear errors through
``smallbatch.norms.normalization_groups`` (``check_batch_stats`` and the ghost groups in one call).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smallbatch.norms import (
    BatchStatsError,
    NormConfigError,
    NormLayer,
    ghost_groups,
    grouped_moments,
    layer_label,
    normalization_groups,
    update_running_from_groups,
)

__all__ = ["BatchChannelNorm2d"]


class BatchChannelNorm2d(NormLayer, nn.Module):
    """Batch-Channel Normalization: estimated batch statistics per channel, then GroupNorm."""

    supports_ghost_batch = True
    compile_safe = True  # no Python-side state: buffers only
    diagnostics_prefix = "bcn"
    norm_batch: int | None = None

    def __init__(
        self,
        num_features: int,
        num_groups: int = 32,
        momentum: float = 0.01,
        estimated: bool = True,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        groups = min(num_groups, num_features)
        if num_features % groups:
            raise NormConfigError(f"BCN: {num_groups} groups do not divide {num_features} channels")
        self.num_features, self.momentum, self.estimated, self.eps = (
            num_features,
            momentum,
            estimated,
            eps,
        )
        self.batch_weight = nn.Parameter(torch.ones(num_features))
        self.batch_bias = nn.Parameter(torch.zeros(num_features))
        self.group_norm = nn.GroupNorm(groups, num_features, eps=eps)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self._last_gap: Tensor | None = None  # a tensor: read (synced) only when logged

    def diagnostics(self) -> dict[str, float]:
        """``estimate_gap``: mean |μ_B − μ̂|/σ̂ over channels in the last training step, how far
        the batch's statistics were from the estimates that normalized it."""
        return {} if self._last_gap is None else {"estimate_gap": float(self._last_gap)}

    def _batch_step(self, x: Tensor) -> Tensor:
        if not self.training:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.batch_weight, self.batch_bias,
                False, 0.0, self.eps,
            )  # fmt: skip
        if self.estimated:
            # statistics of this batch (per ghost group) only update the estimates
            groups = ghost_groups(x, self.norm_batch, self)
            _, mean, var = grouped_moments(x.detach(), groups)
            sigma = (self.running_var + self.eps).sqrt().view(1, 1, -1, 1, 1)
            gap = ((mean - self.running_mean.view(1, 1, -1, 1, 1)) / sigma).abs().mean()
            self._last_gap = gap
            count = x.shape[0] // groups * x.shape[2] * x.shape[3]
            update_running_from_groups(self, mean, var, count, self.momentum)
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.batch_weight, self.batch_bias,
                False, 0.0, self.eps,
            )  # fmt: skip
        groups = normalization_groups(x, self)
        if groups > 1:
            xg, mean, var = grouped_moments(x, groups)
            count = xg.shape[1] * x.shape[2] * x.shape[3]
            update_running_from_groups(self, mean, var, count, self.momentum)
            shape = (1, 1, -1, 1, 1)
            y = (xg - mean) * torch.rsqrt(var + self.eps)
            y = y * self.batch_weight.view(shape) + self.batch_bias.view(shape)
            return y.view_as(x)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.batch_weight, self.batch_bias,
            True, self.momentum, self.eps,
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        per_group = self.num_features // self.group_norm.num_groups
        if self.training and x.dim() == 4 and per_group * x.shape[2] * x.shape[3] == 1:
            # what `smallbatch check-norm bcn` asked for: a clear error naming the layer
            raise BatchStatsError(
                f"{layer_label(self)} (BatchChannelNorm2d): a 1x1 map with one channel per group "
                "leaves GroupNorm one value per group; use fewer groups or a larger input"
            )
        return self.group_norm(self._batch_step(x))

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, groups={self.group_norm.num_groups}, "
            f"momentum={self.momentum}, estimated={self.estimated}"
        )
