"""MABN against its paper's formulas: moving-average forward and backward statistics, the
renormalization r, the EMA for evaluation, weight centralization, ghost groups, resume."""

import pytest
import torch
from torch import nn

from smallbatch.models import create_model
from smallbatch.norms import NormConfigError
from smallbatch.norms.mabn import CentralizedWeight, MovingAverageBatchNorm2d


class _PaperMABN:
    """The paper's training step written out with plain tensor ops, one normalization batch:
    χ̄ = mean of the last m χ = E[x²], z = x/√(χ̄+ε), r = clip(√(χ̄+ε)/√(ν+ε)), y = γ r z + β,
    ∂L/∂x = (g − z·ψ̄)/√(χ̄+ε) with g = γ r ∂L/∂y and ψ̄ the mean of the last m ψ = E[g z]."""

    def __init__(self, c, window, momentum, eps, warmup, renorm_after, rmax):
        self.window, self.momentum, self.eps = window, momentum, eps
        self.warmup, self.renorm_after, self.rmax = warmup, renorm_after, rmax
        self.chis, self.psis, self.nu, self.step = [], [], torch.ones(c), 0

    def forward(self, x, gamma, beta):
        chi = (x * x).mean(dim=(0, 2, 3))
        # the official switch (megvii-model/MABN, MABN.py), iterations counted from 1: the
        # moving average once `iteration > window` (a full buffer) and `iteration >= warmup`
        iteration = self.step + 1
        sma = iteration > self.window and iteration >= self.warmup and self.window > 1
        past = self.chis[-(self.window - 1) :] if sma else []
        chi_bar = torch.stack([*past, chi]).mean(0)
        sigma = (chi_bar + self.eps).sqrt()
        if self.step >= self.renorm_after:
            r = (sigma / (self.nu + self.eps).sqrt()).clamp(1 / self.rmax, self.rmax)
        else:
            r = torch.ones_like(sigma)
        z = x / sigma.view(1, -1, 1, 1)
        y = gamma.view(1, -1, 1, 1) * r.view(1, -1, 1, 1) * z + beta.view(1, -1, 1, 1)
        self.nu = (1 - self.momentum) * self.nu + self.momentum * chi_bar
        self.chis.append(chi)
        self._saved = (z, sigma, r, len(past))
        return y

    def backward(self, x, grad_y, gamma):
        z, sigma, r, n_past = self._saved
        g = grad_y * (gamma * r).view(1, -1, 1, 1)
        psi = (g * z).mean(dim=(0, 2, 3))
        past = self.psis[-n_past:] if n_past else []
        psi_bar = torch.stack([*past, psi]).mean(0)
        self.psis.append(psi)
        self.step += 1
        grad_x = (g - z * psi_bar.view(1, -1, 1, 1)) / sigma.view(1, -1, 1, 1)
        return grad_x, (grad_y * z * r.view(1, -1, 1, 1)).sum(dim=(0, 2, 3)), grad_y.sum((0, 2, 3))

    def eval(self, x, gamma, beta):
        sigma = (self.nu + self.eps).sqrt().view(1, -1, 1, 1)
        return gamma.view(1, -1, 1, 1) * x / sigma + beta.view(1, -1, 1, 1)


ARGS = {"window": 3, "momentum": 0.2, "eps": 1e-5, "warmup": 2, "renorm_after": 3, "rmax": 1.3}


