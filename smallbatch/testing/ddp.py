"""The kit's DDP check: two CPU processes (gloo), b samples each, against the ghost-batch
emulation in one process (2b samples, ``norm_batch = b``).

DDP averages the ranks' gradients, so both compute the same loss over 2b samples; each rank
keeps the buffers the layer lists in ``ddp_local_buffers`` and takes every other buffer from
rank 0 at each forward. Running statistics are where the two are documented to differ (DDP
keeps rank 0's, ghost batches average the groups'): a layer whose training output reads its
``running_*`` buffers is compared on the first step only; every other layer on every step.
"""

from __future__ import annotations

import copy
import os
import pickle
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from ..norms import local_buffer_names, resolve_norm, set_norm_batch
from .harness import FAIL, PASS, SKIP, CheckResult, NormUnderTest, close, inputs, train_steps

WORLD, STEPS = 2, 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, factory: Any, norm_args: dict, batches: list, out: str) -> None:
    """One rank: its slice of every batch, DDP with the layer's local buffers left alone."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = NormUnderTest.build(factory, **norm_args).pair()
        model._ddp_params_and_buffers_to_ignore = local_buffer_names(model)
        b = batches[0].shape[0] // WORLD
        grads: list[Tensor] = []
        outs = train_steps(
            DistributedDataParallel(model), [x[rank * b : (rank + 1) * b] for x in batches], grads
        )
        torch.save({"outs": outs, "grads": grads}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def reads_running_statistics(n: NormUnderTest) -> bool:
    """Whether the layer's training output changes when its ``running_*`` buffers do."""
    model = n.pair()
    train_steps(model, [inputs(seed=3)])
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for name, buf in moved.named_buffers():
            if name.rsplit(".", 1)[-1].startswith("running_") and buf.is_floating_point():
                buf.mul_(1.5).add_(0.3)
    x = inputs(seed=4)
    with torch.no_grad():
        return not close(copy.deepcopy(model)(x), moved(x))


def check_ddp(n: NormUnderTest) -> CheckResult:
    """Two-process DDP (gloo, b = 4 per rank) equals ghost batches of 4 in a batch of 8:
    outputs of every step (the first only when training reads running statistics) and the
    first step's gradients."""
    if not n.traits.ghost_batches:
        return CheckResult("ddp", SKIP, "does not declare supports_ghost_batch")
    factory, init_args, _ = resolve_norm(n.spec)
    norm_args = {**init_args, **n.norm_args}
    try:
        pickle.dumps((factory, norm_args))
    except Exception as exc:  # noqa: BLE001 - e.g. a class defined inside a function
        return CheckResult("ddp", SKIP, f"the norm cannot reach a worker process ({exc})")
    batches = [inputs(seed=10 + s) for s in range(STEPS)]
    with tempfile.TemporaryDirectory(prefix="smallbatch-ddp-") as out:
        try:
            mp.spawn(_worker, args=(_free_port(), factory, norm_args, batches, out),
                     nprocs=WORLD, join=True)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - a rank's error, reported in one line
            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
            last = lines[-1] if lines else repr(exc)  # whole: never cut mid-sentence
            return CheckResult("ddp", FAIL, f"a DDP rank failed: {last}")
        ranks = [torch.load(Path(out) / f"rank{r}.pt") for r in range(WORLD)]
    ghost = n.pair()
    set_norm_batch(ghost, batches[0].shape[0] // WORLD)
    grads: list[Tensor] = []
    emulated = train_steps(ghost, batches, grads)
    steps = 1 if reads_running_statistics(n) else STEPS
    for step in range(steps):
        ddp_out = torch.cat([r["outs"][step] for r in ranks])
        if not close(ddp_out, emulated[step], 1e-4):
            err = float((ddp_out - emulated[step]).abs().max())
            hint = " (a buffer DDP broadcasts from rank 0 that is not in ddp_local_buffers?)"
            return CheckResult("ddp", FAIL, f"step {step + 1}: DDP output differs from ghost "
                               f"batches by {err:.2g}{hint if step else ''}")  # fmt: skip
    for got, want in zip(ranks[0]["grads"], grads, strict=True):
        if not close(got, want, 1e-4):
            return CheckResult("ddp", FAIL, "first-step gradients differ from ghost batches")
    if steps == 1:
        return CheckResult("ddp", PASS, "equal on step 1; training reads running statistics, "
                           "which DDP takes from rank 0 and ghost batches average")  # fmt: skip
    return CheckResult("ddp", PASS, f"equal for {STEPS} steps")
