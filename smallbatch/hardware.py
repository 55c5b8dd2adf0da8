"""What this machine computes natively, and the precision ``auto`` resolves to on it.

bf16 autocast on a CPU without native bf16 instructions (no AVX512-BF16, no AMX, no Arm
BF16) is emulated: about 20x slower than fp32 (a 2-core AVX2 EPYC trains ResNet-8 at 56 ms
per step in fp32 and 1,179 ms in bf16). ``--trainer.precision auto`` therefore means
``bf16-mixed`` where bf16 is native (such CPUs, CUDA devices that support it) and ``32-true``
otherwise. This module imports nothing of the package.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

AUTO = "auto"
BF16_PRECISIONS = ("bf16-mixed", "bf16-true", "bf16")
# /proc/cpuinfo flags that mean bf16 arithmetic in hardware (x86: AVX512-BF16, AMX; Arm: BF16)
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
EMULATED_BF16_SLOWDOWN = "about 20x"  # measured: 1,179 vs 56 ms per ResNet-8 step (AVX2 EPYC)


@cache
def cpu_info() -> tuple[str | None, frozenset[str]]:
    """The CPU's model name and feature flags from ``/proc/cpuinfo`` (Linux; elsewhere
    ``(None, {})``). Arm kernels call the flags ``Features``."""
    model, flags = None, frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model") and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model, flags


def cpu_capability() -> str:
    """The vector instruction set PyTorch's CPU kernels dispatch to (``AVX2``,
    ``AVX512``, ``DEFAULT``, ...)."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def cpu_native_bf16() -> bool:
    """Whether the CPU computes bf16 in hardware (AVX512-BF16, AMX-BF16 or Arm BF16)."""
    return any(flag in cpu_info()[1] for flag in NATIVE_BF16_FLAGS)


def cpu_record() -> dict[str, object]:
    """What result.json and timings record about the CPU: model, PyTorch's kernel capability,
    native bf16, AMX."""
    model, flags = cpu_info()
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "cpu_capability": cpu_capability(),
        "cpu_bf16_native": cpu_native_bf16(),
        "cpu_amx": any(f.startswith("amx") for f in flags),
    }


def uses_cuda(accelerator: object) -> bool:
    """Whether a run with Lightning's ``trainer.accelerator`` runs on a CUDA device."""
    import torch

    name = str(getattr(accelerator, "class_path", accelerator) or "auto").lower()
    if name in ("gpu", "cuda") or "cuda" in name:
        return True
    return name == "auto" and torch.cuda.is_available()


def resolve_precision(requested: object, accelerator: object) -> tuple[object, str | None]:
    """``(precision, note)``: ``auto`` resolved for this machine, with the line that says so;
    any other value unchanged, with a warning when it asks for bf16 on a CPU that emulates it
    (the run stays as asked: a published grid keeps the precision it names)."""
    import torch

    cuda = uses_cuda(accelerator)
    if requested == AUTO:
        if cuda:
            native = torch.cuda.is_bf16_supported()
            where = torch.cuda.get_device_name()
            why = "supports bf16" if native else "has no bf16"
        else:
            native = cpu_native_bf16()
            where = f"{cpu_info()[0] or platform.machine()} ({cpu_capability()})"
            why = "computes bf16 natively" if native else "has no native bf16 (AVX512-BF16/AMX)"
        chosen = "bf16-mixed" if native else "32-true"
        return chosen, f"precision auto -> {chosen}: {where} {why}"
    if str(requested) in BF16_PRECISIONS and not cuda and not cpu_native_bf16():
        return requested, (
            f"warning: precision {requested} on a CPU without native bf16 "
            f"({cpu_capability()}, no AVX512-BF16/AMX) is emulated and {EMULATED_BF16_SLOWDOWN} "
            "slower than 32-true; use --trainer.precision auto (or 32-true) unless the run must "
            "match bf16 results"
        )
    return requested, None


def seconds_per_call(fn: Callable[[], object], calls: int = 1, device: Any = None) -> float:
    """Wall seconds per call of ``fn`` over ``calls`` calls in a row: the suite's one step
    timer (bench, the kit's cost check, the dry-run's estimate, scripts). On a CUDA ``device``
    the queue is drained before and after, so the kernels a call launched count."""

    def sync() -> None:
        if device is not None and getattr(device, "type", device) == "cuda":
            import torch

            torch.cuda.synchronize(device)

    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - start) / calls
