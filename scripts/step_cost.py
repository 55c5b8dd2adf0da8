"""What one training step of the reproduction's model costs, per norm, on this machine.

    .venv/bin/python scripts/step_cost.py [--norms bn brn ...] [--norm-batch 4] [--bf16]
        [--compile] [--threads 1] [--steps 40] [--rounds 1] [--data]

Times forward + backward + SGD step of CIFAR ResNet-8 (1×28×28 inputs, batch 32, random data)
for each norm, one after the other, after 10 warm-up steps, and prints milliseconds per step;
``--rounds R`` repeats that sequence R times (interleaved, so load on a shared machine falls on
every norm alike) and prints each norm's fastest and median round and its fastest as a ratio
to the first norm's. A norm is a registered name or a class path (``module.Class``).
``--data`` also times drawing 400 batches of Fashion-MNIST (the reproduction's loader and
augmentation). Used for the speed table of docs/results.md; timings on a shared machine vary,
so compare numbers from one run.
"""

from __future__ import annotations

import argparse
from statistics import median

import torch
import torch.nn.functional as F

from smallbatch.hardware import seconds_per_call
from smallbatch.models import create_model
from smallbatch.norms.walk import set_norm_batch


def step_ms(norm: str, norm_batch: int | None, bf16: bool, compile_: bool, steps: int) -> float:
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    model = create_model("resnet8", norm, num_classes=10, in_chans=1, cifar_stem=True)
    set_norm_batch(model, norm_batch)
    if compile_:
        model.compile()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    seconds_per_call(step, 10)  # warm-up
    return 1000 * seconds_per_call(step, steps)


def data_ms(batches: int = 400) -> float:
    from smallbatch.data import FashionMNIST

    dm = FashionMNIST(batch_size=32, num_workers=0)
    dm.setup("fit")
    transform = getattr(dm, "batch_transform", None)
    loader = iter(dm.train_dataloader())

    def batch() -> None:
        images, _ = next(loader)
        if transform is not None:
            transform(images, True)

    return 1000 * seconds_per_call(batch, batches)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norms", nargs="+", default=["bn", "brn", "cbn", "mabn", "evonorm_b0"])
    parser.add_argument("--norm-batch", type=int, default=None, help="ghost batch (default: 32)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions")
    parser.add_argument("--data", action="store_true", help="also time the data loader")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    setting = f"nb={args.norm_batch or 32} bf16={args.bf16} compile={args.compile}"
    print(f"threads={torch.get_num_threads()} {setting}")
    rounds: dict[str, list[float]] = {norm: [] for norm in args.norms}
    for _ in range(args.rounds):
        for norm in args.norms:
            rounds[norm].append(step_ms(norm, args.norm_batch, args.bf16, args.compile, args.steps))
    first = min(rounds[args.norms[0]])
    for norm, times in rounds.items():
        if args.rounds == 1:
            print(f"{norm:12s} {times[0]:7.1f} ms/step", flush=True)
        else:
            print(f"{norm:12s} {min(times):7.1f} ms/step fastest, {median(times):7.1f} median, "
                  f"{min(times) / first:5.2f}x {args.norms[0]}")  # fmt: skip
    if args.data:
        print(f"{'data':12s} {data_ms():7.2f} ms/batch")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
