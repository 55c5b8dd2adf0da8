"""data.emulated_devices and data.augment (issue 37): a one-process run that emulates D devices
sees, at every step, the D ranks' DDP batches side by side, in the order Lightning's
DistributedSampler gives each rank; augmentation can be switched off."""

import types

import pytest
import torch
from torch.utils.data import DistributedSampler

from smallbatch.data import FashionMNIST
from smallbatch.data.base import prepare_batch
from smallbatch.data.samplers import DevicesSideBySide
from smallbatch.errors import UserError


@pytest.mark.parametrize("n", [64, 70])  # 70: DistributedSampler pads to a multiple of D
@pytest.mark.parametrize("devices", [2, 4])
def test_each_batch_is_the_ranks_batches_side_by_side(n, devices):
    per_device, seed = 4, 7
    sampler = DevicesSideBySide(n, devices, per_device * devices, seed=seed)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        shares = []
        for rank in range(devices):
            ddp = DistributedSampler(range(n), num_replicas=devices, rank=rank, seed=seed)
            ddp.set_epoch(epoch)
            shares.append(list(ddp))
        order = list(sampler)
        steps = len(shares[0]) // per_device  # a rank's last partial batch is dropped
        assert len(order) == len(sampler) == steps * per_device * devices
        for step in range(steps):
            batch = order[step * per_device * devices : (step + 1) * per_device * devices]
            for rank in range(devices):
                got = batch[rank * per_device : (rank + 1) * per_device]
                assert got == shares[rank][step * per_device : (step + 1) * per_device]
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first  # reshuffled per epoch, as DDP does


def test_the_training_loader_uses_it_and_refuses_real_devices(fashion_dir, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    dm = FashionMNIST(data_dir=fashion_dir, batch_size=8, train_subset=64, num_workers=0,
                      emulated_devices=2)  # fmt: skip
    dm.setup()
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, DevicesSideBySide) and loader.batch_size == 8
    assert len(loader) == 8 and loader.sampler.ranks[0].seed == 3
    dm.trainer = types.SimpleNamespace(world_size=2)
    with pytest.raises(UserError, match="emulated_devices 2 emulates devices in one process"):
        dm.train_dataloader()
    with pytest.raises(ValueError, match="must be >= 1 and divide batch_size 8"):
        FashionMNIST(data_dir=fashion_dir, batch_size=8, emulated_devices=3)


def test_augment_false_trains_on_the_images_as_evaluated(fashion_dir):
    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    labels = torch.zeros(16, dtype=torch.long)
    plain = FashionMNIST(data_dir=fashion_dir, augment=False)
    torch.manual_seed(0)
    train, _ = prepare_batch(plain, images, labels, training=True)
    evaluated, _ = prepare_batch(plain, images, labels, training=False)
    assert torch.equal(train, evaluated)
    augmented, _ = prepare_batch(FashionMNIST(data_dir=fashion_dir), images, labels, True)
    assert not torch.equal(augmented, evaluated)
