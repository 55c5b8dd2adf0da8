"""The LightningModule: a backbone with a registered norm, SGD with the linear LR scaling rule."""

from __future__ import annotations

import math
import random
import time
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from timm.optim import param_groups_weight_decay
from torch import Tensor, nn

from ..eval_modes import DEFAULT_EVAL
from ..models import compile_backbone, to_channels_last
from ..naming import norm_label
from ..norms import (
    local_buffer_names,
    resolve_norm,
    running_statistics,
    set_norm_batch,
    uses_batch_statistics,
)
from ..norms.distributed import average_over_ranks, world_size
from ..tasks import create_task, nonfinite_rows
from .diagnostics import BatchStatGap, layer_diagnostics

SCHEDULES = ("cosine", "step", "constant")


def norm_display_name(norm: str | dict[str, Any]) -> str:
    """Short name for run names and tables (:func:`smallbatch.naming.norm_label`), after
    checking that the norm resolves (a clear error for an unknown name)."""
    return norm_label(resolve_norm(norm)[2])  # registered names come back in lower case


def rng_states() -> dict[str, Any]:
    """Every random-number state a training step draws from: torch (CPU and each CUDA device),
    numpy and Python's ``random``. The sampler's order and the batch augmentation draw from
    torch's, so restoring these at an epoch boundary replays the rest of the run exactly."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": _numpy_state(),
        "python": random.getstate(),
    }


def _numpy_state() -> tuple:
    """numpy's state with its key array as a tensor: checkpoints load with weights_only."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` captured (CUDA states only where the devices match)."""
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(states["python"])


