"""Under DDP each rank keeps its own CBN window (DDP must not broadcast it from rank 0)."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from smallbatch.models import swap_norms
from smallbatch.norms import local_buffer_names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = swap_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), "cbn", window=3)
    model._ddp_params_and_buffers_to_ignore = local_buffer_names(model)
    ddp = DDP(model)
    torch.manual_seed(100 + rank)  # different data per rank
    for _ in range(3):
        ddp(torch.randn(2, 3, 5, 5) * (rank + 1)).sum().backward()
    cbn = model[1]
    torch.save(
        {"win_mean": cbn.win_mean.clone(), "running_mean": cbn.running_mean.clone()},
        f"{out}/rank{rank}.pt",
    )
    dist.destroy_process_group()


def test_cbn_window_stays_per_rank_under_ddp(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    # Every slot differs: DDP's per-forward buffer broadcast would have copied rank 0's older
    # entries into rank 1's window, leaving only its newest entry its own.
    for slot in range(r0["win_mean"].shape[1]):
        assert not torch.allclose(r0["win_mean"][:, slot], r1["win_mean"][:, slot]), slot
