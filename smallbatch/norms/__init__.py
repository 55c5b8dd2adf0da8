"""Norm layers and their registry. ``create_norm("brn", 64)`` builds one layer by name.

What a plugin norm builds on is exported here: the contract (``NormLayer``, from ``base``), the
ghost-batch and group-statistics helpers (``groups``), the model walks (``walk``) and traits."""

from .base import BatchStatsError, NormLayer, layer_label
from .bn import BatchNorm2d, SyncBatchNorm
from .brn import BatchRenorm2d, RenormRamp
from .cbn import CrossIterationBatchNorm2d
from .evonorm_b0 import EvoNormB0
from .frozen_bn import FrozenBatchNorm2d
from .functional import batch_stat_norm, moments
from .gn import GroupNorm2d, InstanceNorm2d, LayerNorm2d
from .gn_ws import GroupNormWS, StandardizedWeight
from .groups import (
    check_batch_stats,
    ghost_groups,
    grouped_moments,
    normalization_groups,
    update_running_from_groups,
)
from .mabn import MovingAverageBatchNorm2d
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
from .schedule import MILESTONE_UNITS, check_milestones, place_milestones
from .timm_extras import EvoNormS0, FilterResponseNormTLU, evonorm_s0, frn
from .traits import NormTraits, batch_free_norms, builtin_norms, probe_norm
from .walk import (
    compile_unsafe_layers,
    ghost_batch_capable,
    layer_diagnostics,
    local_buffer_names,
    running_statistics,
    set_norm_batch,
    uses_batch_statistics,
)

# The one list of built-in norms: registration order is the display order of tables, plots and
# `smallbatch norms`; every other list (batch-free, ghost-capable, compile-safe) is derived from
# the layers themselves (``base.builtin_norms``, ``base.probe_norm``).
_BUILTINS = {
    "bn": (BatchNorm2d, "BatchNorm: per-device batch statistics (torch kernel)"),
    "syncbn": (SyncBatchNorm, "SyncBatchNorm: batch stats over all devices (DDP; CPU via gloo)"),
    "brn": (BatchRenorm2d, "Batch Renormalization: batch stats corrected by clipped r, d"),
    "cbn": (CrossIterationBatchNorm2d, "Cross-Iteration BN: k-iteration Taylor-compensated stats"),
    "mabn": (MovingAverageBatchNorm2d, "Moving Average BN: averaged fwd/bwd stats, no mean"),
    "evonorm_b0": (EvoNormB0, "timm EvoNorm-B0: batch variance, instance std, activation"),
    "gn": (GroupNorm2d, "GroupNorm: per-sample stats over channel groups (32)"),
    "gn_ws": (GroupNormWS, "GroupNorm + Weight Standardization of the feeding conv"),
    "ln": (LayerNorm2d, "LayerNorm for conv nets: one group over (C, H, W)"),
    "in": (InstanceNorm2d, "InstanceNorm: one channel per group"),
    "evonorm_s0": (evonorm_s0, "timm EvoNorm-S0: batch-free, sample-wise, built-in activation"),
    "frn": (frn, "timm Filter Response Norm + TLU: batch-free, per-channel"),
    "frozen_bn": (FrozenBatchNorm2d, "Frozen BN: a trained BN's statistics and affine, fixed"),
}
for _name, (_factory, _description) in _BUILTINS.items():
    register_norm(_name, _factory, description=_description, source="built-in")

__all__ = [
    "ENTRY_POINT_GROUP",
    "MILESTONE_UNITS",
    "BatchNorm2d",
    "BatchRenorm2d",
    "FrozenBatchNorm2d",
    "BatchStatsError",
    "CrossIterationBatchNorm2d",
    "EvoNormB0",
    "EvoNormS0",
    "FilterResponseNormTLU",
    "GroupNorm2d",
    "GroupNormWS",
    "InstanceNorm2d",
    "LayerNorm2d",
    "MovingAverageBatchNorm2d",
    "NormConfigError",
    "NormEntry",
    "NormLayer",
    "NormTraits",
    "RenormRamp",
    "StandardizedWeight",
    "SyncBatchNorm",
    "available_norms",
    "batch_free_norms",
    "batch_stat_norm",
    "builtin_norms",
    "check_batch_stats",
    "check_milestones",
    "compile_unsafe_layers",
    "create_norm",
    "evonorm_s0",
    "frn",
    "ghost_batch_capable",
    "import_object",
    "layer_diagnostics",
    "load_plugins",
    "local_buffer_names",
    "moments",
    "normalization_groups",
    "place_milestones",
    "probe_norm",
    "register_norm",
    "running_statistics",
    "resolve_norm",
    "set_norm_batch",
    "unregister_norm",
    "uses_batch_statistics",
    "ghost_groups",
    "grouped_moments",
    "layer_label",
    "update_running_from_groups",
]
