"""BatchNorm (Ioffe & Szegedy 2015, arXiv 1502.03167): torch's ``BatchNorm2d`` with clear errors.

Training: y = γ·(x − μ_B)/sqrt(σ²_B + ε) + β over (N, H, W) of the current batch; eval uses the
running statistics, updated as r ← (1 − m)·r + m·stat with the unbiased batch variance.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.nn.functional import all_reduce

from .distributed import world_size
from .functional import (
    affine_params,
    batch_moments,
    batch_stat_norm,
    fold_groups,
    unfold_groups,
)
from .groups import check_batch_stats, normalization_groups, update_running_from_groups
from .registry import NormConfigError


class BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d (torch's kernel); batch 1 at 1x1 raises a clear error instead of torch's.

    Ghost batches: with ``norm_batch = b`` a training batch is normalized as independent groups
    of b samples; running statistics move toward the groups' average statistics.
    """

    supports_ghost_batch = True
    norm_batch: int | None = None

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 **kwargs) -> None:  # fmt: skip
        if not eps > 0 or (momentum is not None and not 0 <= momentum <= 1):
            raise NormConfigError(
                f"BatchNorm needs eps > 0 and 0 <= momentum <= 1 (or null), got eps={eps}, "
                f"momentum={momentum}"
            )
        super().__init__(num_features, eps=eps, momentum=momentum, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        groups = normalization_groups(x, self)
        if groups == 1 or not self.track_running_stats:
            return super().forward(x)
        # the groups side by side as channels: one fused kernel call (see functional.py)
        xt = fold_groups(x, groups)
        mean, var = batch_moments(xt)  # (G·C,)
        update_running_from_groups(self, mean, var, xt[:, 0].numel(), self.momentum)
        self.num_batches_tracked.add_(1)
        weight, bias = affine_params(self, mean, groups)
        return unfold_groups(batch_stat_norm(xt, weight, bias, mean, var, self.eps), groups)


class SyncBatchNorm(nn.BatchNorm2d):
    """SyncBatchNorm: statistics over all devices of the process group (plain BN on one device).

    Under DDP the statistics are all-reduced, on any device and backend (gloo on CPU too, where
    torch's ``nn.SyncBatchNorm`` is refused): μ = Σx / n and σ² = Σ(x − μ)² / n over every
    rank's samples, through ``torch.distributed.nn`` all-reduces that autograd differentiates
    (the backward sums the ranks' gradients of μ and σ², as torch's kernel does). Without an
    initialised process group (or with one rank) it normalizes like BatchNorm2d. A state dict
    of ``nn.SyncBatchNorm`` or ``nn.BatchNorm2d`` loads into it.
    """

    synchronized = True  # one normalization group over every device's samples

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 process_group: Any = None, **kwargs) -> None:  # fmt: skip
        super().__init__(num_features, eps=eps, momentum=momentum, **kwargs)
        self.process_group = process_group

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            check_batch_stats(x, self)
            if world_size(self.process_group) > 1:
                return _sync_batch_norm(self, x)
        return super().forward(x)


def _sync_batch_norm(layer: SyncBatchNorm, x: Tensor) -> Tensor:
    """Training-mode BN of ``x`` with statistics over every rank of the layer's group."""
    group = layer.process_group or dist.group.WORLD
    dims = [0, *range(2, x.dim())]
    out_dtype, c = x.dtype, x.shape[1]
    x = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16 statistics in fp32
    count = x.new_full((1,), float(x.numel() // c))  # this rank's values per channel
    sums = all_reduce(torch.cat([x.sum(dims), count]), group=group)
    n = sums[c].detach()
    mean = sums[:c] / n
    shape = (1, -1) + (1,) * (x.dim() - 2)
    centred = x - mean.view(shape)
    var = all_reduce((centred * centred).sum(dims), group=group) / n
    if layer.track_running_stats:
        with torch.no_grad():
            layer.num_batches_tracked.add_(1)
            m = layer.momentum
            factor = 1.0 / float(layer.num_batches_tracked) if m is None else m
            unbiased = var.detach() * (n / (n - 1).clamp(min=1))
            layer.running_mean.lerp_(mean.detach(), factor)
            layer.running_var.lerp_(unbiased, factor)
    y = centred * torch.rsqrt(var + layer.eps).view(shape)
    if layer.affine:
        y = y * layer.weight.view(shape) + layer.bias.view(shape)
    return y.to(out_dtype)
