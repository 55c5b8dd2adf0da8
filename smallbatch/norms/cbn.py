"""Cross-Iteration Batch Normalization (Yao et al. 2021, arXiv 2002.05712).

Statistics average the current batch and the k−1 previous iterations. Each past mean μ and
second moment ν = E[y²] is moved to the current weights W_t of the feeding conv by a
first-order Taylor term (scaled by ``rho``; the paper and reference use rho = 1)::

    μ_{t−τ}(W_t) ≈ μ_{t−τ} + rho · <∂μ/∂W[c], W_t[c] − W_{t−τ}[c]>
    ν_{t−τ}(W_t) ≈ ν_{t−τ} + rho · <∂ν/∂W[c], W_t[c] − W_{t−τ}[c]>

Per channel, entries whose compensated variance ν − μ² is negative are dropped; the rest are
averaged with the current batch: μ̄ = mean(μ), σ̄² = mean(ν) − μ̄². Only the current batch's
statistics carry gradient. During the first ``burnin`` training steps the layer is plain BN;
``unit="fraction"`` gives the burn-in as a share of the run's steps (the paper's burn-in is a
share of its schedule), and a burn-in in steps at least as long as the run is refused.

The derivatives are analytic, not extra autograd passes: with M = N·H·W and patches p of the
conv input, ∂μ_c/∂W[c] = mean_p(patch_p) (one tensor per conv group, the same for every c; a
box sum of the batch-mean input), and ∂ν_c/∂W[c] = Σ_p (2·y_{c,p}/M)·patch_p, the conv's
weight-gradient for grad_output 2y/M.

The window stores, per entry, ⟨∂μ/∂W, W_{t−τ}⟩ and ⟨∂ν/∂W, W_{t−τ}⟩ instead of W_{t−τ}
itself, so the compensation ⟨∂/∂W, W_t⟩ − ⟨∂/∂W, W_{t−τ}⟩ reads the window once and past
weights need no memory. The conv output is linear in W, so these inner products are μ − b and
2(ν − b·μ) (b the conv bias; Euler's identity) and cost nothing to store. (μ, ν) and the two
inner products are packed as ``win_stats`` and ``win_ref``, shape (replicas, k−1, 2, C), so the
per-step window arithmetic handles both statistics in one op each. The window lives in
registered buffers (checkpointed, per device under DDP: see ``ddp_local_buffers``). Running
statistics follow the current batch, exactly as BN's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import StepCounter, layer_label
from .functional import affine_params, batch_stat_norm, moments
from .groups import normalization_groups, normalize_with_running_stats, update_running_from_groups
from .registry import NormConfigError
from .schedule import check_milestones, place_milestones

_conv_backward = torch.ops.aten.convolution_backward
_LARGE_ENTRY = 1 << 18  # window entries (∂ν/∂W) of more values are read one at a time
_KRON_LIMIT = 1 << 20  # largest (H·W, kh·kw) selector product cached for the mean patch

WINDOW_BUFFERS = ("win_stats", "win_ref", "win_dmean", "win_dsqmean", "win_valid", "win_pos")
# the layout before win_stats/win_ref packed (μ, ν): kept for CBN checkpoints written before
# db9b281 (2026-11-22), none of them committed here (test_cbn loads one of that layout)
_UNPACKED = {"win_stats": ("win_mean", "win_sqmean"), "win_ref": ("win_mean_ref", "win_sqmean_ref")}


def _selector(size, out, k, stride, pad, dilation, device, dtype) -> Tensor:
    """(k, size) 0/1 matrix: [a, h] = 1 where h = i·stride − pad + a·dilation for an output
    index i < out (positions in the zero padding select nothing)."""
    pos = torch.arange(k).view(k, 1) * dilation + torch.arange(out).view(1, out) * stride - pad
    sel = torch.zeros(k, size + 1)
    sel.scatter_(1, torch.where((pos >= 0) & (pos < size), pos, size), 1.0)
    return sel[:, :size].to(device=device, dtype=dtype)


BURNIN_UNITS = ("steps", "fraction")


class _WindowNorm(torch.autograd.Function):
    """Ghost-batch form of ``functional.batch_stat_norm``: x (N, C, H, W) viewed as
    (G, N/G, C, H, W), G independent normalization groups with statistics shaped (G, C).
    y = γ·(x − μ̄)/√(σ̄² + ε) + β with μ̄ = (μ_t + Σμ)/n, σ̄² = (ν_t + Σν)/n − μ̄², where only
    the current batch's μ_t = mean(x), ν_t = mean(x²) depend on x. Closed-form backward: the
    same result as autograd through those formulas, with a handful of full-size ops."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, count, eps):
        inv_std = torch.rsqrt(var + eps)
        scale = inv_std * weight  # (G, C)
        shift = bias - mean * scale
        n, c = x.shape[:2]
        per_sample = (n, c, 1, 1)  # group g's (G, C) statistics repeated for its N/G samples
        b = n // scale.shape[0]
        shift, scale = shift.repeat_interleave(b, 0), scale.repeat_interleave(b, 0)
        y = torch.addcmul(shift.view(per_sample), x, scale.view(per_sample))
        ctx.save_for_backward(x, weight, mean, inv_std, count)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, inv_std, count = ctx.saved_tensors
        g = mean.shape[0]
        xg = x.view(g, x.shape[0] // g, *x.shape[1:])
        grad = grad.reshape(xg.shape)
        b, c = xg.shape[1:3]
        m = b * xg.shape[3] * xg.shape[4]
        sum_g = grad.sum(dim=(1, 3, 4))  # (G, C)
        sum_gx = (grad * xg).sum(dim=(1, 3, 4))
        centred = sum_gx - mean * sum_g  # Σ g·(x − μ̄)
        scale = inv_std * weight
        d_var = -0.5 * weight * inv_std.pow(3) * centred  # ∂L/∂σ̄² (= ∂L/∂ν̄)
        d_mean = -scale * sum_g - 2 * mean * d_var  # ∂L/∂μ̄ through x − μ̄ and σ̄²
        c_x = 2 * d_var / (count * m)  # via ν_t = mean(x²)
        c_0 = d_mean / (count * m)  # via μ_t = mean(x)
        shape = (g, 1, c, 1, 1)
        grad_x = torch.addcmul(c_0.view(shape), xg, c_x.view(shape))
        grad_x.addcmul_(grad, scale.view(shape))
        grad_w = (centred * inv_std).sum(0)
        return grad_x.view_as(x), grad_w, sum_g.sum(0), None, None, None, None


class CrossIterationBatchNorm2d(StepCounter, nn.Module):
    """Cross-Iteration BN: statistics over k iterations, Taylor-compensated to current weights."""

    diagnostics_prefix = "cbn"

    ddp_local_buffers = WINDOW_BUFFERS
    supports_ghost_batch = True
    norm_batch: int | None = None

    def __init__(
        self,
        num_features: int,
        window: int = 4,
        burnin: float = 0,
        rho: float = 1.0,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        unit: str = "steps",
    ) -> None:
        super().__init__()
        if window < 1:
            raise NormConfigError(f"CBN window must be >= 1 (1 = plain BN), got {window}")
        check_milestones("CBN burn-in", unit, {"burnin": burnin}, units=BURNIN_UNITS)
        self.num_features = num_features
        self.window = int(window)
        self.unit = unit
        self.burnin_arg = float(burnin)
        # burn-in in steps (a fraction is placed by set_total_steps)
        self.burnin = int(burnin) if unit == "steps" else 0
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
        self._host_valid: int | None = None  # host copies of win_valid.sum() and win_pos
        self._host_pos = 0
        self._diag: tuple[Tensor, Tensor, Tensor] | None = None  # last step's diagnostics
        self._selectors: dict = {}  # mean-patch selector matrices per input/output shape

    def set_total_steps(self, total_steps: int) -> None:
        """Total training steps of the run: places a fractional burn-in, and refuses a burn-in
        in steps the run never leaves (the layer would be plain BN throughout), by
        :func:`~smallbatch.norms.schedule.place_milestones`' rule."""
        if self.unit == "steps" and self.window == 1:
            return  # plain BN at any step: nothing to place
        (burnin,) = place_milestones(
            f"{layer_label(self)}: CBN burn-in",
            self.unit,
            {"burnin": self.burnin_arg},
            total_steps,
            fraction_example="{unit: fraction, burnin: 0.1}",
            units=BURNIN_UNITS,
        )
        self.burnin = int(round(burnin))

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
        self._selectors = {}
        self._hook = conv.register_forward_hook(self._capture_conv_io)
        self._allocate_window(replicas=1)

    def _allocate_window(self, replicas: int) -> None:
        """(Re)allocate the window: ``replicas`` independent histories of statistics (one per
        ghost group, as one per device under DDP), ``window − 1`` entries each."""
        k1, c = self.window - 1, self.num_features
        w = self._conv.weight
        like = {"device": w.device, "dtype": w.dtype}
        r = replicas
        self.register_buffer("win_stats", torch.zeros(r, k1, 2, c, **like))  # (μ, ν) per entry
        self.register_buffer(
            "win_ref", torch.zeros(r, k1, 2, c, **like)
        )  # (⟨∂μ/∂W, W_τ⟩, ⟨∂ν/∂W, W_τ⟩)
        self.register_buffer(
            "win_dmean", torch.zeros(r, k1, self._conv.groups, *w.shape[1:], **like)
        )
        self.register_buffer("win_dsqmean", torch.zeros(r, k1, *w.shape, **like))
        self.register_buffer("win_valid", torch.zeros(k1, dtype=torch.bool, device=w.device))
        self.register_buffer("win_pos", torch.zeros((), dtype=torch.long, device=w.device))
        self._host_valid, self._host_pos = 0, 0

    @property
    def replicas(self) -> int:
        return self.win_stats.shape[0]

    # Views of the packed window: (R, k − 1, C) each.
    win_mean = property(lambda self: self.win_stats[:, :, 0], doc="μ of each window entry")
    win_sqmean = property(lambda self: self.win_stats[:, :, 1], doc="ν = E[y²] of each entry")
    win_mean_ref = property(lambda self: self.win_ref[:, :, 0], doc="⟨∂μ/∂W, W_τ⟩ per entry")
    win_sqmean_ref = property(lambda self: self.win_ref[:, :, 1], doc="⟨∂ν/∂W, W_τ⟩ per entry")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for packed, (first, second) in _UNPACKED.items():  # checkpoints before the packing
            if prefix + first in state_dict and prefix + packed not in state_dict:
                pair = (state_dict.pop(prefix + first), state_dict.pop(prefix + second))
                state_dict[prefix + packed] = torch.stack(pair, dim=2)
        saved = state_dict.get(prefix + "win_stats")
        if self._conv is not None and saved is not None and saved.shape[0] != self.replicas:
            self._allocate_window(saved.shape[0])  # a checkpoint taken with ghost batches
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._host_valid = None  # re-read from the loaded buffer on next use

    def _capture_conv_io(self, conv: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        """Forward hook of the feeding conv: remember its input and output for this layer."""
        self._conv_io = (inputs[0], out) if self.training and torch.is_grad_enabled() else None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return normalize_with_running_stats(self, x)
        groups = normalization_groups(x, self)
        self.advance_step()
        step = self.host_step()
        # Recording starts k-1 steps before the burn-in ends, so the window is full at once.
        record = self.window > 1 and step > self.burnin - (self.window - 1)
        conv_in = self._take_conv_input(x) if record else None
        if conv_in is not None and groups != self.replicas:
            if self.valid_entries():
                raise NormConfigError(
                    f"{layer_label(self)}: the number of ghost groups changed from "
                    f"{self.replicas} to {groups} while the CBN window holds statistics"
                )
            self._allocate_window(groups)
        active = self.window > 1 and step > self.burnin and self.valid_entries() > 0
        xg = x.view(groups, x.shape[0] // groups, *x.shape[1:])
        if active:
            y, current = self._window_forward(x, groups)
        elif groups == 1:
            self._diag = None
            y = F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias,
                True, self.momentum, self.eps,
            )  # fmt: skip
            current = None
        else:  # ghost batches before the window starts: per-group BN
            self._diag = None
            y, current = self._window_forward(x, groups, past=False)
        if conv_in is not None:
            if current is None:
                current = torch.stack(moments(xg, (1, 3, 4)), dim=1)
            self._record(xg, conv_in, current)
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

    def valid_entries(self) -> int:
        """Past iterations held in the window (filled in ring order 0, 1, …, k−2)."""
        if self._host_valid is None:
            self._host_valid = int(self.win_valid.sum())
            self._host_pos = int(self.win_pos)
        return self._host_valid

    @property
    def last_window_active(self) -> bool:
        """Whether the last training step normalized with the window (not plain BN)."""
        return self._diag is not None

    @property
    def last_entries_used(self) -> float:
        """Mean over channels of the iterations averaged in the last step (current included)."""
        return 1.0 if self._diag is None else float(self._diag[2].mean())

    @property
    def last_compensation(self) -> float:
        """Mean |Δμ| of the Taylor compensation over kept window entries in the last step."""
        if self._diag is None:
            return 0.0
        comp, keep, _ = self._diag
        return float(comp[:, :, 0].abs()[keep].mean()) if bool(keep.any()) else 0.0

    def diagnostics(self) -> dict[str, float]:
        """Whether the window was used, iterations averaged, mean |Δμ| compensation."""
        return {
            "window_active": float(self.last_window_active),
            "entries_used": self.last_entries_used,
            "compensation": self.last_compensation,
        }

    def _compensation(self, n: int) -> Tensor:
        """Taylor terms moving the first ``n`` entries' (μ, ν) to the current conv weights,
        rho·(⟨∂/∂W, W_t⟩ − ⟨∂/∂W, W_{t−τ}⟩), shape (R, n, 2, C)."""
        r, c = self.replicas, self.num_features
        w = self._conv.weight.detach().reshape(c, -1)
        at = w.new_empty(r, n, 2, c)  # ⟨∂μ/∂W, W_t⟩ and ⟨∂ν/∂W, W_t⟩, written in place
        at_mean, at_sq = at[:, :, 0].view(r * n, c), at[:, :, 1].view(r * n, c)
        dmean = self.win_dmean[:, :n]  # (R, n, groups, Cin/groups, kh, kw)
        groups = dmean.shape[2]
        if groups == 1:
            torch.mm(dmean.reshape(r * n, -1), w.t(), out=at_mean)
        else:  # one mean patch per conv group, shared by its output channels
            patches = dmean.reshape(r * n, groups, -1).transpose(0, 1)  # (groups, R·n, P/g)
            per_group = torch.bmm(w.view(groups, c // groups, -1), patches.transpose(1, 2))
            at_mean.copy_(per_group.permute(2, 0, 1).reshape(r * n, c))
        dsq = self.win_dsqmean[:, :n].reshape(r * n, c, -1)
        if dsq[0].numel() < _LARGE_ENTRY:
            torch.linalg.vecdot(dsq, w, out=at_sq)
        else:  # one entry at a time: the product's temporary stays small (large layers)
            for entry, out in zip(dsq, at_sq, strict=True):
                torch.linalg.vecdot(entry, w, out=out)
        comp = at.sub_(self.win_ref[:, :n])
        return comp if self.rho == 1.0 else comp.mul_(self.rho)

    def _past_sums(self, n: int) -> tuple[Tensor, Tensor]:
        """The window's share of the average, which does not depend on the current batch: the
        sum of the kept entries' compensated (μ, ν), shape (R, 2, C), and the number of averaged
        iterations (kept entries + 1 for the current batch), shape (R, C). Entries whose
        compensated variance ν − μ² is negative are dropped."""
        comp = self._compensation(n)
        past_stats = comp + self.win_stats[:, :n]  # (R, n, 2, C)
        past_mean, past_sq = past_stats.unbind(2)
        keep = torch.addcmul(past_sq, past_mean, past_mean, value=-1) >= 0
        count = keep.sum(1, dtype=past_stats.dtype).add_(1)
        self._diag = (comp, keep, count)
        return (past_stats * keep.unsqueeze(2)).sum(1), count

    def _window_forward(self, x: Tensor, groups: int, past: bool = True) -> tuple[Tensor, Tensor]:
        """Normalize x (N, C, H, W), as ``groups`` groups of N/groups samples, with the current
        and (compensated) past statistics; also returns the current (μ_t, ν_t), shape (G, 2, C).
        """
        xg = x.view(groups, x.shape[0] // groups, *x.shape[1:])  # statistics only (no grad)
        m = xg.shape[1] * xg.shape[3] * xg.shape[4]
        with torch.no_grad():
            # (G, 2, C): μ_t, ν_t; fp32 also under bf16 autocast
            current = torch.stack(moments(xg, (1, 3, 4)), dim=1)
            if past:
                sums, count = self._past_sums(self.valid_entries())
                stats = sums.add_(current).div_(count.unsqueeze(1))
            else:
                count, stats = None, current
            mean, sqmean = stats.unbind(1)
            mean_t, sq_t = current.unbind(1)
            var = torch.addcmul(sqmean, mean, mean, value=-1).clamp_min_(0)
            var_t = torch.addcmul(sq_t, mean_t, mean_t, value=-1).clamp_min_(0)
            update_running_from_groups(self, mean_t, var_t, m, self.momentum)
        weight, bias = affine_params(self, mean)
        if groups == 1:  # torch's batch-norm kernels (functional.batch_stat_norm)
            y = batch_stat_norm(
                x,
                weight,
                bias,
                mean[0],
                var[0],
                self.eps,
                count=None if count is None else count[0],
            )
        else:
            if count is None:
                count = torch.ones_like(mean)
            y = _WindowNorm.apply(x, weight, bias, mean, var, count, self.eps)
        return y, current

    def _mean_patch_selectors(self, in_hw, out_hw, device, dtype) -> tuple[Tensor, ...]:
        """0/1 matrices (kh, H), (kw, W): entry [a, h] = 1 where kernel row a of some output
        row reads input row h (stride, padding and dilation of the conv); for small inputs also
        their product K (H·W, kh·kw) / (H_out·W_out), so a mean patch is one matmul. Cached."""
        key = (in_hw, out_hw, device, dtype)
        cached = self._selectors.get(key)
        if cached is None:
            conv = self._conv
            rows, cols = (
                _selector(size, out, k, s, p, d, device, dtype)
                for size, out, k, s, p, d in zip(
                    in_hw, out_hw, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    strict=True,
                )
            )  # fmt: skip
            cached = (rows, cols)
            if rows.numel() * cols.numel() <= _KRON_LIMIT:
                kron = torch.einsum("ah,bw->hwab", rows, cols).reshape(
                    rows.shape[1] * cols.shape[1], -1
                )
                cached += (kron / (out_hw[0] * out_hw[1]),)
            self._selectors[key] = cached
        return cached

    def _write_mean_patch(self, xg: Tensor, conv_in: Tensor, pos: int) -> None:
        """∂μ/∂W of each group into window slot ``pos``, shape (G, groups, Cin/groups, kh, kw):
        the mean input patch, a box sum of the batch-mean input. One matmul with the cached
        (H·W, kh·kw) selector product; two small matmuls (rows, then columns) for large inputs.
        """
        w = self._conv.weight
        g, b, _, h_out, w_out = xg.shape
        conv_in = conv_in.detach().view(g, b, *conv_in.shape[1:])
        mean_in = conv_in.mean(1, dtype=w.dtype)  # (G, Cin, H, W)
        cin, h, wd = mean_in.shape[1:]
        selectors = self._mean_patch_selectors((h, wd), (h_out, w_out), w.device, w.dtype)
        slot = self.win_dmean[:, pos]
        if len(selectors) == 3:
            by_pixel = mean_in.view(g * cin, h * wd)
            if slot.is_contiguous():
                torch.mm(by_pixel, selectors[2], out=slot.view(g * cin, -1))
            else:  # one group's slot in a window with several groups
                slot.copy_(torch.mm(by_pixel, selectors[2]).view(slot.shape))
            return
        rows, cols = selectors
        by_col = torch.mm(mean_in.reshape(-1, wd), cols.t()).view(g * cin, h, -1)  # Σ over w
        by_row = torch.mm(by_col.transpose(1, 2).reshape(-1, h), rows.t())  # Σ over h
        patch = by_row.view(g, cin, -1, rows.shape[0]).transpose(2, 3)  # (G, Cin, kh, kw)
        torch.mul(patch.reshape(slot.shape), 1.0 / (h_out * w_out), out=slot)

    def _write_sqmean_weight_grad(self, xg: Tensor, conv_in: Tensor, pos: int) -> None:
        """∂ν/∂W of each group into window slot ``pos``, shape (G, *W.shape): the conv's
        weight-gradient for grad_output 2y/M. Computed in the conv output's dtype, as the conv's
        own weight-gradient (bf16 under bf16 autocast, fp32 otherwise); stored in W's dtype."""
        conv = self._conv
        dtype = xg.dtype  # the dtype the conv computed in (autocast) or W's dtype
        w = conv.weight.detach().to(dtype)
        g, b = xg.shape[:2]
        scale = 2.0 / (b * xg.shape[3] * xg.shape[4])
        geometry = (conv.stride, conv.padding, conv.dilation, False, [0], conv.groups)
        conv_in = conv_in.detach().to(dtype).view(g, b, *conv_in.shape[1:])
        for i, (inp, y) in enumerate(zip(conv_in, xg.detach(), strict=True)):
            grad_w = _conv_backward(y, inp, w, None, *geometry, (False, True, False))[1]
            torch.mul(grad_w, scale, out=self.win_dsqmean[i, pos])

    def _write_stat_weight_gradients(self, xg: Tensor, conv_in: Tensor, pos: int) -> None:
        """(∂μ/∂W, ∂ν/∂W) of the current batch, per group, into window slot ``pos``."""
        self._write_mean_patch(xg, conv_in, pos)
        self._write_sqmean_weight_grad(xg, conv_in, pos)

    @torch.no_grad()
    def _record(self, xg: Tensor, conv_in: Tensor, current: Tensor) -> None:
        """Write the current batch's statistics, their weight-gradients and their inner products
        with the current conv weights into the ring at the current position; advance the ring.
        """
        self.valid_entries()  # make sure the host-side ring position is known
        pos, k1 = self._host_pos, self.window - 1
        self._write_stat_weight_gradients(xg, conv_in, pos)
        self._store_entry(pos, current)
        if self._host_valid < k1:
            self.win_valid[pos] = True
            self._host_valid += 1
        self._host_pos = (pos + 1) % k1
        self.win_pos.fill_(self._host_pos)

    def _store_entry(self, pos: int, current: Tensor) -> None:
        """(μ, ν) (``current``, shape (G, 2, C)) and the inner products ⟨∂μ/∂W, W_t⟩,
        ⟨∂ν/∂W, W_t⟩ into slot ``pos``. The conv output y = W·patch + b is linear in W, so
        ⟨∂μ/∂W, W⟩ = μ − b and ⟨∂ν/∂W, W⟩ = 2(ν − b·μ) (Euler's identity for the degree-1 and
        degree-2 parts; exact, no pass over ∂/∂W)."""
        self.win_stats[:, pos] = current
        ref = self.win_ref[:, pos]
        conv_bias = self._conv.bias
        if conv_bias is not None:
            b = conv_bias.detach()
            mean_t, sq_t = current.unbind(1)
            current = torch.stack((mean_t - b, torch.addcmul(sq_t, mean_t, b, value=-1)), 1)
        ref.copy_(current)
        ref[:, 1].mul_(2.0)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, window={self.window}, burnin={self.burnin_arg:g} "
            f"({self.unit}), rho={self.rho}, "
            f"eps={self.eps}, momentum={self.momentum}"
        )
