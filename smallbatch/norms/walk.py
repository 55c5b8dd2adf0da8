"""What the suite reads from, or sets on, a model's layers: which layers keep running or batch
statistics, ghost batches for all of them (``set_norm_batch``), the buffers that stay per
device under DDP, the layers' diagnostics and which layers cannot be compiled."""

from __future__ import annotations

import copy
from statistics import fmean

import torch
from torch import Tensor, nn

from .registry import NormConfigError


def has_running_stats(m: nn.Module) -> bool:
    """A layer with running mean and variance tensors (torch's BN and the BN-like layers)."""
    return isinstance(getattr(m, "running_mean", None), Tensor) and isinstance(
        getattr(m, "running_var", None), Tensor
    )


def is_batch_statistics_layer(m: nn.Module) -> bool:
    """A layer that normalizes with statistics over the batch in training, the suite's one test
    of it: it takes ghost batches; or it declares ``batch_free`` (the contract's answer: True
    for a frozen BN); or it keeps a running mean or variance (EvoNorm-B0 keeps only the latter)
    and its training output for a sample moves with the rest of the batch
    (:func:`depends_on_batch`: torchvision's ``FrozenBatchNorm2d`` keeps both buffers and does
    not). ``set_norm_batch`` must split or refuse such a layer."""
    if getattr(m, "supports_ghost_batch", False):
        return True
    declared = getattr(m, "batch_free", None)
    if isinstance(declared, bool):
        return not declared
    if not any(
        isinstance(getattr(m, key, None), Tensor) for key in ("running_mean", "running_var")
    ):
        return False
    return depends_on_batch(m)


_PROBED = "_smallbatch_depends_on_batch"  # a layer's probed answer, kept on the instance


def depends_on_batch(m: nn.Module) -> bool:
    """Whether a copy of layer ``m`` in training mode gives sample 0 a different output alone
    than beside three other samples (4 × C × 3 × 3 random inputs, C from its running
    statistics); a layer the probe cannot run counts as batch-dependent. Probed once per
    layer; ``m`` itself is not run."""
    cached = getattr(m, _PROBED, None)
    if isinstance(cached, bool):
        return cached
    stats = next(getattr(m, k) for k in ("running_mean", "running_var")
                 if isinstance(getattr(m, k, None), Tensor))  # fmt: skip
    try:
        layer = copy.deepcopy(m).train()
        x = torch.randn(4, stats.numel(), 3, 3, generator=torch.Generator().manual_seed(0))
        x = x.to(stats.device)
        with torch.no_grad():
            depends = not torch.allclose(layer(x)[:1], layer(x[:1]), atol=1e-5, rtol=1e-4)
    except Exception:  # noqa: BLE001 - an unprobeable layer: assume it uses the batch
        depends = True
    object.__setattr__(m, _PROBED, depends)
    return depends


def uses_batch_statistics(model: nn.Module) -> bool:
    """True when some layer is a batch-statistics layer; False for batch-free norms (GN, LN,
    IN, EvoNorm-S0, FRN), whose output for a sample does not depend on the rest of the batch."""
    return any(is_batch_statistics_layer(m) for m in model.modules())


def ghost_batch_capable(model: nn.Module) -> bool:
    """True when every batch-statistics layer of ``model`` supports ghost batches (and there is
    at least one): ``set_norm_batch`` will accept it."""
    stats = [m for m in model.modules() if is_batch_statistics_layer(m)]
    return bool(stats) and all(getattr(m, "supports_ghost_batch", False) for m in stats)


def set_norm_batch(model: nn.Module, norm_batch: int | None) -> list[str]:
    """Set ghost-batch size ``norm_batch`` on every layer that supports it; returns their names.

    Raises when a batch-statistics layer (one with running statistics) cannot do ghost batches,
    naming it, since its statistics would silently cover the whole per-device batch.
    """
    if norm_batch is not None and norm_batch < 1:
        raise NormConfigError(f"norm_batch must be >= 1, got {norm_batch}")
    names, unsupported = [], []
    for name, module in model.named_modules():
        if getattr(module, "supports_ghost_batch", False):
            module.norm_batch = norm_batch
            names.append(name)
        elif norm_batch and is_batch_statistics_layer(module):
            unsupported.append(f"{name} ({type(module).__name__})")
    if unsupported:
        raise NormConfigError(
            f"norm_batch={norm_batch}: these batch-statistics layers do not support ghost "
            f"batches: {', '.join(unsupported[:5])}{' ...' if len(unsupported) > 5 else ''}"
        )
    return names


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


def running_statistics(model: nn.Module) -> list[Tensor]:
    """Every floating ``running_mean`` / ``running_var`` buffer of ``model`` that DDP does not
    keep per device (the EMA estimates the evaluation reads)."""
    local = set(local_buffer_names(model))
    return [
        buf
        for name, buf in model.named_buffers()
        if name.rsplit(".", 1)[-1] in ("running_mean", "running_var")
        and buf.is_floating_point()
        and name not in local
    ]


def layer_diagnostics(model: nn.Module) -> dict[str, float]:
    """Every layer's ``diagnostics()``, averaged over the layers of each class, as
    ``norm/<diagnostics_prefix>_<key>`` (no extra compute: from the last training step)."""
    per_key: dict[str, list[float]] = {}
    for m in model.modules():
        hook = getattr(m, "diagnostics", None)
        if not callable(hook):
            continue
        prefix = getattr(m, "diagnostics_prefix", None) or type(m).__name__.lower()
        for key, value in hook().items():
            per_key.setdefault(f"norm/{prefix}_{key}", []).append(float(value))
    return {k: fmean(v) for k, v in per_key.items()}


def compile_unsafe_layers(model: nn.Module) -> list[str]:
    """Names of layers that declare ``compile_safe = False``."""
    return [
        f"{n} ({type(m).__name__})"
        for n, m in model.named_modules()
        if not getattr(m, "compile_safe", True)
    ]
