"""Batch-Channel Normalization against its formula, torch's layers, and as an installed plugin."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from smallbatch_bcn import BatchChannelNorm2d
from torch import nn

from smallbatch.models import create_model
from smallbatch.norms import available_norms, create_norm


def _randomize(layer):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    return layer


def test_estimated_mode_matches_formula_and_has_no_stat_gradient():
    layer = _randomize(BatchChannelNorm2d(8, num_groups=4, momentum=0.1))
    x = (torch.randn(2, 8, 3, 3) * 3 + 1).requires_grad_()
    y = layer(x)
    mean = 0.1 * x.detach().mean(dim=(0, 2, 3))
    var = 0.9 + 0.1 * x.detach().var(dim=(0, 2, 3), unbiased=True)
    torch.testing.assert_close(layer.running_mean, mean)
    torch.testing.assert_close(layer.running_var, var)
    xr = x.detach().clone().requires_grad_()
    shape = (1, -1, 1, 1)
    bn = (xr - mean.view(shape)) / (var.view(shape) + layer.eps).sqrt()
    bn = bn * layer.batch_weight.view(shape) + layer.batch_bias.view(shape)
    gn = layer.group_norm
    ref = F.group_norm(bn, 4, gn.weight, gn.bias, gn.eps)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-5)


def test_batch_mode_equals_torch_bn_then_gn():
    layer = _randomize(BatchChannelNorm2d(8, num_groups=2, estimated=False, momentum=0.1))
    bn, gn = nn.BatchNorm2d(8, momentum=0.1), nn.GroupNorm(2, 8)
    with torch.no_grad():
        bn.weight.copy_(layer.batch_weight)
        bn.bias.copy_(layer.batch_bias)
        gn.weight.copy_(layer.group_norm.weight)
        gn.bias.copy_(layer.group_norm.bias)
    x = torch.randn(4, 8, 5, 5)
    torch.testing.assert_close(layer(x), gn(bn(x)))
    layer.eval()
    bn.eval()
    torch.testing.assert_close(layer(x), gn(bn(x)))


def test_works_at_batch_one_and_estimates_survive_state_dict():
    layer = BatchChannelNorm2d(4, num_groups=2)
    for _ in range(3):
        layer(torch.randn(1, 4, 1, 1))  # batch 1 at 1x1: estimates need no batch statistics
    fresh = BatchChannelNorm2d(4, num_groups=2)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.running_var, layer.running_var)


@pytest.mark.slow
def test_registered_through_entry_point_and_trains():
    assert "bcn" in available_norms()
    assert available_norms()["bcn"].source.startswith("plugin: smallbatch")
    assert isinstance(create_norm("bcn", 16), BatchChannelNorm2d)
    out = subprocess.run(
        [sys.executable, "-m", "smallbatch.cli", "norms", "--plain"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert any(line.startswith("bcn\tplugin: smallbatch") for line in out.splitlines())
    torch.manual_seed(0)
    model = create_model("resnet8", "bcn", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 10
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_bad_groups_error():
    with pytest.raises(ValueError, match="3 groups do not divide 16"):
        BatchChannelNorm2d(16, num_groups=3)


def test_logs_its_own_diagnostic_through_the_contract():
    from smallbatch.norms import NormLayer, compile_unsafe_layers, layer_diagnostics

    model = create_model("resnet8", "bcn", num_classes=10)
    assert all(
        isinstance(m, NormLayer) for m in model.modules() if isinstance(m, BatchChannelNorm2d)
    )
    assert compile_unsafe_layers(model) == []  # declared compile_safe
    assert layer_diagnostics(model) == {}  # nothing before a training step
    model.train()
    model(torch.randn(4, 3, 16, 16) + 2.0)  # batch mean far from the initial estimates (0)
    diag = layer_diagnostics(model)
    assert set(diag) == {"norm/bcn_estimate_gap"} and diag["norm/bcn_estimate_gap"] > 0


@pytest.mark.parametrize("estimated", [True, False])
def test_the_conformance_kit_passes(estimated):
    """smallbatch's conformance kit (`smallbatch check-norm bcn`), every quick check."""
    from smallbatch.testing import check_norm

    report = check_norm("bcn", fast=True, estimated=estimated)
    assert report.ok, report.table()
