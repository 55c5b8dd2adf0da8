"""The norm-layer contract (``NormLayer``) and what every norm file shares with it: the
step-counter mixin, the batch-statistics error and a layer's name in messages. Ghost batches
and group statistics are in :mod:`.groups`, what is derived from a model's layers in
:mod:`.walk`, a norm's probed traits in :mod:`.traits`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .registry import NormConfigError


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

    Optional, not defaulted here: ``batch_free`` (True: the layer's ``running_*`` buffers are
    fixed, nothing comes from the batch, as in FrozenBN; unset, a layer with running
    statistics is probed by behaviour, :func:`smallbatch.norms.walk.depends_on_batch`).
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
