"""Opt-in ``torch.compile`` of a backbone; ``mode="reduce-overhead"`` adds CUDA graphs on GPU."""

from __future__ import annotations

from torch import nn

from ..norms import NormConfigError
from ..norms.base import StepCounter

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_backbone(
    model: nn.Module, mode: str = "default", backend: str = "inductor"
) -> nn.Module:
    """Compile ``model``'s forward in place (``nn.Module.compile``), so parameter and buffer
    names, checkpoints and DDP's ignore list stay those of the eager model. Compilation happens
    on the first call. CUDA graphs (``reduce-overhead``) need fixed shapes: training loaders drop
    their last partial batch. Norms that keep Python-side state across steps (BRN's step counter
    and ramps, CBN's window ring and conv hooks) are refused."""
    if mode not in COMPILE_MODES:
        raise NormConfigError(f"compile mode {mode!r} is not one of {', '.join(COMPILE_MODES)}")
    stateful = [
        f"{n} ({type(m).__name__})" for n, m in model.named_modules() if isinstance(m, StepCounter)
    ]
    if stateful:
        names = ", ".join(stateful[:5]) + (" ..." if len(stateful) > 5 else "")
        raise NormConfigError(
            f"torch.compile supports norms without Python-side state (bn, gn, ln, in, "
            f"evonorm_s0, frn, ...); these layers keep state across steps: {names}. "
            "Train them eagerly (no compile mode)."
        )
    model.compile(mode=mode, backend=backend)
    return model
