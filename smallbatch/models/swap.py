"""Replace every BatchNorm2d of a model (torchvision, timm, ours) by a registered norm; fuse
BN→activation pairs into norm-activation layers (EvoNorm, FRN) as their papers do."""

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
    example_input = _example_input(model, example_input)
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
    _traced_forward(model, example_input, handles)
    return {name: found.get(name) for name in norm_names}


NORM_ACT_MODES = ("replace", "keep_activation")
# the activations a norm-activation layer takes the place of (the backbones here use ReLU)
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Mish, nn.Hardswish)
SHORTCUT_NAMES = ("downsample", "shortcut", "skip")  # a residual block's projection branch


def replaces_activation(layer: nn.Module) -> bool:
    """Whether ``layer`` is a norm-activation layer (the ``NormLayer`` contract's
    ``replaces_activation``, timm's norm-act convention): it takes the place of a norm and the
    activation after it, and has a non-activation form (``apply_act=False``)."""
    return bool(getattr(layer, "replaces_activation", False))


class SelectiveActivation(nn.Module):
    """One activation module called at several places of a block's forward (torchvision's
    blocks share one ``relu`` between the norm→ReLU pairs and the post-add ReLU): the calls at
    ``skip`` positions (those that took a norm-activation layer's output) pass their input
    through, the others apply ``act``. The call count restarts at every forward of ``owner``."""

    def __init__(self, act: nn.Module, skip: tuple[bool, ...]) -> None:
        super().__init__()
        self.act = act
        self.skip = tuple(skip)
        self.calls = 0

    def restart(self, *_: Any) -> None:
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        position, self.calls = self.calls % len(self.skip), self.calls + 1
        return x if self.skip[position] else self.act(x)

    def extra_repr(self) -> str:
        return f"skip={self.skip}"


def find_activation_pairs(
    model: nn.Module, norm_names: list[str], example_input: torch.Tensor | None = None
) -> tuple[set[str], dict[str, list[bool]]]:
    """By one traced forward: the norms whose output goes straight into an activation module
    (BN→ReLU pairs), and for each activation module the sequence of its calls in a forward,
    True where the call took such a pair's norm output."""
    example_input = _example_input(model, example_input)
    outputs: dict[int, tuple[str, int]] = {}  # id of a norm's output -> (norm, its version)
    keep_alive: list[torch.Tensor] = []
    calls: dict[str, list[str | None]] = {}
    handles = []

    def norm_hook(name: str):
        def hook(_m, _inp, out):
            keep_alive.append(out)
            outputs[id(out)] = (name, out._version)

        return hook

    def act_hook(name: str):
        def hook(_m, inputs):
            # the norm's own output, not changed in place since (torchvision and timm blocks add
            # the shortcut into the last norm's output in place: that is no pair)
            found = outputs.get(id(inputs[0]))
            paired = found is not None and found[1] == inputs[0]._version
            calls.setdefault(name, []).append(found[0] if paired else None)

        return hook

    for name, module in model.named_modules():
        if name in norm_names:
            handles.append(module.register_forward_hook(norm_hook(name)))
        elif isinstance(module, ACTIVATIONS):
            handles.append(module.register_forward_pre_hook(act_hook(name)))
    _traced_forward(model, example_input, handles)
    paired = {n for seq in calls.values() for n in seq if n is not None}
    return paired, {name: [n is not None for n in seq] for name, seq in calls.items()}


def _example_input(model: nn.Module, example_input: torch.Tensor | None) -> torch.Tensor:
    if example_input is None:
        example_input = torch.zeros(2, _first_conv(model).in_channels, 64, 64)
    param = next(model.parameters(), None)
    return example_input.to(param.device, param.dtype) if param is not None else example_input


def _traced_forward(model: nn.Module, example_input: torch.Tensor, handles: list) -> None:
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


def _on_shortcut(name: str) -> bool:
    return any(part in SHORTCUT_NAMES for part in name.split("."))


