"""Population ("precise") statistics and batch-statistics evaluation for every norm layer that
keeps statistics for evaluation (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", §3–4).

A trained network's evaluation statistics are an EMA of statistics taken while the weights were
still moving. Recomputing them with the weights frozen separates the estimation error of the
EMA from the rest; evaluating with each test group's own statistics (groups of b, as in
training) shows the train/test inconsistency. Three ways to evaluate, beside the EMA:

* ``precise``: each layer's statistics recomputed on training images with the weights frozen,
  as the mean over normalization groups of per-group statistics (the unbiased variance of each
  group of b samples, as the EMA averages them): what the network saw in training.
* ``precise_pooled``: the same pass, pooled over all of its images (population mean and
  variance: E[x], E[x²] − E[x]²), what torch's ``swa_utils.update_bn`` gives with one batch.
* ``batch``: no population statistics at all: every test group of b samples is normalized with
  its own statistics (mean, biased variance, mean square over the group), nothing updated.

The recomputation runs the network in training mode at the cell's normalization batch (so each
layer sees inputs normalized as in training), under ``no_grad``; every parameter, buffer and
random-number state is restored afterwards. A layer takes statistics through the ``NormLayer``
contract's ``set_eval_statistics(mean, var, sqmean)``; layers without it that have
``running_mean`` and ``running_var`` (torch's BN and BN-like plugins) get those set.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..norms.groups import ghost_groups
from ..norms.walk import has_running_stats, is_batch_statistics_layer
from .diagnostics import stat_gap


def keeps_eval_statistics(m: nn.Module) -> bool:
    """A layer that normalizes with stored statistics in evaluation: it implements
    ``set_eval_statistics`` (and does not decline with ``uses_eval_statistics = False``), or
    it has ``running_mean`` and ``running_var`` tensors and takes statistics from the batch
    (torch's BN; a frozen BN's fixed statistics are left as they are)."""
    if callable(getattr(m, "set_eval_statistics", None)):
        return bool(getattr(m, "uses_eval_statistics", True))
    return has_running_stats(m) and is_batch_statistics_layer(m)  # not a frozen BN's


def set_eval_statistics(m: nn.Module, mean: Tensor, var: Tensor, sqmean: Tensor) -> None:
    """Give layer ``m`` these per-channel statistics for evaluation (its hook, else BN's
    running mean and variance)."""
    hook = getattr(m, "set_eval_statistics", None)
    if callable(hook):
        hook(mean, var, sqmean)
        return
    with torch.no_grad():
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)


def stat_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if keeps_eval_statistics(m)}


@dataclass
class _Moments:
    """Running sums of per-group moments of one layer's input."""

    groups: int = 0
    values: int = 0  # values per channel, all groups
    mean: Tensor | None = None  # Σ_g μ_g
    sqmean: Tensor | None = None  # Σ_g E_g[x²]
    unbiased_var: Tensor | None = None  # Σ_g var_g · m/(m − 1)
    gap_mean: list[float] = field(default_factory=list)
    gap_logstd: list[float] = field(default_factory=list)

    def add(self, x: Tensor, groups: int) -> tuple[Tensor, Tensor]:
        """Add ``x``'s per-group moments; returns them, (var, mean) of shape (G, C)."""
        xg = x.detach().float().view(groups, x.shape[0] // groups, *x.shape[1:])
        var, mean = torch.var_mean(xg, dim=(1, 3, 4), correction=0)  # (G, C), two passes
        sq = var + mean.square()
        m = xg[0, :, 0].numel()
        unbiased = var * (m / max(m - 1, 1))
        if self.mean is None:
            self.mean, self.sqmean, self.unbiased_var = mean.sum(0), sq.sum(0), unbiased.sum(0)
        else:
            self.mean += mean.sum(0)
            self.sqmean += sq.sum(0)
            self.unbiased_var += unbiased.sum(0)
        self.groups += groups
        self.values += groups * m
        return var, mean

    def estimates(self) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
        """estimator → (mean, var, sqmean) per channel."""
        mean, sqmean = self.mean / self.groups, self.sqmean / self.groups
        pooled = (sqmean - mean.square()).clamp_min(0) * (self.values / max(self.values - 1, 1))
        return {
            "precise": (mean, self.unbiased_var / self.groups, sqmean),
            "precise_pooled": (mean, pooled, sqmean),
        }


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Restore every parameter, buffer, Python-side layer state that loading a state dict
    resets (step counters, window positions), the train/eval mode and the random-number
    states (torch, CUDA, numpy, Python) when the block ends."""
    from .module import rng_states, set_rng_states

    state = copy.deepcopy(model.state_dict())
    rng = rng_states()
    modes = {name: m.training for name, m in model.named_modules()}
    try:
        yield
    finally:
        model.load_state_dict(state)
        for name, m in model.named_modules():
            m.training = modes.get(name, m.training)
        set_rng_states(rng)


def population_statistics(
    model: nn.Module,
    batches: Iterable[Tensor],
    images: int,
    forward: Callable[[Tensor], Tensor] | None = None,
) -> tuple[dict[str, dict[str, tuple[Tensor, Tensor, Tensor]]], dict[str, float]]:
    """Per layer (dotted name) and estimator (``precise``, ``precise_pooled``), the statistics
    recomputed from up to ``images`` training inputs with the weights frozen; and the
    end-of-training diagnostics: the gap between each group's statistics and the layer's EMA
    ones (``stat_gap_mean`` = mean |μ_g − μ|/σ, ``stat_gap_logstd`` = mean |log σ_g/σ|, over
    groups, channels and layers with a running mean) and each layer's ``input_diagnostics``
    (averaged over layers and batches). The model's state is left as it was."""
    layers = stat_layers(model)
    moments = {name: _Moments() for name in layers}
    gaps: dict[str, list[float]] = {"stat_gap_mean": [], "stat_gap_logstd": []}
    ema = {  # the statistics training ended with (the pass itself moves them)
        name: (m.running_mean.detach().clone(), m.running_var.detach().clone(), m.eps)
        for name, m in layers.items()
        if has_running_stats(m) and m.running_mean.dim() == 1
    }

    def hook(name: str):
        def pre_hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            x = inputs[0]
            groups = ghost_groups(x, getattr(module, "norm_batch", None), module)
            var_g, mean_g = moments[name].add(x, groups)
            if name in ema:
                mean_gap, std_gap = stat_gap(mean_g, var_g, *ema[name])
                gaps["stat_gap_mean"].append(mean_gap)
                gaps["stat_gap_logstd"].append(std_gap)

        return pre_hook

    def describe(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        prefix = getattr(module, "diagnostics_prefix", None) or type(module).__name__.lower()
        for key, value in module.input_diagnostics(inputs[0]).items():
            gaps.setdefault(f"{prefix}_{key}", []).append(float(value))

    forward = forward or model
    seen = 0
    with preserved_state(model), torch.no_grad():
        handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
        handles += [
            m.register_forward_pre_hook(describe)
            for m in model.modules()
            if callable(getattr(m, "input_diagnostics", None))
        ]
        try:
            model.train()
            for x in batches:
                if seen >= images:
                    break
                forward(x)
                seen += x.shape[0]
        finally:
            for h in handles:
                h.remove()
    stats = {name: mom.estimates() for name, mom in moments.items() if mom.groups}
    return stats, {k: float(torch.tensor(v).mean()) for k, v in gaps.items() if v}


@contextmanager
def using_statistics(
    model: nn.Module, stats: dict[str, dict[str, tuple[Tensor, Tensor, Tensor]]], estimator: str
) -> Iterator[None]:
    """Evaluate with the recomputed statistics of ``estimator`` inside the block; the model's
    own state comes back afterwards."""
    layers = stat_layers(model)
    with preserved_state(model):
        for name, per_estimator in stats.items():
            set_eval_statistics(layers[name], *per_estimator[estimator])
        yield


@contextmanager
def using_batch_statistics(model: nn.Module) -> Iterator[None]:
    """Inside the block, every evaluation forward normalizes each layer's input with its own
    statistics (the whole batch: feed batches of b samples); nothing is kept afterwards."""

    def pre_hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        x = inputs[0].detach().float()
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        set_eval_statistics(module, mean, var, var + mean.square())

    with preserved_state(model):
        handles = [m.register_forward_pre_hook(pre_hook) for m in stat_layers(model).values()]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
