"""Run names: ``<norm>-nb<normalization batch>[-pb<per-device batch>]-s<seed>``, and the two
facts they rest on: the normalization batch of a run and stable digests of its settings.

The normalization batch leads because it is the grid's axis (the per-device batch appears only
when ghost batches make it differ), e.g. ``bn-nb4-s0`` or ``brn-nb2-pb8-s0``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# config keys that say where or under which name a run is, not what it computes
NOT_SETTINGS = (
    "config", "run_dir", "name", "group", "tags", "trainer.default_root_dir",
    "trainer.logger", "data.data_dir", "data.init_args.data_dir",
)  # fmt: skip
SEED_KEY = "seed_everything"


def is_setting_key(key: str) -> bool:
    """Whether a flat config key belongs to a run's setting (what seeds of one setting share)."""
    return key != SEED_KEY and not any(key == n or key.startswith(n + ".") for n in NOT_SETTINGS)


def normalization_batch(norm_batch: int | None, batch_size: int) -> int:
    """Samples each normalization sees: the ghost batch, capped at the per-device batch (a
    batch no larger than ``norm_batch`` is normalized whole), else the per-device batch."""
    return min(norm_batch or batch_size, batch_size)


def stable_digest(data: Any, length: int = 16) -> str:
    """Hex digest of ``data`` as sorted-key JSON: equal for equal settings, across runs."""
    blob = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def run_label(norm: str, batch_size: Any, norm_batch: Any = None, seed: Any = None) -> str:
    """The run name for this norm, per-device batch, normalization batch and seed."""
    norm_batch = norm_batch or batch_size
    label = f"{norm}-nb{norm_batch}"
    if norm_batch != batch_size:
        label += f"-pb{batch_size}"
    return label if seed is None else f"{label}-s{seed}"
