"""Norm layers and their registry. ``create_norm("brn", 64)`` builds one layer by name."""

from .base import (
    BatchStatsError,
    check_batch_stats,
    ghost_batch_capable,
    local_buffer_names,
    set_norm_batch,
    uses_batch_statistics,
)
from .bn import BatchNorm2d, SyncBatchNorm
from .brn import BatchRenorm2d, RenormRamp
from .cbn import CrossIterationBatchNorm2d
from .functional import batch_stat_norm, moments
from .gn import GroupNorm2d, InstanceNorm2d, LayerNorm2d
from .registry import (
    ENTRY_POINT_GROUP,
    NormConfigError,
    NormEntry,
    available_norms,
    create_norm,
    import_object,
    load_plugins,
    register_norm,
    resolve_norm,
    unregister_norm,
)
from .timm_extras import evonorm_s0, frn

_BUILTINS = {
    "bn": (BatchNorm2d, "BatchNorm: per-device batch statistics (torch kernel)"),
    "brn": (BatchRenorm2d, "Batch Renormalization: batch stats corrected by clipped r, d"),
    "cbn": (CrossIterationBatchNorm2d, "Cross-Iteration BN: k-iteration Taylor-compensated stats"),
    "gn": (GroupNorm2d, "GroupNorm: per-sample stats over channel groups (32)"),
    "ln": (LayerNorm2d, "LayerNorm for conv nets: one group over (C, H, W)"),
    "in": (InstanceNorm2d, "InstanceNorm: one channel per group"),
    "syncbn": (SyncBatchNorm, "SyncBatchNorm: batch stats over all devices (CUDA DDP)"),
    "evonorm_s0": (evonorm_s0, "timm EvoNorm-S0: batch-free, sample-wise, built-in activation"),
    "frn": (frn, "timm Filter Response Norm + TLU: batch-free, per-channel"),
}
for _name, (_factory, _description) in _BUILTINS.items():
    register_norm(_name, _factory, description=_description, source="built-in")

__all__ = [
    "ENTRY_POINT_GROUP",
    "BatchNorm2d",
    "BatchRenorm2d",
    "BatchStatsError",
    "CrossIterationBatchNorm2d",
    "GroupNorm2d",
    "InstanceNorm2d",
    "LayerNorm2d",
    "NormConfigError",
    "NormEntry",
    "RenormRamp",
    "SyncBatchNorm",
    "available_norms",
    "batch_stat_norm",
    "check_batch_stats",
    "create_norm",
    "evonorm_s0",
    "frn",
    "ghost_batch_capable",
    "import_object",
    "load_plugins",
    "local_buffer_names",
    "moments",
    "register_norm",
    "resolve_norm",
    "set_norm_batch",
    "unregister_norm",
    "uses_batch_statistics",
]
