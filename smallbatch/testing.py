"""A conformance kit for norm layers (``smallbatch check-norm``), in the manner of scikit-learn's
``check_estimator``: one call runs the ``NormLayer`` contract against any norm, built-in or a
plugin's, and says per check what holds, what breaks and why.

    from smallbatch.testing import check_norm, norm_checks
    report = check_norm("my_pkg.MyNorm", fast=True)     # list of CheckResult
    assert report.ok, report.table()

    @pytest.mark.parametrize("check", norm_checks(fast=True), ids=lambda c: c.__name__)
    def test_my_norm(check):                              # one pytest item per check
        result = check(NormUnderTest.build("my_pkg.MyNorm"))
        assert result.status != "fail", result.reason

Each check builds what it needs from a small conv → norm pair (``swap_norms``, so layers that
need their feeding conv get it) on small CPU inputs, and applies only where the layer's
declarations make it apply (``skip`` with the reason otherwise). A check fails with one line.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .models.swap import swap_norms
from .norms import BatchStatsError, probe_norm, set_norm_batch
from .norms.base import NormTraits

CHANNELS = 8
PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass
class CheckResult:
    check: str
    status: str  # pass | fail | skip
    reason: str = ""


@dataclass
class Report:
    norm: str
    results: list[CheckResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.status != FAIL for r in self.results)

    def table(self) -> str:
        width = max(len(r.check) for r in self.results)
        lines = [f"{r.check:<{width}}  {r.status:<4}  {r.reason}".rstrip() for r in self.results]
        passed = sum(r.status == PASS for r in self.results)
        failed = sum(r.status == FAIL for r in self.results)
        skipped = sum(r.status == SKIP for r in self.results)
        lines.append(f"{self.norm}: {passed} passed, {failed} failed, {skipped} skipped in "
                     f"{self.seconds:.1f}s")  # fmt: skip
        return "\n".join(lines)


@dataclass
class NormUnderTest:
    """A norm as the kit sees it: how to build a conv → norm pair, and its traits."""

    spec: Any
    norm_args: dict[str, Any]
    traits: NormTraits

    @classmethod
    def build(cls, spec: Any, **norm_args: Any) -> NormUnderTest:
        return cls(spec, dict(norm_args), probe_norm(spec, **norm_args))

    def pair(self, seed: int = 0, **extra: Any) -> nn.Sequential:
        """conv(4 → 8, 3×3) → norm, in training mode, seeded."""
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Conv2d(4, CHANNELS, 3, padding=1, bias=False),
                              nn.BatchNorm2d(CHANNELS))  # fmt: skip
        swap_norms(model, self.spec, example_input=torch.zeros(2, 4, 6, 6),
                   norm_act="keep_activation", **{**self.norm_args, **extra})  # fmt: skip
        with torch.no_grad():  # affine parameters away from their init, when the layer has them
            for name, p in model[1].named_parameters():
                if name in ("weight", "bias"):
                    p.add_(0.1 * torch.randn_like(p))
        return model.train()

    def layer(self, model: nn.Module) -> nn.Module:
        norm = model[1]
        return norm[0] if isinstance(norm, nn.Sequential) else norm


def _inputs(n: int = 8, size: int = 6, seed: int = 1, scale: float = 1.0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, 4, size, size, generator=g) + 0.5


def _close(a: Tensor, b: Tensor, tol: float = 1e-5) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=tol, rtol=tol)


def _steps(model: nn.Module, batches: list[Tensor]) -> list[Tensor]:
    """Training steps (forward, backward of a fixed loss, SGD) returning the outputs."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    outs = []
    for x in batches:
        y = model(x)
        outs.append(y.detach())
        opt.zero_grad()
        (y.square().mean() + y.mean()).backward()
        opt.step()
    return outs


