"""A reference CBN for benchmarks and tests: the same layer as :mod:`smallbatch.norms.cbn`
computed the way the public reference code does (autograd statistics, extra gradient passes,
stored past weights), so that the analytic version can be checked and priced against it."""

from __future__ import annotations

import torch
from torch import Tensor

from .cbn import WINDOW_BUFFERS, CrossIterationBatchNorm2d


class AutogradCrossIterationBatchNorm2d(CrossIterationBatchNorm2d):
    """Reference CBN written the way the public reference computes: batch statistics and the
    normalization as autograd ops, the statistics' weight-gradients by two extra
    ``torch.autograd.grad`` passes per layer, and the compensation from stored past weights,
    ⟨∂/∂W, W_t − W_{t−τ}⟩. Same results; for benchmarks and tests only (no ghost batches)."""

    ddp_local_buffers = (*WINDOW_BUFFERS, "win_weight")

    def _allocate_window(self, replicas: int) -> None:
        super()._allocate_window(replicas)
        w = self._conv.weight
        self.register_buffer("win_weight", torch.zeros(self.window - 1, *w.shape).to(w))

    def _store_entry(self, pos: int, current: Tensor) -> None:
        super()._store_entry(pos, current)
        self.win_weight[pos] = self._conv.weight.detach()

    def _compensation(self, n: int) -> Tensor:
        r, c = self.replicas, self.num_features
        groups = self.win_dmean.shape[2]
        w = self._conv.weight.detach().reshape(1, c, -1)
        delta = w - self.win_weight[:n].reshape(n, c, -1)  # (n, C, P)
        dmean = self.win_dmean[:, :n].reshape(r, n, groups, -1, 1)
        per_group = delta.view(1, n, groups, c // groups, -1)
        comp_mean = torch.matmul(per_group, dmean).view(r, n, c)
        dsq = self.win_dsqmean[:, :n].reshape(r, n, c, -1)
        comp_sq = torch.einsum("rkcp,kcp->rkc", dsq, delta)
        return torch.stack((comp_mean, comp_sq), dim=2) * self.rho

    def _window_forward(self, x: Tensor, groups: int, past: bool = True) -> tuple[Tensor, Tensor]:
        m = x.shape[0] * x.shape[2] * x.shape[3]
        mean_t = x.mean(dim=(0, 2, 3))
        sqmean_t = (x * x).mean(dim=(0, 2, 3))
        with torch.no_grad():
            n = self.valid_entries()
            comp = self._compensation(n)
            past_mean = self.win_mean[0, :n] + comp[0, :, 0]
            past_sq = self.win_sqmean[0, :n] + comp[0, :, 1]
            keep = (past_sq - past_mean * past_mean >= 0).to(x.dtype)
            count = 1 + keep.sum(0)
            self._diag = (comp, keep.bool().unsqueeze(0), count)
            var_t = (sqmean_t - mean_t * mean_t).clamp_min(0) * (m / max(m - 1, 1))
            self.running_mean.lerp_(mean_t, self.momentum)
            self.running_var.lerp_(var_t, self.momentum)
        mean = (mean_t + (past_mean * keep).sum(0)) / count
        var = (sqmean_t + (past_sq * keep).sum(0)) / count - mean * mean
        y = (x - mean.view(1, -1, 1, 1)) / (var.view(1, -1, 1, 1) + self.eps).sqrt()
        if self.weight is not None:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y, torch.stack((mean_t, sqmean_t)).detach().unsqueeze(0)

    def _write_stat_weight_gradients(self, xg: Tensor, conv_in: Tensor, pos: int) -> None:
        w = self._conv.weight
        with torch.enable_grad():  # (we are inside _record's no_grad)
            x = xg[0]
            mean = x.mean(dim=(0, 2, 3))
            sqmean = (x * x).mean(dim=(0, 2, 3))
            dmean = torch.autograd.grad(mean.sum(), w, retain_graph=True)[0]
            dsq = torch.autograd.grad(sqmean.sum(), w, retain_graph=True)[0]
        self.win_dmean[0, pos] = dmean[:: self.num_features // self._conv.groups]
        self.win_dsqmean[0, pos] = dsq
