"""How long a grid will take on this machine, before it runs (``smallbatch grid --dry-run``).

Each distinct cell (its overrides without the seed) is built by the Lightning CLI as it would
run; its optimizer steps are counted from its data (epochs × batches per epoch, or
``max_steps``), and one training step (forward, backward, SGD step, under the cell's resolved
precision, on the threads a grid cell gets) and one evaluation forward per image are timed on a
real batch. A cell's time = steps × step time + evaluated images × forward time per image
(every epoch's validation, the final evaluations and their recomputed statistics). The grid's
time divides the sum by the cells run at once; on a CPU the timed steps of that many copies
run side by side, since parallel cells share the cores' caches and memory bandwidth. It is an
estimate from a few steps: process start-up (seconds a cell) is not counted, and a busy machine
is slower.

A cluster grid states its step time instead (``executor.step_time_s``: seconds per optimizer
step where the cells will run, e.g. from ``smallbatch bench`` on one of its GPUs): each cell is
then built on this machine's CPU only to count its steps (per rank: the training set split over
the job's ``nodes × gpus_per_node`` ranks), and the dry run prints every cell's steps and time
and the grid's GPU-hours (steps × step time × GPUs a cell; evaluation not counted).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
from dataclasses import dataclass
from typing import Any

from ..hardware import seconds_per_call
from ..run.progress import duration
from .spec import Cell, GridSpec, GridSpecError

TIMED_STEPS = 5  # after one warm-up step
FINAL_EVALUATIONS = 3  # precise, precise_pooled, batch (the EMA one is the last validation)


@dataclass
class CellEstimate:
    """One cell's measured cost: steps, seconds per step, images evaluated and per image."""

    steps: int
    step_s: float
    eval_images: int
    image_s: float
    precision: str

    @property
    def seconds(self) -> float:
        return self.steps * self.step_s + self.eval_images * self.image_s


def _cost_key(cell: Cell) -> str:
    """Cells that cost the same: equal overrides apart from the seed."""
    same = {k: v for k, v in cell.overrides.items() if k != "seed_everything"}
    return json.dumps(same, sort_keys=True, default=str)


def ranks_per_cell(spec: GridSpec) -> int:
    """The ranks (GPUs, or processes of a CPU job) one cell of a SLURM grid runs on."""
    cfg = spec.executor
    return int(cfg.get("nodes", 1)) * max(int(cfg.get("gpus_per_node", 1)), 1)


def stated_step_time(spec: GridSpec, batch: int) -> float:
    """``executor.step_time_s`` for a per-device batch: one number for every cell, or a map
    from ``data.batch_size`` to seconds (a step of 2 images costs less than one of 32)."""
    stated = spec.executor["step_time_s"]
    if not isinstance(stated, dict):
        return float(stated)
    times = {int(k): float(v) for k, v in stated.items()}
    if batch not in times:
        raise GridSpecError(
            f"{spec.source}: executor.step_time_s states no time for data.batch_size {batch} "
            f"(it has {sorted(times)}): add it, e.g. from `smallbatch bench` on the cluster"
        )
    return times[batch]


def measure_cell(
    spec: GridSpec, cell: Cell, at_once: int = 1, stated: bool = False
) -> CellEstimate:
    """Build ``cell`` through the CLI (no logger, a throw-away folder) and time it; on a CPU,
    ``at_once`` copies step side by side (as the grid's parallel cells share the cores). With
    ``stated`` (``executor.step_time_s``) nothing is timed: the cell is built on this CPU, as
    one process, only to count its steps per rank over :func:`ranks_per_cell` ranks."""
    import logging

    import torch

    from ..run.cell import lightning_main

    threads = spec.executor.get("threads_per_job")
    before = torch.get_num_threads()
    world = ranks_per_cell(spec) if stated else 1
    with tempfile.TemporaryDirectory() as folder:
        args = spec.cli_args(cell)[1:]  # without "fit": the CLI builds, nothing runs
        args += ["--trainer.logger", "false", "--run_dir", folder]
        if stated:  # a login node has no GPU: count on its CPU, as one process
            args += ["--trainer.accelerator", "cpu", "--trainer.devices", "1",
                     "--trainer.num_nodes", "1", "--trainer.strategy", "auto"]  # fmt: skip
        quiet = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
        levels = [log.level for log in quiet]
        try:
            for log in quiet:  # "Seed set to", "GPU available": the cell's own lines, not ours
                log.setLevel(logging.WARNING)
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                cli = lightning_main(args, run=False)
        finally:
            for log, level in zip(quiet, levels, strict=True):
                log.setLevel(level)
        trainer, module, dm = cli.trainer, cli.model, cli.datamodule
        precision = str(trainer.precision)
        dm.prepare_data()
        dm.setup("fit")
        loader = dm.train_dataloader()
        if trainer.max_steps and trainer.max_steps > 0:
            steps = int(trainer.max_steps)
        else:  # per rank: DistributedSampler pads the set to a multiple of the ranks
            per_epoch = math.ceil(len(dm.train_set) / world) // int(dm.batch_size)
            if isinstance(trainer.limit_train_batches, int):
                per_epoch = min(per_epoch, trainer.limit_train_batches)
            accumulate = max(int(trainer.accumulate_grad_batches), 1)
            steps = math.ceil(per_epoch / accumulate) * max(int(trainer.max_epochs or 1), 1)
        epochs = max(int(trainer.max_epochs or 1), 1)
        val_images = len(dm.val_set) if dm.val_set is not None else 0
        precise = int(module.hparams.get("precise_images") or 0)
        eval_images = val_images * (epochs + (FINAL_EVALUATIONS if precise else 0))
        eval_images += min(precise, len(dm.train_set)) if precise else 0
        if stated:
            return CellEstimate(steps, stated_step_time(spec, int(dm.batch_size)), 0, 0.0, "stated")
        try:
            if threads:
                torch.set_num_threads(int(threads))
            device = trainer.strategy.root_device  # the cell's device (a GPU where it has one)
            side_by_side = at_once if device.type == "cpu" else 1
            step_s, image_s = _time_steps(
                module, dm, loader, steps, precision, device, side_by_side
            )
        finally:
            torch.set_num_threads(before)
    return CellEstimate(steps, step_s, eval_images, image_s, precision)


