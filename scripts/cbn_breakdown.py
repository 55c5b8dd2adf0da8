"""What CBN's training step costs over BN's, part by part (interleaved, same process).

    .venv/bin/python scripts/cbn_breakdown.py --backbone resnet20 --batch 8 [--threads 1]

Times, in rotating order per round, the training step of: BN; full CBN; CBN without the
∂ν/∂W weight-gradient (one conv weight-gradient per layer and step); CBN without recording the
window entry at all (the window average and the normalization, reading a window that no longer
changes); CBN without recording whose window share of the average is computed once and reused
(only the normalization with window statistics is left). The variants without parts compute
wrong statistics: they exist only to price the parts. The differences between rows are the
costs, as fractions of BN's step; the last row is what CBN costs over BN with all its
window work removed.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from smallbatch.analysis.bench import BACKBONES, Runner, build
from smallbatch.hardware import seconds_per_call
from smallbatch.norms import CrossIterationBatchNorm2d


class _NoStatGrad(CrossIterationBatchNorm2d):
    def _write_sqmean_weight_grad(self, xg, conv_in, pos) -> None:
        pass


class _NoRecord(CrossIterationBatchNorm2d):
    def _record(self, xg, conv_in, current) -> None:
        pass


class _FrozenWindow(_NoRecord):
    def _past_sums(self, n):
        frozen = self.__dict__.get("_frozen")
        if frozen is None:
            frozen = self._frozen = tuple(t.clone() for t in super()._past_sums(n))
        return frozen[0].clone(), frozen[1]  # (the caller adds to the sums in place)


def _with_class(model: torch.nn.Module, cls: type) -> torch.nn.Module:
    for module in model.modules():
        if type(module) is CrossIterationBatchNorm2d:
            module.__class__ = cls
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet20", choices=sorted(BACKBONES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    variants = {
        "bn": build(args.backbone, "bn", 4, device, channels_last=False),
        "cbn": build(args.backbone, "cbn", 4, device, channels_last=False),
        "cbn without dnu/dW": build(args.backbone, "cbn", 4, device, channels_last=False),
        "cbn without recording": build(args.backbone, "cbn", 4, device, channels_last=False),
        "cbn, window frozen": build(args.backbone, "cbn", 4, device, channels_last=False),
    }
    runners = {name: Runner(model, x, y, bf16=False) for name, model in variants.items()}
    for runner in runners.values():  # warm-up with full CBN: fills the windows
        for _ in range(8):
            runner.train_step()
    _with_class(variants["cbn without dnu/dW"], _NoStatGrad)
    _with_class(variants["cbn without recording"], _NoRecord)
    _with_class(variants["cbn, window frozen"], _FrozenWindow)
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(seconds_per_call(runners[name].train_step, args.steps, device))
    median = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    print(f"{args.backbone} b={args.batch}, {torch.get_num_threads()} threads")
    for name, ms in median.items():
        print(f"  {name:24s} {ms:8.1f} ms  {ms / median['bn']:.2f} x BN")
    bn, full = median["bn"], median["cbn"]
    no_grad, no_record = median["cbn without dnu/dW"], median["cbn without recording"]
    frozen = median["cbn, window frozen"]
    print(f"  dnu/dW weight-gradient   {(full - no_grad) / bn:.2f} of BN's step")
    print(f"  rest of recording        {(no_grad - no_record) / bn:.2f}")
    print(f"  window average           {(no_record - frozen) / bn:.2f}")
    print(f"  normalization over BN's  {(frozen - bn) / bn:.2f}")


if __name__ == "__main__":
    main()
