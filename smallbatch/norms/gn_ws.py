"""GroupNorm + Weight Standardization (Qiao et al. 2019, arXiv 1903.10520).

The conv that feeds the layer uses a standardized kernel, per output channel o:

    Ŵ_o = (W_o − mean(W_o)) / √(var(W_o) + ε)      (mean and biased variance over in, kh, kw)

(timm's ``StdConv2d`` formula, ε = 1e-6), and the layer itself is GroupNorm (32 groups). Both are
batch-free: the pair is the batch-independent baseline reported to match BN at large batch.
``swap_norms`` hands the layer its feeding conv (``needs_conv``) and ``attach_conv`` registers the
standardization as a ``torch.nn.utils.parametrize`` parametrization on that conv (as MABN's
weight centralization), so the model keeps its ``nn.Conv2d`` modules and the optimizer updates
the raw weight.
"""

from __future__ import annotations

import torch.nn.functional as F
import torch.nn.utils.parametrize as parametrize
from torch import Tensor, nn

from .base import NormLayer, layer_label
from .gn import GroupNorm2d
from .registry import NormConfigError


class StandardizedWeight(nn.Module):
    """Weight Standardization of a conv kernel: per output channel, zero mean and unit variance
    over (in, kh, kw)."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, weight: Tensor) -> Tensor:
        flat = weight.reshape(1, weight.shape[0], -1)
        return F.batch_norm(flat, None, None, training=True, momentum=0.0, eps=self.eps).view_as(
            weight
        )


def standardize_conv(conv: nn.Conv2d, eps: float = 1e-6) -> None:
    """Make ``conv`` use a weight-standardized kernel (idempotent)."""
    if parametrize.is_parametrized(conv, "weight") and any(
        isinstance(p, StandardizedWeight) for p in conv.parametrizations.weight
    ):
        return
    parametrize.register_parametrization(conv, "weight", StandardizedWeight(eps))


class GroupNormWS(NormLayer, GroupNorm2d):
    """GroupNorm whose feeding conv is weight-standardized (GN + WS)."""

    needs_conv = True

    def __init__(
        self,
        num_features: int,
        num_groups: int = 32,
        eps: float = 1e-5,
        affine: bool = True,
        ws_eps: float = 1e-6,
    ) -> None:
        super().__init__(num_features, num_groups=num_groups, eps=eps, affine=affine)
        self.ws_eps = ws_eps

    def attach_conv(self, conv: nn.Conv2d) -> None:
        """Weight-standardize the conv that feeds this layer."""
        if not isinstance(conv, nn.Conv2d):
            raise NormConfigError(f"{layer_label(self)}: GN+WS's feeding layer must be a Conv2d")
        standardize_conv(conv, self.ws_eps)
