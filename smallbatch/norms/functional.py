"""Batch-statistics normalization on torch's batch-norm kernels, for BRN and CBN.

``batch_stat_norm`` computes  y = γ·(r·(x − μ)/√(σ² + ε) + d) + β  where μ, σ² are statistics
that depend on the current batch x only through its per-channel moments, each carrying weight
1/n (n = ``count``; 1 for plain batch statistics, the number of averaged iterations for CBN),
and r, d are constants (Batch Renorm's correction; 1 and 0 otherwise).

The forward pass is torch's eval-mode batch-norm kernel with weight γ·r and bias β + γ·d (one
pass over x; the caller has already computed μ, σ² with two plain reductions, which on CPU is
several times cheaper than the training-mode kernel's own statistics). The backward pass is
torch's training-mode batch-norm backward kernel (one fused reduction and one elementwise pass):

  BN:  dx = w·s·(g − mean(g) − x̂·mean(g·x̂)),  s = 1/√(σ² + ε),  x̂ = (x − μ)·s.

With weight 1/n on the batch's moments the two correction terms are divided by n. Calling the
kernel with s' = s/√n and w' = w·√n divides the x̂ term by n and keeps w·s; the mean(g) term is
then fixed per channel by adding w·s·(1 − 1/n)·mean(g). ``tests/norms/test_functional.py``
checks the result against autograd through the formulas.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_bn_backward = torch.ops.aten.native_batch_norm_backward


def moments(x: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Per-channel mean and mean of squares over ``dims``, in fp32 (also for bf16 inputs).

    Two plain reductions: on CPU several times faster than ``torch.var_mean`` (Welford). Low
    precision inputs (bf16 autocast) are reduced with fp32 accumulation, without an fp32 copy.
    """
    x = x.detach()
    if x.dtype in (torch.float32, torch.float64):
        return x.mean(dim=dims), (x * x).mean(dim=dims)
    count = math.prod(x.shape[d] for d in dims)  # values reduced per channel
    mean = x.mean(dim=dims, dtype=torch.float32)
    sqmean = torch.linalg.vector_norm(x, dim=dims, dtype=torch.float32).square_().div_(count)
    return mean, sqmean


class _BatchStatNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, eps, r, d, count, invstd):
        w_eff = weight if r is None else weight * r
        b_eff = bias if d is None else torch.addcmul(bias, weight, d)
        y = F.batch_norm(x, mean, var, w_eff, b_eff, False, 0.0, eps)
        if invstd is None:
            invstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(x, w_eff, mean, invstd, r, d, count)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, grad):
        x, w_eff, mean, invstd, r, d, count = ctx.saved_tensors
        if count is None:
            w_k, invstd_k = w_eff, invstd
        else:
            root = count.sqrt()
            w_k, invstd_k = w_eff * root, invstd / root
        grad_x, sum_gxhat, sum_g = _bn_backward(
            grad.contiguous(memory_format=_memory_format(x)),
            x, w_k, None, None, mean, invstd_k, True, ctx.eps, [True, True, True],
        )  # fmt: skip
        if count is not None:
            per_channel = x.numel() // x.shape[1]
            fix = w_eff * invstd * sum_g * (1 - 1 / count) / per_channel
            grad_x = grad_x.add_(fix.view(1, -1, *([1] * (x.dim() - 2))).to(grad_x.dtype))
            sum_gxhat = sum_gxhat * root  # Σ g·(x − μ)·s
        grad_w = sum_gxhat if r is None else sum_gxhat * r
        if d is not None:
            grad_w = grad_w + sum_g * d
        return grad_x, grad_w, sum_g, None, None, None, None, None, None, None


def _memory_format(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def fold_groups(x: Tensor, groups: int) -> Tensor:
    """(G·b, C, ...) → (b, G·C, ...): sample i·b + j's channel c becomes sample j's channel
    g·C + c (g = i), so one per-channel kernel call normalizes G ghost groups separately.

    A view when b = 1; otherwise one copy (autograd copies the gradient back)."""
    n, c, rest = x.shape[0], x.shape[1], x.shape[2:]
    b = n // groups
    return x.reshape(groups, b, c, *rest).transpose(0, 1).reshape(b, groups * c, *rest)


def unfold_groups(y: Tensor, groups: int) -> Tensor:
    """Inverse of ``fold_groups``: (b, G·C, ...) → (G·b, C, ...)."""
    b, c, rest = y.shape[0], y.shape[1] // groups, y.shape[2:]
    return y.reshape(b, groups, c, *rest).transpose(0, 1).reshape(groups * b, c, *rest)


def affine_params(layer: nn.Module, like: Tensor, groups: int = 1) -> tuple[Tensor, Tensor]:
    """(γ, β) of a norm layer for the kernels here: its affine parameters, or ones and zeros
    (of ``like``'s dtype and device) without them; tiled for ``groups`` folded ghost groups."""
    weight, bias, n = layer.weight, layer.bias, layer.num_features
    weight = weight if weight is not None else like.new_ones(n)
    bias = bias if bias is not None else like.new_zeros(n)
    return (weight, bias) if groups == 1 else (weight.repeat(groups), bias.repeat(groups))


def batch_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance (fp32, no gradient) of (N, C, ...) x, from moments
    shifted by one sample of each channel, K = x[0, c, 0, …]:

      var = E[(x − K)²] − E[x − K]²,  mean = E[x − K] + K.

    Unshifted, E[x²] − E[x]² cancels catastrophically when |mean| ≫ std (fp32 loses all digits
    at |mean|/std ≈ 10³); with K from the data the subtraction x − K is exact near K (Sterbenz)
    and the two terms are of the variance's size. Costs one elementwise pass over x."""
    x = x.detach()
    shift = x[(0, slice(None), *([0] * (x.dim() - 2)))]
    mean, sqmean = moments(x - shift.view(1, -1, *([1] * (x.dim() - 2))), (0, *range(2, x.dim())))
    var = torch.addcmul(sqmean, mean, mean, value=-1).clamp_min_(0)
    return mean.add_(shift.to(mean.dtype)), var


def batch_stat_norm(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    mean: Tensor,
    var: Tensor,
    eps: float,
    r: Tensor | None = None,
    d: Tensor | None = None,
    count: Tensor | None = None,
    invstd: Tensor | None = None,
) -> Tensor:
    """y = γ·(r·(x − μ)/√(σ² + ε) + d) + β for (N, C, ...) x and per-channel (C,) tensors.

    ``mean``/``var`` (no gradient) are the statistics; gradients reach x through them as through
    the batch's own mean and biased variance, scaled by 1/``count`` (default 1). ``r`` and ``d``
    are constants (default 1 and 0); ``invstd`` = 1/√(σ² + ε) if the caller has it. Returns
    gradients for x, weight and bias."""
    return _BatchStatNorm.apply(x, weight, bias, mean, var, eps, r, d, count, invstd)