# ----------------------------------------------------------------------------------- checks
def check_shape_dtype(n: NormUnderTest) -> CheckResult:
    """Shape, dtype and device preserved in training and evaluation; outputs finite."""
    model = n.pair()
    x = _inputs()
    for mode in ("train", "eval"):
        getattr(model, mode)()
        y = model(x)
        if y.shape != (8, CHANNELS, 6, 6) or y.dtype != x.dtype or y.device != x.device:
            return CheckResult("shape_dtype", FAIL, f"{mode}: got {tuple(y.shape)} {y.dtype}")
        if not torch.isfinite(y).all():
            return CheckResult("shape_dtype", FAIL, f"{mode}: output has NaN/Inf")
    return CheckResult("shape_dtype", PASS)


def check_bf16_autocast(n: NormUnderTest) -> CheckResult:
    """Under bf16 autocast (CPU): the shape kept, finite outputs close to fp32's."""
    model = n.pair()
    with torch.no_grad():
        reference = copy.deepcopy(model)(_inputs())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(_inputs())
    if y.shape != reference.shape or not torch.isfinite(y).all():
        return CheckResult("bf16_autocast", FAIL, "non-finite or reshaped output under bf16")
    err = float((y.float() - reference).abs().max() / reference.abs().max().clamp_min(1e-6))
    if err > 0.1:
        return CheckResult("bf16_autocast", FAIL, f"bf16 output off by {err:.2g} (relative)")
    return CheckResult("bf16_autocast", PASS, f"relative error {err:.1g}")


def check_gradients(n: NormUnderTest) -> CheckResult:
    """Gradients against finite differences in float64 (``torch.autograd.gradcheck``), in
    training and evaluation, each evaluation from the same layer state."""
    base = n.pair().double()
    x = _inputs(4, 3).double().requires_grad_(True)
    for mode in ("train", "eval"):
        getattr(base, mode)()

        def fn(inp: Tensor, mode: str = mode) -> Tensor:
            model = copy.deepcopy(base)  # training forwards move statistics: start alike
            getattr(model, mode)()
            return model(inp)

        try:
            torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-4, rtol=1e-3)
        except Exception as exc:  # noqa: BLE001 - GradcheckError, or the layer failing in float64
            first = str(exc).strip().splitlines()[0]
            return CheckResult("gradients", FAIL, f"{mode}: {first}")
    return CheckResult("gradients", PASS)


def check_eval_independent(n: NormUnderTest) -> CheckResult:
    """Evaluation is deterministic and sample i's output does not depend on the others."""
    model = n.pair()
    _steps(model, [_inputs(seed=s) for s in range(3)])
    model.eval()
    x, other = _inputs(seed=5), _inputs(seed=6)
    with torch.no_grad():
        first, again = model(x), model(x)
        mixed = model(torch.cat([x[:2], other[2:]]))
    if not torch.equal(first, again):
        return CheckResult("eval_independent", FAIL, "two evaluations of one input differ")
    if not _close(first[:2], mixed[:2]):
        return CheckResult("eval_independent", FAIL, "eval output depends on the other samples")
    return CheckResult("eval_independent", PASS)


def check_batch_free(n: NormUnderTest) -> CheckResult:
    """A layer that keeps no batch statistics is really batch-free in training."""
    if not n.traits.batch_free:
        return CheckResult("batch_free", SKIP, "keeps batch statistics")
    model = n.pair()
    x, other = _inputs(seed=5), _inputs(seed=6)
    with torch.no_grad():  # both from the same state
        y = copy.deepcopy(model)(x)
        mixed = copy.deepcopy(model)(torch.cat([x[:2], other[2:]]))
    if not _close(y[:2], mixed[:2]):
        return CheckResult("batch_free", FAIL, "declares no batch statistics, yet a sample's "
                           "training output depends on the others")  # fmt: skip
    return CheckResult("batch_free", PASS)


