"""Moving Average Batch Normalization (Yan et al., ICLR 2020, openreview SkgGjRVKDS).

MABN stabilizes both batch statistics of BN's training: the forward one, χ = E[x²], and the
backward one, ψ = E[g·z], by averaging each over the last ``window`` normalization batches
(simple moving average, SMA), and drops the mean statistic altogether: the conv that feeds the
layer is weight-centralized (W ← W − mean(W) per output channel), which keeps its output near
zero mean. With the SMAs χ̄ and ψ̄ (each over this batch and up to ``window − 1`` earlier ones)::

    z = x / √(χ̄ + ε),   r = clip(√(χ̄ + ε) / √(ν + ε), 1/rmax, rmax)   (no gradient)
    y = γ·r·z + β
    ∂L/∂x = (g − z·ψ̄) / √(χ̄ + ε),   g = γ·r·∂L/∂y,   ψ = E[g·z] of this batch

ν is an exponential moving average of χ̄ (``momentum``, torch's convention: the paper's 0.98 is
``momentum=0.02``) and normalizes at evaluation: y = γ·x/√(ν + ε) + β. χ̄ and ψ̄ are this batch's
own (the layer is BN without the mean, with its exact gradient) until the official code switches
(megvii-model/MABN, ``MABN.py``, ``warmup_iters`` = 100, window 16): moving averages from
training iteration ``warmup`` counted from 1 (0-based step ``warmup − 1``), and only once the
window is full (after ``window`` iterations; a window never averages fewer batches than it
holds). r stays 1 until step ``renorm_after`` (1000; rmax 5), as there.

Ghost batches (``norm_batch = b``): each group of b samples keeps its own history, as each
device does under DDP (``ddp_local_buffers``); ν moves toward the groups' average χ̄. (The
official ImageNet simulation instead slides one window over the sequence of groups.)

``swap_norms`` pairs the layer with the conv that feeds it (``needs_conv``) and
``attach_conv`` registers a ``torch.nn.utils.parametrize`` weight centralization on that conv,
so the model keeps its ``nn.Conv2d`` modules and the optimizer updates the raw weight.
"""

from __future__ import annotations

import torch
import torch.nn.utils.parametrize as parametrize
from torch import Tensor, nn

from .base import StepCounter, layer_label
from .functional import affine_params
from .groups import normalization_groups
from .registry import NormConfigError
from .schedule import check_milestones, place_milestones

AUTO_SHARE = 0.1  # unit="auto" on a run shorter than renorm_after: renormalize from 10% of it
HISTORY_BUFFERS = ("hist_x2", "hist_gz", "hist_pos", "hist_count")


class CentralizedWeight(nn.Module):
    """Weight centralization (the MABN paper's CenConv2d): W − mean over (in, kh, kw)."""

    def forward(self, weight: Tensor) -> Tensor:
        return weight - weight.mean(dim=tuple(range(1, weight.dim())), keepdim=True)


def centralize_conv(conv: nn.Conv2d) -> None:
    """Make ``conv`` use a weight-centralized kernel (idempotent)."""
    if parametrize.is_parametrized(conv, "weight") and any(
        isinstance(p, CentralizedWeight) for p in conv.parametrizations.weight
    ):
        return
    parametrize.register_parametrization(conv, "weight", CentralizedWeight())


class _MABNFunction(torch.autograd.Function):
    """y = γ·r·x·s + β with s = 1/√(χ̄ + ε), r constant; backward with the averaged ψ̄."""

    @staticmethod
    def forward(ctx, xg, weight, bias, inv_std, r, gz_past, layer):
        scale = (r * weight.view(1, 1, -1, 1, 1)) * inv_std
        y = xg * scale + bias.view(1, 1, -1, 1, 1)
        ctx.save_for_backward(xg, weight, inv_std, r, gz_past)
        ctx.layer = layer
        return y

    @staticmethod
    def backward(ctx, grad):
        xg, weight, inv_std, r, gz_past = ctx.saved_tensors
        z = xg * inv_std
        g = grad * (r * weight.view(1, 1, -1, 1, 1))
        psi = (g * z).mean(dim=(1, 3, 4), keepdim=True)  # this batch's ψ per group, channel
        past_sum, past_count = gz_past[0], gz_past[1]
        psi_bar = (past_sum + psi) / (past_count + 1)
        grad_x = (g - z * psi_bar) * inv_std
        grad_w = (grad * z * r).sum(dim=(0, 1, 3, 4))
        grad_b = grad.sum(dim=(0, 1, 3, 4))
        ctx.layer._record_gz(psi.detach())
        return grad_x, grad_w, grad_b, None, None, None, None


