"""Ghost batches and per-group statistics, the shared arithmetic of batch-statistics norms:
how many normalization groups a batch forms, the check that each has more than one value per
channel, the moments of each group, the running statistics they update, and evaluation with
running statistics."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..naming import normalization_batch
from .base import BatchStatsError, layer_label
from .registry import NormConfigError
from .traits import batch_free_norms


def check_batch_stats(x: Tensor, module: nn.Module, norm_batch: int | None = None) -> None:
    """Raise :class:`BatchStatsError` when a normalization group has one value per channel
    (b·H·W == 1, b = :func:`smallbatch.naming.normalization_batch` of the layer's
    ``norm_batch`` and N)."""
    if x.dim() != 4:
        raise NormConfigError(
            f"{layer_label(module)}: expected a 4-D (N, C, H, W) input, got shape {tuple(x.shape)}"
        )
    n, _, h, w = x.shape
    if normalization_batch(norm_batch, n) * h * w == 1:
        raise BatchStatsError(
            f"{layer_label(module)} ({type(module).__name__}) got batch 1 at a 1x1 feature map in "
            "training: batch statistics need more than one value per channel. Use a per-device "
            "batch >= 2, a larger input or the CIFAR stem (--model.cifar_stem true), or a "
            f"batch-free norm ({', '.join(batch_free_norms())})."
        )


def normalize_with_running_stats(module: nn.Module, x: Tensor) -> Tensor:
    """Eval-mode BN: y = γ·(x − running_mean)/√(running_var + ε) + β (torch's kernel)."""
    return F.batch_norm(
        x, module.running_mean, module.running_var, module.weight, module.bias, False, 0.0,
        module.eps,
    )  # fmt: skip


def ghost_groups(x: Tensor, norm_batch: int | None, module: nn.Module) -> int:
    """Number of independent normalization groups for a ghost-batch layer (1 = whole batch).

    With ``norm_batch = b`` a training batch of N = G·b samples is normalized as G groups of b
    consecutive samples: the statistics G devices with b samples each would see under DDP.
    """
    n = x.shape[0]
    b = normalization_batch(norm_batch, n)
    if b == n:
        return 1
    if n % b:
        raise NormConfigError(
            f"{layer_label(module)}: batch {n} is not a multiple of norm_batch {norm_batch}; "
            "ghost batches need per-device batch = (number of groups) x norm_batch"
        )
    return n // b


def normalization_groups(x: Tensor, module: nn.Module) -> int:
    """What every batch-statistics layer does first in training: check that each normalization
    group has more than one value per channel (:func:`check_batch_stats`, naming the layer) and
    return the number of ghost groups of ``module.norm_batch`` samples (:func:`ghost_groups`)."""
    norm_batch = getattr(module, "norm_batch", None)
    check_batch_stats(x, module, norm_batch)
    return ghost_groups(x, norm_batch, module)


def grouped_moments(x: Tensor, groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """(x viewed as (G, N/G, C, H, W), per-group mean, per-group biased variance), stats shaped
    (G, 1, C, 1, 1) so they broadcast against the view."""
    xg = x.view(groups, x.shape[0] // groups, *x.shape[1:])
    var, mean = torch.var_mean(xg, dim=(1, 3, 4), correction=0, keepdim=True)
    return xg, mean, var


def update_running_from_groups(
    module: nn.Module, mean: Tensor, var: Tensor, count: int, momentum: float
) -> None:
    """Move running stats toward the average over groups of (mean, unbiased variance).

    ``mean``/``var`` are the biased batch statistics of ``count`` values per channel and group,
    shaped (C,) for one group, or (G, C) or (G, 1, C, 1, 1) (``grouped_moments``) for G groups.
    """
    c = module.running_mean.numel()
    with torch.no_grad():  # (no graph, so no detach needed)
        if mean.numel() > c:
            mean, var = mean.reshape(-1, c).mean(0), var.reshape(-1, c).mean(0)
        elif mean.dim() > 1:  # one group: views, no reduction (BRN and CBN call this every step)
            mean, var = mean.view(c), var.view(c)
        dtype = module.running_mean.dtype  # fp32 also when the statistics are bf16
        var = var.to(dtype) * (count / max(count - 1, 1))
        running = (module.running_mean, module.running_var)
        torch._foreach_lerp_(running, (mean.to(dtype), var), momentum)