class SmallBatchModule(pl.LightningModule):
    """A network of the small-batch benchmark for one task (:mod:`smallbatch.tasks`), trained
    with SGD and the linear LR scaling rule.

    Args:
        task: ``classification`` (default) or ``segmentation``: the head, loss and metric
            (:data:`smallbatch.tasks.TASKS`).
        task_args: the task's other arguments (segmentation: ``head_channels``; see
            :class:`smallbatch.tasks.SegmentationTask`).
        head_norm: segmentation: the head's norm (default: ``norm``), chosen apart from the
            backbone's as detectron2 and mmdet configure them; ``norm_args`` are the
            backbone norm's, ``head_norm_args`` the head's.
        backbone_weights: segmentation: a smallbatch classification checkpoint of the same
            backbone that the encoder starts from (its BN buffers load into ``frozen_bn``);
            ``{norm}`` in the path stands for the backbone norm's name (``bn``, ``gn``), so one
            grid row can name each norm's pretrained weights.
        freeze_at: segmentation: no gradient for the stem and the first stages
            (detectron2's ``FREEZE_AT``: 2 = stem and ``layer1``); 0: none.
        backbone: see :func:`smallbatch.models.build_backbone` (``resnet8``, ``resnet20``,
            ``resnet18``, ``timm/<name>``, ...).
        norm: registered name, dotted class path, or ``{class_path, init_args}``.
        norm_args: extra keyword arguments for the norm (e.g. ``{window: 4}`` for CBN).
        backbone_args: extra keyword arguments for the backbone's constructor (e.g.
            ``{width: 32}`` for a CIFAR ResNet, ``{drop_path_rate: 0.1}`` for a timm model).
        num_classes / in_chans: linked from the data module by the CLI.
        cifar_stem: 3×3 stride-1 stem without max-pool for 28–32 px inputs.
        lr: base learning rate at ``reference_batch``; the optimizer uses
            lr × total_batch / reference_batch, total_batch = per-device batch × devices ×
            nodes × gradient accumulation (linear scaling rule, Goyal et al. 2017).
        weight_decay / norm_weight_decay: decay for weights; whether 1-D parameters (norm
            affine, biases) decay too.
        warmup_epochs: linear warm-up length; then ``schedule``: cosine to 0, step (×gamma at
            each fraction in ``milestones`` of the run), or constant.
        warmup_fraction: the warm-up as a share of the run's steps instead (a recipe stated
            as "5 of 90 epochs"); when set it replaces ``warmup_epochs``.
        label_smoothing: cross-entropy label smoothing.
        norm_batch: ghost batches: batch-statistics norms (BN, BRN) normalize over independent
            groups of this many samples inside the per-device batch, as that many-sample
            devices would under DDP (``None``: the whole per-device batch).
        channels_last: keep weights and activations in NHWC memory layout (faster convs on
            recent GPUs; see docs/performance.md). Mixed precision is Lightning's
            ``--trainer.precision bf16-mixed``.
        compile_mode: ``torch.compile`` the backbone with this mode (``default``,
            ``reduce-overhead``: CUDA graphs on GPU, ``max-autotune``, ...); ``None``: eager.
            For norms without Python-side state (not BRN/CBN); the batch-vs-running gap
            diagnostic is not collected when compiled.
        diagnostics: log norm diagnostics every ``trainer.log_every_n_steps`` steps; their
            means over each third of training go into result.json.
        norm_act: ``replace`` (default): norm-activation layers (EvoNorm, FRN) take the place of
            each norm→activation pair and the non-activation form before residual adds, as in
            their papers; ``keep_activation``: the activation form in every BN's place with the
            backbone's activations kept (the suite's network before; :func:`swap_norms`).
        precise_images: after a finished fit, recompute each norm's evaluation statistics
            from this many training images with the weights frozen, and evaluate with them and
            with batch statistics (:mod:`smallbatch.run.population`); 0: skip.
    """

    def __init__(
        self,
        backbone: str = "resnet20",
        norm: str | dict[str, Any] = "bn",
        norm_args: dict[str, Any] | None = None,
        backbone_args: dict[str, Any] | None = None,
        num_classes: int = 10,
        in_chans: int = 3,
        cifar_stem: bool = False,
        lr: float = 0.1,
        reference_batch: int = 32,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 5e-4,
        norm_weight_decay: bool = False,
        warmup_epochs: float = 0.0,
        warmup_fraction: float | None = None,
        schedule: str = "cosine",
        milestones: list[float] | None = None,
        gamma: float = 0.1,
        label_smoothing: float = 0.0,
        norm_batch: int | None = None,
        channels_last: bool = False,
        compile_mode: str | None = None,
        diagnostics: bool = True,
        norm_act: str = "replace",
        precise_images: int = 10_000,
        task: str = "classification",
        task_args: dict[str, Any] | None = None,
        head_norm: str | dict[str, Any] | None = None,
        head_norm_args: dict[str, Any] | None = None,
        backbone_weights: str | None = None,
        freeze_at: int = 0,
    ) -> None:
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule {schedule!r} is not one of {SCHEDULES}")
        if warmup_fraction is not None and not 0 <= warmup_fraction < 1:
            raise ValueError(
                f"warmup_fraction is a share of the run in [0, 1), got {warmup_fraction}"
            )
        # checkpointed; loggers get the readable summary of on_fit_start instead (the raw
        # hparams would log norm as a dict, norm_batch as null and the CLI's _instantiator)
        self.save_hyperparameters(logger=False)
        self.norm_name = norm_display_name(norm)
        if precise_images < 0:
            raise ValueError(f"precise_images must be >= 0 (0: skip), got {precise_images}")
        if backbone_weights and "{norm}" in backbone_weights:
            backbone_weights = backbone_weights.replace("{norm}", self.norm_name)
        given = {"head_norm": head_norm, "head_norm_args": head_norm_args,
                 "backbone_weights": backbone_weights,
                 "freeze_at": freeze_at or None}  # fmt: skip
        task_args = {**(task_args or {}), **{k: v for k, v in given.items() if v is not None}}
        self.task = create_task(task, num_classes, task_args)
        self.model = self.task.build_model(
            backbone=backbone, norm=norm, in_chans=in_chans, cifar_stem=cifar_stem,
            backbone_args=backbone_args, norm_act=norm_act, **(norm_args or {}),
        )  # fmt: skip
        set_norm_batch(self.model, norm_batch)
        # batch-free norms (GN, LN, ...) compute the same thing for every normalization batch
        self.batch_free = not uses_batch_statistics(self.model)
        if channels_last:
            to_channels_last(self.model)
        if compile_mode:
            compile_backbone(self.model, compile_mode)
        # Per-device state (CBN windows) must not be overwritten by DDP's broadcast from rank 0.
        self._ddp_params_and_buffers_to_ignore = local_buffer_names(self)
        self.val_metrics = nn.ModuleDict(self.task.val_metrics())  # the first: the task's metric
        self.test_metric = self.task.val_metrics()[self.task.metric]
        self.val_history: list[float] = []  # the task's metric after each epoch
        self.diag_history: list[tuple[int, dict[str, float]]] = []  # (global step, values)
        self.eval_values: dict[
            str, float | None
        ] = {}  # metric per evaluation mode (FinalEvaluation)
        self.end_diagnostics: dict[str, float] = {}
        self.diverged = False
        self.diverged_reason: str | None = None
        self._loss_sum: Tensor | None = None  # the epoch's loss sum (NaN/Inf once one was)
        self._loss_steps = 0
        self._correct: Tensor | None = None  # the epoch's correct training predictions
        self._seen = 0  # and training images
        self._checked_step = 0
        self.first_started_utc: str | None = None  # of the run's first attempt (checkpointed)
        self.elapsed_before = 0.0  # seconds of earlier attempts, through their last checkpoint
        self._attempt_start = time.time()
        self._gap: BatchStatGap | None = None
        self._running: list[Tensor] = []  # running statistics averaged over DDP ranks

    def forward(self, x: Tensor) -> Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    # ----------------------------------------------------------------- scaling rule
    def per_device_batch(self) -> int:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "batch_size"):
            raise RuntimeError("the linear LR scaling rule needs a data module with batch_size")
        return int(dm.batch_size)

    def total_batch(self) -> int:
        t = self.trainer
        return self.per_device_batch() * t.num_devices * t.num_nodes * t.accumulate_grad_batches

    def scaled_lr(self) -> float:
        return self.hparams.lr * self.total_batch() / self.hparams.reference_batch

    # ----------------------------------------------------------------- optimization
    def configure_optimizers(self):
        hp = self.hparams
        if hp.norm_weight_decay:
            groups = [{"params": list(self.parameters()), "weight_decay": hp.weight_decay}]
        else:
            groups = param_groups_weight_decay(self, hp.weight_decay)
        opt = torch.optim.SGD(
            groups, lr=self.scaled_lr(), momentum=hp.momentum, nesterov=hp.nesterov
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        epochs = self.trainer.max_epochs if self.trainer.max_epochs not in (None, -1) else 0
        warmup = int(hp.warmup_epochs * total / epochs) if epochs else 0
        if hp.warmup_fraction is not None:
            warmup = int(hp.warmup_fraction * total)
        milestones = sorted(hp.milestones or [0.5, 0.75])

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            if hp.schedule == "cosine":
                return 0.5 * (1 + math.cos(math.pi * progress))
            if hp.schedule == "step":
                return hp.gamma ** sum(step >= m * total for m in milestones)
            return 1.0

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_model(self) -> None:
        """The module in the trainer's precision before a checkpoint is restored into it
        (Lightning restores before its strategy converts the module: a ``64-true`` run's
        float64 weights would otherwise pass through the float32 module and be rounded)."""
        if self._trainer is not None:
            self.trainer.precision_plugin.convert_module(self)

    def on_fit_start(self) -> None:
        from .result_writer import utc_now

        self._attempt_start = time.time()
        self.first_started_utc = self.first_started_utc or utc_now(self._attempt_start)
        total = int(self.trainer.estimated_stepping_batches)
        schedules = set()
        for m in self.model.modules():  # the NormLayer contract (duck-typed for plugins)
            if callable(getattr(m, "set_total_steps", None)):
                m.set_total_steps(total)  # raises when step milestones lie beyond the run
            summary = getattr(m, "schedule_summary", None)
            line = summary() if callable(summary) else ""
            if line:
                schedules.add(line)
        for line in sorted(schedules):
            rank_zero_info(f"{line} (run: {total} steps)")
        # under DDP: the devices' mean running statistics, as ghost batches emulate them
        self._running = running_statistics(self.model) if world_size() > 1 else []
        if self.hparams.diagnostics and not self.hparams.compile_mode and self._gap is None:
            self._gap = BatchStatGap(self.model)
        for logger in self.loggers:
            logger.log_hyperparams(self.run_summary())

    def run_summary(self) -> dict[str, Any]:
        """What training found out, as logged to W&B's config beside the cell's identity
        (:func:`smallbatch.run.cell.cell_identity`): whether the model is batch-free, the
        devices it runs on, the total batch and the scaled LR."""
        return {
            "batch_free": self.batch_free,
            "devices": self.trainer.num_devices,
            "num_nodes": self.trainer.num_nodes,
            "total_batch": self.total_batch(),
            "scaled_lr": self.scaled_lr(),
        }

    def on_fit_end(self) -> None:
        if self._gap is not None:
            self._gap.remove()
            self._gap = None

    # ----------------------------------------------------------------- steps
    def _log_interval(self) -> int:
        return max(int(self.trainer.log_every_n_steps or 1), 1)

    def on_train_epoch_start(self) -> None:
        self._reset_epoch_sums()

    def _reset_epoch_sums(self) -> None:
        """The epoch's loss sum and correct count, kept on the device: no host sync per step.
        A NaN/Inf loss makes the sum non-finite, which each log interval, validation and the
        epoch's end read (one sync each)."""
        self._loss_sum = torch.zeros((), device=self.device)
        self._loss_steps = 0
        self._correct = torch.zeros((), dtype=torch.long, device=self.device)
        self._seen = 0
        self._checked_step = self.global_step  # the last step known to be finite

    def _watch(self, loss: Tensor, output: Tensor, target: Tensor) -> None:
        """Add a step's loss and its hits (the task's training score: top-1 hits of images,
        or of pixels) to the epoch's sums (device ops only: a torchmetrics update costs ~0.1 ms
        a step on a CPU; the sums give the same micro accuracy, hits / predictions)."""
        if self._loss_sum is None or self._correct is None:  # resumed inside an epoch
            self._reset_epoch_sums()
        self._loss_sum += loss
        self._loss_steps += 1
        hits, counted = self.task.hits(output, target)
        self._correct += hits
        self._seen += counted

    def mark_diverged(self, why: str) -> None:
        """Mark the run diverged (result.json's status, with ``why`` as its error), say so, and
        stop it: a NaN/Inf is never an accuracy of the run."""
        self.diverged = True
        self.diverged_reason = why
        self.trainer.should_stop = True
        self.print(f"{why}: run diverged")

    def check_diverged(self) -> bool:
        """Whether a loss since the epoch started was NaN/Inf (one host sync); the first time,
        mark the run diverged, say between which steps, and stop it."""
        if self.diverged or self._loss_sum is None:
            return self.diverged
        total = float(self._loss_sum)
        if math.isfinite(total):
            self._checked_step = self.global_step
        else:
            self.mark_diverged(
                f"loss became {total} between steps {self._checked_step} and {self.global_step}"
            )
        return self.diverged

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        """Forward and loss; Lightning's per-step logging (a few ms a step on a CPU) only every
        ``trainer.log_every_n_steps`` steps, when the loggers write it anyway."""
        x, y = batch
        due = (self.global_step + 1) % self._log_interval() == 0  # as Lightning counts
        diagnose = due and self.hparams.diagnostics
        if diagnose and self._gap is not None:
            self._gap.armed = True
        output = self(x)
        loss = self.task.loss(output, y, label_smoothing=self.hparams.label_smoothing)
        self._watch(loss.detach(), output.detach(), y)
        if not due:
            return loss
        if self.check_diverged():
            return None
        self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True)
        if diagnose:
            diag = layer_diagnostics(self.model)
            if self._gap is not None:
                diag.update(self._gap.collect())
            if diag:
                self.log_dict(diag, on_step=True, on_epoch=False)
                self.diag_history.append((int(self.global_step), diag))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        average_over_ranks(self._running)

    def on_validation_start(self) -> None:
        if self.trainer.state.fn == TrainerFn.FITTING:  # a fit's validation: not of NaN weights
            self.check_diverged()

    def on_train_epoch_end(self) -> None:
        if self.check_diverged() or not self._loss_steps:
            return
        self.log("train/loss_epoch", self._loss_sum / self._loss_steps)
        reduce = self.trainer.strategy.reduce  # summed over devices, then divided
        correct = reduce(self._correct.float(), reduce_op="sum")  # exact below 2**24 images
        seen = reduce(torch.tensor(float(self._seen), device=self.device), reduce_op="sum")
        self.log("train/acc", float(correct / seen))

    def on_train_end(self) -> None:
        self.check_diverged()  # a NaN after the last check: no final evaluation of it

    def on_validation_epoch_start(self) -> None:
        self._val_nonfinite = torch.zeros((), dtype=torch.long, device=self.device)
        self._val_images = 0

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        output = self(x)
        self._val_nonfinite += nonfinite_rows(output)
        self._val_images += int(y.shape[0])
        self.log("val/loss", self.task.loss(output, y), prog_bar=False, sync_dist=True)
        for name, metric in self.val_metrics.items():
            metric(output, y)
            self.log(f"val/{name}", metric, prog_bar=name == self.task.metric)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or self.diverged:
            return  # an evaluation of diverged (NaN) weights is no accuracy of the run
        reduce = self.trainer.strategy.reduce
        bad = int(reduce(self._val_nonfinite.float(), reduce_op="sum"))
        if bad:
            seen = int(reduce(torch.tensor(float(self._val_images), device=self.device),
                              reduce_op="sum"))  # fmt: skip
            self.mark_diverged(
                f"evaluation after epoch {self.current_epoch + 1} (running statistics, mode "
                f"{DEFAULT_EVAL}): {bad} of {seen} samples gave non-finite outputs"
            )
            return
        metric = self.val_metrics[self.task.metric]
        if metric.update_count:  # the epoch's metric (synced across devices by torchmetrics)
            self.val_history.append(float(metric.compute()))
            self.log(f"val/{self.task.metric}_best", max(self.val_history))

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.test_metric(self(x), y)
        self.log(f"test/{self.task.metric}", self.test_metric)

    def diagnostics_summary(self) -> dict[str, list[float | None]]:
        """Each logged diagnostic's mean over the first, second and last third of the run's
        optimizer steps (the figures docs/results.md quotes), for result.json."""
        total = max(int(self.trainer.estimated_stepping_batches), 1) if self._trainer else 1
        keys = sorted({k for _, values in self.diag_history for k in values})
        out: dict[str, list[float | None]] = {}
        for key in keys:
            thirds: list[list[float]] = [[], [], []]
            for step, values in self.diag_history:
                if key in values:
                    thirds[min(3 * step // total, 2)].append(float(values[key]))
            out[key] = [sum(t) / len(t) if t else None for t in thirds]
        return out

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Called on every rank (Lightning dumps the checkpoint everywhere, rank 0 writes it):
        each rank's random-number states are gathered into it, in rank order."""
        per_rank = self._from_every_rank(rng_states())
        checkpoint["smallbatch"] = {
            "val_history": list(self.val_history),
            "diag_history": [[step, dict(values)] for step, values in self.diag_history],
            "first_started_utc": self.first_started_utc,
            "elapsed_s": self.elapsed_before + time.time() - self._attempt_start,
            "rng": per_rank[0],  # rank 0's, as checkpoints before 2026-12-07 held
            "rng_per_rank": per_rank,
        }

    def _from_every_rank(self, value: Any) -> list[Any]:
        """``value`` of each rank, in rank order (a collective under DDP; ``[value]`` alone)."""
        import torch.distributed as dist

        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1 or not (dist.is_available() and dist.is_initialized()):
            return [value]
        values: list[Any] = [None] * world
        dist.all_gather_object(values, value)
        return values

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("smallbatch", {})
        self.val_history = list(saved.get("val_history", []))
        self.diag_history = [(int(s), dict(v)) for s, v in saved.get("diag_history", [])]
        self.first_started_utc = saved.get("first_started_utc")
        self.elapsed_before = float(saved.get("elapsed_s", 0.0))
        world = self.trainer.world_size if self._trainer is not None else 1
        rank = self.trainer.global_rank if self._trainer is not None else 0
        per_rank = saved.get("rng_per_rank") or []
        # the data order and augmentation of the next epoch continue as if never stopped, on
        # every rank (a checkpoint of another world size, or from before per-rank states:
        # rank 0's on one device; under DDP each rank keeps its own seed)
        if len(per_rank) == world:
            set_rng_states(per_rank[rank])
        elif saved.get("rng") is not None and world == 1:
            set_rng_states(saved["rng"])
