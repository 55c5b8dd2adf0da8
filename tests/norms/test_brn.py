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
        brn.running_std.copy_((bn.running_var + brn.eps).sqrt())
    return bn, brn


def test_brn_with_rmax1_dmax0_equals_bn_outputs_and_gradients():
    bn, brn = _pair()
    sigma0 = brn.running_std.clone()
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
    # BRN moves σ (not the variance) toward σ_B = √(biased Var_B + ε)
    sigma_b = (x.var(dim=(0, 2, 3), unbiased=False) + brn.eps).sqrt()
    torch.testing.assert_close(brn.running_std, 0.9 * sigma0 + 0.1 * sigma_b)
    torch.testing.assert_close(brn.running_var, brn.running_std**2 - brn.eps)


def _paper_brn(x, mu, sigma, gamma, beta, rmax, dmax, eps):
    """Algorithm 1 of Ioffe 2017 written out with plain autograd, r and d detached."""
    mu_b = x.mean(dim=(0, 2, 3))
    sigma_b = (x.var(dim=(0, 2, 3), unbiased=False) + eps).sqrt()
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
        brn.running_std.uniform_(0.3, 2)
        brn.weight.normal_()
        brn.bias.normal_()
    mu, var = brn.running_mean.clone(), brn.running_std.clone()
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
        brn.running_std.uniform_(0.5, 2)
        brn.weight.normal_()
        brn.bias.normal_()
    brn.eval()
    x = torch.randn(2, 4, 3, 3)
    ref = (x - brn.running_mean.view(1, -1, 1, 1)) / brn.running_std.view(1, -1, 1, 1)
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
    assert torch.equal(brn.running_std, fresh.running_std)
    assert torch.equal(brn.running_var, fresh.running_var)


def test_brn_rejects_bad_ramp():
    with pytest.raises(NormConfigError, match="rmax >= 1"):
        BatchRenorm2d(3, rmax=0.5)
    with pytest.raises(NormConfigError, match="unit"):
        BatchRenorm2d(3, unit="epochs")


def _ramp(step, warmup, rmax_at, dmax_at, rmax, dmax):
    """The paper's rmax/dmax schedule, written out again for the oracle."""
    if step <= warmup:
        return 1.0, 0.0
    r = rmax if step >= rmax_at else 1 + (rmax - 1) * (step - warmup) / (rmax_at - warmup)
    d = dmax if step >= dmax_at else dmax * (step - warmup) / (dmax_at - warmup)
    return r, d


class _Algorithm1:
    """Ioffe 2017, Algorithm 1, with plain tensor ops: moving μ and σ, r and d detached.

    ``groups`` > 1: each group of N/groups samples is normalized on its own (ghost batches) and
    μ, σ move toward the groups' average μ_B and σ_B."""

    def __init__(self, mu, sigma, eps, alpha, groups=1):
        self.mu, self.sigma, self.eps, self.alpha, self.groups = mu, sigma, eps, alpha, groups

    def train(self, x, gamma, beta, rmax, dmax):
        outs, mus, sigmas = [], [], []
        for xg in x.chunk(self.groups):
            mu_b = xg.mean(dim=(0, 2, 3))
            sigma_b = (((xg - mu_b.view(1, -1, 1, 1)) ** 2).mean(dim=(0, 2, 3)) + self.eps).sqrt()
            r = (sigma_b / self.sigma).clamp(1 / rmax, rmax).detach()
            d = ((mu_b - self.mu) / self.sigma).clamp(-dmax, dmax).detach()
            xhat = (xg - mu_b.view(1, -1, 1, 1)) / sigma_b.view(1, -1, 1, 1)
            xhat = xhat * r.view(1, -1, 1, 1) + d.view(1, -1, 1, 1)
            outs.append(gamma.view(1, -1, 1, 1) * xhat + beta.view(1, -1, 1, 1))
            mus.append(mu_b.detach())
            sigmas.append(sigma_b.detach())
        self.mu = self.mu + self.alpha * (torch.stack(mus).mean(0) - self.mu)
        self.sigma = self.sigma + self.alpha * (torch.stack(sigmas).mean(0) - self.sigma)
        return torch.cat(outs)

    def eval(self, x, gamma, beta):
        xhat = (x - self.mu.view(1, -1, 1, 1)) / self.sigma.view(1, -1, 1, 1)
        return gamma.view(1, -1, 1, 1) * xhat + beta.view(1, -1, 1, 1)


