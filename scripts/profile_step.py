"""Where a norm's training step spends its time: torch.profiler over a few steps.

    .venv/bin/python scripts/profile_step.py --norm cbn --batch 8 --backbone resnet18

Builds the model as ``smallbatch bench`` does, warms it up (filling CBN windows), profiles
``--steps`` training steps (forward, backward, SGD step) and prints the operators by self time.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from smallbatch.analysis.bench import BACKBONES, Runner, build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norm", default="cbn")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--backbone", default="resnet20", choices=sorted(BACKBONES))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    model = build(args.backbone, args.norm, 4, device, channels_last=False)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    runner = Runner(model, x, y, bf16=False)
    for _ in range(10):
        runner.train_step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            runner.train_step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
