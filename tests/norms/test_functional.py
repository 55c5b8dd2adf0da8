"""functional.batch_stat_norm (torch's batch-norm kernels) against autograd through the formulas."""

import pytest
import torch

from smallbatch.norms.functional import batch_moments, batch_stat_norm, moments

C = 5


def _stats(x, past_mean, past_sq, count):
    """μ̄ = (E[x] + Σμ)/n, σ̄² = (E[x²] + Σν)/n − μ̄², with autograd through the batch moments."""
    mean = (x.mean(dim=(0, 2, 3)) + past_mean) / count
    var = ((x * x).mean(dim=(0, 2, 3)) + past_sq) / count - mean**2
    return mean, var


def _inputs(channels_last=False):
    torch.manual_seed(0)
    x = torch.randn(3, C, 4, 4, dtype=torch.double) * 2 + 1
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w, b = torch.randn(C, dtype=torch.double), torch.randn(C, dtype=torch.double)
    r = torch.rand(C, dtype=torch.double) + 0.5
    d = torch.randn(C, dtype=torch.double)
    count = torch.tensor([1.0, 2.0, 3.0, 4.0, 2.0], dtype=torch.double)
    past_mean = torch.randn(C, dtype=torch.double) * (count - 1)
    past_sq = (past_mean**2 / count + 1) * (count - 1)
    return x, w, b, r, d, count, past_mean, past_sq


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
@pytest.mark.parametrize("case", ["bn", "renorm", "window"])
def test_batch_stat_norm_matches_autograd_reference(case, channels_last):
    x, w, b, r, d, count, past_mean, past_sq = _inputs(channels_last)
    zeros, ones = torch.zeros(C, dtype=x.dtype), torch.ones(C, dtype=x.dtype)
    if case != "window":
        count, past_mean, past_sq = ones, zeros, zeros
    if case != "renorm":
        r, d = ones, zeros

    def reference(x, w, b):
        mean, var = _stats(x, past_mean, past_sq, count)
        xhat = (x - mean.view(1, C, 1, 1)) / (var.view(1, C, 1, 1) + 1e-5).sqrt()
        return w.view(1, C, 1, 1) * (r.view(1, C, 1, 1) * xhat + d.view(1, C, 1, 1)) + b.view(
            1, C, 1, 1
        )

    def ours(x, w, b):
        mean, var = (s.detach() for s in _stats(x, past_mean, past_sq, count))
        extra = {"r": r, "d": d} if case == "renorm" else {}
        if case == "window":
            extra["count"] = count
        return batch_stat_norm(x, w, b, mean, var, 1e-5, **extra)

    leaves_a = [t.clone().requires_grad_() for t in (x, w, b)]
    leaves_b = [t.clone().requires_grad_() for t in (x, w, b)]
    out_a, out_b = reference(*leaves_a), ours(*leaves_b)
    torch.testing.assert_close(out_b, out_a)
    g = torch.randn_like(out_a)
    out_a.backward(g)
    out_b.backward(g)
    for a, b_ in zip(leaves_a, leaves_b, strict=True):
        torch.testing.assert_close(b_.grad, a.grad)
    if channels_last:
        assert leaves_b[0].grad.is_contiguous(memory_format=torch.channels_last)


def test_batch_stat_norm_passes_gradcheck_with_window_counts():
    x, w, b, _, _, count, past_mean, past_sq = _inputs()

    def fn(x, w, b):  # statistics recomputed from x: the numeric gradient sees them move
        mean, var = _stats(x, past_mean, past_sq, count)
        return batch_stat_norm(x, w, b, mean.detach(), var.detach(), 1e-5, count=count)

    assert torch.autograd.gradcheck(fn, tuple(t.requires_grad_() for t in (x, w, b)))


@pytest.mark.parametrize(
    ("shape", "dims", "channels_last"),
    [
        ((4, 3, 5, 6), (0, 2, 3), False),
        ((4, 3, 5, 6), (0, 2, 3), True),
        ((2, 3, 4, 5, 6), (1, 3, 4), False),
        ((2, 3, 4, 5, 6), (-4, -2, -1), False),
        ((6, 3), (0,), False),
        ((4, 3, 5, 6), (0, 1, 2, 3), False),
    ],
)
def test_moments_equal_their_definition(shape, dims, channels_last):
    x = torch.randn(shape, dtype=torch.float64).float() * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    mean, sqmean = moments(x, dims)
    xd = x.double()
    torch.testing.assert_close(mean.double(), xd.mean(dim=dims), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sqmean.double(), (xd * xd).mean(dim=dims), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("offset", [0.0, 1e3, -1e4])
@pytest.mark.parametrize("shape", [(8, 4, 5, 5), (1, 4, 3, 3), (6, 3)])
def test_batch_moments_keep_the_variance_when_the_mean_dwarfs_the_std(shape, offset):
    # one-pass E[x²] − E[x]² in fp32 is off by ~20% at |mean|/std = 1e3 (it was, in BRN)
    x = torch.randn(shape, dtype=torch.float64) + offset
    mean, var = batch_moments(x.float())
    dims = (0, *range(2, x.dim()))
    assert mean.dtype == var.dtype == torch.float32
    torch.testing.assert_close(
        var.double(), x.float().double().var(dims, unbiased=False), rtol=1e-4, atol=1e-6
    )
    torch.testing.assert_close(mean.double(), x.float().double().mean(dims), rtol=1e-6, atol=1e-5)


def test_moments_are_fp32_for_bf16_input():
    x = torch.randn(2, 3, 4, 4).to(torch.bfloat16)
    mean, sqmean = moments(x, (0, 2, 3))
    assert mean.dtype == sqmean.dtype == torch.float32
    torch.testing.assert_close(mean, x.float().mean(dim=(0, 2, 3)))
    torch.testing.assert_close(sqmean, x.float().square().mean(dim=(0, 2, 3)))


def test_batch_stat_norm_under_bf16_input_matches_fp32():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5)
    w, b = torch.randn(3), torch.randn(3)
    mean, sqmean = moments(x, (0, 2, 3))
    var = sqmean - mean**2
    xb = x.to(torch.bfloat16).requires_grad_()
    xf = x.clone().requires_grad_()
    yb = batch_stat_norm(xb, w, b, mean, var, 1e-5, count=torch.full((3,), 2.0))
    yf = batch_stat_norm(xf, w, b, mean, var, 1e-5, count=torch.full((3,), 2.0))
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), yf, rtol=0.05, atol=0.05)
    yb.float().sum().backward()
    yf.sum().backward()
    assert xb.grad.dtype == torch.bfloat16
    torch.testing.assert_close(xb.grad.float(), xf.grad, rtol=0.05, atol=0.05)
