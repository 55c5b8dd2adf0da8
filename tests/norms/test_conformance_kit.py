"""The kit's own reach: state kept outside the state dict shows after a save/load, a layer that
needs more channels is tried at a width it accepts, and every failure is said whole."""

from __future__ import annotations

from torch import nn

from smallbatch.testing import check_norm
from smallbatch.testing.checks import check_batch_one, check_state_round_trip
from smallbatch.testing.harness import NormUnderTest


class CountedMomentumBN(nn.BatchNorm2d):
    """A plugin whose Python-side step counter drives only the running statistics' momentum
    (1/(t+1): a cumulative mean): training outputs are batch statistics, so they resume
    exactly; the running statistics, and so the eval output, do not."""

    def __init__(self, num_features):
        super().__init__(num_features, momentum=None)
        self.steps_seen = 0  # a Python int: not in the state dict

    def forward(self, x):
        if self.training:
            self.steps_seen += 1
            self.momentum = 1.0 / self.steps_seen
        return super().forward(x)


def test_state_kept_outside_the_state_dict_fails_after_a_save_and_load():
    result = check_state_round_trip(NormUnderTest.build(CountedMomentumBN))
    assert result.status == "fail", result
    assert "after a save/load and 3 more steps" in result.reason
    assert "running_mean differs by" in result.reason


def test_the_kits_own_layers_still_pass_the_round_trip():
    for norm in ("bn", "brn", "cbn", "mabn", "gn"):
        assert check_state_round_trip(NormUnderTest.build(norm)).status == "pass", norm


def test_a_layer_needing_32_groups_is_checked_at_32_channels():
    report = check_norm("timm.layers.EvoNorm2dS1", fast=True)
    by_check = {r.check: r for r in report.results}
    assert by_check["build"].status == "pass" and "32 channels" in by_check["build"].reason
    failures = [r for r in report.results if r.status == "fail"]
    assert not [r for r in failures if r.reason in ("", "AssertionError:")], report.table()


class Unbuildable(nn.Module):
    def __init__(self, num_features):
        super().__init__()
        raise ValueError(f"{num_features} channels are never enough for this layer")


def test_a_layer_the_kit_cannot_build_fails_once_with_the_reason_and_where():
    report = check_norm(Unbuildable)
    assert [r.check for r in report.results] == ["build"]
    (result,) = report.results
    assert result.status == "fail"
    assert "ValueError: 64 channels are never enough for this layer" in result.reason
    assert "test_conformance_kit.py:" in result.reason  # the file and line it was raised at


def test_a_failure_reason_is_never_cut_mid_sentence():
    result = check_batch_one(NormUnderTest.build(nn.BatchNorm2d))
    assert result.status == "fail"
    assert "got input size torch.Size([1, 8, 1, 1]) (" in result.reason, result.reason
