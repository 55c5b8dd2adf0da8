"""Batch Renormalization (Ioffe 2017, arXiv 1702.03275).

Algorithm 1 of the paper. Training:  x̂ = (x − μ_B)/σ_B · r + d,   y = γ·x̂ + β, with
           r = clip(σ_B/σ, 1/rmax, rmax),  d = clip((μ_B − μ)/σ, −dmax, dmax)
held constant in backprop (``stop_gradient``), σ_B = sqrt(biased Var_B + ε). The moving averages
are of the mean and of the *standard deviation* (buffers ``running_mean``, ``running_std``):
μ ← μ + α(μ_B − μ),  σ ← σ + α(σ_B − σ), α = ``momentum`` (paper: 0.01), updated after r and d
are taken. Eval: y = γ·(x − μ)/σ + β. ``running_var`` is kept equal to σ² − ε, so tools that
apply BN's eval formula (x − μ)/√(running_var + ε) to it get the same σ.

Because r and d are constants, y = (γ·r)·BN(x) + (γ·d + β): after two plain reductions for the
batch statistics the layer runs torch's batch-norm kernels with that per-channel weight and bias
(``functional.batch_stat_norm``), so it costs about as much as BN.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import StepCounter
from .functional import (
    affine_params,
    batch_moments,
    batch_stat_norm,
    fold_groups,
    unfold_groups,
)
from .groups import normalization_groups
from .registry import NormConfigError
from .schedule import check_milestones, place_milestones

AUTO_END = 0.6  # unit="auto" on a short run: the last milestone lands at this fraction of it


@dataclass(frozen=True)
class RenormRamp:
    """rmax/dmax schedule: 1/0 until ``warmup``, then linear to ``rmax`` at ``rmax_at`` and to
    ``dmax`` at ``dmax_at``.

    Milestones are steps (``unit="steps"``), fractions of the run's total steps
    (``unit="fraction"``), or ``unit="auto"`` (default): steps when the run reaches the last
    milestone (last milestone < total steps), otherwise the same shape compressed so that the
    last milestone falls at ``AUTO_END`` (0.6) of the run. The trainer supplies
    ``total_steps``; a run that does not reach a milestone given in steps is refused
    (``milestones`` raises), never silently left short of rmax/dmax.
    """

    rmax: float = 3.0
    dmax: float = 5.0
    warmup: float = 5000
    rmax_at: float = 40000
    dmax_at: float = 25000
    unit: str = "auto"

    def __post_init__(self) -> None:
        check_milestones("BRN ramp", self.unit, self._given())
        if self.rmax < 1 or self.dmax < 0:
            raise NormConfigError(
                f"BRN needs rmax >= 1 and dmax >= 0, got {self.rmax}, {self.dmax}"
            )
        if not (self.warmup <= self.rmax_at and self.warmup <= self.dmax_at):
            raise NormConfigError(
                "BRN ramp milestones must satisfy 0 <= warmup <= rmax_at and warmup <= dmax_at, "
                f"got warmup={self.warmup}, rmax_at={self.rmax_at}, dmax_at={self.dmax_at}"
            )

    def _given(self) -> dict[str, float]:
        return {"warmup": self.warmup, "rmax_at": self.rmax_at, "dmax_at": self.dmax_at}

    def milestones(self, total_steps: int | None) -> tuple[float, float, float]:
        """(warmup, rmax_at, dmax_at) in steps for a run of ``total_steps`` (None: unknown), by
        :func:`~smallbatch.norms.schedule.place_milestones`' rule (``auto`` ends at 0.6 of it)."""
        return place_milestones(
            "BRN ramp",
            self.unit,
            self._given(),
            total_steps,
            fraction_example="{unit: fraction, warmup: 0.1, rmax_at: 0.6, dmax_at: 0.4}",
            auto_end=AUTO_END,
        )

    def describe(self, total_steps: int | None) -> str:
        """One line: the milestones in steps for this run."""
        w, r, d = self.milestones(total_steps)
        return (
            f"BRN ramp ({self.unit}): rmax/dmax 1/0 until step {w:.0f}, rmax {self.rmax:g} at "
            f"{r:.0f}, dmax {self.dmax:g} at {d:.0f}"
        )

    def __call__(self, step: int, total_steps: int | None = None) -> tuple[float, float]:
        """(rmax, dmax) at training step ``step``."""
        warmup, rmax_at, dmax_at = self.milestones(total_steps)

        def ramp(start: float, end: float, at: float) -> float:
            if step >= at:
                return end
            if step <= warmup:
                return start
            return start + (end - start) * (step - warmup) / (at - warmup)

        return ramp(1.0, self.rmax, rmax_at), ramp(0.0, self.dmax, dmax_at)


