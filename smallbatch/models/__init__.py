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
from .dense import (
    BackboneWeightsError,
    SegmentationModel,
    create_segmentation_model,
    freeze_stages,
    load_backbone_weights,
)
from .swap import find_feeding_convs, swap_norms

__all__ = [
    "BackboneError",
    "BackboneWeightsError",
    "COMPILE_MODES",
    "CifarResNet",
    "SegmentationModel",
    "apply_stem",
    "build_backbone",
    "compile_backbone",
    "create_model",
    "create_segmentation_model",
    "find_feeding_convs",
    "freeze_stages",
    "known_backbones",
    "load_backbone_weights",
    "swap_norms",
    "to_channels_last",
]