@pytest.mark.parametrize("norm_batch", [None, 2], ids=["whole-batch", "ghost-2"])
def test_brn_trains_as_algorithm_1_for_many_sgd_steps(norm_batch):
    """Conv → BRN trained by SGD for 12 steps from running statistics far from the batch's (r and
    d clip), against Algorithm 1: outputs, gradients, running μ/σ each step, eval afterwards."""
    torch.manual_seed(3)
    c, steps, lr = 6, 12, 0.5
    ramp = {"warmup": 2, "rmax_at": 8, "dmax_at": 6, "rmax": 1.6, "dmax": 0.8}
    conv = nn.Conv2d(3, c, 3, padding=1, bias=False)
    brn = BatchRenorm2d(c, momentum=0.2, **ramp)
    brn.norm_batch = norm_batch
    with torch.no_grad():
        brn.running_mean.uniform_(2, 4)  # far from the batch mean (about 0)
        brn.running_std.uniform_(0.1, 0.3)  # far below the batch σ
        brn.weight.uniform_(0.5, 1.5)
        brn.bias.normal_()
    w_ref = conv.weight.detach().clone().requires_grad_()
    gamma = brn.weight.detach().clone().requires_grad_()
    beta = brn.bias.detach().clone().requires_grad_()
    groups = 4 // norm_batch if norm_batch else 1
    ref = _Algorithm1(brn.running_mean.clone(), brn.running_std.clone(), brn.eps, 0.2, groups)
    opt = torch.optim.SGD([*conv.parameters(), *brn.parameters()], lr=lr)
    opt_ref = torch.optim.SGD([w_ref, gamma, beta], lr=lr)
    clipped_steps = 0
    for step in range(steps):
        x = torch.randn(4, 3, 5, 5)
        target = torch.randn(4, c, 5, 5)
        out = brn(conv(x))
        expected = ref.train(
            nn.functional.conv2d(x, w_ref, padding=1), gamma, beta, *_limits(step, ramp)
        )
        clipped_steps += brn.last_rmax > 1 and (brn.last_r_clipped > 0 or brn.last_d_clipped > 0)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        for o, loss_of in ((opt, out), (opt_ref, expected)):
            o.zero_grad()
            ((loss_of - target) ** 2).mean().backward()
        torch.testing.assert_close(conv.weight.grad, w_ref.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(brn.weight.grad, gamma.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(brn.bias.grad, beta.grad, rtol=1e-5, atol=1e-5)
        opt.step()
        opt_ref.step()
        torch.testing.assert_close(brn.running_mean, ref.mu, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(brn.running_std, ref.sigma, rtol=1e-5, atol=1e-5)
    assert clipped_steps >= 8  # r or d at its limit in every step after the warm-up
    brn.eval()
    x = torch.randn(4, 3, 5, 5)
    with torch.no_grad():
        expected = ref.eval(nn.functional.conv2d(x, w_ref, padding=1), gamma, beta)
        torch.testing.assert_close(brn(conv(x)), expected, rtol=1e-5, atol=1e-5)


def _limits(step, ramp):
    return _ramp(step, ramp["warmup"], ramp["rmax_at"], ramp["dmax_at"], ramp["rmax"], ramp["dmax"])


def test_brn_loads_checkpoint_of_the_variance_layout():
    """A state dict without running_std (moving unbiased variance) loads with σ = √(var + ε)."""
    brn = BatchRenorm2d(3)
    old = {k: v for k, v in brn.state_dict().items() if k != "running_std"}
    old["running_var"] = torch.tensor([0.5, 1.0, 4.0])
    fresh = BatchRenorm2d(3)
    with pytest.warns(UserWarning, match="earlier BRN layout"):
        fresh.load_state_dict(old)
    torch.testing.assert_close(fresh.running_std, (old["running_var"] + fresh.eps).sqrt())
    torch.testing.assert_close(fresh.running_var, old["running_var"])


def test_auto_ramp_compresses_paper_milestones_to_a_short_run():
    ramp = RenormRamp()  # paper milestones in steps, unit auto
    assert ramp.milestones(None) == (5000, 40000, 25000)
    assert ramp.milestones(100_000) == (5000, 40000, 25000)  # long run: the paper's steps
    w, r, d = ramp.milestones(1000)  # short run: same shape, last milestone at 0.6 of it
    assert (w, r, d) == pytest.approx((75, 600, 375))
    assert ramp(1000, total_steps=1000) == (3.0, 5.0)


def test_short_run_with_step_milestones_is_refused_naming_the_fix():
    brn = BatchRenorm2d(3, unit="steps")
    with pytest.raises(NormConfigError, match=r"beyond this run's 3000 steps.*unit: fraction"):
        brn.set_total_steps(3000)
    brn.set_total_steps(50_000)  # long enough
    assert brn.current_limits() == (1.0, 0.0)
