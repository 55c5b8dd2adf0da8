"""Shape checks before a run starts: the model's feature maps at the data's image size."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..norms import BatchStatsError


def check_feature_maps(backbone: nn.Module, datamodule: Any, copy_first: bool = False) -> None:
    """One training-mode forward of ``backbone`` on the meta device (shapes only, nothing
    computed) at the data's image size and per-device batch: a batch-statistics layer that
    would see one value per channel (batch 1 at a 1x1 map, ghost groups included) or a batch
    that is no multiple of its ghost batch raises here, before a run folder or a model summary.
    ``copy_first``: check a copy (the backbone is moved to the meta device otherwise). Data
    modules without ``image_size``, and layers the meta device cannot run, are left to the
    run."""
    size, chans = getattr(datamodule, "image_size", None), getattr(datamodule, "in_chans", None)
    batch = getattr(datamodule, "batch_size", None)
    if not all(isinstance(v, int) and v > 0 for v in (size, chans, batch)):
        return
    if copy_first:
        backbone = copy.deepcopy(backbone)
    backbone = backbone.to("meta").train()
    try:
        # forward, not __call__: a compiled backbone (nn.Module.compile) is not compiled for this
        backbone.forward(torch.empty(batch, chans, size, size, device="meta"))
    except (BatchStatsError, UserError):  # batch 1 at 1x1; a batch that is no multiple of b
        raise
    except Exception:  # noqa: BLE001 - not a shape problem; the run will show it
        return
