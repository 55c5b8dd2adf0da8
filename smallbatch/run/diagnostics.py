"""Norm diagnostics that explain small-batch behaviour, as flat ``{name: float}`` dicts.

* every layer's own ``diagnostics()`` (the ``NormLayer`` contract: BRN's rmax/dmax and clip
  rates, CBN's window use and compensation, MABN's r clip rate, a plugin's own);
* batch-statistics layers (BN, BRN, CBN, SyncBN): the gap between batch and running
  statistics, |μ_B − μ|/σ and |log σ_B/σ|, per normalization group (each ghost batch), averaged
  over groups, channels and layers.
"""

from __future__ import annotations

from statistics import fmean

import torch
from torch import Tensor, nn

from ..norms import layer_diagnostics
from ..norms.groups import ghost_groups, grouped_moments
from ..norms.walk import has_running_stats

__all__ = ["BatchStatGap", "layer_diagnostics", "stat_gap"]


def stat_gap(
    mean_g: Tensor, var_g: Tensor, mean: Tensor, var: Tensor, eps: float
) -> tuple[float, float]:
    """The gap between groups' statistics (μ_g, σ²_g; shape (G, C)) and running ones (μ, σ²):
    mean |μ_g − μ|/σ and mean |log σ_g/σ| over groups and channels, σ = √(σ² + ε)."""
    sigma = (var.float() + eps).sqrt()
    mean_gap = ((mean_g - mean) / sigma).abs().mean()
    std_gap = ((var_g + eps).sqrt() / sigma).log().abs().mean()
    return float(mean_gap), float(std_gap)


class BatchStatGap:
    """Forward pre-hooks that, while armed for one step, measure batch-vs-running statistics.
    The hooks exist only while armed: a module with a hook takes PyTorch's slower call path,
    which the steps in between need not pay."""

    def __init__(self, model: nn.Module) -> None:
        self._mean_gaps: list[float] = []
        self._std_gaps: list[float] = []
        self._layers = [
            m for m in model.modules() if has_running_stats(m) and m.running_mean.dim() == 1
        ]
        self.handles: list = []

    @property
    def armed(self) -> bool:
        return bool(self.handles)

    @armed.setter
    def armed(self, on: bool) -> None:
        if on and not self.handles:
            self.handles = [m.register_forward_pre_hook(self._hook) for m in self._layers]
        elif not on:
            self.remove()

    def _hook(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        if not module.training:
            return
        x = inputs[0]
        if x.dim() != 4 or x.shape[0] * x.shape[2] * x.shape[3] < 2:
            return
        with torch.no_grad():
            # per normalization group: the ghost groups the layer itself forms
            groups = ghost_groups(x, getattr(module, "norm_batch", None), module)
            _, mean_b, var_b = grouped_moments(x.float(), groups)
            mean_b, var_b = mean_b.flatten(1), var_b.flatten(1)  # (G, C)
            eps = getattr(module, "eps", 1e-5)
            mean_gap, std_gap = stat_gap(
                mean_b, var_b, module.running_mean, module.running_var, eps
            )
            self._mean_gaps.append(mean_gap)
            self._std_gaps.append(std_gap)

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
        self.handles = []
