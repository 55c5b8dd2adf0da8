"""Shared LightningDataModule behaviour: per-device batch, subsets, drop_last, offline search."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import UserError
from .samplers import DevicesSideBySide


DEFAULT_DATA_DIR = "data"


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset is not on disk; the message lists where we looked and how to get it."""


def data_search_dirs(data_dir: str | os.PathLike) -> list[Path]:
    """Folders searched for datasets, in order: ``data_dir``, ``$SMALLBATCH_DATA_DIRS``
    (colon-separated), and ``shared/data`` beside the working directory or the checkout."""
    dirs = [Path(data_dir)]
    dirs += [Path(p) for p in os.environ.get("SMALLBATCH_DATA_DIRS", "").split(":") if p]
    checkout = Path(__file__).resolve().parents[2]
    for base in (Path.cwd(), checkout):
        dirs += [base / "shared" / "data", base.parent / "shared" / "data"]
    seen, unique = set(), []
    for d in dirs:
        key = d.resolve() if d.exists() else d
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


def fixed_subset(dataset: Dataset, size: int | None, seed: int = 0) -> Dataset:
    """The first ``size`` items of a fixed (seeded) permutation: the same subset in every run."""
    if not size or size >= len(dataset):
        return dataset
    perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, perm[:size].tolist())


