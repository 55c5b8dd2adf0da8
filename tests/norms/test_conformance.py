"""The conformance kit (smallbatch.testing, `smallbatch check-norm`): every built-in passes its
quick checks, and a plugin broken in one way fails exactly the check for it, with a reason."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smallbatch.norms import (
    BatchNorm2d,
    CrossIterationBatchNorm2d,
    builtin_norms,
    register_norm,
    unregister_norm,
)
from smallbatch.testing import NormUnderTest, check_ddp, check_norm, norm_checks
from smallbatch.testing.checks import check_gradients

# What the kit found in the built-ins and is not fixed yet: strict, so a fix shows up here.
KNOWN_FAILURES: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize("norm", builtin_norms())
def test_every_builtin_passes_the_quick_checks(norm):
    report = check_norm(norm, fast=True)
    failed = {r.check for r in report.results if r.status == "fail"}
    known = {check for (name, check) in KNOWN_FAILURES if name == norm}
    assert failed == known, report.table()


# ---------------------------------------------------------------- one broken plugin per check
class NaNNorm(nn.BatchNorm2d):
    def forward(self, x):
        return super().forward(x) * float("nan")


class BatchDependentEval(nn.GroupNorm):
    """Claims nothing, keeps no running statistics, but mixes samples (also in eval)."""

    def __init__(self, num_features):
        super().__init__(1, num_features)

    def forward(self, x):
        return super().forward(x) + x.mean(dim=0, keepdim=True)


class NoNameAtBatchOne(nn.Module):
    def __init__(self, num_features):
        super().__init__()

    def forward(self, x):
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            raise ValueError("cannot")
        return x


class WrongGhost(BatchNorm2d):
    """Says it takes ghost batches and ignores them."""

    def forward(self, x):
        saved, self.norm_batch = self.norm_batch, None
        try:
            return super().forward(x)
        finally:
            self.norm_batch = saved


class HiddenState(nn.Module):
    """Counts its training steps in a plain attribute: lost by a state dict round trip."""

    def __init__(self, num_features):
        super().__init__()
        self.steps = 0

    def forward(self, x):
        if self.training:
            self.steps += 1
        return x * (1 + 0.01 * self.steps)


class OnePassVariance(nn.Module):
    """Batch-free (per sample and channel), normalizes with E[x²] − E[x]² in float32."""

    def __init__(self, num_features):
        super().__init__()

    def forward(self, x):
        mean = x.mean(dim=(2, 3), keepdim=True)
        var = (x.square().mean(dim=(2, 3), keepdim=True) - mean.square()).clamp_min(0)
        return (x - mean) / (var + 1e-5).sqrt()


class BadHooks(nn.GroupNorm):
    def __init__(self, num_features):
        super().__init__(1, num_features)

    def diagnostics(self):
        return {"gap": "large"}


class WrongGradient(nn.GroupNorm):
    """A custom backward that drops a term."""

    def __init__(self, num_features):
        super().__init__(1, num_features)

    def forward(self, x):
        return _Detached.apply(super().forward(x))


class Float32Internals(nn.GroupNorm):
    """Correct gradients, computed in float32 whatever the input (as timm's EvoNorm and FRN)."""

    def __init__(self, num_features):
        super().__init__(1, num_features)

    def forward(self, x):
        w, b = self.weight.float(), self.bias.float()
        return F.group_norm(x.float(), 1, w, b, self.eps).to(x.dtype)


@pytest.mark.slow
def test_a_layer_computing_in_float32_passes_the_gradient_check_saying_so():
    result = check_gradients(NormUnderTest.build(Float32Internals))
    assert result.status == "pass" and "within float32 tolerance only" in result.reason, result
    assert check_gradients(NormUnderTest.build("gn")).reason == ""  # float64 throughout


class _Detached(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y):
        return y * 2

    @staticmethod
    def backward(ctx, grad):
        return grad  # should be 2·grad


class CompiledDiffers(nn.GroupNorm):
    """Claims compile_safe and takes another path when traced (as a Python-side cache would)."""

    compile_safe = True

    def __init__(self, num_features):
        super().__init__(1, num_features)

    def forward(self, x):
        y = super().forward(x)
        return y * 2 if torch.compiler.is_compiling() else y


class Bf16SkipsTheMean(nn.GroupNorm):
    """A low-precision fast path that forgets to centre: fine in fp32, wrong under bf16."""

    def __init__(self, num_features):
        super().__init__(1, num_features)

    def forward(self, x):
        if x.dtype == torch.bfloat16:
            return x / x.float().square().mean(dim=(1, 2, 3), keepdim=True).sqrt().to(x.dtype)
        return super().forward(x)


class LeakyCBN(CrossIterationBatchNorm2d):
    """CBN that forgets to list its window in ddp_local_buffers: DDP overwrites rank 1's."""

    ddp_local_buffers = ()


BROKEN = [
    (NaNNorm, "shape_dtype", "NaN/Inf"),  # (every check that computes an output sees it)
    (BatchDependentEval, "eval_independent", "depends on the other samples"),
    (BatchDependentEval, "batch_free", "declares no batch statistics"),
    (NoNameAtBatchOne, "batch_one", "ValueError: cannot"),
    (WrongGhost, "ghost_batches", "differ from separate layers"),
    (HiddenState, "state_round_trip", "continues differently"),
    (OnePassVariance, "robustness", "off by"),
    (BadHooks, "hooks", "diagnostics() must map names to floats"),
    (WrongGradient, "gradients", "train: Jacobian mismatch"),
    (LeakyCBN, "ddp", "step 2: DDP output differs"),
    (CompiledDiffers, "compile", "compiled output differs from eager"),
    (Bf16SkipsTheMean, "bf16_autocast", "bf16 output off by"),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("norm", "norm_args", "reason"),
    [(name, {}, "equal for 3 steps") for name in builtin_norms(ghost_batches=True)]
    # BRN with live r, d reads its running statistics: DDP keeps rank 0's, ghost batches
    # average them, so only the first step is comparable
    + [("brn", {"warmup": 0, "rmax_at": 0, "dmax_at": 0, "rmax": 2.0, "dmax": 1.0}, "step 1")],
    ids=[*builtin_norms(ghost_batches=True), "brn-live"],
)
def test_two_process_ddp_equals_the_ghost_batch_emulation(norm, norm_args, reason):
    """Also CBN's and MABN's windows stay per rank (ddp_local_buffers; LeakyCBN below fails)."""
    result = check_ddp(NormUnderTest.build(norm, **norm_args))
    assert result.status == "pass" and reason in result.reason, result


@pytest.mark.slow
@pytest.mark.parametrize("layer, check, reason", BROKEN, ids=[c for _, c, _ in BROKEN])
def test_a_plugin_broken_one_way_fails_exactly_that_check(layer, check, reason):
    checks = {c.__name__.removeprefix("check_"): c for c in norm_checks()}
    n = NormUnderTest.build(layer)
    result = checks[check](n)
    assert result.status == "fail" and reason in result.reason, result
    fine = [c for name, c in checks.items() if name not in ("compile", "cost", check)]
    others = {c.__name__: c(n) for c in fine}
    expected_extra = {
        BatchDependentEval: {"eval_independent", "batch_free"},
        WrongGhost: {"ddp"},  # groups ignored: one process normalizes over 2b, DDP over b
        NaNNorm: {"eval_independent", "robustness", "bf16_autocast", "gradients", "batch_one",
                  "state_round_trip", "ghost_batches", "ddp"},
    }.get(layer, set())  # fmt: skip
    failing = {name.removeprefix("check_") for name, r in others.items() if r.status == "fail"}
    assert failing <= expected_extra, {k: v.reason for k, v in others.items() if v.status == "fail"}


def test_the_robustness_check_fails_on_evonorm_b0s_former_one_pass_variance():
    """EvoNorm-B0 as it was before 4fed34b (E_g[x²] − E_g[x]² from per-sample moments)."""
    from sb_test_helpers import OnePassEvoNormB0

    checks = {c.__name__: c for c in norm_checks(fast=True)}
    result = checks["check_robustness"](NormUnderTest.build(OnePassEvoNormB0))
    assert result.status == "fail", result


def test_check_norm_command_prints_a_row_per_check_and_exits_by_the_result(capsys):
    from smallbatch.cli import main

    assert main(["check-norm", "gn", "--fast"]) == 0
    out = capsys.readouterr().out
    assert "shape_dtype" in out and "gn: " in out and " failed" in out
    register_norm("one_pass_variance", OnePassVariance)
    try:
        assert main(["check-norm", "one_pass_variance", "--fast"]) == 1
    finally:
        unregister_norm("one_pass_variance")
    assert "robustness        fail" in capsys.readouterr().out
    assert main(["check-norm", "gn", "--norm-args", "{bad"]) == 2