def check_batch_one(n: NormUnderTest) -> CheckResult:
    """Batch 1 at a 1×1 map in training: works, or raises BatchStatsError naming the layer."""
    model = n.pair()
    try:
        y = model(_inputs(1, 1))
    except BatchStatsError as exc:
        name = n.layer(model).layer_name
        if name not in str(exc):
            return CheckResult("batch_one", FAIL, f"BatchStatsError does not name {name!r}")
        return CheckResult("batch_one", PASS, "raises BatchStatsError naming the layer")
    except Exception as exc:  # noqa: BLE001 - any other error is the failure reported
        return CheckResult("batch_one", FAIL, f"{type(exc).__name__}: {str(exc)[:80]}")
    if not torch.isfinite(y).all():
        return CheckResult("batch_one", FAIL, "NaN/Inf at batch 1 on a 1x1 map")
    return CheckResult("batch_one", PASS, "works")


def check_ghost_batches(n: NormUnderTest) -> CheckResult:
    """With ``norm_batch = b``: the same outputs as separate layers, one per group of b."""
    if not n.traits.ghost_batches:
        return CheckResult("ghost_batches", SKIP, "does not declare supports_ghost_batch")
    model = n.pair()
    singles = [copy.deepcopy(model) for _ in range(4)]
    set_norm_batch(model, 2)
    x = _inputs()
    ghost = _steps(model, [x])
    per_group = [_steps(s, [x[2 * i : 2 * i + 2]]) for i, s in enumerate(singles)]
    expected = torch.cat([g[0] for g in per_group])
    if not _close(ghost[0], expected, 1e-4):
        err = float((ghost[0] - expected).abs().max())
        return CheckResult("ghost_batches", FAIL, f"groups of 2 differ from separate layers "
                           f"by {err:.2g}")  # fmt: skip
    return CheckResult("ghost_batches", PASS)


def check_state_round_trip(n: NormUnderTest) -> CheckResult:
    """The whole state is in the state dict: a fresh layer loaded from it continues a run
    exactly (kill and resume mid-training equals an uninterrupted run, bit for bit)."""
    batches = [_inputs(seed=s) for s in range(6)]
    whole = n.pair()
    uninterrupted = _steps(whole, batches)
    first = n.pair()
    _steps(first, batches[:3])
    resumed = n.pair(seed=1)  # other initial weights: everything must come from the state
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))  # plain SGD: no optimizer state
    after = _steps(resumed, batches[3:])
    if not all(torch.equal(a, b) for a, b in zip(uninterrupted[3:], after, strict=True)):
        return CheckResult("state_round_trip", FAIL, "a layer loaded from the state dict "
                           "continues differently (state kept outside it?)")  # fmt: skip
    return CheckResult("state_round_trip", PASS)


def check_compile(n: NormUnderTest) -> CheckResult:
    """``compile_safe`` is truthful: compiled equals eager where the layer claims it."""
    if not n.traits.compile_safe:
        return CheckResult("compile", SKIP, "declares compile_safe = False")
    model = n.pair()
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, backend="aot_eager")
    x = _inputs()
    try:
        y = compiled(x)
    except Exception as exc:  # noqa: BLE001
        return CheckResult("compile", FAIL, f"compile failed: {type(exc).__name__}")
    if not _close(y, eager(x), 1e-4):
        return CheckResult("compile", FAIL, "compiled output differs from eager")
    return CheckResult("compile", PASS)


