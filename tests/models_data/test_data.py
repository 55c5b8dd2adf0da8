"""ImageFolder archives: unpacked once, also when parallel grid cells unpack at the same time."""

import multiprocessing as mp
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from smallbatch.data import ImageFolder


def _make_archive(tmp_path):
    src = tmp_path / "tiny"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            folder = src / split / cls
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(folder / f"{i}.jpg")
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="tiny")
    return archive


def _unpack(archive, data_dir, queue):
    dm = ImageFolder(root=str(archive), data_dir=str(data_dir), batch_size=2, num_workers=0)
    queue.put(str(dm.resolved_root()))


@pytest.mark.slow
def test_archive_unpacked_once_by_parallel_processes(tmp_path):
    archive = _make_archive(tmp_path)
    data_dir = tmp_path / "data"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_unpack, args=(archive, data_dir, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    roots = {queue.get() for _ in procs}
    assert roots == {str(data_dir / "tiny")}
    assert sorted(p.name for p in data_dir.iterdir()) == ["tiny"]  # no partial folders left
    dm = ImageFolder(root=str(archive), data_dir=str(data_dir), batch_size=2, num_workers=0)
    dm.setup()
    assert len(dm.train_set) == 8 and len(dm.val_set) == 8 and dm.num_classes == 2


def test_holdout_evaluates_on_training_images_left_out_of_training(fashion_dir):
    from smallbatch.data import FashionMNIST

    dm = FashionMNIST(data_dir=fashion_dir, holdout=1000, num_workers=0)
    dm.setup("fit")
    assert len(dm.train_set) == 59000 and len(dm.val_set) == 1000
    assert not set(dm.train_set.indices) & set(dm.val_set.indices)
    x, _ = dm.val_set[0]
    x2, _ = dm.val_set[0]
    assert torch.equal(x, x2)  # evaluation transform: no random crop or flip
    again = FashionMNIST(data_dir=fashion_dir, holdout=1000, num_workers=0)
    again.setup("fit")
    assert again.val_set.indices == dm.val_set.indices  # a fixed split


def test_gz_files_in_the_raw_folder_are_unpacked_in_place(tmp_path, fashion_dir):
    """README allows the four idx files as .gz in <data_dir>/FashionMNIST/raw: they work."""
    import gzip
    import shutil

    from smallbatch.data import FashionMNIST

    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for source in (Path(fashion_dir) / "FashionMNIST" / "raw").iterdir():
        if source.name.endswith("ubyte"):
            with open(source, "rb") as src, gzip.open(raw / f"{source.name}.gz", "wb", 1) as dst:
                shutil.copyfileobj(src, dst)
    dm = FashionMNIST(data_dir=str(tmp_path), num_workers=0, train_subset=64, val_subset=32)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 64 and len(dm.val_set) == 32


def test_in_memory_image_folder_decodes_once_and_augments_per_batch(tmp_path):
    archive = _make_archive(tmp_path)
    dm = ImageFolder(root=str(archive), data_dir=str(tmp_path / "data"), image_size=8,
                     in_memory=True, batch_size=2, num_workers=0, mean=(0.5,) * 3,
                     std=(0.25,) * 3)  # fmt: skip
    dm.setup("fit")
    images, targets = dm.train_set.tensors
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 8, 8)
    assert targets.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # the decoded pixels are the files' (JPEG: within its rounding), red ramp 0, 40, 80, 120
    for i in range(4):
        assert abs(images[i, 0].float().mean().item() - 40 * i) < 3
    out = dm.batch_transform(images[:2], False)
    expected = (images[:2].float() / 255 - 0.5) / 0.25
    assert torch.allclose(out, expected)  # evaluation: normalization only
    assert dm.batch_transform.padding == 1  # image_size // 8, as torchvision's CIFAR recipe
    held = ImageFolder(root=str(archive), data_dir=str(tmp_path / "data"), image_size=8,
                       in_memory=True, batch_size=2, num_workers=0, holdout=2)  # fmt: skip
    held.setup("fit")
    assert len(held.train_set) == 6 and len(held.val_set) == 2
    assert held.train_set.dataset is held.val_set.dataset  # one decoded copy, two index sets


def test_in_memory_refuses_images_of_another_size(tmp_path):
    archive = _make_archive(tmp_path)
    dm = ImageFolder(root=str(archive), data_dir=str(tmp_path / "data"), image_size=32,
                     in_memory=True, batch_size=2, num_workers=0)  # fmt: skip
    with pytest.raises(ValueError, match=r"in_memory needs every image .* at image_size 32 x 32; "
                       r"found sizes \[\(8, 8\)\]"):  # fmt: skip
        dm.setup("fit")
