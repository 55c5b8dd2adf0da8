"""Cross-Iteration BN against BN, the concatenated window, autograd and the Taylor formula."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import smallbatch.norms.cbn as cbn_module
from smallbatch.norms import CrossIterationBatchNorm2d, NormConfigError


def _conv_cbn(cin=3, cout=8, window=3, burnin=0, rho=1.0, **conv_kw):
    torch.manual_seed(0)
    conv_kw = {"kernel_size": 3, "padding": 1, "bias": False, **conv_kw}
    conv = nn.Conv2d(cin, cout, **conv_kw)
    cbn = CrossIterationBatchNorm2d(cout, window=window, burnin=burnin, rho=rho)
    with torch.no_grad():
        cbn.weight.normal_()
        cbn.bias.normal_()
    cbn.attach_conv(conv)
    return conv, cbn


def _train(conv, cbn, x):
    """One training forward and backward; the forward records a window entry."""
    out = cbn(conv(x))
    out.square().mean().backward()
    return out.detach()


def _normalize(y, mean, var, cbn):
    shape = (1, -1, 1, 1)
    out = (y - mean.view(shape)) / (var.view(shape) + cbn.eps).sqrt()
    return out * cbn.weight.view(shape) + cbn.bias.view(shape)


def test_window_one_equals_bn():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5)
    cbn = CrossIterationBatchNorm2d(5, window=1)
    assert not cbn.needs_conv
    for _ in range(3):
        x = torch.randn(4, 5, 3, 3) * 2 + 1
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = bn(xa), cbn(xb)
        torch.testing.assert_close(yb, ya, rtol=0, atol=0)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xb.grad, xa.grad, rtol=0, atol=0)
    torch.testing.assert_close(cbn.weight.grad, bn.weight.grad)
    torch.testing.assert_close(cbn.running_var, bn.running_var)


def test_fixed_weights_give_statistics_of_concatenated_window():
    conv, cbn = _conv_cbn(window=3)
    xs = [torch.randn(2, 3, 6, 6) for _ in range(3)]
    for x in xs:
        out = _train(conv, cbn, x)
    ys = torch.cat([conv(x) for x in xs]).detach()
    mean = ys.mean(dim=(0, 2, 3))
    var = ys.var(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(out, _normalize(conv(xs[-1]), mean, var, cbn), rtol=1e-4, atol=1e-4)
    assert cbn.last_window_active and cbn.last_entries_used == pytest.approx(3.0)


@pytest.mark.parametrize(
    "conv_kw",
    [
        {},
        {"stride": 2},
        {"groups": 2},
        {"dilation": 2, "stride": 2},
        {"padding": 0},
        {"padding": 2, "stride": 3},
        {"kernel_size": (1, 3), "padding": (0, 1)},
        {"bias": True},
    ],
    ids=["plain", "stride2", "groups2", "dilated", "no-pad", "pad2-stride3", "1x3", "bias"],
)
@pytest.mark.parametrize("kron_limit", [1 << 20, 0], ids=["one-matmul", "separable"])
def test_analytic_weight_gradients_equal_autograd(conv_kw, kron_limit, monkeypatch):
    monkeypatch.setattr(cbn_module, "_KRON_LIMIT", kron_limit)  # mean patch: both code paths
    conv, cbn = _conv_cbn(cin=4, cout=6, window=2, **conv_kw)
    x = torch.randn(3, 4, 7, 7)
    _train(conv, cbn, x)  # records the window entry for this batch
    # independent statement: autograd through F.conv2d on a copy of the weights
    w = conv.weight.detach().clone().requires_grad_()
    bias = None if conv.bias is None else conv.bias.detach()
    y = F.conv2d(x, w, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    mean = y.mean(dim=(0, 2, 3))
    sqmean = (y * y).mean(dim=(0, 2, 3))
    # Σ_c μ_c has gradient row c = ∂μ_c/∂W[c] (μ_c depends on W[c] only); same for ν.
    dmean_ref = torch.autograd.grad(mean.sum(), w, retain_graph=True)[0]
    dsq_ref = torch.autograd.grad(sqmean.sum(), w)[0]
    groups = conv.groups
    dmean = cbn.win_dmean[0, 0].repeat_interleave(conv.out_channels // groups, dim=0)
    torch.testing.assert_close(dmean, dmean_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cbn.win_dsqmean[0, 0], dsq_ref, rtol=1e-5, atol=1e-6)
    # the stored inner products ⟨∂/∂W, W_t⟩ (the layer uses Euler's identity; here by definition)
    w = conv.weight.detach()
    at_mean, at_sq = (dmean_ref * w).sum(dim=(1, 2, 3)), (dsq_ref * w).sum(dim=(1, 2, 3))
    torch.testing.assert_close(cbn.win_mean_ref[0, 0], at_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cbn.win_sqmean_ref[0, 0], at_sq, rtol=1e-5, atol=1e-5)


def test_compensation_is_first_order_taylor_in_conv_weight():
    conv, cbn = _conv_cbn(window=2, rho=1.0)
    x_old, x_new = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    w_old = conv.weight.detach().clone().requires_grad_()
    _train(conv, cbn, x_old)
    with torch.no_grad():
        conv.weight.add_(0.01 * torch.randn_like(conv.weight))
    y_new = conv(x_new)
    y_in = y_new.detach().requires_grad_()
    # Independent statement: past stats at W_old plus autograd's first-order term.
    y_old = F.conv2d(x_old, w_old, padding=1)
    mu_old = y_old.mean(dim=(0, 2, 3))
    nu_old = (y_old * y_old).mean(dim=(0, 2, 3))
    dw = conv.weight.detach() - w_old.detach()
    jac_mu = torch.autograd.grad(mu_old.sum(), w_old, retain_graph=True)[0]
    jac_nu = torch.autograd.grad(nu_old.sum(), w_old)[0]
    mu_past = mu_old.detach() + (jac_mu * dw).sum(dim=(1, 2, 3))
    nu_past = nu_old.detach() + (jac_nu * dw).sum(dim=(1, 2, 3))
    # μ is linear in W, so its compensation is exact: it equals old inputs through new weights.
    torch.testing.assert_close(
        mu_past, F.conv2d(x_old, conv.weight, padding=1).mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6
    )
    mu_t = y_in.mean(dim=(0, 2, 3))
    nu_t = (y_in * y_in).mean(dim=(0, 2, 3))
    mean = (mu_t + mu_past) / 2
    var = (nu_t + nu_past) / 2 - mean**2
    ref = _normalize(y_in, mean, var, cbn)
    y_cbn = y_new.detach().requires_grad_()
    cbn._conv_io = (x_new, y_cbn)  # what the conv hook would have captured
    out = cbn(y_cbn)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    # Only the current batch carries gradient: autograd through the reference agrees.
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(y_cbn.grad, y_in.grad, rtol=1e-4, atol=1e-5)


def test_entries_with_negative_compensated_variance_are_dropped():
    conv, cbn = _conv_cbn(window=2)
    x1, x2 = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    _train(conv, cbn, x1)
    y1 = conv(x1).detach()
    with torch.no_grad():  # make channel 0's past entry invalid: E[y²] < E[y]²
        cbn.win_sqmean[0, 0, 0] = cbn.win_mean[0, 0, 0] ** 2 - 1.0
    y2 = conv(x2)
    out = cbn(y2)
    both = torch.cat([y1, y2.detach()])
    mean = both.mean(dim=(0, 2, 3))
    var = both.var(dim=(0, 2, 3), unbiased=False)
    mean[0] = y2[:, 0].mean()
    var[0] = y2[:, 0].var(unbiased=False)
    torch.testing.assert_close(out, _normalize(y2.detach(), mean, var, cbn), rtol=1e-4, atol=1e-4)


def test_burnin_is_plain_bn_then_window_activates():
    conv, cbn = _conv_cbn(window=3, burnin=4)
    bn = nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.weight.copy_(cbn.weight)
        bn.bias.copy_(cbn.bias)
    for step in range(1, 7):
        y = conv(torch.randn(2, 3, 4, 4))
        out, ref = cbn(y), bn(y)
        if step <= 4:
            torch.testing.assert_close(out, ref, rtol=0, atol=0)
            assert not cbn.last_window_active
        else:
            assert cbn.last_window_active
        out.square().mean().backward()
    # recording started k-1 = 2 steps before the burn-in ended, so the window was full at once
    assert bool(cbn.win_valid.all())


def test_state_dict_round_trip_resumes_window_bit_exactly():
    conv, cbn = _conv_cbn(window=4)
    model = nn.Sequential(conv, cbn)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(2, 3, 5, 5)).square().mean().backward()
        opt.step()
    conv2, cbn2 = _conv_cbn(window=4)
    model2 = nn.Sequential(conv2, cbn2)
    model2.load_state_dict(model.state_dict())
    for name in ("win_stats", "win_ref", "win_dsqmean", "win_valid", "win_pos", "step"):
        assert torch.equal(getattr(cbn, name), getattr(cbn2, name)), name
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(model(x), model2(x))


def test_checkpoint_with_unpacked_window_buffers_still_loads():
    """Checkpoints written before (μ, ν) were packed into win_stats / win_ref load unchanged."""
    conv, cbn = _conv_cbn(window=3)
    for _ in range(3):
        _train(conv, cbn, torch.randn(2, 3, 5, 5))
    old = nn.Sequential(conv, cbn).state_dict()
    for packed, names in (
        ("win_stats", ("mean", "sqmean")),
        ("win_ref", ("mean_ref", "sqmean_ref")),
    ):
        stats = old.pop(f"1.{packed}")
        for i, name in enumerate(names):
            old[f"1.win_{name}"] = stats[:, :, i].clone()
    conv2, cbn2 = _conv_cbn(window=3)
    nn.Sequential(conv2, cbn2).load_state_dict(old)
    assert torch.equal(cbn2.win_stats, cbn.win_stats) and torch.equal(cbn2.win_ref, cbn.win_ref)


def test_window_buffers_are_declared_ddp_local():
    from smallbatch.norms import local_buffer_names

    _, cbn = _conv_cbn(window=2)
    names = local_buffer_names(nn.Sequential(nn.Identity(), cbn))
    assert "1.win_stats" in names and "1.win_ref" in names and "1.win_dsqmean" in names
    assert not any("running" in n for n in names)


def test_cbn_without_conv_gives_clear_error():
    cbn = CrossIterationBatchNorm2d(4, window=2)
    with pytest.raises(NormConfigError, match="needs its feeding conv"):
        cbn(torch.randn(2, 4, 3, 3))


def test_cbn_input_must_be_conv_output():
    conv, cbn = _conv_cbn(window=2)
    model = nn.Sequential(conv, nn.ReLU(), cbn)
    with pytest.raises(NormConfigError, match="directly follow a Conv2d"):
        model(torch.randn(2, 3, 4, 4))


def test_autograd_reference_cbn_gives_the_same_training_run():
    from smallbatch.norms.cbn_autograd import AutogradCrossIterationBatchNorm2d

    def run(cls):
        torch.manual_seed(0)
        conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        cbn = cls(6, window=3)
        cbn.attach_conv(conv)
        model = nn.Sequential(conv, cbn)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        outs = []
        for i in range(5):
            x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(i))
            opt.zero_grad()
            out = model(x)
            out.square().mean().backward()
            opt.step()
            outs.append(out.detach())
        return outs, cbn

    analytic, a = run(CrossIterationBatchNorm2d)
    reference, r = run(AutogradCrossIterationBatchNorm2d)
    for o1, o2 in zip(analytic, reference, strict=True):
        torch.testing.assert_close(o1, o2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.win_dsqmean, r.win_dsqmean, rtol=1e-4, atol=1e-6)


def test_ghost_window_norm_backward_passes_gradcheck():
    """The ghost-batch Function (G groups); G = 1 runs functional.batch_stat_norm, checked in
    test_functional.py."""
    from smallbatch.norms.cbn import _WindowNorm

    torch.manual_seed(0)
    x = torch.randn(4, 4, 3, 3, dtype=torch.double, requires_grad=True)
    w = torch.randn(4, dtype=torch.double, requires_grad=True)
    b = torch.randn(4, dtype=torch.double, requires_grad=True)
    past_mean = torch.randn(2, 4, dtype=torch.double)
    past_sq = past_mean**2 + torch.rand(2, 4, dtype=torch.double) + 0.5
    count = torch.tensor([[2.0, 2.0, 1.0, 2.0], [2.0, 1.0, 2.0, 2.0]], dtype=torch.double)
    past_mean[count == 1], past_sq[count == 1] = 0.0, 0.0  # dropped past entries

    def fn(x, w, b):  # two normalization groups: x viewed as (2, N/2, C, H, W)
        xg = x.view(2, 2, 4, 3, 3)
        mean = (xg.mean(dim=(1, 3, 4)) + past_mean) / count
        var = ((xg * xg).mean(dim=(1, 3, 4)) + past_sq) / count - mean**2
        return _WindowNorm.apply(x, w, b, mean.detach(), var.detach(), count, 1e-5)

    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_bf16_autocast_keeps_window_in_fp32():
    torch.manual_seed(0)
    conv, cbn = _conv_cbn(window=3)
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = cbn(conv(torch.randn(2, 3, 6, 6)))
        assert out.dtype == torch.bfloat16
        out.float().square().mean().backward()
    assert cbn.win_dsqmean.dtype == torch.float32 and cbn.valid_entries() == 2
    assert torch.isfinite(conv.weight.grad).all() and torch.isfinite(cbn.weight.grad).all()


def test_bf16_autocast_weight_gradient_matches_fp32_definition():
    """Under autocast ∂ν/∂W is computed in bf16 like the conv's own weight-gradient: equal to the
    fp32 definition (autograd through the bf16 conv output) within bf16 precision."""
    torch.manual_seed(0)
    conv, cbn = _conv_cbn(cin=8, cout=8, window=2)
    x = torch.randn(4, 8, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cbn(conv(x)).float().sum().backward()
    w = conv.weight.detach().clone().requires_grad_()
    y = F.conv2d(x.bfloat16().float(), w.bfloat16().float(), None, conv.stride, conv.padding)
    dsq_ref = torch.autograd.grad((y * y).mean(dim=(0, 2, 3)).sum(), w)[0]
    assert cbn.win_dsqmean.dtype == torch.float32
    torch.testing.assert_close(cbn.win_dsqmean[0, 0], dsq_ref, rtol=0.02, atol=5e-3)


def test_cbn_burnin_as_fraction_of_the_run_and_too_long_burnin_refused():
    frac = CrossIterationBatchNorm2d(4, window=3, burnin=0.25, unit="fraction")
    frac.set_total_steps(200)
    assert frac.burnin == 50
    steps = CrossIterationBatchNorm2d(4, window=3, burnin=500)
    with pytest.raises(NormConfigError, match=r"beyond this run's 400 steps.*unit: fraction"):
        steps.set_total_steps(400)
    steps.set_total_steps(501)
    assert steps.burnin == 500
    with pytest.raises(NormConfigError, match=r"shares of the run in \[0, 1\]"):
        CrossIterationBatchNorm2d(4, burnin=2, unit="fraction")