def check_robustness(n: NormUnderTest) -> CheckResult:
    """Inputs whose |mean|/std is 10³: the training output and every statistic the step stores
    (running buffers) within 1e-2 (relative) of the same layer computed in float64."""
    model = n.pair()
    with torch.no_grad():  # the conv passes channel c through (its centre tap): the norm's
        model[0].weight.zero_()  # input has the |mean|/std of x
        for c in range(CHANNELS):
            model[0].weight[c, c % 4, 1, 1] = 1.0 + 0.1 * c
    x = 1000 + torch.randn(8, 4, 6, 6, generator=torch.Generator().manual_seed(3))
    double = copy.deepcopy(model).double()
    with torch.no_grad():
        pairs = [("output", model(x), double(x.double()))]
    buffers = dict(double.named_buffers())
    pairs += [(name, b, buffers[name]) for name, b in model.named_buffers()
              if b.is_floating_point() and name in buffers]  # fmt: skip
    worst, where = 0.0, ""
    for name, got, ref in pairs:
        if not torch.isfinite(got).all():
            return CheckResult("robustness", FAIL, f"{name}: NaN/Inf at |mean|/std = 1e3")
        err = float((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
        if err > worst:
            worst, where = err, name
    if worst > 1e-2:
        return CheckResult("robustness", FAIL, f"at |mean|/std = 1e3 {where} is off by "
                           f"{worst:.2g} (relative) from float64")  # fmt: skip
    return CheckResult("robustness", PASS, f"relative error {worst:.1g}")


def check_hooks(n: NormUnderTest) -> CheckResult:
    """The contract's hooks return what they declare."""
    model = n.pair()
    _steps(model, [_inputs()])
    layer = n.layer(model)
    diag = getattr(layer, "diagnostics", dict)()
    if not isinstance(diag, dict) or not all(isinstance(v, int | float) for v in diag.values()):
        return CheckResult("hooks", FAIL, f"diagnostics() must map names to floats: {diag!r}")
    size = getattr(layer, "state_bytes", lambda: 0)()
    if not isinstance(size, int):
        return CheckResult("hooks", FAIL, f"state_bytes() must be an int, got {size!r}")
    extra = getattr(layer, "input_diagnostics", lambda x: {})(_inputs().new_ones(2, CHANNELS, 3, 3))
    if not isinstance(extra, dict):
        return CheckResult("hooks", FAIL, "input_diagnostics() must return a dict")
    return CheckResult("hooks", PASS)


def check_cost(n: NormUnderTest) -> CheckResult:
    """Step time against torch's BN in one interleaved run (printed, not judged)."""
    ours, bn = n.pair(), NormUnderTest.build("bn").pair()
    x = _inputs(32, 16)
    times = {"norm": [], "bn": []}
    for _ in range(5):
        for key, model in (("norm", ours), ("bn", bn)):
            start = time.perf_counter()
            _steps(model, [x])
            times[key].append(time.perf_counter() - start)
    ratio = min(times["norm"]) / max(min(times["bn"]), 1e-9)
    return CheckResult("cost", PASS, f"{ratio:.2f}x torch BN's step time (conv + norm)")


FAST_CHECKS: list[Callable[[NormUnderTest], CheckResult]] = [
    check_shape_dtype, check_eval_independent, check_batch_free, check_batch_one,
    check_ghost_batches, check_state_round_trip, check_robustness, check_hooks,
]  # fmt: skip
FULL_CHECKS = [*FAST_CHECKS, check_bf16_autocast, check_gradients, check_compile, check_cost]


def norm_checks(fast: bool = False) -> list[Callable[[NormUnderTest], CheckResult]]:
    """The checks, for pytest parametrization in a plugin's own tests."""
    return list(FAST_CHECKS if fast else FULL_CHECKS)


def check_norm(spec: Any, fast: bool = False, **norm_args: Any) -> Report:
    """Run every check on ``spec`` (a registered name, class path or mapping)."""
    start = time.perf_counter()
    report = Report(str(spec.get("class_path") if isinstance(spec, dict) else spec))
    n = NormUnderTest.build(spec, **norm_args)
    for check in norm_checks(fast):
        try:
            result = check(n)
        except Exception as exc:  # noqa: BLE001 - a check that crashes is a failure, said why
            name = check.__name__.removeprefix("check_")
            result = CheckResult(name, FAIL, f"{type(exc).__name__}: {str(exc)[:100]}")
        report.results.append(result)
    report.seconds = time.perf_counter() - start
    return report