class MovingAverageBatchNorm2d(StepCounter, nn.Module):
    """MABN: SMA of E[x²] forward and of E[g·z] backward, no mean, weight-centralized conv."""

    supports_ghost_batch = True
    needs_conv = True
    diagnostics_prefix = "mabn"
    steady_state_args = {"warmup": 0, "renorm_after": 0, "unit": "steps"}
    ddp_local_buffers = HISTORY_BUFFERS
    norm_batch: int | None = None

    def __init__(
        self,
        num_features: int,
        window: int = 16,
        momentum: float = 0.02,
        eps: float = 1e-5,
        warmup: float = 100,
        renorm_after: float = 1000,
        rmax: float = 5.0,
        unit: str = "auto",
        affine: bool = True,
    ) -> None:
        super().__init__()
        if window < 1:
            raise NormConfigError(f"MABN window must be >= 1 normalization batches, got {window}")
        check_milestones("MABN", unit, {"warmup": warmup, "renorm_after": renorm_after})
        if rmax < 1 or not 0 < momentum <= 1:
            raise NormConfigError(
                f"MABN needs rmax >= 1 and 0 < momentum <= 1, got {rmax}, {momentum}"
            )
        self.num_features = num_features
        self.window = int(window)
        self.momentum = momentum
        self.eps = eps
        self.rmax = float(rmax)
        self.unit = unit
        self.milestones_arg = (float(warmup), float(renorm_after))
        self.warmup, self.renorm_after = (0, 0) if unit == "fraction" else self.milestones_arg
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.register_buffer("running_var", torch.ones(num_features))  # ν: EMA of χ̄
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._allocate_history(1)
        self._slot: int | None = None  # ring slot this step's χ and ψ go to
        self._last_r: Tensor | None = None

    # ---------------------------------------------------------------- set-up
    def attach_conv(self, conv: nn.Conv2d) -> None:
        """Weight-centralize the conv that feeds this layer (what MABN drops the mean for)."""
        if not isinstance(conv, nn.Conv2d):
            raise NormConfigError(f"{layer_label(self)}: MABN's feeding layer must be a Conv2d")
        centralize_conv(conv)

    def set_total_steps(self, total_steps: int) -> None:
        """Place ``warmup`` and ``renorm_after`` for a run of ``total_steps`` steps: fractions are
        scaled; ``auto`` compresses step milestones a short run would not reach (renormalizing
        from ``AUTO_SHARE`` of it); ``steps`` refuses them, naming ``unit: fraction``."""
        warmup, renorm = self.milestones_arg
        self.warmup, self.renorm_after = place_milestones(
            f"{layer_label(self)}: MABN",
            self.unit,
            {"warmup": warmup, "renorm_after": renorm},
            total_steps,
            fraction_example="{unit: fraction, warmup: 0.02, renorm_after: 0.2}",
            auto_end=AUTO_SHARE,
        )

    def schedule_summary(self) -> str:
        return (
            f"MABN ({self.unit}): batch statistics until step {self.warmup:.0f}, moving averages "
            f"over {self.window} batches after; r = 1 until step {self.renorm_after:.0f}"
        )

    def _allocate_history(self, replicas: int) -> None:
        """Past χ and ψ of ``window − 1`` normalization batches per replica (ghost group)."""
        k1, c = max(self.window - 1, 0), self.num_features
        like = {"device": self.running_var.device, "dtype": self.running_var.dtype}
        self.register_buffer("hist_x2", torch.zeros(replicas, k1, c, **like))
        self.register_buffer("hist_gz", torch.zeros(replicas, k1, c, **like))
        self.register_buffer("hist_pos", torch.zeros((), dtype=torch.long, device=like["device"]))
        self.register_buffer("hist_count", torch.zeros((), dtype=torch.long, device=like["device"]))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        saved = state_dict.get(prefix + "hist_x2")
        if saved is not None and saved.shape[0] != self.hist_x2.shape[0]:
            self._allocate_history(saved.shape[0])  # a checkpoint taken with ghost batches
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---------------------------------------------------------------- statistics
    def _past(self, hist: Tensor, used: int) -> Tensor:
        """(sum over the last ``used`` entries, ``used``) as a (2, G, 1, C, 1, 1) tensor."""
        g, _, c = hist.shape
        total = hist.sum(dim=1) if used else hist.new_zeros(g, c)  # unused slots are zero
        return torch.stack((total, torch.full_like(total, float(used)))).view(2, g, 1, c, 1, 1)

    def _record_gz(self, psi: Tensor) -> None:
        if self._slot is not None and self.window > 1:
            self.hist_gz[:, self._slot] = psi.view(psi.shape[0], -1)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            scale = torch.rsqrt(self.running_var + self.eps)
            if self.weight is not None:
                scale = scale * self.weight
            y = x * scale.view(1, -1, 1, 1)
            return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)
        groups = normalization_groups(x, self)
        if groups != self.hist_x2.shape[0]:
            if int(self.hist_count):
                raise NormConfigError(
                    f"{layer_label(self)}: the number of ghost groups changed from "
                    f"{self.hist_x2.shape[0]} to {groups} while the MABN history holds statistics"
                )
            self._allocate_history(groups)
        step = self.host_step()  # steps before this one
        self.advance_step()
        xg = x.view(groups, x.shape[0] // groups, *x.shape[1:])
        count = int(self.hist_count)
        # the official rule (MABN.py: moving averages from iteration `warmup_iters`, counted
        # from 1, once `window` iterations have filled the buffer): step + 1 >= warmup and
        # step >= window, so the window is always full when it is used
        used = count if step + 1 >= self.warmup and step >= self.window else 0
        with torch.no_grad():
            x2 = (xg.detach() * xg.detach()).mean(dim=(1, 3, 4), keepdim=True)  # χ per group
            past_x2 = self._past(self.hist_x2, used)
            x2_bar = (past_x2[0] + x2) / (used + 1)
            inv_std = torch.rsqrt(x2_bar + self.eps)
            if step >= self.renorm_after:
                r = torch.rsqrt(self.running_var + self.eps).view(1, 1, -1, 1, 1) / inv_std
                r = r.clamp(1 / self.rmax, self.rmax)
            else:
                r = torch.ones_like(inv_std)
            self._last_r = r
            self.running_var.lerp_(x2_bar.mean(dim=0).view(-1), self.momentum)
            past_gz = self._past(self.hist_gz, used)
            self._slot = None
            if self.window > 1:  # record this step's χ (ψ follows in backward)
                self._slot = int(self.hist_pos)
                self.hist_x2[:, self._slot] = x2.view(groups, -1)
                self.hist_gz[:, self._slot] = 0
                self.hist_pos.fill_((self._slot + 1) % (self.window - 1))
                self.hist_count.fill_(min(count + 1, self.window - 1))
        weight, bias = affine_params(self, self.running_var)
        y = _MABNFunction.apply(xg, weight, bias, inv_std, r, past_gz, self)
        return y.view_as(x)

    def set_eval_statistics(self, mean: Tensor, var: Tensor, sqmean: Tensor) -> None:
        """MABN evaluates with ν, an estimate of E[x²] (no mean): ν = ``sqmean``."""
        with torch.no_grad():
            self.running_var.copy_(sqmean)

    def diagnostics(self) -> dict[str, float]:
        """Fraction of channels (× groups) whose r was clipped in the last step."""
        if self._last_r is None:
            return {}
        clipped = (self._last_r.abs() >= self.rmax) | (self._last_r <= 1 / self.rmax)
        return {"r_clipped": float(clipped.float().mean())}

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, window={self.window}, momentum={self.momentum}, "
            f"eps={self.eps}, warmup={self.milestones_arg[0]:g}, "
            f"renorm_after={self.milestones_arg[1]:g} ({self.unit}), rmax={self.rmax:g}"
        )
