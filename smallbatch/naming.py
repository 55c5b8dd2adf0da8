"""Run names: ``<norm>-nb<normalization batch>[-pb<per-device batch>]-s<seed>``.

The normalization batch leads because it is the grid's axis (the per-device batch appears only
when ghost batches make it differ), e.g. ``bn-nb4-s0`` or ``brn-nb2-pb8-s0``.
"""

from __future__ import annotations

from typing import Any


def run_label(norm: str, batch_size: Any, norm_batch: Any = None, seed: Any = None) -> str:
    """The run name for this norm, per-device batch, normalization batch and seed."""
    norm_batch = norm_batch or batch_size
    label = f"{norm}-nb{norm_batch}"
    if norm_batch != batch_size:
        label += f"-pb{batch_size}"
    return label if seed is None else f"{label}-s{seed}"
