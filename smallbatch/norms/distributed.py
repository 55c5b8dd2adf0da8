"""Running statistics under DDP: each rank's, averaged over ranks after every step.

torch's DDP keeps rank 0's buffers (broadcast before each forward), so a D-device run's EMA of
the batch statistics follows one device's batches. Averaged after each step instead, the EMA
moves toward the mean of the D devices' statistics, r ← (1 − m)·r + m·mean_d(stat_d), which is
what ghost batches emulating the D devices in one process compute (``update_running_from_groups``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size(group: dist.ProcessGroup | None = None) -> int:
    """The size of ``group`` (default: every rank); 1 where no process group is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group or dist.group.WORLD)


def average_over_ranks(tensors: list[Tensor]) -> None:
    """Each tensor ← its mean over the ranks, in place (one all-reduce of their concatenation)."""
    if not tensors or world_size() == 1:
        return
    with torch.no_grad():
        flat = torch.cat([t.reshape(-1) for t in tensors])  # (one dtype: the buffers')
        dist.all_reduce(flat)
        flat /= world_size()
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
