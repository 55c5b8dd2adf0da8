"""Batch Renormalization against BatchNorm and the paper's formulas."""

import pytest
import torch
from torch import nn

from smallbatch.norms import BatchRenorm2d, NormConfigError, RenormRamp


def _pair(c=6, momentum=0.1, **kw):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(c, momentum=momentum)
    brn = BatchRenorm2d(c, momentum=momentum, rmax=1.0, dmax=0.0, **kw)
    gamma, beta = torch.randn(c), torch.randn(c)
    with torch.no_grad():
        for m in (bn, brn):
            m.weight.copy_(gamma)
            m.bias.copy_(beta)
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        brn.running_mean.copy_(bn.running_mean)
        brn.running_var.copy_(bn.running_var)
    return bn, brn


def test_brn_with_rmax1_dmax0_equals_bn_outputs_and_gradients():
    bn, brn = _pair()
    x = torch.randn(4, 6, 5, 5) * 3 + 1
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = bn(xa), brn(xb)
    # BRN takes its statistics as E[x²] − E[x]² (torch's BN: Welford): equal up to fp32 rounding
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(brn.weight.grad, bn.weight.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(brn.bias.grad, bn.bias.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(brn.running_mean, bn.running_mean)
    torch.testing.assert_close(brn.running_var, bn.running_var)


def _paper_brn(x, mu, var, gamma, beta, rmax, dmax, eps):
    """Algorithm 1 of Ioffe 2017 written out with plain autograd, r and d detached."""
    mu_b = x.mean(dim=(0, 2, 3))
    sigma_b = (x.var(dim=(0, 2, 3), unbiased=False) + eps).sqrt()
    sigma = (var + eps).sqrt()
    r = (sigma_b / sigma).clamp(1 / rmax, rmax).detach()
    d = ((mu_b - mu) / sigma).clamp(-dmax, dmax).detach()
    xhat = (x - mu_b[None, :, None, None]) / sigma_b[None, :, None, None]
    xhat = xhat * r[None, :, None, None] + d[None, :, None, None]
    return gamma[None, :, None, None] * xhat + beta[None, :, None, None]


def test_brn_matches_paper_formula_with_clipping_and_gradients():
    torch.manual_seed(1)
    brn = BatchRenorm2d(5, rmax=1.5, dmax=0.5, warmup=0, rmax_at=0, dmax_at=0)
    with torch.no_grad():
        brn.running_mean.normal_()
        brn.running_var.uniform_(0.1, 4)
        brn.weight.normal_()
        brn.bias.normal_()
    mu, var = brn.running_mean.clone(), brn.running_var.clone()
    x = torch.randn(3, 5, 4, 4) * 2
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    gamma = brn.weight.detach().clone().requires_grad_()
    beta = brn.bias.detach().clone().requires_grad_()
    ref = _paper_brn(xa, mu, var, gamma, beta, 1.5, 0.5, brn.eps)
    out = brn(xb)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    ref.backward(g)
    out.backward(g)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(brn.weight.grad, gamma.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(brn.bias.grad, beta.grad, rtol=1e-4, atol=1e-5)
    assert brn.last_r_clipped > 0 or brn.last_d_clipped > 0  # the test exercises clipping


def test_brn_eval_uses_running_statistics():
    torch.manual_seed(2)
    brn = BatchRenorm2d(4)
    with torch.no_grad():
        brn.running_mean.normal_()
        brn.running_var.uniform_(0.5, 2)
        brn.weight.normal_()
        brn.bias.normal_()
    brn.eval()
    x = torch.randn(2, 4, 3, 3)
    ref = (x - brn.running_mean.view(1, -1, 1, 1)) / (
        brn.running_var.view(1, -1, 1, 1) + brn.eps
    ).sqrt()
    ref = ref * brn.weight.view(1, -1, 1, 1) + brn.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(brn(x), ref)
    assert int(brn.step) == 0  # eval does not advance the ramp


def test_ramp_gives_paper_values():
    ramp = RenormRamp()  # paper defaults
    assert ramp(0) == (1.0, 0.0)
    assert ramp(5000) == (1.0, 0.0)
    rmax, dmax = ramp(25000)
    assert rmax == pytest.approx(1 + 2 * 20000 / 35000)
    assert dmax == pytest.approx(5.0)
    assert ramp(40000) == (3.0, 5.0)
    assert ramp(10**6) == (3.0, 5.0)


def test_ramp_as_fractions_of_total_steps():
    ramp = RenormRamp(warmup=0.1, rmax_at=0.8, dmax_at=0.5, unit="fraction")
    assert ramp(100, total_steps=1000) == (1.0, 0.0)
    assert ramp(800, total_steps=1000) == (3.0, 5.0)
    assert ramp(500, total_steps=1000)[1] == pytest.approx(5.0)
    with pytest.raises(NormConfigError, match="total steps"):
        ramp(10)


def test_brn_step_counter_drives_ramp_and_survives_state_dict():
    brn = BatchRenorm2d(3, warmup=2, rmax_at=6, dmax_at=4)
    x = torch.randn(4, 3, 2, 2)
    for _ in range(4):
        brn(x)
    assert int(brn.step) == 4
    assert brn.current_limits() == (2.0, 5.0)
    fresh = BatchRenorm2d(3, warmup=2, rmax_at=6, dmax_at=4)
    fresh.load_state_dict(brn.state_dict())
    assert int(fresh.step) == 4
    assert fresh.current_limits() == brn.current_limits()
    y1, y2 = brn(x), fresh(x)
    assert torch.equal(y1, y2)
    assert torch.equal(brn.running_var, fresh.running_var)


def test_brn_rejects_bad_ramp():
    with pytest.raises(NormConfigError, match="rmax >= 1"):
        BatchRenorm2d(3, rmax=0.5)
    with pytest.raises(NormConfigError, match="unit"):
        BatchRenorm2d(3, unit="epochs")
