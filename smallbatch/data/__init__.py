"""LightningDataModules; ``batch_size`` is always the per-device batch (the normalization batch
unless ``model.norm_batch`` splits it into ghost batches)."""

from .augment import CropFlipNormalize, crop_flip, image_tensor_dataset
from .base import DatasetNotFoundError, SmallBatchDataModule, data_search_dirs, fixed_subset
from .datasets import CIFAR10, CIFAR100, FashionMNIST, FashionScenes, ImageFolder

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "CropFlipNormalize",
    "DatasetNotFoundError",
    "FashionMNIST",
    "FashionScenes",
    "ImageFolder",
    "SmallBatchDataModule",
    "crop_flip",
    "data_search_dirs",
    "fixed_subset",
    "image_tensor_dataset",
]