def swap_norms(
    model: nn.Module,
    norm: NormSpecLike,
    *,
    example_input: torch.Tensor | None = None,
    norm_act: str = "replace",
    **overrides: Any,
) -> nn.Module:
    """Replace every ``BatchNorm2d`` in ``model`` by ``norm`` (in place; returns the model).

    Each new layer gets ``layer_name`` (its dotted name, used in error messages). A norm whose
    ``needs_conv`` is true (CBN, MABN) is attached to the Conv2d that feeds it, found by tracing
    one forward pass, including stems and downsample branches.

    Norm-activation layers (``replaces_activation``: EvoNorm-B0/S0, FRN + TLU) are built as
    their papers build networks (``norm_act="replace"``): each BN→activation pair becomes the
    layer in its activation form and the activation is removed (an activation module shared
    with other calls, as in torchvision's blocks, is skipped only at those calls); a BN with no
    activation after it (before a residual add) gets the non-activation form
    (``apply_act=False``), and on a block's main branch, for layers that declare
    ``zero_init_before_add``, γ = 0. ``norm_act="keep_activation"`` puts the activation form in
    every BN's place and keeps the backbone's activations (the suite's earlier network).
    timm's ``BatchNormAct2d`` keeps its activation after a plain new norm.
    """
    if norm_act not in NORM_ACT_MODES:
        raise NormConfigError(f"norm_act {norm_act!r} is not one of {NORM_ACT_MODES}")
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if not targets:
        raise NormConfigError(f"{type(model).__name__} has no BatchNorm2d layers to swap")
    new_layers = {name: _build(norm, name, old, overrides) for name, old in targets}
    fused = norm_act == "replace" and any(map(replaces_activation, new_layers.values()))
    if fused:
        plain = [n for n, old in targets if not isinstance(getattr(old, "act", None), nn.Module)]
        paired, act_calls = find_activation_pairs(model, plain, example_input)
        for name, old in targets:
            act = getattr(old, "act", None)  # timm BatchNormAct2d: its own activation inside
            with_act = name in paired or isinstance(act, ACTIVATIONS)
            if not with_act:
                new_layers[name] = _build(norm, name, old, {**overrides, "apply_act": False})
                if getattr(new_layers[name], "zero_init_before_add", False) and not _on_shortcut(
                    name
                ):
                    nn.init.zeros_(new_layers[name].weight)
        _remove_fused_activations(model, act_calls)
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
        if isinstance(act, nn.Module) and not (fused and replaces_activation(new)):
            # timm BatchNormAct2d: norm + drop + act in one module
            new = nn.Sequential(new, getattr(old, "drop", nn.Identity()), act)
        ref = next(iter([*old.parameters(), *old.buffers()]), None)
        if ref is not None:
            new.to(ref.device)
        _set_submodule(model, name, new)
    return model


def _build(norm: NormSpecLike, name: str, old: nn.Module, kwargs: dict[str, Any]) -> nn.Module:
    try:
        new = create_norm(norm, old.num_features, **kwargs)
    except NormConfigError as exc:
        raise NormConfigError(f"layer {name!r} ({old.num_features} channels): {exc}") from exc
    new.layer_name = name
    return new


def _remove_fused_activations(model: nn.Module, act_calls: dict[str, list[bool]]) -> None:
    """Activation modules whose every call follows a fused norm become ``Identity``; one
    called at other places too is skipped only at the fused calls (:class:`SelectiveActivation`,
    its count restarted at each forward of the module that owns it)."""
    for name, skip in act_calls.items():
        if not any(skip):
            continue
        act = model.get_submodule(name)
        if all(skip):
            _set_submodule(model, name, nn.Identity())
            continue
        selective = SelectiveActivation(act, tuple(skip))
        owner_name = name.rpartition(".")[0]
        owner = model.get_submodule(owner_name) if owner_name else model
        owner.register_forward_pre_hook(selective.restart)
        _set_submodule(model, name, selective)
