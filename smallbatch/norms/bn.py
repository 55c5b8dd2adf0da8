"""BatchNorm (Ioffe & Szegedy 2015, arXiv 1502.03167): torch's ``BatchNorm2d`` with clear errors.

Training: y = γ·(x − μ_B)/sqrt(σ²_B + ε) + β over (N, H, W) of the current batch; eval uses the
running statistics, updated as r ← (1 − m)·r + m·stat with the unbiased batch variance.
"""

from __future__ import annotations

from torch import Tensor, nn

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


class SyncBatchNorm(nn.SyncBatchNorm):
    """SyncBatchNorm: statistics over all devices of the process group (plain BN on one device).

    torch supports the synchronised path on CUDA (and XPU/HPU) only; on CPU, or without an
    initialised process group, it normalizes like BatchNorm2d.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            check_batch_stats(x, self)
        return super().forward(x)
