"""EvoNorm-B0 against its formula, timm's layer and, with ghost batches, per-group layers."""

import torch
from timm.layers import EvoNorm2dB0

from smallbatch.models import create_model
from smallbatch.norms.evonorm_b0 import EvoNormB0


def _formula(x, v, gamma, beta, eps):
    """y = x / max(√(σ²_B + ε), v·x + √(σ²_I + ε))·γ + β, written out."""
    c = (1, -1, 1, 1)
    var_b = x.var(dim=(0, 2, 3), unbiased=False).view(c)
    var_i = x.var(dim=(2, 3), unbiased=False, keepdim=True)
    den = torch.maximum((var_b + eps).sqrt().expand_as(x), x * v.view(c) + (var_i + eps).sqrt())
    return x / den * gamma.view(c) + beta.view(c)


def _layer(c=6):
    torch.manual_seed(0)
    layer = EvoNormB0(c)
    with torch.no_grad():
        for p in (layer.weight, layer.bias, layer.v):
            p.normal_()
    return layer


def test_matches_formula_and_running_variance():
    layer = _layer()
    x = torch.randn(4, 6, 5, 5) * 2 + 1
    expected = _formula(x, layer.v, layer.weight, layer.bias, layer.eps)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    unbiased = x.var(dim=(0, 2, 3), unbiased=True)
    torch.testing.assert_close(layer.running_var, 0.9 + 0.1 * unbiased)


def test_whole_batch_matches_timms_layer_with_gradients():
    ours = _layer()
    theirs = EvoNorm2dB0(6)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 6, 5, 5, requires_grad=True)
    xt = x.detach().clone().requires_grad_()
    y, expected = ours(x), theirs(xt)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    expected.backward(g)
    torch.testing.assert_close(x.grad, xt.grad, rtol=1e-4, atol=1e-5)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.running_var, theirs.running_var)


def test_ghost_batches_equal_per_group_layers_with_averaged_running_variance():
    ghost, ref = _layer(), _layer()
    ghost.norm_batch = 2
    x = torch.randn(6, 6, 3, 3, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    y = ghost(x)
    expected = torch.cat([_formula(c, ref.v, ref.weight, ref.bias, ref.eps) for c in xr.split(2)])
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    expected.backward(g)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ghost.v.grad, ref.v.grad, rtol=1e-5, atol=1e-5)
    n = 2 * 3 * 3
    var = torch.stack([c.var(dim=(0, 2, 3), unbiased=False) for c in xr.detach().split(2)]).mean(0)
    torch.testing.assert_close(ghost.running_var, 0.9 + 0.1 * var * n / (n - 1))


def test_eval_uses_running_variance_and_trains_in_a_resnet():
    layer = _layer()
    layer.eval()
    x = torch.randn(2, 6, 3, 3)
    var_i = x.var(dim=(2, 3), unbiased=False, keepdim=True)
    c = (1, -1, 1, 1)
    den = torch.maximum(
        (layer.running_var + layer.eps).sqrt().view(c).expand_as(x),
        x * layer.v.view(c) + (var_i + layer.eps).sqrt(),
    )
    torch.testing.assert_close(layer(x), x / den * layer.weight.view(c) + layer.bias.view(c))
    model = create_model("resnet8", "evonorm_b0", num_classes=10)
    model.train()
    assert model(torch.randn(4, 3, 8, 8)).shape == (4, 10)


def _reference_float64(x, v, eps, groups):
    """EvoNorm-B0's training output and unbiased batch variance, two-pass, in float64."""
    x = x.double()
    xg = x.view(groups, -1, *x.shape[1:])
    var_b = xg.var(dim=(1, 3, 4), unbiased=False, keepdim=True)
    left = (var_b + eps).sqrt().expand_as(xg).reshape_as(x)
    right = x * v.double().view(1, -1, 1, 1) + (x.var(dim=(2, 3), unbiased=False, keepdim=True)
                                                 + eps).sqrt()  # fmt: skip
    m = xg[0, :, 0].numel()
    return x / torch.maximum(left, right), var_b.mean(0).flatten() * m / (m - 1)


def test_variances_stay_exact_when_the_mean_dwarfs_the_spread():
    """|mean|/std = 1000 (the channel's values 1000 ± 1): a one-pass variance E[x²] − E[x]² in
    float32 loses every digit here; the layer's stays within 1e-2 of a float64 reference."""
    torch.manual_seed(0)
    layer = EvoNormB0(8, momentum=1.0)  # running_var = this batch's unbiased variance
    with torch.no_grad():
        layer.v.fill_(1e-3)  # outputs of ~10², as v·x + σ_I meets σ_B
    layer.norm_batch = 4
    x = 1000 + torch.randn(16, 8, 6, 6)
    y = layer.train()(x)
    ref_y, ref_var = _reference_float64(x, layer.v.detach(), layer.eps, groups=4)
    torch.testing.assert_close(layer.running_var.double(), ref_var, atol=1e-2, rtol=0)
    assert 50 < ref_y.abs().mean() < 1000
    torch.testing.assert_close(y.double(), ref_y, atol=1e-2 * 100, rtol=1e-2)


def test_one_pass_variance_would_fail_the_same_check():
    """The check above can fail: the one-pass formula on the same input is far off."""
    torch.manual_seed(0)
    x = 1000 + torch.randn(16, 8, 6, 6)
    one_pass = (x.square().mean(dim=(0, 2, 3)) - x.mean(dim=(0, 2, 3)).square()).clamp_min(0)
    exact = x.double().var(dim=(0, 2, 3), unbiased=False)
    assert (one_pass.double() - exact).abs().max() > 1e-2
