"""What the suite's Lightning training step costs over a bare PyTorch loop, measured in one run.

    .venv/bin/python scripts/suite_overhead.py [--norms bn gn] [--batch 32] [--steps 800]
        [--chunk 10] [--threads 1] [--data-dir DIR]

Both sides train the same CIFAR ResNet-8 on Fashion-MNIST batches (the data module's loader and
on-device augmentation) with the same optimizer (SGD, Nesterov, weight decay off the 1-D
parameters, per-step LR schedule), in fp32 on the CPU. The suite's side is a real
``smallbatch fit`` (the reproduction's config, W&B offline, its callbacks, diagnostics and
logging as a grid cell has them), built by the CLI; the bare side is a plain loop on its own
model, optimizer and loader. The two are interleaved in one process: after ``--warmup`` steps,
a callback of the fit runs ``--chunk`` bare steps, then lets the fit run ``--chunk`` of its
own, and so on for ``--steps`` steps each, so that a shared machine's drift (±10 % between
runs a minute apart here) falls on both alike. Prints each norm's ratio suite / bare (total
time) and the median of the chunk pairs' ratios, with the machine.
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

from smallbatch.data import FashionMNIST
from smallbatch.hardware import cpu_record, seconds_per_call
from smallbatch.models import create_model
from smallbatch.norms import set_norm_batch
from smallbatch.run.cell import lightning_main
from smallbatch.run.wandb_logger import finish_wandb_runs

CONFIG = "configs/fashion_repro.yaml"


class BareLoop:
    """The same training as a plain PyTorch loop: model, optimizer, schedule, data,
    augmentation; ``steps(k)`` runs k of them and returns the seconds they took."""

    def __init__(self, norm: str, batch: int, data_dir: str | None) -> None:
        torch.manual_seed(0)
        kwargs = {"data_dir": data_dir} if data_dir else {}
        self.dm = FashionMNIST(batch_size=batch, num_workers=0, **kwargs)
        self.dm.prepare_data()
        self.dm.setup("fit")
        self.model = create_model("resnet8", norm, num_classes=10, in_chans=1, cifar_stem=True)
        set_norm_batch(self.model, None)
        self.model.train()
        groups = param_groups_weight_decay(self.model, 5e-4)
        self.opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True)
        cosine = lambda s: 0.5 * (1 + math.cos(math.pi * s / 10_000))  # noqa: E731
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, cosine)
        self.batches = iter(self.dm.train_dataloader())

    def step(self) -> None:
        x, y = next(self.batches)
        if self.dm.batch_transform is not None:
            x = self.dm.batch_transform(x, True)
        loss = F.cross_entropy(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()

    def steps(self, k: int) -> float:
        return k * seconds_per_call(self.step, k)


class Interleave(Callback):
    """From batch ``warmup`` on, alternately ``chunk`` bare steps and ``chunk`` of the fit's own,
    ``pairs`` times; each side's time per chunk is recorded, then the fit is stopped."""

    def __init__(self, bare: BareLoop, warmup: int, chunk: int, pairs: int) -> None:
        self.bare, self.warmup, self.chunk, self.pairs = bare, warmup, chunk, pairs
        self.bare_s: list[float] = []
        self.suite_s: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx < self.warmup or (batch_idx - self.warmup) % self.chunk:
            return
        now = time.perf_counter()
        if batch_idx > self.warmup:  # the fit's chunk just ended
            self.suite_s.append(now - self._start)
        if len(self.suite_s) == self.pairs:
            trainer.should_stop = True
            return
        self.bare_s.append(self.bare.steps(self.chunk))
        self._start = time.perf_counter()


def measure(norm: str, args: argparse.Namespace) -> tuple[float, float, float, list[float]]:
    """(suite ms/step, bare ms/step, total ratio, chunk-pair ratios) for one norm."""
    bare = BareLoop(norm, args.batch, args.data_dir)
    bare.steps(args.warmup)
    pairs = args.steps // args.chunk
    probe = Interleave(bare, args.warmup, args.chunk, pairs)
    last = args.warmup + pairs * args.chunk + 1
    with tempfile.TemporaryDirectory() as run_dir:
        cli_args = ["--config", CONFIG, "--model.norm", norm, "--data.batch_size", str(args.batch)]
        cli_args += ["--trainer.precision", "32-true", "--trainer.max_epochs", "1"]
        cli_args += ["--trainer.limit_train_batches", str(last), "--trainer.limit_val_batches", "0"]
        cli_args += ["--model.precise_images", "0", "--trainer.enable_model_summary", "false"]
        cli_args += ["--run_dir", run_dir]
        cli_args += ["--data.data_dir", args.data_dir] if args.data_dir else []
        cli = lightning_main(cli_args, run=False)
        cli.trainer.callbacks.append(probe)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        finish_wandb_runs([cli.trainer])
    n = len(probe.suite_s)
    if n < pairs:
        raise RuntimeError(f"the fit stopped after {n} of {pairs} chunks")
    suite, plain = sum(probe.suite_s), sum(probe.bare_s[:n])
    ratios = [s / b for s, b in zip(probe.suite_s, probe.bare_s, strict=False)]
    per_step = 1000 / (n * args.chunk)
    return suite * per_step, plain * per_step, suite / plain, ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norms", nargs="+", default=["bn", "gn"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=800, help="timed steps of each side")
    parser.add_argument("--chunk", type=int, default=10, help="steps of one side in a row")
    parser.add_argument("--threads", type=int, default=1, help="as a grid cell (threads_per_job)")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    torch.set_num_threads(args.threads)
    print(f"machine: {cpu_record()} torch {torch.__version__}, {args.threads} thread(s)")
    rows = [(norm, *measure(norm, args)) for norm in args.norms]
    print(f"\nsuite / bare PyTorch loop, batch {args.batch}, fp32, {args.steps} steps each, "
          f"interleaved in chunks of {args.chunk}")  # fmt: skip
    for norm, suite, bare, ratio, ratios in rows:
        print(f"{norm:6s} suite {suite:6.1f} ms/step  bare {bare:6.1f} ms/step  ratio {ratio:.3f}x "
              f"(median of {len(ratios)} chunk pairs {median(ratios):.3f}x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
