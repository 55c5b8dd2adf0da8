"""Shared contract of batch-statistics norms: clear errors and which buffers stay per device."""

from __future__ import annotations

from torch import Tensor, nn

from .registry import NormConfigError

BATCH_FREE_NORMS = "gn, ln, in, evonorm_s0, frn"


class BatchStatsError(NormConfigError):
    """A batch-statistics norm received too few values per channel to compute statistics."""


def layer_label(module: nn.Module) -> str:
    """The dotted name ``swap_norms`` gave the layer, or its class name."""
    return getattr(module, "layer_name", None) or type(module).__name__


def check_batch_stats(x: Tensor, module: nn.Module) -> None:
    """Raise :class:`BatchStatsError` when ``x`` has one value per channel (N·H·W == 1)."""
    if x.dim() != 4:
        raise NormConfigError(
            f"{layer_label(module)}: expected a 4-D (N, C, H, W) input, got shape {tuple(x.shape)}"
        )
    n, _, h, w = x.shape
    if n * h * w == 1:
        raise BatchStatsError(
            f"{layer_label(module)} ({type(module).__name__}) got batch 1 at a 1x1 feature map in "
            "training: batch statistics need more than one value per channel. Use a per-device "
            "batch >= 2, a larger input or the CIFAR stem (--model.cifar_stem true), or a "
            f"batch-free norm ({BATCH_FREE_NORMS})."
        )


def local_buffer_names(model: nn.Module) -> list[str]:
    """Fully qualified names of buffers that must stay per device under DDP.

    A norm lists them in its class attribute ``ddp_local_buffers``; DDP must neither broadcast
    them from rank 0 nor sync them (pass the list to
    ``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model``).
    """
    names = []
    for prefix, module in model.named_modules():
        for buf in getattr(module, "ddp_local_buffers", ()):
            if getattr(module, buf, None) is not None:
                names.append(f"{prefix}.{buf}" if prefix else buf)
    return names