class SmallBatchDataModule(pl.LightningDataModule):
    """Base for the suite's data modules.

    Args:
        batch_size: per-device batch. The normalization batch of batch-dependent norms is
            this batch, or groups of ``model.norm_batch`` inside it (ghost batches).
        data_dir: where datasets are found or written. Default (None): ``./data``, created when
            the dataset is found elsewhere (``shared/data``, a Debian package) and copied in; a
            folder given explicitly must exist (unless ``download``), so a typo is an error.
        num_workers: DataLoader workers per device.
        train_subset / val_subset: use only this many (fixed) samples, for quick runs.
        holdout: evaluate on this many training images, held out of training (a fixed split),
            instead of the test set: for choosing a protocol without looking at test results.
        download: allow downloading when the dataset is not found on disk.
        augment: random training augmentation (crop, flip); false trains on the images as
            evaluated (e.g. to compare a DDP run step for step with its one-process emulation,
            whose random draws cannot line up with each rank's).
        emulated_devices: D, for a one-process run that emulates D devices with ghost batches:
            each training batch is D devices' DDP batches side by side, in the order that
            Lightning's ``DistributedSampler`` gives D ranks (same seed), instead of one shuffle.
    """

    num_classes: int = 10
    in_chans: int = 3
    data_dir_must_exist: bool = False  # an explicit data_dir is where the data is, not a target

    def __init__(
        self,
        batch_size: int = 32,
        data_dir: str | None = None,
        num_workers: int = 2,
        train_subset: int | None = None,
        val_subset: int | None = None,
        download: bool = False,
        val_batch_size: int | None = None,
        holdout: int | None = None,
        augment: bool = True,
        emulated_devices: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (per device), got {batch_size}")
        if train_subset is not None and 0 < train_subset < batch_size:
            raise ValueError(
                f"train_subset {train_subset} is smaller than batch_size {batch_size}: no full "
                "batch can be formed (training drops the last partial batch)"
            )
        if emulated_devices is not None and (emulated_devices < 1 or batch_size % emulated_devices):
            raise ValueError(
                f"emulated_devices {emulated_devices} must be >= 1 and divide batch_size "
                f"{batch_size}: each emulated device takes batch_size / emulated_devices samples"
            )
        if holdout is not None and holdout < 1:
            raise ValueError(f"holdout must be >= 1 training images (or null), got {holdout}")
        self.holdout = holdout
        self.augment = augment
        self.emulated_devices = emulated_devices
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or max(batch_size, 64)
        self.data_dir_given = data_dir is not None
        self.data_dir = data_dir if data_dir is not None else DEFAULT_DATA_DIR
        self.num_workers = num_workers
        self.train_subset = train_subset
        self.val_subset = val_subset
        self.download = download
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        if self.data_dir_must_exist:
            self.check_data_dir()  # at construction: before the trainer starts anything

    def check_available(self) -> None:
        """Raise :class:`DatasetNotFoundError` when the dataset cannot be found (or downloaded)
        without reading or copying it: for validating a grid before anything runs."""

    def check_data_dir(self) -> None:
        """An explicitly given ``data_dir`` that does not exist is a mistake, not a place to
        create: say so instead of finding the data elsewhere."""
        if self.data_dir_given and not self.download and not Path(self.data_dir).is_dir():
            raise DatasetNotFoundError(
                f"data_dir {str(self.data_dir)!r} does not exist. Create it (the dataset is then "
                f"found offline and copied there), leave data_dir unset to use ./{DEFAULT_DATA_DIR}, "
                "or pass --data.download true"
            )

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """(train, validation) datasets with transforms; subclasses implement."""
        raise NotImplementedError

    def build_train_for_eval(self) -> Dataset:
        """The training images with the evaluation transform (for ``holdout``)."""
        raise ValueError(f"{type(self).__name__} does not support holdout")

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            train, val = self.build_datasets()
            if self.holdout:
                train, val = self._split_holdout(train)
            self.train_set = fixed_subset(train, self.train_subset)
            self.val_set = fixed_subset(val, self.val_subset)
            self.test_set = self.val_set
        if len(self.train_set) < self.batch_size:
            raise ValueError(
                f"train set has {len(self.train_set)} samples, fewer than batch_size "
                f"{self.batch_size}: no full batch can be formed"
            )

    def _split_holdout(self, train: Dataset) -> tuple[Dataset, Dataset]:
        """(training images minus the held-out ones, held-out ones with eval transforms); the
        split is a fixed permutation (seed 0), the same in every run."""
        n = len(train)
        if self.holdout >= n:
            raise ValueError(f"holdout {self.holdout} must be smaller than the {n} training images")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
        held, kept = perm[: self.holdout], perm[self.holdout :]
        return Subset(train, kept), Subset(self.build_train_for_eval(), held)

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        if train and (self.emulated_devices or 1) > 1:
            self._check_one_process()
            sampler = DevicesSideBySide(len(dataset), self.emulated_devices, batch_size,
                                        seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))  # fmt: skip
        else:
            sampler = None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train,  # a norm never sees a smaller batch than the grid says
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def _check_one_process(self) -> None:
        world = self.trainer.world_size if self.trainer is not None else 1
        if world > 1:
            raise UserError(
                f"data.emulated_devices {self.emulated_devices} emulates devices in one process, "
                f"but this run has {world} real ones; drop emulated_devices under DDP"
            )

    batch_transform: Callable[[Tensor, bool], Tensor] | None = None
    """Applied to each uint8 image batch after it reaches the device: (images, training) →
    float inputs (augmentation in training, normalization always); None when the datasets'
    own transforms produce the inputs."""

    def prepare_batch(self, inputs: Tensor, targets: Tensor, training: bool) -> tuple[Tensor, Tensor]:
        """(inputs, targets) as the model sees them, on their device: :attr:`batch_transform`
        applied to a uint8 image batch (the targets as they are). A data module whose
        augmentation moves the target too (segmentation masks) overrides this, transforming
        both with the same draws."""
        transform = self.batch_transform
        if transform is None or not isinstance(inputs, Tensor) or inputs.dtype != torch.uint8:
            return inputs, targets
        return transform(inputs, training and self.augment), targets

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not isinstance(batch, list | tuple) or len(batch) != 2:
            return batch
        training = self.trainer is not None and self.trainer.training
        return list(prepare_batch(self, batch[0], batch[1], training))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.val_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.val_batch_size, False)


def prepare_batch(dm: Any, inputs: Tensor, targets: Tensor, training: bool) -> tuple[Tensor, Tensor]:
    """A batch as the model sees it: the data module's ``prepare_batch`` (a plain
    LightningDataModule's batches as they come), then the inputs in the trainer's precision
    (float64 under ``64-true``, half under ``16-true``/``bf16-true``; as they are otherwise)."""
    prepare = getattr(dm, "prepare_batch", None)
    if callable(prepare):
        inputs, targets = prepare(inputs, targets, training)
    trainer = getattr(dm, "trainer", None)
    if trainer is not None:
        inputs = trainer.precision_plugin.convert_input(inputs)
    return inputs, targets


def not_found(name: str, looked: Sequence[Path], how: str) -> DatasetNotFoundError:
    places = "\n  ".join(str(p) for p in looked)
    return DatasetNotFoundError(f"{name} not found. Looked in:\n  {places}\n{how}")
