"""LightningDataModules; ``batch_size`` is always the per-device batch."""

from .base import DatasetNotFoundError, SmallBatchDataModule, data_search_dirs, fixed_subset
from .datasets import CIFAR10, CIFAR100, FashionMNIST, ImageFolder

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "DatasetNotFoundError",
    "FashionMNIST",
    "ImageFolder",
    "SmallBatchDataModule",
    "data_search_dirs",
    "fixed_subset",
]
