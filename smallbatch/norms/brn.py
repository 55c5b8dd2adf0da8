"""Batch Renormalization (Ioffe 2017, arXiv 1702.03275).

Training:  x̂ = (x − μ_B)/σ_B · r + d,   y = γ·x̂ + β, with
           r = clip(σ_B/σ, 1/rmax, rmax),  d = clip((μ_B − μ)/σ, −dmax, dmax)
held constant in backprop (``stop_gradient``), σ_B = sqrt(Var_B + ε), σ = sqrt(running_var + ε).
Running μ and variance move at rate ``momentum`` (paper: 0.01). Eval: y = γ·(x − μ)/σ + β.

Because r and d are constants, y = (γ·r)·BN(x) + (γ·d + β): after two plain reductions for the
batch statistics the layer runs torch's batch-norm kernels with that per-channel weight and bias
(``functional.batch_stat_norm``), so it costs about as much as BN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .base import (
    StepCounter,
    check_batch_stats,
    ghost_groups,
    grouped_moments,
    normalize_with_running_stats,
    update_running_from_groups,
)
from .functional import batch_stat_norm, moments
from .registry import NormConfigError

UNITS = ("steps", "fraction")


@dataclass(frozen=True)
class RenormRamp:
    """rmax/dmax schedule: 1/0 until ``warmup``, then linear to ``rmax`` at ``rmax_at`` and to
    ``dmax`` at ``dmax_at``. Milestones are steps (``unit="steps"``) or fractions of the run's
    total steps (``unit="fraction"``; the trainer supplies ``total_steps``)."""

    rmax: float = 3.0
    dmax: float = 5.0
    warmup: float = 5000
    rmax_at: float = 40000
    dmax_at: float = 25000
    unit: str = "steps"

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise NormConfigError(f"BRN ramp unit {self.unit!r} is not one of {UNITS}")
        if self.rmax < 1 or self.dmax < 0:
            raise NormConfigError(
                f"BRN needs rmax >= 1 and dmax >= 0, got {self.rmax}, {self.dmax}"
            )
        if not (0 <= self.warmup <= self.rmax_at and self.warmup <= self.dmax_at):
            raise NormConfigError(
                "BRN ramp milestones must satisfy 0 <= warmup <= rmax_at and warmup <= dmax_at, "
                f"got warmup={self.warmup}, rmax_at={self.rmax_at}, dmax_at={self.dmax_at}"
            )
        if self.unit == "fraction" and max(self.rmax_at, self.dmax_at) > 1:
            raise NormConfigError("BRN ramp with unit='fraction' needs milestones in [0, 1]")

    def milestones(self, total_steps: int | None) -> tuple[float, float, float]:
        """(warmup, rmax_at, dmax_at) in steps."""
        if self.unit == "steps":
            return self.warmup, self.rmax_at, self.dmax_at
        if not total_steps or total_steps <= 0:
            raise NormConfigError(
                "BRN ramp with unit='fraction' needs the run's total steps; the LightningModule "
                "sets it at fit start, or call set_total_steps(n) yourself"
            )
        return tuple(m * total_steps for m in (self.warmup, self.rmax_at, self.dmax_at))

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

    Ghost batches (``norm_batch = b``): r, d and the statistics per group of b samples; running
    statistics move toward the groups' average.
    """

    supports_ghost_batch = True
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
        unit: str = "steps",
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
        self.register_buffer("running_var", torch.ones(num_features))
        # Training forward passes so far: drives the ramp and survives checkpoints.
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("total_steps", torch.zeros((), dtype=torch.long))
        self._host_total: int | None = None
        # Diagnostics of the last training step: rmax, dmax and the raw and clipped r, d.
        self._last_rd: tuple = (1.0, 0.0, None, None, None, None)

    def set_total_steps(self, total_steps: int) -> None:
        """Total training steps of the run, for ramps given as fractions."""
        self.total_steps.fill_(int(total_steps))
        self._host_total = int(total_steps)

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

    def _limits_and_rd(self, mean_b: Tensor, sigma_b: Tensor, shape) -> tuple[Tensor, Tensor]:
        """Clipped r, d (no gradient) from batch and running statistics; advances the step."""
        rmax, dmax = self.current_limits()
        inv_sigma = torch.rsqrt(self.running_var + self.eps).view(shape)
        r_raw = sigma_b * inv_sigma
        d_raw = (mean_b - self.running_mean.view(shape)) * inv_sigma
        r, d = r_raw.clamp(1.0 / rmax, rmax), d_raw.clamp(-dmax, dmax)
        object.__setattr__(self, "_last_rd", (rmax, dmax, r_raw, d_raw, r, d))  # hot path
        self.advance_step()
        return r, d

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return normalize_with_running_stats(self, x)
        check_batch_stats(x, self, self.norm_batch)
        groups = ghost_groups(x, self.norm_batch, self)
        if groups > 1:
            return self._ghost_forward(x, groups)
        with torch.no_grad():
            # E[x²] − E[x]²: two plain reductions (see functional.moments); the biased batch
            # variance normalizes, the unbiased one moves running_var, as in torch's BN
            mean_b, sqmean_b = moments(x, (0, 2, 3))
            var_b = torch.addcmul(sqmean_b, mean_b, mean_b, value=-1).clamp_min_(0)
            invstd_b = torch.rsqrt(var_b + self.eps)
            r, d = self._limits_and_rd(mean_b, invstd_b.reciprocal(), (-1,))
            update_running_from_groups(self, mean_b, var_b, x.numel() // x.shape[1], self.momentum)
        weight = self.weight if self.weight is not None else torch.ones_like(mean_b)
        bias = self.bias if self.bias is not None else torch.zeros_like(mean_b)
        return batch_stat_norm(x, weight, bias, mean_b, var_b, self.eps, r=r, d=d, invstd=invstd_b)

    def _ghost_forward(self, x: Tensor, groups: int) -> Tensor:
        xg, mean_b, var_b = grouped_moments(x, groups)  # (G, 1, C, 1, 1), with gradient
        sigma_b = (var_b + self.eps).sqrt()
        with torch.no_grad():
            r, d = self._limits_and_rd(mean_b, sigma_b, (1, 1, -1, 1, 1))
        count = xg.shape[1] * x.shape[2] * x.shape[3]
        update_running_from_groups(self, mean_b, var_b, count, self.momentum)
        y = (xg - mean_b) / sigma_b * r + d
        if self.weight is not None:
            y = y * self.weight.view(1, 1, -1, 1, 1) + self.bias.view(1, 1, -1, 1, 1)
        return y.view_as(x)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, ramp={self.ramp}"
