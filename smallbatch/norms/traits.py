"""A norm's traits, probed on one layer built by the registry (batch-free, ghost batches,
compile-safe, synchronized), and the lists of built-in norms derived from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from .registry import available_norms, create_norm
from .walk import ghost_batch_capable, uses_batch_statistics


@dataclass(frozen=True)
class NormTraits:
    """What the suite needs to know about a norm, probed on one layer of it."""

    batch_free: bool  # its output for a sample does not depend on the rest of the batch
    ghost_batches: bool  # it normalizes over the batch and can split it into ghost batches
    compile_safe: bool
    synchronized: bool = False  # statistics over all devices (SyncBN): one group of the batch


def probe_norm(norm: Any, **norm_args: Any) -> NormTraits:
    """Build one 64-channel layer of ``norm`` and read its traits from the contract."""
    layer = create_norm(norm, 64, **norm_args)
    return NormTraits(
        batch_free=not uses_batch_statistics(layer),
        ghost_batches=ghost_batch_capable(layer),
        compile_safe=all(getattr(m, "compile_safe", True) for m in layer.modules()),
        synchronized=any(
            getattr(m, "synchronized", False) or isinstance(m, nn.SyncBatchNorm)
            for m in layer.modules()
        ),
    )


def builtin_norms(**traits: bool) -> list[str]:
    """Built-in norm names in registration order, optionally filtered by ``NormTraits``
    fields (``builtin_norms(batch_free=True)``): the one list every other list derives from."""
    names = [n for n, e in available_norms(order="registration").items() if e.source == "built-in"]
    return [n for n in names if all(getattr(probe_norm(n), k) == v for k, v in traits.items())]


def batch_free_norms() -> list[str]:
    """Registered norms (built-in and plugins) that use no batch statistics."""
    out = []
    for name in available_norms(order="registration"):
        try:
            if probe_norm(name).batch_free:
                out.append(name)
        except Exception:  # noqa: BLE001 - a plugin that needs arguments is just not listed
            continue
    return out
