"""Under the fixed-total-batch protocol only the normalization batch b varies: a batch-free norm
computes exactly the same losses and gradients at every b (so the grid runs it once per seed),
while a batch-statistics norm does not."""

import pytest
import torch
import torch.nn.functional as F

from smallbatch.norms import builtin_norms, uses_batch_statistics
from smallbatch.run.module import SmallBatchModule

BATCH_FREE = builtin_norms(batch_free=True)


def _train(norm: str, norm_batch: int, steps: int = 3) -> tuple[list[float], list[torch.Tensor]]:
    """A few SGD steps of a CIFAR ResNet-8 at per-device batch 16 with ghost batch b."""
    torch.manual_seed(0)
    module = SmallBatchModule(backbone="resnet8", norm=norm, in_chans=1, norm_batch=norm_batch)
    opt = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    losses, grads = [], []
    module.train()
    for _ in range(steps):
        x = torch.randn(16, 1, 16, 16, generator=gen)
        y = torch.randint(0, 10, (16,), generator=gen)
        opt.zero_grad()
        loss = F.cross_entropy(module(x), y)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in module.parameters()]))
        opt.step()
    return losses, grads


@pytest.mark.parametrize("norm", BATCH_FREE)
def test_batch_free_norm_is_identical_at_every_normalization_batch(norm):
    ref_losses, ref_grads = _train(norm, 16)
    assert SmallBatchModule(backbone="resnet8", norm=norm, in_chans=1).batch_free
    for b in (1, 4):
        losses, grads = _train(norm, b)
        assert losses == ref_losses
        for g, ref in zip(grads, ref_grads, strict=True):
            assert torch.equal(g, ref)


def test_batch_statistics_norm_differs_across_normalization_batches():
    assert uses_batch_statistics(SmallBatchModule(backbone="resnet8", norm="bn").model)
    losses_16, _ = _train("bn", 16)
    losses_2, _ = _train("bn", 2)
    assert losses_16[0] != losses_2[0]
