"""Fashion-MNIST, CIFAR-10/100 and ImageFolder data modules (offline first)."""

from __future__ import annotations

import functools
import gzip
import os
import shutil
import tarfile
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info
import torch
from torch.utils.data import TensorDataset
from torchvision import datasets
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_image

from ..errors import UserError

from .augment import CropFlipNormalize, image_tensor_dataset
from .base import DatasetNotFoundError, SmallBatchDataModule, data_search_dirs, not_found
from .scenes import SceneSetting, load_or_make_scenes

class SceneSettingError(UserError, ValueError):
    """FashionScenes arguments that cannot make scenes (the message says which)."""


FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _has_files(folder: Path, names: tuple[str, ...]) -> bool:
    return all((folder / n).exists() or (folder / f"{n}.gz").exists() for n in names)


class _TorchvisionSplits(SmallBatchDataModule):
    """A torchvision dataset class with train/test splits in ``data_dir``, held in memory as uint8
    tensors; the standard random-crop (``image_size``, ``crop_padding``) + flip augmentation and
    the normalization run on whole batches (``CropFlipNormalize``)."""

    dataset_cls: type
    image_size: int
    crop_padding: int
    data_dir_must_exist = True

    @functools.cached_property
    def batch_transform(self) -> CropFlipNormalize:
        return CropFlipNormalize(self.image_size, self.crop_padding, self.mean, self.std)

    def build_datasets(self):
        self.prepare_data()
        return (
            image_tensor_dataset(self.dataset_cls(self.data_dir, train=True)),
            image_tensor_dataset(self.dataset_cls(self.data_dir, train=False)),
        )

    def build_train_for_eval(self):
        # the same tensors: whether a batch is augmented depends on the loop, not the dataset
        return image_tensor_dataset(self.dataset_cls(self.data_dir, train=True))