def test_mabn_forward_backward_and_eval_follow_the_paper_over_many_steps():
    torch.manual_seed(0)
    c = 5
    layer = MovingAverageBatchNorm2d(c, unit="steps", **ARGS)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    ref = _PaperMABN(c, **ARGS)
    gamma, beta = layer.weight.detach().clone(), layer.bias.detach().clone()
    clipped = 0
    for step in range(9):
        scale = 1.0 + step  # growing inputs: χ̄ lags behind, so r clips after renorm_after
        x = (torch.randn(4, c, 3, 3) * scale).requires_grad_()
        grad_y = torch.randn(4, c, 3, 3)
        y = layer(x)
        expected = ref.forward(x.detach(), gamma, beta)
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
        y.backward(grad_y)
        gx, gw, gb = ref.backward(x.detach(), grad_y, gamma)
        torch.testing.assert_close(x.grad, gx, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.weight.grad, gw, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(layer.bias.grad, gb, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.running_var, ref.nu, rtol=1e-5, atol=1e-5)
        layer.weight.grad = layer.bias.grad = None
        clipped += layer.diagnostics().get("r_clipped", 0.0) > 0
    assert clipped >= 3  # r was clipped in the renormalizing steps
    layer.eval()
    x = torch.randn(2, c, 3, 3)
    torch.testing.assert_close(layer(x), ref.eval(x, gamma, beta), rtol=1e-5, atol=1e-5)


def test_mabn_in_warmup_is_mean_free_bn_with_its_exact_gradient():
    """Before ``warmup`` the statistics are the batch's own, and the custom backward equals
    autograd through y = γ·x/√(E[x²] + ε) + β."""
    torch.manual_seed(1)
    layer = MovingAverageBatchNorm2d(4, warmup=10, unit="steps")
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    g = torch.randn(3, 4, 5, 5)
    layer(x).backward(g)
    sigma = ((xr * xr).mean(dim=(0, 2, 3), keepdim=True) + layer.eps).sqrt()
    ref = layer.weight.detach().view(1, -1, 1, 1) * xr / sigma + layer.bias.detach().view(
        1, -1, 1, 1
    )
    ref.backward(g)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-6)


def test_ghost_groups_keep_their_own_history_like_devices():
    """Each ghost group averages over its own past batches, as each device would. (r is kept
    at 1: it uses ν, which moves toward the groups' average here and, under DDP, is rank 0's.)"""
    torch.manual_seed(2)
    args = {"window": 3, "warmup": 0, "renorm_after": 100, "unit": "steps"}
    ghost = MovingAverageBatchNorm2d(3, **args)
    ghost.norm_batch = 2
    devices = [MovingAverageBatchNorm2d(3, **args) for _ in range(2)]
    for _ in range(5):
        x = torch.randn(4, 3, 2, 2, requires_grad=True)
        g = torch.randn(4, 3, 2, 2)
        ghost(x).backward(g)
        parts = [x.detach()[i * 2 : (i + 1) * 2].clone().requires_grad_() for i in range(2)]
        for dev, part, gp in zip(devices, parts, g.split(2), strict=True):
            dev(part).backward(gp)
        torch.testing.assert_close(x.grad, torch.cat([p.grad for p in parts]))
    assert torch.equal(ghost.hist_x2[1], devices[1].hist_x2[0])


def test_swap_norms_centralizes_the_convs_that_feed_mabn():
    for backbone in ("resnet20", "resnet18"):
        model = create_model(backbone, "mabn", num_classes=10)
        mabn = [m for m in model.modules() if isinstance(m, MovingAverageBatchNorm2d)]
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        centred = [c for c in convs if hasattr(c, "parametrizations")]
        assert mabn and len(centred) == len(mabn)  # one conv feeds each MABN in a ResNet
        for conv in centred:
            assert isinstance(conv.parametrizations.weight[0], CentralizedWeight)
            mean = conv.weight.mean(dim=(1, 2, 3))
            torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-6, rtol=0)
            assert conv.parametrizations.weight.original.mean().abs() > 0  # raw weight kept


