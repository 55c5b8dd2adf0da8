"""Opt-in ``torch.compile`` of a backbone; ``mode="reduce-overhead"`` adds CUDA graphs on GPU."""

from __future__ import annotations

from torch import nn

from ..norms import NormConfigError
from ..norms.traits import builtin_norms
from ..norms.walk import compile_unsafe_layers

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_backbone(
    model: nn.Module, mode: str = "default", backend: str = "inductor"
) -> nn.Module:
    """Compile ``model``'s forward in place (``nn.Module.compile``), so parameter and buffer
    names, checkpoints and DDP's ignore list stay those of the eager model. Compilation happens
    on the first call. CUDA graphs (``reduce-overhead``) need fixed shapes: training loaders drop
    their last partial batch. Layers that declare ``compile_safe = False`` (the ``NormLayer``
    contract: Python-side state across steps, such as BRN's step counter or CBN's window ring and
    conv hooks) are refused."""
    if mode not in COMPILE_MODES:
        raise NormConfigError(f"compile mode {mode!r} is not one of {', '.join(COMPILE_MODES)}")
    stateful = compile_unsafe_layers(model)
    if stateful:
        names = ", ".join(stateful[:5]) + (" ..." if len(stateful) > 5 else "")
        safe = ", ".join(builtin_norms(compile_safe=True))
        raise NormConfigError(
            f"torch.compile supports norms without Python-side state ({safe}, ...); these "
            f"layers declare compile_safe = False: {names}. Train them eagerly (no compile mode)."
        )
    model.compile(mode=mode, backend=backend)
    return model
