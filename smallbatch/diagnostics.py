"""Norm diagnostics that explain small-batch behaviour, as flat ``{name: float}`` dicts.

* BRN: current rmax/dmax and the fraction of channels whose r or d was clipped;
* CBN: fraction of layers whose window is active, entries averaged, mean |Δμ| compensation;
* batch-statistics layers (BN, BRN, CBN, SyncBN): the gap between batch and running
  statistics, |μ_B − μ|/σ and |log σ_B/σ|, averaged over channels and layers.
"""

from __future__ import annotations

from statistics import fmean

import torch
from torch import Tensor, nn

from .norms import BatchRenorm2d, CrossIterationBatchNorm2d


def layer_diagnostics(model: nn.Module) -> dict[str, float]:
    """BRN and CBN scalars from their last training step (no extra compute)."""
    out: dict[str, float] = {}
    brn = [m for m in model.modules() if isinstance(m, BatchRenorm2d)]
    if brn:
        out["norm/brn_rmax"] = brn[0].last_rmax
        out["norm/brn_dmax"] = brn[0].last_dmax
        out["norm/brn_r_clipped"] = fmean(m.last_r_clipped for m in brn)
        out["norm/brn_d_clipped"] = fmean(m.last_d_clipped for m in brn)
    cbn = [m for m in model.modules() if isinstance(m, CrossIterationBatchNorm2d)]
    if cbn:
        out["norm/cbn_window_active"] = fmean(float(m.last_window_active) for m in cbn)
        out["norm/cbn_entries_used"] = fmean(m.last_entries_used for m in cbn)
        out["norm/cbn_compensation"] = fmean(m.last_compensation for m in cbn)
    return out


def _has_running_stats(m: nn.Module) -> bool:
    return isinstance(getattr(m, "running_mean", None), Tensor) and isinstance(
        getattr(m, "running_var", None), Tensor
    )


class BatchStatGap:
    """Forward pre-hooks that, when armed for one step, measure batch-vs-running statistics."""

    def __init__(self, model: nn.Module) -> None:
        self.armed = False
        self._mean_gaps: list[float] = []
        self._std_gaps: list[float] = []
        self.handles = [
            m.register_forward_pre_hook(self._hook)
            for m in model.modules()
            if _has_running_stats(m) and m.running_mean.dim() == 1
        ]

    def _hook(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        if not (self.armed and module.training):
            return
        x = inputs[0]
        if x.dim() != 4 or x.shape[0] * x.shape[2] * x.shape[3] < 2:
            return
        with torch.no_grad():
            var_b, mean_b = torch.var_mean(x.float(), dim=(0, 2, 3), correction=0)
            eps = getattr(module, "eps", 1e-5)
            sigma = (module.running_var.float() + eps).sqrt()
            sigma_b = (var_b + eps).sqrt()
            self._mean_gaps.append(float(((mean_b - module.running_mean) / sigma).abs().mean()))
            self._std_gaps.append(float((sigma_b / sigma).log().abs().mean()))

    def collect(self) -> dict[str, float]:
        """Gaps measured since arming, then disarm and reset."""
        self.armed = False
        out = {}
        if self._mean_gaps:
            out["norm/stat_gap_mean"] = fmean(self._mean_gaps)
            out["norm/stat_gap_logstd"] = fmean(self._std_gaps)
        self._mean_gaps, self._std_gaps = [], []
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
