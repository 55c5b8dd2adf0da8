"""Backbone factory: CIFAR ResNets, torchvision ResNets and any timm model, with a norm swapped in.

Names: ``resnet<6n+2>`` such as ``resnet8|20|32|56|110`` (CIFAR, He et al. 2016),
``resnet18|34|50|101|152`` (torchvision), ``tv:<name>`` (any torchvision classification
model), ``timm:<name>`` (any timm model, no pretrained weights).
"""

from __future__ import annotations

import difflib
from typing import Any

import timm
import torch
import torchvision
from torch import nn

from ..norms.registry import NormConfigError, NormSpecLike
from .cifar_resnet import CifarResNet
from .swap import swap_norms

CIFAR_DEPTHS = (20, 32, 44, 56, 110)
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def known_backbones() -> list[str]:
    """Short backbone names (prefixes ``tv:`` and ``timm:`` accept more)."""
    return [f"resnet{d}" for d in CIFAR_DEPTHS] + list(TORCHVISION_RESNETS)


def apply_stem(model: nn.Module, in_chans: int, cifar_stem: bool) -> nn.Module:
    """Give a torchvision/timm ResNet ``in_chans`` inputs and, optionally, the CIFAR stem
    (3×3 conv at stride 1, no max-pool) for 28–32 px images."""
    conv1 = getattr(model, "conv1", None)
    if not isinstance(conv1, nn.Conv2d):
        if cifar_stem:
            raise NormConfigError(
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
    name: str, num_classes: int = 10, in_chans: int = 3, cifar_stem: bool = False
) -> nn.Module:
    """Build a backbone with torch's BatchNorm2d (swap afterwards with :func:`swap_norms`)."""
    key = name.lower()
    if key.startswith("resnet") and key[6:].isdigit() and key not in TORCHVISION_RESNETS:
        return CifarResNet(int(key[6:]), num_classes=num_classes, in_chans=in_chans)
    if key in TORCHVISION_RESNETS or key.startswith("tv:"):
        tv_name = key.removeprefix("tv:")
        try:
            model = torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes)
        except ValueError as exc:
            raise NormConfigError(f"unknown torchvision model {tv_name!r}: {exc}") from exc
        return apply_stem(model, in_chans, cifar_stem)
    if key.startswith("timm:"):
        timm_name = name[5:]
        if not timm.is_model(timm_name):
            raise NormConfigError(f"unknown timm model {timm_name!r} (see timm.list_models())")
        model = timm.create_model(
            timm_name, pretrained=False, num_classes=num_classes, in_chans=in_chans
        )
        return apply_stem(model, in_chans, cifar_stem)
    close = difflib.get_close_matches(key, known_backbones(), n=1)
    raise NormConfigError(
        f"unknown backbone {name!r}{f'; did you mean {close[0]!r}?' if close else ''} "
        f"Known: {', '.join(known_backbones())}, or 'tv:<torchvision model>' / 'timm:<timm model>'"
    )


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
    **norm_overrides: Any,
) -> nn.Module:
    """Backbone with every BatchNorm2d replaced by ``norm``."""
    model = build_backbone(backbone, num_classes, in_chans, cifar_stem)
    return swap_norms(model, norm, **norm_overrides)