def _time_steps(
    module: Any, dm: Any, loader: Any, steps: int, precision: str, device: Any, copies: int = 1
) -> tuple[float, float]:
    """Seconds per training step and per evaluated image, on the first batch of ``loader``;
    with ``copies`` > 1, that many copies train side by side in threads (torch releases the
    GIL in its kernels) and the step time is their median."""
    import copy
    import threading

    import torch

    from ..data.base import prepare_batch

    x, y = (t.to(device) for t in next(iter(loader)))
    train_x, train_y = prepare_batch(dm, x, y, True)  # as a training step sees them
    model = module.model.to(device).train()
    for layer in model.modules():  # as the fit does at its start (BRN's ramp, CBN's burn-in)
        if callable(getattr(layer, "set_total_steps", None)):
            layer.set_total_steps(max(steps, 1))
    bf16 = precision.startswith("bf16")
    times: list[float] = []
    start_together = threading.Barrier(copies)

    def train(net: Any) -> None:
        opt = torch.optim.SGD(net.parameters(), lr=1e-6, momentum=0.9)

        def step() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = module.task.loss(net(train_x), train_y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        start_together.wait()
        step()  # warms up
        times.extend(seconds_per_call(step, 1, device) for _ in range(TIMED_STEPS))

    others = [
        threading.Thread(target=train, args=(copy.deepcopy(model),)) for _ in range(1, copies)
    ]
    for thread in others:
        thread.start()
    train(model)
    for thread in others:
        thread.join()
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        inputs = prepare_batch(dm, x, y, False)[0]
        model(inputs)  # warms up: a compiled model compiles its eval graph on the first call
        image_s = seconds_per_call(lambda: model(inputs), 1, device) / len(x)
    return sorted(times)[len(times) // 2], image_s


def estimate_lines(spec: GridSpec, cells: list[Cell], parallel: int) -> list[str]:
    """The dry-run's estimate: one line per cell to run, then the grid's total."""
    from ..hardware import cpu_capability, cpu_info

    if not cells:
        return ["estimate: nothing to run"]
    if spec.executor.get("step_time_s"):
        return stated_lines(spec, cells, parallel)
    measured: dict[str, CellEstimate] = {}
    lines = []
    for cell in cells:
        key = _cost_key(cell)
        if key not in measured:
            measured[key] = measure_cell(spec, cell, min(parallel, len(cells)))
        e = measured[key]
        lines.append(
            f"  {cell.folder}: {e.steps:,} steps x {1000 * e.step_s:.0f} ms + {e.eval_images:,} "
            f"images evaluated ({e.precision}) = {duration(e.seconds)}"
        )
    total = sum(measured[_cost_key(c)].seconds for c in cells)
    steps = sum(measured[_cost_key(c)].steps for c in cells)
    at_once = max(min(parallel, len(cells)), 1)
    cpu = f"{cpu_info()[0] or 'this CPU'} ({cpu_capability()})"
    side = f", {at_once} side by side as the grid runs them" if at_once > 1 else ""
    head = (
        f"estimate on {cpu}, from {TIMED_STEPS} timed steps of each distinct cell "
        f"({len(measured)}){side}:"
    )
    tail = (
        f"estimate: {len(cells)} cells to run, {steps:,} steps, {duration(total)} of cell time; "
        f"{at_once} at once: about {duration(total / at_once)}"
    )
    return [head, *lines, tail]


def stated_lines(spec: GridSpec, cells: list[Cell], parallel: int) -> list[str]:
    """The estimate of a grid that states its step time (``executor.step_time_s``): each cell's
    steps and time, then the grid's GPU-hours (steps × step time × ranks a cell)."""
    ranks = ranks_per_cell(spec)
    unit = "GPU" if int(spec.executor.get("gpus_per_node", 1)) > 0 else "CPU-process"
    counted: dict[str, CellEstimate] = {}
    lines = [f"estimate from the stated step time (executor.step_time_s; {ranks} {unit}s a "
             "cell), evaluation not counted:"]  # fmt: skip
    for cell in cells:
        key = _cost_key(cell)
        if key not in counted:
            counted[key] = measure_cell(spec, cell, stated=True)
        e = counted[key]
        hours = e.seconds * ranks / 3600
        lines.append(f"  {cell.folder}: {e.steps:,} steps x {e.step_s:g} s = "
                     f"{duration(e.seconds)}, {hours:,.1f} {unit}-hours")  # fmt: skip
    seconds = sum(counted[_cost_key(c)].seconds for c in cells)
    steps = sum(counted[_cost_key(c)].steps for c in cells)
    at_once = max(min(parallel, len(cells)), 1)
    lines.append(
        f"estimate: {len(cells)} cells to run, {steps:,} steps, {seconds * ranks / 3600:,.1f} "
        f"{unit}-hours; {at_once} at once ({at_once * ranks} {unit}s): about "
        f"{duration(seconds / at_once)}"
    )
    return lines
