"""The norm-layer contract (``NormLayer``), what the suite derives from it, and the shared
helpers of batch-statistics norms: clear errors, ghost batches, per-device buffers."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..naming import normalization_batch
from .registry import NormConfigError, available_norms, create_norm


class NormLayer:
    """The contract between a norm layer and the suite, as hooks with no-op defaults (in the
    manner of Lightning's ``Callback``). Mix it into an ``nn.Module``; a plugin that does not
    inherit it may define the same attributes, since the suite reads them with these defaults.

    Attributes:
        supports_ghost_batch: the layer normalizes independent groups of ``norm_batch``
            samples when the suite sets ``layer.norm_batch`` (BN, BRN, CBN, MABN);
            :func:`normalization_groups` checks the batch and counts the groups.
        ddp_local_buffers: buffer names that stay per device under DDP (never broadcast).
        needs_conv: ``swap_norms`` calls ``attach_conv(conv)`` with the Conv2d feeding it.
        compile_safe: the layer can run under ``torch.compile`` (no Python-side state).
        diagnostics_prefix: W&B keys of ``diagnostics()`` are ``norm/<prefix>_<key>``.
        steady_state_args: ``norm_args`` that put the layer in its steady regime from the first
            step (no warm-up), for benchmarks that time a few steps.
        replaces_activation: a norm-activation layer (timm's norm-act convention: EvoNorm,
            FRN + TLU). ``swap_norms`` fuses each BN→activation pair into it and builds it with
            ``apply_act=False`` where no activation follows, so its factory takes ``apply_act``.
        zero_init_before_add: the non-activation form on a residual block's main branch starts
            with γ = 0 (EvoNorm's reference ResNet: ``init_zero=True``).
    """

    supports_ghost_batch: bool = False
    ddp_local_buffers: tuple[str, ...] = ()
    needs_conv: bool = False
    compile_safe: bool = True
    diagnostics_prefix: str | None = None
    steady_state_args: dict[str, Any] = {}  # read-only class default
    replaces_activation: bool = False
    zero_init_before_add: bool = False
    norm_batch: int | None = None  # set by the suite (ghost batches); None: the whole batch

    def attach_conv(self, conv: nn.Conv2d) -> None:
        """Receive the Conv2d whose output this layer normalizes (when ``needs_conv``)."""

    def set_total_steps(self, total_steps: int) -> None:
        """Receive the run's total optimizer steps at fit start (schedules given as shares)."""

    def schedule_summary(self) -> str:
        """One line on the layer's step milestones for this run (logged at fit start), or ""."""
        return ""

    def diagnostics(self) -> dict[str, float]:
        """Scalars from the last training step, logged every ``log_every_n_steps``."""
        return {}

    def input_diagnostics(self, x: Tensor) -> dict[str, float]:
        """Scalars describing what the layer does to input ``x`` in training, computed eagerly
        at the end of a fit (also for compiled models, whose forward keeps nothing), under
        ``no_grad``; logged as ``end/<diagnostics_prefix>_<key>``."""
        return {}

    def set_eval_statistics(self, mean: Tensor, var: Tensor, sqmean: Tensor) -> None:
        """Normalize in evaluation with these per-channel statistics of the layer's input (mean,
        variance, mean square), replacing the running ones: population ("precise") statistics
        and batch-statistics evaluation (:mod:`smallbatch.run.population`) go through it. The
        default sets ``running_mean`` / ``running_var`` where the layer has them; a layer that
        normalizes with other statistics overrides it (BRN: σ; MABN: E[x²])."""
        with torch.no_grad():
            for name, value in (("running_mean", mean), ("running_var", var)):
                buffer = getattr(self, name, None)
                if isinstance(buffer, Tensor):
                    buffer.copy_(value)

    @property
    def uses_eval_statistics(self) -> bool:
        """Whether evaluation normalizes with stored statistics (``set_eval_statistics``
        applies): by default, whether the layer has a ``running_var`` buffer."""
        return isinstance(getattr(self, "running_var", None), Tensor)

    def state_bytes(self) -> int:
        """Bytes of per-device state (the ``ddp_local_buffers``)."""
        return sum(
            b.numel() * b.element_size()
            for name in self.ddp_local_buffers
            if isinstance(b := getattr(self, name, None), Tensor)
        )


class BatchStatsError(NormConfigError):
    """A batch-statistics norm received too few values per channel to compute statistics."""


class StepCounter(NormLayer):
    """Mixin for norms with a ``step`` buffer (training forward passes): a host-side copy avoids
    a device sync per layer and step; it is re-read after ``load_state_dict``. Such Python-side
    state is what makes a layer not ``compile_safe``."""

    compile_safe = False
    _host_step: int | None = None

    def host_step(self) -> int:
        if self._host_step is None:
            self._host_step = int(self.step)
        return self._host_step

    def advance_step(self) -> None:
        # a plain attribute: object.__setattr__ skips nn.Module's bookkeeping (per layer and step)
        object.__setattr__(self, "_host_step", self.host_step() + 1)
        self.step.add_(1)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._host_step = None  # re-read from the loaded buffer on next use


def layer_label(module: nn.Module) -> str:
    """The dotted name ``swap_norms`` gave the layer, or its class name."""
    return getattr(module, "layer_name", None) or type(module).__name__


def check_batch_stats(
    x: Tensor, module: nn.Module, norm_batch: int | None = None, *, batch: int | None = None
) -> None:
    """Raise :class:`BatchStatsError` when a normalization group has one value per channel
    (b·H·W == 1, b = :func:`smallbatch.naming.normalization_batch` of the layer's
    ``norm_batch`` and N). ``batch=`` is the earlier name of ``norm_batch`` (still accepted)."""
    if x.dim() != 4:
        raise NormConfigError(
            f"{layer_label(module)}: expected a 4-D (N, C, H, W) input, got shape {tuple(x.shape)}"
        )
    n, _, h, w = x.shape
    if normalization_batch(norm_batch or batch, n) * h * w == 1:
        raise BatchStatsError(
            f"{layer_label(module)} ({type(module).__name__}) got batch 1 at a 1x1 feature map in "
            "training: batch statistics need more than one value per channel. Use a per-device "
            "batch >= 2, a larger input or the CIFAR stem (--model.cifar_stem true), or a "
            f"batch-free norm ({', '.join(batch_free_norms())})."
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


@dataclass(frozen=True)
class NormTraits:
    """What the suite needs to know about a norm, probed on one layer of it."""

    batch_free: bool  # its output for a sample does not depend on the rest of the batch
    ghost_batches: bool  # it normalizes over the batch and can split it into ghost batches
    compile_safe: bool
    synchronized: bool = False  # statistics over all devices (SyncBN): one group of the batch


def probe_norm(norm: Any, **norm_args: Any) -> NormTraits:
    """Build one 64-channel layer of ``norm`` and read its traits from the contract."""
    layer = create_norm(norm, 64, **norm_args)
    return NormTraits(
        batch_free=not uses_batch_statistics(layer),
        ghost_batches=ghost_batch_capable(layer),
        compile_safe=all(getattr(m, "compile_safe", True) for m in layer.modules()),
        synchronized=any(isinstance(m, nn.SyncBatchNorm) for m in layer.modules()),
    )


def builtin_norms(**traits: bool) -> list[str]:
    """Built-in norm names in registration order, optionally filtered by ``NormTraits``
    fields (``builtin_norms(batch_free=True)``): the one list every other list derives from."""
    names = [n for n, e in available_norms(order="registration").items() if e.source == "built-in"]
    return [n for n in names if all(getattr(probe_norm(n), k) == v for k, v in traits.items())]


def batch_free_norms() -> list[str]:
    """Registered norms (built-in and plugins) that use no batch statistics."""
    out = []
    for name in available_norms(order="registration"):
        try:
            if probe_norm(name).batch_free:
                out.append(name)
        except Exception:  # noqa: BLE001 - a plugin that needs arguments is just not listed
            continue
    return out


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


def _batch_statistics_layer(m: nn.Module) -> bool:
    """A layer whose batch statistics ``set_norm_batch`` must split or refuse: it takes ghost
    batches, or it keeps a running mean."""
    return getattr(m, "supports_ghost_batch", False) or isinstance(
        getattr(m, "running_mean", None), Tensor
    )


def uses_batch_statistics(model: nn.Module) -> bool:
    """True when some layer normalizes with statistics over the batch in training (it keeps
    running statistics or takes ghost batches); False for batch-free norms (GN, LN, IN,
    EvoNorm-S0, FRN), whose output for a sample does not depend on the rest of the batch."""
    return any(
        _batch_statistics_layer(m) or isinstance(getattr(m, "running_var", None), Tensor)
        for m in model.modules()
    )


def ghost_batch_capable(model: nn.Module) -> bool:
    """True when every batch-statistics layer of ``model`` supports ghost batches (and there is
    at least one): ``set_norm_batch`` will accept it."""
    stats = [m for m in model.modules() if _batch_statistics_layer(m)]
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
        elif norm_batch and _batch_statistics_layer(module):
            unsupported.append(f"{name} ({type(module).__name__})")
    if unsupported:
        raise NormConfigError(
            f"norm_batch={norm_batch}: these batch-statistics layers do not support ghost "
            f"batches: {', '.join(unsupported[:5])}{' ...' if len(unsupported) > 5 else ''}"
        )
    return names
