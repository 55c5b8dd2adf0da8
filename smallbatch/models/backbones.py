"""Backbone factory: CIFAR ResNets, torchvision models and any timm model, with a norm swapped in.

Names, tried in this order:

- ``resnet<6n+2>`` such as ``resnet8|20|32|56|110``: CIFAR ResNets (He et al. 2016);
- ``tv:<name>`` or a torchvision classification model's name (``resnet18``, ``resnet50``, ...);
- ``timm/<name>`` (the Hugging Face hub's convention; ``timm:<name>`` also works) or the name of
  a timm model that torchvision does not have (``resnet10t``, ``convnext_atto``, ...); no
  pretrained weights.

``backbone_args`` are passed to the constructor (``CifarResNet``, ``torchvision.models.get_model``,
``timm.create_model``).
"""

from __future__ import annotations

import re
from typing import Any

import timm
import torch
import torchvision
from torch import nn

from ..errors import UserError, did_you_mean
from ..norms.registry import NormSpecLike
from .cifar_resnet import CifarResNet
from .swap import swap_norms

CIFAR_DEPTHS = (8, 20, 32, 44, 56, 110)
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
_CIFAR_NAME = re.compile(r"resnet(\d+)")


class BackboneError(UserError, ValueError):
    """An unknown backbone name or arguments its constructor rejects (a user error)."""


def known_backbones() -> list[str]:
    """Short backbone names; any torchvision model (``tv:<name>``) or timm model
    (``timm/<name>``) is accepted as well."""
    return [f"resnet{d}" for d in CIFAR_DEPTHS] + list(TORCHVISION_RESNETS)


def _torchvision_names() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


def _construct(kind: str, name: str, fn, args: dict[str, Any]) -> nn.Module:
    try:
        return fn()
    except TypeError as exc:  # an argument the constructor does not take
        message = f"{kind} backbone {name!r} rejects backbone_args {args}: {exc}"
        raise BackboneError(message) from exc


def apply_stem(model: nn.Module, in_chans: int, cifar_stem: bool) -> nn.Module:
    """Give a torchvision/timm ResNet ``in_chans`` inputs and, optionally, the CIFAR stem
    (3×3 conv at stride 1, no max-pool) for 28–32 px images."""
    conv1 = getattr(model, "conv1", None)
    if not isinstance(conv1, nn.Conv2d):
        if cifar_stem:
            raise BackboneError(
                f"cifar_stem needs a ResNet-style model with a Conv2d 'conv1'; "
                f"{type(model).__name__} has none"
            )
        return model
    if cifar_stem:
        model.conv1 = nn.Conv2d(in_chans, conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif conv1.in_channels != in_chans:
        model.conv1 = nn.Conv2d(
            in_chans,
            conv1.out_channels,
            conv1.kernel_size,
            conv1.stride,
            conv1.padding,
            bias=conv1.bias is not None,
        )
    return model


def build_backbone(
    name: str,
    num_classes: int = 10,
    in_chans: int = 3,
    cifar_stem: bool = False,
    backbone_args: dict[str, Any] | None = None,
) -> nn.Module:
    """Build a backbone with torch's BatchNorm2d (swap afterwards with :func:`swap_norms`)."""
    args = dict(backbone_args or {})
    key = name.lower()
    cifar = _CIFAR_NAME.fullmatch(key)
    if cifar and key not in TORCHVISION_RESNETS:
        depth = int(cifar.group(1))
        if (depth - 2) % 6:
            raise BackboneError(
                f"CIFAR ResNet depth must be 6n+2 ({', '.join(map(str, CIFAR_DEPTHS))}, ...), got "
                f"{name!r}"
            )
        return _construct(
            "CIFAR",
            name,
            lambda: CifarResNet(depth, num_classes=num_classes, in_chans=in_chans, **args),
            args,
        )
    timm_name = next((name[len(p) :] for p in ("timm/", "timm:") if key.startswith(p)), None)
    tv_name = key.removeprefix("tv:") if timm_name is None else None
    if tv_name is not None and tv_name in _torchvision_names():
        model = _construct(
            "torchvision",
            name,
            lambda: torchvision.models.get_model(
                tv_name, weights=None, num_classes=num_classes, **args
            ),
            args,
        )
        return apply_stem(model, in_chans, cifar_stem)
    if timm_name is None and not key.startswith("tv:") and timm.is_model(name):
        timm_name = name  # not a torchvision model: timm's
    if timm_name is not None and timm.is_model(timm_name):
        model = _construct(
            "timm",
            name,
            lambda: timm.create_model(
                timm_name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **args
            ),
            args,
        )
        return apply_stem(model, in_chans, cifar_stem)
    raise _unknown_backbone(name, timm_name, key)


def _unknown_backbone(name: str, timm_name: str | None, key: str) -> BackboneError:
    if timm_name is not None:
        pool = timm.list_models()
        what = f"unknown timm model {timm_name!r}"
        hint = "see timm.list_models()"
        word = timm_name
    elif key.startswith("tv:"):
        pool = _torchvision_names()
        what = f"unknown torchvision model {key[3:]!r}"
        hint = "see torchvision.models.list_models()"
        word = key[3:]
    else:
        pool = known_backbones() + _torchvision_names() + timm.list_models()
        what = f"unknown backbone {name!r}"
        hint = (
            f"known: {', '.join(known_backbones())}, any torchvision model ('tv:<name>') or "
            "timm model ('timm/<name>')"
        )
        word = key
    return BackboneError(f"{what}{did_you_mean(word, pool)} ({hint})")


def to_channels_last(model: nn.Module) -> nn.Module:
    """NHWC memory layout for every 4-D parameter (conv weights); other tensors, such as CBN's
    window buffers, keep theirs. In place; returns the model."""
    for param in model.parameters():
        if param.dim() == 4:
            param.data = param.data.contiguous(memory_format=torch.channels_last)
    return model


def create_model(
    backbone: str,
    norm: NormSpecLike = "bn",
    num_classes: int = 10,
    in_chans: int = 3,
    cifar_stem: bool = False,
    backbone_args: dict[str, Any] | None = None,
    **norm_overrides: Any,
) -> nn.Module:
    """Backbone with every BatchNorm2d replaced by ``norm``."""
    model = build_backbone(backbone, num_classes, in_chans, cifar_stem, backbone_args)
    return swap_norms(model, norm, **norm_overrides)
