"""Backbones and norm swapping."""

from .backbones import (
    BackboneError,
    apply_stem,
    build_backbone,
    create_model,
    known_backbones,
    to_channels_last,
)
from .cifar_resnet import CifarResNet
from .compiled import COMPILE_MODES, compile_backbone
from .swap import find_feeding_convs, swap_norms

__all__ = [
    "BackboneError",
    "COMPILE_MODES",
    "CifarResNet",
    "apply_stem",
    "build_backbone",
    "compile_backbone",
    "create_model",
    "find_feeding_convs",
    "known_backbones",
    "swap_norms",
    "to_channels_last",
]
