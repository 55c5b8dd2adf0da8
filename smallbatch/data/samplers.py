"""The training order of D emulated devices in one process (``data.emulated_devices``).

Under DDP, Lightning gives rank r the indices of torch's ``DistributedSampler(num_replicas=D,
rank=r, shuffle=True, seed=PL_GLOBAL_SEED)`` (one permutation of seed + epoch, padded to a
multiple of D, every D-th index from r) and each rank batches its own share. One process that
emulates the D devices with ghost batches sees, at step s, rank 0's s-th batch, then rank 1's,
…, side by side: the same samples in the same groups as the D devices at step s.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DistributedSampler, Sampler


class DevicesSideBySide(Sampler[int]):
    """Indices that a loader of ``batch_size`` = D × (per-device batch) cuts into batches
    holding device d's s-th DDP batch in slot d.

    The last incomplete per-device batch is dropped, as the training loader drops it under DDP.
    ``set_epoch`` (called by Lightning each epoch) reshuffles as ``DistributedSampler`` does.
    """

    def __init__(self, n: int, devices: int, batch_size: int, seed: int = 0) -> None:
        if devices < 1 or batch_size % devices:
            raise ValueError(f"batch_size {batch_size} is not a multiple of {devices} devices")
        self.per_device = batch_size // devices
        self.ranks = [
            DistributedSampler(range(n), num_replicas=devices, rank=r, shuffle=True, seed=seed)
            for r in range(devices)
        ]

    def set_epoch(self, epoch: int) -> None:
        for sampler in self.ranks:
            sampler.set_epoch(epoch)

    def steps(self) -> int:
        return len(self.ranks[0]) // self.per_device

    def __len__(self) -> int:
        return self.steps() * self.per_device * len(self.ranks)

    def __iter__(self) -> Iterator[int]:
        shares = [list(sampler) for sampler in self.ranks]
        b = self.per_device
        for step in range(self.steps()):
            for share in shares:
                yield from share[step * b : (step + 1) * b]
