"""What the suite's Lightning training step costs over a bare PyTorch loop, measured in one run.

    .venv/bin/python scripts/suite_overhead.py [--norms bn gn] [--batch 32] [--steps 200]
        [--rounds 3] [--threads 1] [--data-dir DIR]

Both sides train the same CIFAR ResNet-8 on the same Fashion-MNIST batches (the data module's
loader and on-device augmentation) with the same optimizer (SGD, Nesterov, weight decay off
the 1-D parameters, per-step LR schedule), in fp32 on the CPU. The suite's side is a real
``smallbatch fit`` (the reproduction's config, W&B offline, its callbacks, diagnostics and
logging as a grid cell has them), built by the CLI and timed by a callback; the bare side is a
plain loop. Each round times steps ``--warmup`` to ``--warmup + --steps`` of both, alternating
which goes first; the script prints each norm's median per-round ratio suite / bare, and the
machine. Timings on a shared machine vary: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from statistics import median

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from timm.optim import param_groups_weight_decay

from smallbatch.cli.lightning import lightning_main
from smallbatch.data import FashionMNIST
from smallbatch.hardware import cpu_record
from smallbatch.models import create_model
from smallbatch.norms import set_norm_batch
from smallbatch.run.wandb_logger import finish_wandb_runs

CONFIG = "configs/fashion_repro.yaml"


class StepWindow(Callback):
    """Wall time from the start of batch ``first`` to the start of batch ``last``; then stops."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last, self.start, self.seconds = first, last, 0.0, math.nan

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == self.first:
            self.start = time.perf_counter()
        elif batch_idx == self.last:
            self.seconds = time.perf_counter() - self.start
            trainer.should_stop = True


def suite_seconds(norm: str, batch: int, first: int, last: int, data_dir: str | None) -> float:
    """Steps ``first``..``last`` of ``smallbatch fit`` (the reproduction's cell, fp32)."""
    window = StepWindow(first, last)
    with tempfile.TemporaryDirectory() as run_dir:
        args = ["--config", CONFIG, "--model.norm", norm, "--data.batch_size", str(batch)]
        args += ["--trainer.precision", "32-true", "--trainer.max_epochs", "1"]
        args += ["--trainer.limit_train_batches", str(last + 1), "--trainer.limit_val_batches", "0"]
        args += ["--model.precise_images", "0", "--trainer.enable_model_summary", "false"]
        args += ["--run_dir", run_dir] + (["--data.data_dir", data_dir] if data_dir else [])
        cli = lightning_main(args, run=False)
        cli.trainer.callbacks.append(window)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        finish_wandb_runs([cli.trainer])
    return window.seconds


def bare_seconds(norm: str, batch: int, first: int, last: int, data_dir: str | None) -> float:
    """The same steps as a plain PyTorch loop: model, optimizer, schedule, data, augmentation."""
    torch.manual_seed(0)
    dm = FashionMNIST(
        batch_size=batch, num_workers=0, **({"data_dir": data_dir} if data_dir else {})
    )
    dm.prepare_data()
    dm.setup("fit")
    model = create_model("resnet8", norm, num_classes=10, in_chans=1, cifar_stem=True)
    set_norm_batch(model, None)
    model.train()
    opt = torch.optim.SGD(
        param_groups_weight_decay(model, 5e-4), lr=0.1, momentum=0.9, nesterov=True
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / 2000))
    )
    start = math.nan
    for i, (x, y) in enumerate(dm.train_dataloader()):
        if i == first:
            start = time.perf_counter()
        elif i == last:
            return time.perf_counter() - start
        x = dm.batch_transform(x, True) if dm.batch_transform is not None else x
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    raise RuntimeError(f"the loader ended before step {last}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norms", nargs="+", default=["bn", "gn"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="as a grid cell (threads_per_job)")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    torch.set_num_threads(args.threads)
    first, last = args.warmup, args.warmup + args.steps
    print(f"machine: {cpu_record()} torch {torch.__version__}, {args.threads} thread(s)")
    rows = []
    for norm in args.norms:
        ratios, suite_ms, bare_ms = [], [], []
        for r in range(args.rounds):
            order = ("suite", "bare") if r % 2 == 0 else ("bare", "suite")
            took = {}
            for side in order:
                run = suite_seconds if side == "suite" else bare_seconds
                took[side] = 1000 * run(norm, args.batch, first, last, args.data_dir) / args.steps
            suite_ms.append(took["suite"])
            bare_ms.append(took["bare"])
            ratios.append(took["suite"] / took["bare"])
            print(f"  {norm} round {r + 1}: suite {took['suite']:.1f} ms/step, bare "
                  f"{took['bare']:.1f} ms/step, {ratios[-1]:.3f}x", flush=True)  # fmt: skip
        rows.append((norm, min(suite_ms), min(bare_ms), median(ratios)))
    shape = f"batch {args.batch}, fp32, {args.steps} steps x {args.rounds} rounds"
    print(f"\nsuite / bare PyTorch loop, {shape}")
    for norm, suite, bare, ratio in rows:
        print(f"{norm:6s} fastest round: suite {suite:6.1f} ms/step, bare {bare:6.1f} ms/step, "
              f"ratio {suite / bare:.3f}x; median of the rounds' ratios {ratio:.3f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