def test_mabn_state_resumes_bit_exactly():
    torch.manual_seed(3)
    args = {"window": 4, "warmup": 1, "renorm_after": 2, "unit": "steps"}
    model = create_model("resnet8", "mabn", num_classes=10, **args)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    xs = [torch.randn(4, 3, 8, 8) for _ in range(6)]

    def step(m, o, x):
        o.zero_grad()
        loss = m(x).square().mean()
        loss.backward()
        o.step()
        return loss.detach()

    for x in xs[:3]:
        step(model, opt, x)
    torch.manual_seed(4)
    clone = create_model("resnet8", "mabn", num_classes=10, **args)
    clone.load_state_dict(model.state_dict())
    opt2 = torch.optim.SGD(clone.parameters(), lr=0.05)
    opt2.load_state_dict(opt.state_dict())
    for x in xs[3:]:
        assert torch.equal(step(model, opt, x), step(clone, opt2, x))


def test_short_runs_and_bad_arguments():
    layer = MovingAverageBatchNorm2d(4)  # unit auto, paper milestones 100 / 1000 steps
    layer.set_total_steps(200)
    assert (layer.warmup, layer.renorm_after) == pytest.approx((2.0, 20.0))
    layer.set_total_steps(5000)
    assert (layer.warmup, layer.renorm_after) == (100, 1000)
    with pytest.raises(NormConfigError, match="beyond this run's 200 steps.*unit: fraction"):
        MovingAverageBatchNorm2d(4, unit="steps").set_total_steps(200)
    frac = MovingAverageBatchNorm2d(4, warmup=0.1, renorm_after=0.5, unit="fraction")
    frac.set_total_steps(200)
    assert (frac.warmup, frac.renorm_after) == (20, 100)
    with pytest.raises(NormConfigError, match="window must be >= 1"):
        MovingAverageBatchNorm2d(4, window=0)


@pytest.mark.slow
def test_mabn_ghost_batches_equal_two_process_ddp(tmp_path):
    """One process with ghost groups of b equals two DDP processes with b each (histories per
    rank via ddp_local_buffers, the centralized conv's raw weight shared)."""
    import torch.multiprocessing as mp
    from test_ghost_batch import B, _data, _model, _port, _train, _worker

    from smallbatch.norms import set_norm_batch

    args = {"window": 3, "warmup": 1, "renorm_after": 100, "unit": "steps"}
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(_port(), "mabn", args, str(out)), nprocs=2, join=True)
    ddp = torch.load(out)
    model = _model("mabn", **args)
    set_norm_batch(model, B)
    losses, grads = _train(model, *_data())
    for loss, ref in zip(losses, ddp["losses"], strict=True):
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    for g_ghost, g_ddp in zip(grads, ddp["grads"], strict=True):
        torch.testing.assert_close(g_ghost, g_ddp, rtol=1e-4, atol=1e-5)


def test_default_switch_is_the_official_iteration():
    """megvii-model/MABN's MABN2d (warmup_iters=100, buffer 16) normalizes with the moving
    average from training iteration 100 counted from 1: 0-based step 99, not 100."""
    torch.manual_seed(0)
    layer = MovingAverageBatchNorm2d(3, renorm_after=10**6, unit="steps").train()
    first_sma = None
    for step in range(101):
        x = torch.randn(4, 3, 5, 5) * (1 + step % 7)  # χ differs from step to step
        y = layer(x)
        own = x / (x.square().mean(dim=(0, 2, 3), keepdim=True) + layer.eps).sqrt()
        if first_sma is None and not torch.allclose(y, own, atol=1e-6):
            first_sma = step
    assert first_sma == 99


def test_a_short_warmup_waits_for_a_full_window():
    """With warmup below the window, the official code still waits until the buffer is full
    (iteration > window), never averaging a partial window."""
    torch.manual_seed(0)
    layer = MovingAverageBatchNorm2d(3, window=4, warmup=1, renorm_after=10**6, unit="steps")
    used = []
    for step in range(6):
        x = torch.randn(4, 3, 5, 5) * (1 + step)
        y = layer.train()(x)
        own = x / (x.square().mean(dim=(0, 2, 3), keepdim=True) + layer.eps).sqrt()
        used.append(not torch.allclose(y, own, atol=1e-6))
    assert used == [False, False, False, False, True, True]  # from iteration 5 = window + 1
