"""Replace every BatchNorm2d of a model (torchvision, timm, ours) by a registered norm."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..norms.registry import NormConfigError, NormSpecLike, create_norm


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _first_conv(model: nn.Module) -> nn.Conv2d:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise NormConfigError("the model has no Conv2d, so there is nothing to pair a CBN with")


def find_feeding_convs(
    model: nn.Module, norm_names: list[str], example_input: torch.Tensor | None = None
) -> dict[str, tuple[str, nn.Conv2d] | None]:
    """Map each named norm to the (name, Conv2d) whose output it receives, by one traced forward.

    The trace runs in eval mode under ``no_grad`` on ``example_input`` (default: 2 images of
    64×64 with the first conv's input channels). A norm fed by anything but a conv maps to None.
    """
    if example_input is None:
        example_input = torch.zeros(2, _first_conv(model).in_channels, 64, 64)
    param = next(model.parameters(), None)
    if param is not None:
        example_input = example_input.to(param.device, param.dtype)
    produced: dict[int, tuple[str, nn.Conv2d]] = {}
    keep_alive: list[torch.Tensor] = []
    found: dict[str, tuple[str, nn.Conv2d] | None] = {}
    handles = []

    def conv_hook(name: str, conv: nn.Conv2d):
        def hook(_m, _inp, out):
            keep_alive.append(out)
            produced[id(out)] = (name, conv)

        return hook

    def norm_hook(name: str):
        def hook(_m, inputs):
            found.setdefault(name, produced.get(id(inputs[0])))

        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook(name, module)))
        elif name in norm_names:
            handles.append(module.register_forward_pre_hook(norm_hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return {name: found.get(name) for name in norm_names}


def swap_norms(
    model: nn.Module,
    norm: NormSpecLike,
    *,
    example_input: torch.Tensor | None = None,
    **overrides: Any,
) -> nn.Module:
    """Replace every ``BatchNorm2d`` in ``model`` by ``norm`` (in place; returns the model).

    Each new layer gets ``layer_name`` (its dotted name, used in error messages). A norm whose
    ``needs_conv`` is true (CBN) is attached to the Conv2d that feeds it, found by tracing one
    forward pass, including stems and downsample branches. timm's ``BatchNormAct2d`` keeps its
    activation after the new norm.
    """
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if not targets:
        raise NormConfigError(f"{type(model).__name__} has no BatchNorm2d layers to swap")
    new_layers = {}
    for name, old in targets:
        try:
            new = create_norm(norm, old.num_features, **overrides)
        except NormConfigError as exc:
            raise NormConfigError(f"layer {name!r} ({old.num_features} channels): {exc}") from exc
        new.layer_name = name
        new_layers[name] = new
    need_conv = [n for n, m in new_layers.items() if getattr(m, "needs_conv", False)]
    feeding = find_feeding_convs(model, need_conv, example_input) if need_conv else {}
    for name, old in targets:
        new = new_layers[name]
        if name in feeding:
            if feeding[name] is None:
                raise NormConfigError(
                    f"layer {name!r}: {type(new).__name__} needs the Conv2d that produces its "
                    "input, but this layer's input does not come directly from a Conv2d. Use it "
                    "only where a conv feeds the norm, or choose another norm for this model"
                )
            new.attach_conv(feeding[name][1])
        act = getattr(old, "act", None)
        if isinstance(act, nn.Module):  # timm BatchNormAct2d: norm + drop + act in one module
            new = nn.Sequential(new, getattr(old, "drop", nn.Identity()), act)
        ref = next(iter([*old.parameters(), *old.buffers()]), None)
        if ref is not None:
            new.to(ref.device)
        _set_submodule(model, name, new)
    return model