class FashionMNIST(_TorchvisionSplits):
    """Fashion-MNIST (28×28 grey, 10 classes), found offline in ``data_dir``, shared/data or
    Debian's ``dataset-fashion-mnist`` package; unpacked into ``data_dir/FashionMNIST/raw``."""

    num_classes = 10
    in_chans = 1
    mean, std = (0.2860,), (0.3530,)
    dataset_cls = datasets.FashionMNIST
    image_size, crop_padding = 28, 2

    def candidate_dirs(self) -> list[Path]:
        dirs = []
        for base in data_search_dirs(self.data_dir):
            dirs += [base / "FashionMNIST" / "raw", base]
        return [*dirs, DEBIAN_FASHION_DIR]

    def _source(self) -> Path | None:
        """A folder holding the four files (None: nowhere; the unpacked copy counts)."""
        raw = Path(self.data_dir) / "FashionMNIST" / "raw"
        if all((raw / n).exists() for n in FASHION_FILES):
            return raw
        return next((d for d in self.candidate_dirs() if _has_files(d, FASHION_FILES)), None)

    def check_available(self) -> None:
        if self._source() is None and not self.download:
            raise self._not_found()

    def _not_found(self) -> DatasetNotFoundError:
        return not_found(
            "Fashion-MNIST",
            self.candidate_dirs(),
            "Get it with `apt-get install dataset-fashion-mnist` (Debian), put the four "
            "idx files (.gz or unpacked) in one of these folders, or pass "
            "--data.download true to download it.",
        )

    def prepare_data(self) -> None:
        raw = Path(self.data_dir) / "FashionMNIST" / "raw"
        source = self._source()
        if all((raw / n).exists() for n in FASHION_FILES):
            return  # unpacked already (the .gz files alone are unpacked below, in place)
        if source is None:
            if self.download:
                datasets.FashionMNIST(self.data_dir, train=True, download=True)
                return
            raise self._not_found()
        raw.mkdir(parents=True, exist_ok=True)
        how = "unpacking its .gz files" if source == raw else f"copying it from {source}"
        rank_zero_info(f"Fashion-MNIST: not unpacked in {raw}; {how}")
        for name in FASHION_FILES:
            target = raw / name
            if target.exists():
                continue
            # a private temporary name: parallel grid cells may unpack at the same time
            tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
            if (source / name).exists():
                shutil.copyfile(source / name, tmp)
            else:
                with gzip.open(source / f"{name}.gz", "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            tmp.replace(target)


class CIFAR10(_TorchvisionSplits):
    """CIFAR-10 through torchvision (python batches in ``data_dir``), standard augmentation."""

    num_classes = 10
    dataset_cls = datasets.CIFAR10
    folder = "cifar-10-batches-py"
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    image_size, crop_padding = 32, 4

    def check_available(self) -> None:
        if not (Path(self.data_dir) / self.folder).exists() and not self.download:
            raise self._not_found()

    def _not_found(self) -> DatasetNotFoundError:
        return not_found(
            self.dataset_cls.__name__,
            [Path(self.data_dir) / self.folder],
            "Pass --data.download true to download it, or use the ImageFolder data module "
            "for an image-folder copy (e.g. CIFAR-10 as JPEG).",
        )

    def prepare_data(self) -> None:
        if (Path(self.data_dir) / self.folder).exists():
            return
        self.check_available()
        self.dataset_cls(self.data_dir, train=True, download=True)
        self.dataset_cls(self.data_dir, train=False, download=True)


class CIFAR100(CIFAR10):
    """CIFAR-100 through torchvision, standard augmentation."""

    num_classes = 100
    dataset_cls = datasets.CIFAR100
    folder = "cifar-100-python"
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


class ImageFolder(SmallBatchDataModule):
    """Any ``root/{train,val|test}/<class>/*.jpg`` dataset (CIFAR-10 JPEG, Imagenette, ImageNet).

    ``root`` may also be a ``.tar.gz`` of that layout: it is unpacked once into ``data_dir``.
    Images ≤ 64 px use crop-with-padding + flip; larger ones RandomResizedCrop + flip for
    training and resize + centre crop for validation.

    ``in_memory: true`` (images of ``image_size`` × ``image_size`` px, e.g. CIFAR-10 as JPEG):
    every file is decoded once (torchvision.io, RGB) into a uint8 tensor held in memory, and the
    same crop-with-padding (``image_size // 8``) + flip + normalization run on whole batches
    (:class:`CropFlipNormalize`), as for Fashion-MNIST; ``holdout`` then works too.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 32,
        num_classes: int | None = None,
        mean: tuple[float, ...] = (0.485, 0.456, 0.406),
        std: tuple[float, ...] = (0.229, 0.224, 0.225),
        in_memory: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root = root
        self.image_size = image_size
        self.in_memory = in_memory
        self._decoded_sets: dict[Path, TensorDataset] = {}
        self.mean, self.std = tuple(mean), tuple(std)
        self._num_classes = num_classes

    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            self._num_classes = len(
                [p for p in (self.resolved_root() / "train").iterdir() if p.is_dir()]
            )
        return self._num_classes

    def candidates(self) -> list[Path]:
        root = Path(self.root)
        if root.is_absolute():
            return [root]
        return [root, *(d / root for d in data_search_dirs(self.data_dir))]

    def _located(self) -> Path | None:
        """The first candidate that is a folder with ``train/`` or an archive (None: none)."""
        for cand in self.candidates():
            if cand.is_dir() and (cand / "train").is_dir():
                return cand
            if cand.is_file() and cand.name.endswith((".tar.gz", ".tgz", ".tar")):
                return cand
        return None

    def check_available(self) -> None:
        """The folder (with ``train/``) or archive exists somewhere it is looked for; nothing
        is unpacked or read (a grid's validation, a dry run)."""
        if self._located() is None and not self.download:
            raise self._not_found()

    def _not_found(self) -> DatasetNotFoundError:
        return not_found(
            f"image folder {self.root!r}",
            self.candidates(),
            "Expected a folder with train/ and val/ (or test/) sub-folders of class folders, "
            "or a .tar.gz of that layout. A cluster grid checks from the machine that runs "
            "`smallbatch grid`: run it where the cluster's data is visible.",
        )

    def resolved_root(self) -> Path:
        found = self._located()
        if found is None:
            raise self._not_found()
        return found if found.is_dir() else self._unpack(found)

    def _unpack(self, archive: Path) -> Path:
        """Unpack once into ``data_dir``; safe when parallel grid cells unpack at the same time
        (each extracts into its own folder, the first complete one is renamed into place)."""
        stem = archive.name.removesuffix(".gz").removesuffix(".tgz").removesuffix(".tar")
        target = Path(self.data_dir) / stem
        if (target / ".unpacked").exists():
            return target
        tmp = Path(self.data_dir) / f".{stem}.{os.getpid()}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            inner = [p for p in tmp.iterdir() if p.is_dir()]
            src = inner[0] if len(inner) == 1 and not (tmp / "train").exists() else tmp
            (src / ".unpacked").touch()  # complete before it becomes visible as `target`
            if target.exists() and not (target / ".unpacked").exists():
                shutil.rmtree(target, ignore_errors=True)  # left by an interrupted older run
            try:
                src.rename(target)
            except OSError:
                if not (target / ".unpacked").exists():
                    raise  # not another process winning the race: a real error
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def prepare_data(self) -> None:
        self.resolved_root()

    def _val_dir(self) -> Path:
        root = self.resolved_root()
        val_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
        if val_dir is None:
            raise not_found(f"validation split of {root}", [root / "val", root / "test"], "")
        return val_dir

    @functools.cached_property
    def batch_transform(self) -> CropFlipNormalize | None:
        if not self.in_memory:
            return None
        return CropFlipNormalize(self.image_size, self.image_size // 8, self.mean, self.std)

    def _decoded(self, folder: Path) -> TensorDataset:
        """Every image of ``folder`` (ImageFolder layout) decoded once per data module: (uint8
        (N, 3, H, W), class indices)."""
        if folder in self._decoded_sets:
            return self._decoded_sets[folder]
        found = datasets.ImageFolder(folder)
        images = [decode_image(str(path), mode=ImageReadMode.RGB) for path, _ in found.samples]
        sizes = {tuple(im.shape[1:]) for im in images}
        if sizes != {(self.image_size, self.image_size)}:
            raise ValueError(
                f"in_memory needs every image of {folder} at image_size {self.image_size} x "
                f"{self.image_size}; found sizes {sorted(sizes)[:3]}. Set image_size to the "
                "images' size, or in_memory: false to resize them per image"
            )
        targets = torch.tensor(found.targets, dtype=torch.long)
        self._decoded_sets[folder] = TensorDataset(torch.stack(images), targets)
        return self._decoded_sets[folder]

    def build_train_for_eval(self):
        if not self.in_memory:
            return super().build_train_for_eval()
        return self._decoded(self.resolved_root() / "train")

    def build_datasets(self):
        root, val_dir = self.resolved_root(), self._val_dir()
        if self.in_memory:  # training and held-out images share the tensors (augmentation is
            return self._decoded(root / "train"), self._decoded(val_dir)  # per batch)
        size, norm = self.image_size, T.Normalize(self.mean, self.std)
        if size <= 64:
            train_tf = [T.Resize(size), T.RandomCrop(size, padding=size // 8)]
            val_tf = [T.Resize(size), T.CenterCrop(size)]
        else:
            train_tf = [T.RandomResizedCrop(size)]
            val_tf = [T.Resize(int(size / 0.875)), T.CenterCrop(size)]
        train_tf = [*train_tf, T.RandomHorizontalFlip()] if self.augment else list(val_tf)
        train_tf += [T.ToTensor(), norm]
        val_tf += [T.ToTensor(), norm]
        return (
            datasets.ImageFolder(root / "train", transform=T.Compose(train_tf)),
            datasets.ImageFolder(val_dir, transform=T.Compose(val_tf)),
        )


class FashionScenes(FashionMNIST):
    """Semantic segmentation of Fashion-MNIST scenes (:mod:`smallbatch.data.scenes`): several
    garments on a ``canvas``×``canvas`` image, a label per pixel (0 background, 1–10 the
    garment classes), training scenes from the training split and evaluation scenes from the
    test split, made once per setting and cached under ``data_dir/FashionScenes``. Training
    crops (``crop_padding``) and flips an image and its label map with the same draws.

    Args (beside the base's): ``canvas``, ``garments`` ([lo, hi] per scene), ``scale``
    ([lo, hi], garment size 28·s px), ``train_scenes``, ``test_scenes``, ``scene_seed``,
    ``crop_padding``."""

    num_classes = 11
    in_chans = 1

    def __init__(
        self,
        *args,
        canvas: int = 96,
        garments: tuple[int, int] = (2, 4),
        scale: tuple[float, float] = (1.0, 2.0),
        train_scenes: int = 4000,
        test_scenes: int = 1000,
        scene_seed: int = 0,
        crop_padding: int = 8,
        **kwargs,
    ) -> None:
        self.setting = SceneSetting(canvas, tuple(garments), tuple(scale),
                                    train_scenes=train_scenes, test_scenes=test_scenes,
                                    seed=scene_seed)  # fmt: skip
        try:
            self.setting.check()
        except ValueError as exc:
            raise SceneSettingError(f"FashionScenes: {exc}") from exc
        self.image_size, self.crop_padding = canvas, crop_padding
        super().__init__(*args, **kwargs)
        self._scenes: dict | None = None

    def scenes(self) -> dict:
        """The cached scene set (made on first use)."""
        if self._scenes is None:
            self.prepare_data()

            def garments():
                def split(train: bool):
                    ds = datasets.FashionMNIST(self.data_dir, train=train)
                    return torch.as_tensor(ds.data), torch.as_tensor(ds.targets)

                return split(True), split(False)

            folder = Path(self.data_dir) / "FashionScenes"
            self._scenes = load_or_make_scenes(folder, self.setting, garments)
        return self._scenes

    @functools.cached_property
    def batch_transform(self) -> CropFlipNormalize:
        images = self.scenes()["train_images"].float() / 255
        mean, std = float(images.mean()), float(images.std())  # of the training scenes
        return CropFlipNormalize(self.image_size, self.crop_padding, (mean,), (std,))

    def prepare_batch(self, inputs, targets, training):
        return self.batch_transform.pair(inputs, targets, training and self.augment)

    def build_datasets(self):
        s = self.scenes()
        return (TensorDataset(s["train_images"], s["train_maps"]),
                TensorDataset(s["test_images"], s["test_maps"]))  # fmt: skip

    def build_train_for_eval(self):
        s = self.scenes()
        return TensorDataset(s["train_images"], s["train_maps"])
