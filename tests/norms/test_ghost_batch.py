"""Ghost batches: one process with batch G·b and norm_batch b equals G DDP processes with b."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from smallbatch.models import create_model
from smallbatch.norms import (
    BatchNorm2d,
    NormConfigError,
    builtin_norms,
    local_buffer_names,
    set_norm_batch,
)

B, STEPS = 4, 4


def _data():
    g = torch.Generator().manual_seed(7)
    xs = [torch.randn(2 * B, 3, 16, 16, generator=g) for _ in range(STEPS)]
    ys = [torch.randint(0, 10, (2 * B,), generator=g) for _ in range(STEPS)]
    return xs, ys


def _model(norm, **kw):
    torch.manual_seed(0)
    return create_model("resnet8", norm, num_classes=10, **kw)


def _train(model, xs, ys, rank=None):
    """SGD steps; returns per-step losses and the gradients of the first step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses, first_grads = [], None
    for x, y in zip(xs, ys, strict=True):
        if rank is not None:  # this rank's slice of the global batch (same data order)
            x, y = x[rank * B : (rank + 1) * B], y[rank * B : (rank + 1) * B]
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if first_grads is None:
            first_grads = [p.grad.detach().clone() for p in model.parameters()]
        opt.step()
        losses.append(loss.detach())
    return losses, first_grads


def _worker(rank, port, norm, norm_args, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model = _model(norm, **norm_args)
    model._ddp_params_and_buffers_to_ignore = local_buffer_names(model)  # CBN windows per rank
    ddp = DDP(model)
    xs, ys = _data()
    losses, grads = _train(ddp, xs, ys, rank)
    for loss in losses:  # the global loss = mean of the ranks' losses
        dist.all_reduce(loss)
        loss /= 2
    if rank == 0:
        torch.save({"losses": losses, "grads": grads}, out)
    dist.destroy_process_group()


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("norm", "norm_args", "steps_equal"),
    [
        ("bn", {}, STEPS),
        # BRN while the ramp keeps rmax=1, dmax=0: equal at every step
        ("brn", {"warmup": 100}, STEPS),
        # BRN with live r, d: equal on step 1; later DDP takes running stats from rank 0 only
        ("brn", {"warmup": 0, "rmax_at": 0, "dmax_at": 0, "rmax": 2.0, "dmax": 1.0}, 1),
        # CBN: each rank keeps its own window, as each ghost group does; weights are shared
        ("cbn", {"window": 3}, STEPS),
    ],
    ids=["bn", "brn-warmup", "brn-live", "cbn"],
)
def test_ghost_batch_equals_two_process_ddp(norm, norm_args, steps_equal, tmp_path):
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(_port(), norm, norm_args, str(out)), nprocs=2, join=True)
    ddp = torch.load(out)
    model = _model(norm, **norm_args)
    set_norm_batch(model, B)
    xs, ys = _data()
    losses, grads = _train(model, xs, ys)
    for step in range(steps_equal):
        torch.testing.assert_close(losses[step], ddp["losses"][step], rtol=1e-5, atol=1e-5)
    for g_ghost, g_ddp in zip(grads, ddp["grads"], strict=True):
        torch.testing.assert_close(g_ghost, g_ddp, rtol=1e-4, atol=1e-5)
    # without ghost batches the single process normalizes over 2b: a different computation
    plain_losses, _ = _train(_model(norm, **norm_args), xs, ys)
    assert not torch.allclose(plain_losses[0], ddp["losses"][0], rtol=1e-5, atol=1e-5)


def test_ghost_bn_matches_per_group_batchnorm():
    torch.manual_seed(0)
    layer = BatchNorm2d(5)
    layer.norm_batch = 2
    x = torch.randn(6, 5, 3, 3)
    ref_bn = nn.BatchNorm2d(5)
    ref = torch.cat([ref_bn(chunk) for chunk in x.split(2)])
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5)
    # running stats: the groups' average (torch's BN applied three times compounds instead)
    chunks = x.split(2)
    mean = torch.stack([c.mean(dim=(0, 2, 3)) for c in chunks]).mean(0)
    torch.testing.assert_close(layer.running_mean, 0.1 * mean)


def test_ghost_batch_errors():
    model = _model("gn")
    assert set_norm_batch(model, 2) == []  # batch-free norms need nothing
    with pytest.raises(NormConfigError, match="do not support ghost batches.*SyncBatchNorm"):
        set_norm_batch(_model("syncbn"), 2)
    layer = BatchNorm2d(3)
    layer.norm_batch = 4
    with pytest.raises(NormConfigError, match="batch 6 is not a multiple of norm_batch 4"):
        layer(torch.randn(6, 3, 2, 2))


@pytest.mark.parametrize("norm", builtin_norms(ghost_batches=True))
def test_channels_last_gives_the_same_training_steps(norm):
    from smallbatch.models import to_channels_last

    xs, ys = _data()
    extra = {"window": 3} if norm == "cbn" else {}
    plain, _ = _train(_model(norm, **extra), xs, ys)
    model = to_channels_last(_model(norm, **extra))
    nhwc = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    fast, _ = _train(model, nhwc, ys)
    for a, b in zip(plain, fast, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
