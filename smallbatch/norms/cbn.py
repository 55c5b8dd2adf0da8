"""Cross-Iteration Batch Normalization (Yao et al. 2021, arXiv 2002.05712).

Statistics average the current batch and the k−1 previous iterations. Each past mean μ and
second moment ν = E[y²] is moved to the current weights W_t of the feeding conv by a
first-order Taylor term (scaled by ``rho``; the paper and reference use rho = 1)::

    μ_{t−τ}(W_t) ≈ μ_{t−τ} + rho · <∂μ/∂W[c], W_t[c] − W_{t−τ}[c]>
    ν_{t−τ}(W_t) ≈ ν_{t−τ} + rho · <∂ν/∂W[c], W_t[c] − W_{t−τ}[c]>

Per channel, entries whose compensated variance ν − μ² is negative are dropped; the rest are
averaged with the current batch: μ̄ = mean(μ), σ̄² = mean(ν) − μ̄². Only the current batch's
statistics carry gradient. During the first ``burnin`` training steps the layer is plain BN.

The derivatives are analytic, not extra autograd passes: with M = N·H·W and patches p of the
conv input, ∂μ_c/∂W[c] = mean_p(patch_p) (one tensor per conv group, the same for every c),
and ∂ν_c/∂W[c] = Σ_p (2·y_{c,p}/M)·patch_p, the conv's weight-gradient for grad_output 2y/M.

The window lives in registered buffers (checkpointed, per device under DDP: see
``ddp_local_buffers``). Running statistics follow the current batch, exactly as BN's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_weight

from .base import check_batch_stats, layer_label
from .registry import NormConfigError

WINDOW_BUFFERS = (
    "win_mean",
    "win_sqmean",
    "win_dmean",
    "win_dsqmean",
    "win_weight",
    "win_valid",
    "win_pos",
)


class CrossIterationBatchNorm2d(nn.Module):
    """Cross-Iteration BN: statistics over k iterations, Taylor-compensated to current weights."""

    ddp_local_buffers = WINDOW_BUFFERS

    def __init__(
        self,
        num_features: int,
        window: int = 4,
        burnin: int = 0,
        rho: float = 1.0,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
    ) -> None:
        super().__init__()
        if window < 1:
            raise NormConfigError(f"CBN window must be >= 1 (1 = plain BN), got {window}")
        if burnin < 0:
            raise NormConfigError(f"CBN burnin must be >= 0 steps, got {burnin}")
        self.num_features = num_features
        self.window = int(window)
        self.burnin = int(burnin)
        self.rho = float(rho)
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._conv: nn.Conv2d | None = None
        self._conv_io: tuple[Tensor, Tensor] | None = None
        self._hook = None
        # Diagnostics of the last training step.
        self.last_window_active = False
        self.last_entries_used = 1.0
        self.last_compensation = 0.0

    @property
    def needs_conv(self) -> bool:
        """True when the layer needs the conv that feeds it (any window longer than 1)."""
        return self.window > 1

    @property
    def feeding_conv(self) -> nn.Conv2d | None:
        return self._conv

    def attach_conv(self, conv: nn.Conv2d) -> None:
        """Pair the layer with the conv whose output it normalizes and allocate the window."""
        if not isinstance(conv, nn.Conv2d):
            raise NormConfigError(f"{layer_label(self)}: CBN's feeding layer must be a Conv2d")
        if conv.out_channels != self.num_features:
            raise NormConfigError(
                f"{layer_label(self)}: CBN has {self.num_features} channels but its conv has "
                f"{conv.out_channels} output channels"
            )
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise NormConfigError(
                f"{layer_label(self)}: CBN supports convs with numeric zero padding, got "
                f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r}"
            )
        if self._hook is not None:
            self._hook.remove()
        # Not a submodule: the conv belongs to the model; we only read its input and weight.
        object.__setattr__(self, "_conv", conv)
        self._hook = conv.register_forward_hook(self._capture_conv_io)
        k1 = self.window - 1
        w = conv.weight
        groups = conv.groups
        like = {"device": w.device, "dtype": w.dtype}
        self.register_buffer("win_mean", torch.zeros(k1, self.num_features, **like))
        self.register_buffer("win_sqmean", torch.zeros(k1, self.num_features, **like))
        self.register_buffer("win_dmean", torch.zeros(k1, groups, *w.shape[1:], **like))
        self.register_buffer("win_dsqmean", torch.zeros(k1, *w.shape, **like))
        self.register_buffer("win_weight", torch.zeros(k1, *w.shape, **like))
        self.register_buffer("win_valid", torch.zeros(k1, dtype=torch.bool, device=w.device))
        self.register_buffer("win_pos", torch.zeros((), dtype=torch.long, device=w.device))

    def _capture_conv_io(self, conv: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        self._conv_io = (inputs[0], out) if self.training and torch.is_grad_enabled() else None

    def window_memory_bytes(self) -> int:
        """Bytes held by the window buffers."""
        return sum(
            b.numel() * b.element_size()
            for name in WINDOW_BUFFERS
            if (b := getattr(self, name, None)) is not None
        )

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        check_batch_stats(x, self)
        self.step += 1
        step = int(self.step)
        # Recording starts k-1 steps before the burn-in ends, so the window is full at once.
        record = self.window > 1 and step > self.burnin - (self.window - 1)
        conv_in = self._take_conv_input(x) if record else None
        active = self.window > 1 and step > self.burnin and bool(self.win_valid.any())

        if active:
            y, mean_t, sqmean_t = self._window_forward(x)
        else:
            self.last_window_active, self.last_entries_used, self.last_compensation = False, 1, 0
            y = F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias,
                True, self.momentum, self.eps,
            )  # fmt: skip
            mean_t = sqmean_t = None
        if conv_in is not None:
            self._record(x, conv_in, mean_t, sqmean_t)
        return y

    def _take_conv_input(self, x: Tensor) -> Tensor | None:
        if self._conv is None:
            raise NormConfigError(
                f"{layer_label(self)}: CBN with window {self.window} needs its feeding conv; "
                "build the model with smallbatch.models.swap_norms or call attach_conv(conv)"
            )
        io, self._conv_io = self._conv_io, None
        if io is None:  # no grad (e.g. a sanity forward under no_grad): nothing to record
            return None
        if io[1] is not x:
            raise NormConfigError(
                f"{layer_label(self)}: CBN's input is not the output of its feeding conv; CBN "
                "must directly follow a Conv2d"
            )
        return io[0]

    def _window_forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m = x.shape[0] * x.shape[2] * x.shape[3]
        mean_t = x.mean(dim=(0, 2, 3))
        sqmean_t = (x * x).mean(dim=(0, 2, 3))
        with torch.no_grad():
            conv_w = self._conv.weight.detach()
            delta = conv_w.unsqueeze(0) - self.win_weight  # (k-1, C, Cin/g, kh, kw)
            groups = self.win_dmean.shape[1]
            dmean = self.win_dmean.repeat_interleave(self.num_features // groups, dim=1)
            comp_mean = self.rho * (dmean * delta).sum(dim=(2, 3, 4))
            comp_sq = self.rho * (self.win_dsqmean * delta).sum(dim=(2, 3, 4))
            past_mean = self.win_mean + comp_mean
            past_sq = self.win_sqmean + comp_sq
            keep = (past_sq - past_mean * past_mean >= 0) & self.win_valid.unsqueeze(1)
            keep_f = keep.to(x.dtype)
            count = 1 + keep_f.sum(0)
            sum_mean = (past_mean * keep_f).sum(0)
            sum_sq = (past_sq * keep_f).sum(0)
            self.last_window_active = True
            self.last_entries_used = float(count.mean())
            self.last_compensation = float(comp_mean.abs()[keep].mean()) if keep.any() else 0.0
        mean = (mean_t + sum_mean) / count
        var = ((sqmean_t + sum_sq) / count - mean * mean).clamp_min(0)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -mean * scale
        if self.bias is not None:
            shift = shift + self.bias
        with torch.no_grad():
            var_t = (sqmean_t - mean_t * mean_t).clamp_min(0) * (m / max(m - 1, 1))
            self.running_mean.lerp_(mean_t, self.momentum)
            self.running_var.lerp_(var_t, self.momentum)
        y = torch.addcmul(shift.view(1, -1, 1, 1), x, scale.view(1, -1, 1, 1))
        return y, mean_t, sqmean_t

    def _stat_weight_gradients(self, x: Tensor, conv_in: Tensor) -> tuple[Tensor, Tensor]:
        """(∂μ/∂W per conv group, ∂ν/∂W per channel), analytically via conv weight-gradients."""
        conv = self._conv
        x = x.detach()
        m = x.shape[0] * x.shape[2] * x.shape[3]
        w = conv.weight
        groups = conv.groups
        geometry = {
            "stride": conv.stride,
            "padding": conv.padding,
            "dilation": conv.dilation,
            "groups": groups,
        }
        ones = x.new_full((1, groups, x.shape[2], x.shape[3]), 1.0 / m)
        dmean = conv2d_weight(
            conv_in.detach().sum(0, keepdim=True), (groups, *w.shape[1:]), ones, **geometry
        )
        dsq = conv2d_weight(conv_in.detach(), w.shape, x * (2.0 / m), **geometry)
        return dmean, dsq

    @torch.no_grad()
    def _record(self, x: Tensor, conv_in: Tensor, mean_t: Tensor | None, sq_t: Tensor | None):
        """Push the current batch's statistics, their weight-gradients and W_t into the window."""
        if mean_t is None:
            var_b, mean_t = torch.var_mean(x.detach(), dim=(0, 2, 3), correction=0)
            sq_t = var_b + mean_t * mean_t
        dmean, dsq = self._stat_weight_gradients(x, conv_in)
        w = self._conv.weight.detach()
        pos = int(self.win_pos)
        self.win_mean[pos] = mean_t.detach()
        self.win_sqmean[pos] = sq_t.detach()
        self.win_dmean[pos] = dmean
        self.win_dsqmean[pos] = dsq
        self.win_weight[pos] = w
        self.win_valid[pos] = True
        self.win_pos.fill_((pos + 1) % (self.window - 1))

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, window={self.window}, burnin={self.burnin}, rho={self.rho}, "
            f"eps={self.eps}, momentum={self.momentum}"
        )


class AutogradCrossIterationBatchNorm2d(CrossIterationBatchNorm2d):
    """Reference CBN: the statistics' weight-gradients by two extra autograd passes per layer, as
    the public reference implementation does. Same results; for benchmarks and tests only."""

    def _stat_weight_gradients(self, x: Tensor, conv_in: Tensor) -> tuple[Tensor, Tensor]:
        w = self._conv.weight
        with torch.enable_grad():
            mean = x.mean(dim=(0, 2, 3))
            sqmean = (x * x).mean(dim=(0, 2, 3))
            dmean = torch.autograd.grad(mean.sum(), w, retain_graph=True)[0]
            dsq = torch.autograd.grad(sqmean.sum(), w, retain_graph=True)[0]
        return dmean[:: self.num_features // self._conv.groups], dsq
