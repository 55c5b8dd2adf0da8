"""What every check builds on: the norm under test as a conv → norm pair, small seeded inputs,
training steps, and the result records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import error_summary
from ..models.swap import swap_norms
from ..norms import probe_norm
from ..norms.traits import NormTraits
from ..timeouts import TimeLimitExceeded

CHANNELS = 8  # the kit's channel count; a layer that cannot be built with it gets WIDE_CHANNELS
WIDE_CHANNELS = 32  # a multiple of 32 groups (timm's EvoNorm-S1/S0 default to 32 groups)
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


class KitBuildError(Exception):
    """The kit cannot build the norm at any channel count it tries: one failure, not one per
    check."""


failure_reason = error_summary  # a check's failure: the whole first line, file and line


@dataclass
class NormUnderTest:
    """A norm as the kit sees it: how to build a conv → norm pair, and its traits."""

    spec: Any
    norm_args: dict[str, Any]
    traits: NormTraits
    channels: int = CHANNELS

    @classmethod
    def build(cls, spec: Any, **norm_args: Any) -> NormUnderTest:
        """The norm at the kit's channel count, or at :data:`WIDE_CHANNELS` when it cannot be
        built with that (e.g. 32 groups); raises :class:`KitBuildError` (reason, file and
        line) when neither builds."""
        try:
            traits = probe_norm(spec, **norm_args)
        except TimeLimitExceeded:
            raise  # a plugin that hangs ends the kit (smallbatch.timeouts)
        except Exception as exc:  # noqa: BLE001 - said once, with where it was raised
            raise KitBuildError(
                f"cannot build a layer of 64 channels: {failure_reason(exc)}"
            ) from exc
        failures = []
        for channels in (CHANNELS, WIDE_CHANNELS):
            n = cls(spec, dict(norm_args), traits, channels)
            try:
                n.pair()(inputs())
                return n
            except TimeLimitExceeded:
                raise
            except Exception as exc:  # noqa: BLE001 - try the wider channel count
                failures.append(f"{channels} channels: {failure_reason(exc)}")
        raise KitBuildError("cannot build or run a conv -> norm pair at " + "; ".join(failures))

    def pair(self, seed: int = 0, **extra: Any) -> nn.Sequential:
        """conv(4 → 8, 3×3) → norm, in training mode, seeded."""
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Conv2d(4, self.channels, 3, padding=1, bias=False),
                              nn.BatchNorm2d(self.channels))  # fmt: skip
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


def inputs(n: int = 8, size: int = 6, seed: int = 1, scale: float = 1.0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, 4, size, size, generator=g) + 0.5


def close(a: Tensor, b: Tensor, tol: float = 1e-5) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=tol, rtol=tol)


def train_steps(
    model: nn.Module, batches: list[Tensor], first_grads: list[Tensor] | None = None
) -> list[Tensor]:
    """Training steps (forward, backward of a fixed loss, SGD) returning the outputs; the first
    step's parameter gradients are appended to ``first_grads`` when given."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    outs = []
    for x in batches:
        y = model(x)
        outs.append(y.detach())
        opt.zero_grad()
        (y.square().mean() + y.mean()).backward()
        if first_grads is not None and len(outs) == 1:
            first_grads.extend(p.grad.detach().clone() for p in model.parameters())
        opt.step()
    return outs