class BatchRenorm2d(StepCounter, nn.Module):
    """Batch Renormalization: batch statistics corrected toward running ones by clipped r, d.

    Ghost batches (``norm_batch = b``): r, d and the statistics per group of b samples; μ and σ
    move toward the groups' average μ_B and average σ_B.

    Checkpoints of the earlier layout (a moving average of the unbiased variance in
    ``running_var``, no ``running_std``) load with σ = √(running_var + ε), which is the σ that
    layout normalized with.
    """

    supports_ghost_batch = True
    diagnostics_prefix = "brn"
    steady_state_args = {"warmup": 0, "rmax_at": 0, "dmax_at": 0}
    norm_batch: int | None = None

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.01,
        rmax: float = 3.0,
        dmax: float = 5.0,
        warmup: float = 5000,
        rmax_at: float = 40000,
        dmax_at: float = 25000,
        unit: str = "auto",
        affine: bool = True,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.ramp = RenormRamp(rmax, dmax, warmup, rmax_at, dmax_at, unit)
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_std", torch.ones(num_features))
        # σ² − ε, kept in step with running_std for tools that read BN's buffers
        self.register_buffer("running_var", torch.full((num_features,), 1.0 - eps))
        # Training forward passes so far: drives the ramp and survives checkpoints.
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("total_steps", torch.zeros((), dtype=torch.long))
        self._host_total: int | None = None
        # Diagnostics of the last training step: rmax, dmax and the raw and clipped r, d.
        self._last_rd: tuple = (1.0, 0.0, None, None, None, None)

    def set_total_steps(self, total_steps: int) -> None:
        """Total training steps of the run: places the ramp's milestones (``RenormRamp``) and
        raises :class:`NormConfigError` when milestones in steps lie beyond the run."""
        self.ramp.milestones(int(total_steps))  # refuse before training, not at step n
        self.total_steps.fill_(int(total_steps))
        self._host_total = int(total_steps)

    def schedule_summary(self) -> str:
        return self.ramp.describe(self._host_total or None)

    def current_limits(self) -> tuple[float, float]:
        """(rmax, dmax) that the next training step will use."""
        if self._host_total is None:
            self._host_total = int(self.total_steps)
        return self.ramp(self.host_step(), self._host_total or None)

    @property
    def last_rmax(self) -> float:
        """rmax of the last training step (1 before any)."""
        return self._last_rd[0]

    @property
    def last_dmax(self) -> float:
        """dmax of the last training step (0 before any)."""
        return self._last_rd[1]

    def _clipped_fraction(self, raw: int) -> float:
        if self._last_rd[raw] is None:
            return 0.0
        return float((self._last_rd[raw] != self._last_rd[raw + 2]).float().mean())

    @property
    def last_r_clipped(self) -> float:
        """Fraction of channels (× groups) whose r was clipped in the last training step."""
        return self._clipped_fraction(2)

    @property
    def last_d_clipped(self) -> float:
        """Fraction of channels (× groups) whose d was clipped in the last training step."""
        return self._clipped_fraction(3)

    def set_eval_statistics(self, mean: Tensor, var: Tensor, sqmean: Tensor) -> None:
        """Evaluate with μ = ``mean`` and σ = √(``var`` + ε) (``running_var`` kept = σ² − ε)."""
        with torch.no_grad():
            self.running_mean.copy_(mean)
            self.running_std.copy_((var + self.eps).sqrt())
            self.running_var.copy_(var)

    def diagnostics(self) -> dict[str, float]:
        """rmax and dmax of the last step and the fraction of channels whose r, d clipped."""
        return {
            "rmax": self.last_rmax,
            "dmax": self.last_dmax,
            "r_clipped": self.last_r_clipped,
            "d_clipped": self.last_d_clipped,
        }

    def _limits_and_rd(self, mean_b: Tensor, sigma_b: Tensor, shape) -> tuple[Tensor, Tensor]:
        """Clipped r, d (no gradient) from batch and running statistics; advances the step."""
        rmax, dmax = self.current_limits()
        inv_sigma = self.running_std.reciprocal().view(shape)
        r_raw = sigma_b * inv_sigma
        d_raw = (mean_b - self.running_mean.view(shape)) * inv_sigma
        r, d = r_raw.clamp(1.0 / rmax, rmax), d_raw.clamp(-dmax, dmax)
        object.__setattr__(self, "_last_rd", (rmax, dmax, r_raw, d_raw, r, d))  # hot path
        self.advance_step()
        return r, d

    def _update_running(self, mean_b: Tensor, sigma_b: Tensor) -> None:
        """μ ← μ + α(μ_B − μ), σ ← σ + α(σ_B − σ) (fp32 buffers); running_var = σ² − ε."""
        dtype = self.running_mean.dtype
        torch._foreach_lerp_(
            (self.running_mean, self.running_std),
            (mean_b.to(dtype), sigma_b.to(dtype)),
            self.momentum,
        )
        torch.mul(self.running_std, self.running_std, out=self.running_var).sub_(self.eps)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # kept for BRN checkpoints written before c81ac4c (2026-12-02), none committed here:
        # running_var was a moving average of the unbiased variance and the layer normalized
        # with σ = √(running_var + ε); carry that σ over
        std_key, var_key = prefix + "running_std", prefix + "running_var"
        if std_key not in state_dict and var_key in state_dict:
            old_var = state_dict[var_key]
            state_dict[std_key] = (old_var.float() + self.eps).sqrt().to(old_var.dtype)
            warnings.warn(
                f"{prefix or 'BatchRenorm2d'}: checkpoint from the earlier BRN layout (no "
                "running_std); converted with running_std = sqrt(running_var + eps)",
                stacklevel=2,
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._host_total = None  # re-read from the loaded buffer on next use

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            # γ·(x − μ)/σ + β: torch's eval kernel with variance σ² and ε = 0
            return F.batch_norm(
                x, self.running_mean, self.running_std.square(), self.weight, self.bias,
                False, 0.0, 0.0,
            )  # fmt: skip
        groups = normalization_groups(x, self)
        if groups > 1:
            return self._ghost_forward(x, groups)
        with torch.no_grad():
            # shifted moments (functional.batch_moments), biased variance
            mean_b, var_b = batch_moments(x)
            invstd_b = torch.rsqrt(var_b + self.eps)
            sigma_b = invstd_b.reciprocal()
            r, d = self._limits_and_rd(mean_b, sigma_b, (-1,))
            self._update_running(mean_b, sigma_b)
        weight, bias = affine_params(self, mean_b)
        return batch_stat_norm(x, weight, bias, mean_b, var_b, self.eps, r=r, d=d, invstd=invstd_b)

    def _ghost_forward(self, x: Tensor, groups: int) -> Tensor:
        # the groups side by side as channels (G·C of them): one fused kernel call
        xt = fold_groups(x, groups)
        with torch.no_grad():
            mean_b, var_b = batch_moments(xt)
            invstd_b = torch.rsqrt(var_b + self.eps)
            sigma_b = invstd_b.reciprocal()
            c = self.num_features
            r, d = self._limits_and_rd(mean_b.view(-1, c), sigma_b.view(-1, c), (1, -1))
            self._update_running(mean_b.view(-1, c).mean(0), sigma_b.view(-1, c).mean(0))
        weight, bias = affine_params(self, mean_b, groups)
        y = batch_stat_norm(
            xt, weight, bias, mean_b, var_b, self.eps, r=r.flatten(), d=d.flatten(), invstd=invstd_b
        )
        return unfold_groups(y, groups)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, ramp={self.ramp}"
