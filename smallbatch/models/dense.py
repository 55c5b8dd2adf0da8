"""Dense prediction models: a classification backbone cut before its pooling (the encoder) and
an FCN head (Long et al. 2015; two 3×3 conv-norm-ReLU layers and a 1×1 classifier), its logits
upsampled bilinearly to the input size. The encoder's and the head's norms are separate choices
(detectron2 and mmdet configure them so: a frozen BN backbone, GN or SyncBN heads).

The encoder keeps the backbone's module names (``encoder.conv1``, ``encoder.layer1``, ...), so a
classification checkpoint of the same backbone loads into it (:func:`load_backbone_weights`).
Output stride: 4 for the CIFAR ResNets (stride 1, 2, 2), 32 for torchvision/timm ResNets.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from ..norms.registry import NormSpecLike
from .backbones import BackboneError, build_backbone
from .swap import swap_norms

HEAD_TAIL = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Linear,
             nn.Dropout)  # fmt: skip


class BackboneWeightsError(UserError, ValueError):
    """A ``backbone_weights`` file that cannot be read or does not fit the encoder."""


def encoder_of(backbone: nn.Module) -> tuple[nn.Sequential, int]:
    """(the backbone's children up to its last feature map, that map's channels): trailing
    pooling, flatten, dropout and linear layers (the classifier) are dropped. For backbones
    whose forward is the sequence of their children (the CIFAR and torchvision ResNets)."""
    children = list(backbone.named_children())
    while children and isinstance(children[-1][1], HEAD_TAIL):
        children.pop()
    if not children or len(children) == len(list(backbone.children())):
        raise BackboneError(
            f"{type(backbone).__name__} has no pooling/linear classifier at its end to cut: "
            "dense heads support the CIFAR ResNets and torchvision ResNets"
        )
    encoder = nn.Sequential(OrderedDict(children))
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    return encoder, convs[-1].out_channels


class FCNHead(nn.Sequential):
    """conv3×3 → BN → ReLU → conv3×3 → BN → ReLU → conv1×1 (``num_classes`` logits); its BNs are
    swapped for the head's norm."""

    def __init__(self, in_channels: int, channels: int, num_classes: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_classes, 1),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.out_channels != num_classes:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class SegmentationModel(nn.Module):
    """``encoder`` → ``head`` → logits (N, classes, H, W) at the input's size (bilinear)."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        logits = self.head(self.encoder(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def create_segmentation_model(
    backbone: str,
    norm: NormSpecLike = "bn",
    num_classes: int = 11,
    in_chans: int = 3,
    cifar_stem: bool = False,
    backbone_args: dict[str, Any] | None = None,
    head_norm: NormSpecLike | None = None,
    head_channels: int = 64,
    norm_act: str = "replace",
    head_norm_args: dict[str, Any] | None = None,
    **norm_overrides: Any,
) -> SegmentationModel:
    """A :class:`SegmentationModel` on ``backbone`` with ``norm`` (arguments
    ``norm_overrides``) in the encoder and ``head_norm`` (arguments ``head_norm_args``) in the
    FCN head; without ``head_norm`` the head has the encoder's norm and arguments."""
    encoder, channels = encoder_of(
        build_backbone(backbone, 10, in_chans, cifar_stem, backbone_args)
    )
    swap_norms(encoder, norm, norm_act=norm_act, **norm_overrides)
    head = FCNHead(channels, head_channels, num_classes)
    head_example = torch.zeros(2, channels, 16, 16)
    if head_norm is None:
        head_norm, head_norm_args = norm, {**norm_overrides, **(head_norm_args or {})}
    swap_norms(head, head_norm, example_input=head_example, norm_act=norm_act,
               **(head_norm_args or {}))  # fmt: skip
    return SegmentationModel(encoder, head)


def load_backbone_weights(model: SegmentationModel, path: str | Path) -> list[str]:
    """Load a smallbatch classification checkpoint's backbone (``model.*`` of its state dict,
    the classifier left out) into ``model.encoder``; every encoder tensor must be found with
    its shape. A trained BN's buffers load into a frozen BN (torchvision's semantics). Returns
    the loaded names."""
    if not Path(path).is_file():
        raise BackboneWeightsError(
            f"backbone_weights {str(path)!r} does not exist: pretrain the backbone first (for "
            "the segmentation configs: smallbatch fit --config configs/seg_pretrain.yaml "
            "--model.norm bn --run_dir runs/pretrained/resnet8-bn; docs/segmentation.md)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise BackboneWeightsError(f"backbone_weights {str(path)!r} cannot be read: {exc}") from exc
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise BackboneWeightsError(f"backbone_weights {str(path)!r} holds no state dict")
    prefix = "model." if any(k.startswith("model.") for k in state) else ""
    wanted = model.encoder.state_dict()
    found = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    missing = [k for k in wanted if k not in found and not k.endswith("num_batches_tracked")]
    wrong = [f"{k} {tuple(found[k].shape)} vs {tuple(v.shape)}" for k, v in wanted.items()
             if k in found and found[k].shape != v.shape]  # fmt: skip
    if missing or wrong:
        what = (f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"
                if missing else f"shapes differ: {', '.join(wrong[:3])}")  # fmt: skip
        raise BackboneWeightsError(
            f"backbone_weights {str(path)!r} does not fit the encoder ({what}): pretrain the same "
            "backbone (and a norm with the same tensors: a BN checkpoint for bn/frozen_bn, a GN "
            "one for gn)"
        )
    model.encoder.load_state_dict({k: found[k] for k in wanted if k in found}, strict=False)
    return [k for k in wanted if k in found]


def freeze_stages(model: SegmentationModel, freeze_at: int) -> list[str]:
    """detectron2's ``FREEZE_AT``: no gradient for the parameters of the encoder's first
    ``freeze_at`` stages, the stem (every child before the first ``layer*``) counting as one.
    Returns the frozen children's names."""
    names = [n for n, _ in model.encoder.named_children()]
    first = next((i for i, n in enumerate(names) if n.startswith("layer")), len(names))
    stages = [names[:first]] + [[n] for n in names[first:] if n.startswith("layer")]
    if not 0 <= freeze_at <= len(stages):
        raise BackboneError(f"freeze_at must be in [0, {len(stages)}] for this backbone, "
                            f"got {freeze_at}")  # fmt: skip
    names = [n for stage in stages[:freeze_at] for n in stage]
    for name in names:
        for p in model.encoder.get_submodule(name).parameters():
            p.requires_grad_(False)
    return names
