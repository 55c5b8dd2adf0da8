"""Population ("precise") statistics and batch-statistics evaluation for every norm that keeps
statistics (smallbatch.run.population), against torch's own ``swa_utils.update_bn`` and BN."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from smallbatch.models import create_model
from smallbatch.norms import BatchNorm2d, NormLayer, set_norm_batch
from smallbatch.run.population import (
    population_statistics,
    stat_layers,
    using_batch_statistics,
    using_statistics,
)
from smallbatch.tasks import create_task

WITH_STATISTICS = ["bn", "syncbn", "brn", "cbn", "mabn", "evonorm_b0"]


def _batches(n: int = 8, size: int = 16, chans: int = 3, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [2 + 3 * torch.randn(size, chans, 12, 12, generator=g) for _ in range(n)]


def _conv_bn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8))


@pytest.mark.parametrize(
    ("estimator", "update_bn_batches"),
    [
        ("precise_pooled", lambda data: [torch.cat(data)]),  # one batch of everything
        ("precise", lambda data: data),  # the mean of each batch's statistics
    ],
    ids=["pooled-over-one-batch", "per-group-over-the-same-batches"],
)
def test_statistics_of_torch_bn_equal_update_bn(estimator, update_bn_batches):
    data = _batches()
    ours = _conv_bn()
    stats, _ = population_statistics(ours, data, images=10**6)
    theirs = copy.deepcopy(ours)
    update_bn(update_bn_batches(data), theirs)
    mean, var, _ = stats["1"][estimator]
    torch.testing.assert_close(mean, theirs[1].running_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(var, theirs[1].running_var, atol=1e-5, rtol=1e-5)


def test_ghost_groups_are_the_normalization_groups():
    """With norm_batch 4 the statistics are those of batches of 4."""
    data = _batches()
    ours = _conv_bn()
    ours[1] = BatchNorm2d(8)  # the suite's BN, which takes ghost batches
    set_norm_batch(ours, 4)
    stats, _ = population_statistics(ours, data, images=10**6)
    theirs = _conv_bn()
    update_bn([x for batch in data for x in batch.split(4)], theirs)
    torch.testing.assert_close(stats["1"]["precise"][1], theirs[1].running_var, rtol=1e-5,
                               atol=1e-5)  # fmt: skip


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _python_state(model: nn.Module) -> list:
    """Host-side copies of step counters and window fill (re-read from buffers after a load)."""
    return [
        (m.host_step() if hasattr(m, "host_step") else None,
         m.valid_entries() if hasattr(m, "valid_entries") else None)
        for m in model.modules()
    ]  # fmt: skip


class RunningMeanOnlyNorm(NormLayer, nn.Module):
    """A test plugin: normalizes by a running mean of E[x²] it keeps itself, through the hook."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("second_moment", torch.ones(num_features))

    @property
    def uses_eval_statistics(self) -> bool:
        return True

    def set_eval_statistics(self, mean, var, sqmean) -> None:
        self.second_moment.copy_(sqmean)

    def forward(self, x):
        if self.training:
            sq = x.detach().square().mean(dim=(0, 2, 3))
            self.second_moment.lerp_(sq, 0.1)
            return x / (x.square().mean(dim=(0, 2, 3), keepdim=True) + 1e-5).sqrt()
        return x / (self.second_moment.view(1, -1, 1, 1) + 1e-5).sqrt()


@pytest.mark.parametrize("norm", [*WITH_STATISTICS, RunningMeanOnlyNorm])
def test_recomputation_and_batch_evaluation_leave_every_state_untouched(norm):
    torch.manual_seed(0)
    model = create_model("resnet8", norm, 10, 3)
    if norm != "syncbn":
        set_norm_batch(model, 4)
    model.train()
    for x in _batches(4):  # some training state: steps, windows, running statistics
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    assert stat_layers(model)
    before, python_before = _state(model), _python_state(model)
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    stats, _ = population_statistics(model, _batches(4, seed=1), images=10**6)
    assert set(stats) == set(stat_layers(model))
    model.eval()
    labelled = [(x, torch.zeros(x.shape[0], dtype=torch.long)) for x in _batches(2, 4, seed=2)]
    for estimator in ("precise", "precise_pooled"):
        with using_statistics(model, stats, estimator):
            create_task("classification", 10).score(model, labelled)
    with using_batch_statistics(model):
        create_task("classification", 10).score(model, labelled)
    after = _state(model)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert _python_state(model) == python_before
    assert torch.equal(rng[0], torch.get_rng_state())
    assert np.array_equal(rng[1], np.random.get_state()[1]) and rng[2] == random.getstate()
    assert not model.training


@pytest.mark.parametrize("norm", WITH_STATISTICS)
def test_statistics_set_for_evaluation_are_the_ones_evaluation_uses(norm):
    """Evaluating with the recomputed statistics differs from the EMA's evaluation, and the
    same statistics set twice give the same outputs (the hook sets what eval reads)."""
    torch.manual_seed(0)
    model = create_model("resnet8", norm, 10, 3).train()
    for x in _batches(3):
        model(x)
    stats, _ = population_statistics(model, _batches(4, seed=1), images=10**6)
    x = _batches(1, 4, seed=3)[0]
    model.eval()
    with torch.no_grad():
        ema = model(x)
        with using_statistics(model, stats, "precise"):
            first = model(x)
        with using_statistics(model, stats, "precise"):
            second = model(x)
    assert torch.equal(first, second)
    assert not torch.allclose(ema, first)


def test_batch_statistics_evaluation_of_bn_is_training_mode_bn_on_each_group():
    torch.manual_seed(0)
    model = create_model("resnet8", "bn", 10, 3).train()
    x = _batches(1, 4, seed=4)[0]
    expected = copy.deepcopy(model).train()(x)  # BN in training mode: batch statistics
    model.eval()
    with torch.no_grad(), using_batch_statistics(model):
        got = model(x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_batch_mode_groups_of_a_test_set_stored_by_class_mix_the_classes():
    """An image folder stores its test set class by class: groups of b taken in order would
    each hold one class (CIFAR-10's BN at b = 32 evaluated at 18 % so). The groups are drawn
    in a fixed random order instead: mixed classes, the same groups every time."""
    from types import SimpleNamespace

    from torch.utils.data import TensorDataset

    from smallbatch.run.final_eval import FinalEvaluation

    labels = torch.arange(10).repeat_interleave(100)  # sorted by class, as ImageFolder
    dm = SimpleNamespace(val_set=TensorDataset(torch.randn(1000, 3), labels), val_batch_size=500)
    groups = [y for _, y in FinalEvaluation()._val(dm, 32, torch.device("cpu"))]
    assert sum(len(g) for g in groups) == 1000 and all(len(g) == 32 for g in groups[:-1])
    assert min(len(set(g.tolist())) for g in groups[:-1]) >= 5  # classes mixed in every group
    again = [y for _, y in FinalEvaluation()._val(dm, 32, torch.device("cpu"))]
    assert all(torch.equal(a, b) for a, b in zip(groups, again, strict=True))  # fixed order
    in_order = [y for _, y in FinalEvaluation()._val(dm, None, torch.device("cpu"))]
    assert torch.equal(torch.cat(in_order), labels)  # the estimator modes: order irrelevant
