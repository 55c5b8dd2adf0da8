"""Frozen BN (issue 34): torchvision's FrozenBatchNorm2d semantics, built from a trained BN, and
batch-free by behaviour: ghost batches, population statistics and the kit leave it alone."""

import pytest
import torch
import torchvision
from torch import nn

from smallbatch.norms import FrozenBatchNorm2d, create_norm, probe_norm, set_norm_batch
from smallbatch.norms.walk import depends_on_batch, is_batch_statistics_layer
from smallbatch.run.population import stat_layers


def _trained_bn(channels: int = 6) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=g))
    bn.train()
    for _ in range(5):
        bn(3 + 2 * torch.randn(8, channels, 5, 5, generator=g))
    return bn.eval()


def test_frozen_bn_is_the_formula_with_a_trained_bns_buffers_in_training_too():
    bn = _trained_bn()
    frozen = FrozenBatchNorm2d.from_batch_norm(bn).train()  # training mode changes nothing
    x = torch.randn(4, 6, 3, 3, generator=torch.Generator().manual_seed(1))
    shape = (1, -1, 1, 1)
    expected = (x - bn.running_mean.view(shape)) / torch.sqrt(
        bn.running_var.view(shape) + bn.eps
    ) * bn.weight.view(shape) + bn.bias.view(shape)  # the math, stated independently
    torch.testing.assert_close(frozen(x), expected.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(frozen(x), bn(x).detach(), rtol=1e-5, atol=1e-5)
    assert not list(frozen.parameters())  # nothing learned


def test_a_bn_state_dict_loads_into_a_frozen_bn():
    bn = _trained_bn()
    frozen = create_norm("frozen_bn", 6)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked dropped, as torchvision does
    x = torch.randn(2, 6, 4, 4)
    torch.testing.assert_close(frozen(x), bn(x).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", ["frozen_bn", "torchvision.ops.FrozenBatchNorm2d"])
def test_frozen_norms_are_batch_free_by_behaviour(norm):
    traits = probe_norm(norm)
    assert traits.batch_free and not traits.ghost_batches


def test_the_behaviour_probe_tells_bn_from_frozen_bn_without_running_the_layer():
    bn = nn.BatchNorm2d(4)  # torch's own: no supports_ghost_batch, no batch_free attribute
    assert depends_on_batch(bn) and is_batch_statistics_layer(bn)
    assert int(bn.num_batches_tracked) == 0  # the probe ran a copy
    assert not is_batch_statistics_layer(torchvision.ops.FrozenBatchNorm2d(4))


def test_ghost_batches_and_population_statistics_leave_frozen_layers_alone():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), FrozenBatchNorm2d(8), nn.Conv2d(8, 8, 3), create_norm("bn", 8)
    )
    assert set_norm_batch(model, 2) == ["3"]  # the BN splits; the frozen layer is no error
    assert list(stat_layers(model)) == ["3"]


@pytest.mark.parametrize("norm", ["frozen_bn", "torchvision.ops.FrozenBatchNorm2d"])
def test_the_kit_runs_the_batch_free_check_on_frozen_norms(norm):
    from smallbatch.testing import check_norm

    report = check_norm(norm, fast=True)
    status = {r.check: r.status for r in report.results}
    assert status["batch_free"] == "pass", report.table()  # run, not skipped
    assert "fail" not in status.values(), report.table()
