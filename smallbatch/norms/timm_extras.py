"""timm's batch-free norm-activation layers, registered under short names.

EvoNorm-S0 (Liu et al. 2020, arXiv 2004.02967): y = x·σ(v·x)/group_std(x)·γ + β, an activation
built in. FRN + TLU (Singh & Krishnan 2020, arXiv 1911.09737): y = max(γ·x/sqrt(ν² + ε) + β, τ)
with ν² the per-channel mean of x² over H, W. Both replace a BN→ReLU pair (``swap_norms``
removes the ReLU); where no activation follows (before a residual add) they take timm's
non-activation form (``apply_act=False``): EvoNorm-S0 is then an affine layer with γ = 0 on the
block's main branch, as in EvoNorm's reference ResNet (tensorflow/tpu ``resnet_model.py``:
``nonlinearity=False, init_zero=True``); FRN is FRN without TLU, γ = 1 (timm's init).
"""

from __future__ import annotations

import torch
from timm.layers import EvoNorm2dS0, FilterResponseNormTlu2d
from torch import Tensor

from .base import NormLayer


class EvoNormS0(NormLayer, EvoNorm2dS0):
    """timm EvoNorm2dS0 (batch-free, sample-wise; groups capped at the channel count)."""

    replaces_activation = True
    zero_init_before_add = True
    diagnostics_prefix = "evonorm_s0"

    def input_diagnostics(self, x: Tensor) -> dict[str, float]:
        """``gate``: the mean of the built-in activation's gate σ(v·x) (1: the identity)."""
        if self.v is None:
            return {}
        gate = torch.sigmoid(x.detach().float() * self.v.detach().view(1, -1, 1, 1))
        return {"gate": float(gate.mean())}


class FilterResponseNormTLU(NormLayer, FilterResponseNormTlu2d):
    """timm FilterResponseNormTlu2d: Filter Response Normalization with a learned threshold."""

    replaces_activation = True
    diagnostics_prefix = "frn"

    def input_diagnostics(self, x: Tensor) -> dict[str, float]:
        """``tlu_share``: the fraction of outputs held at the learned threshold τ (the TLU's
        'off' side, as a ReLU's zeros)."""
        if self.tau is None:
            return {}
        tau = self.tau.view(1, -1, 1, 1)
        y = FilterResponseNormTlu2d.forward(self, x)  # not self(x): this runs inside its hook
        return {"tlu_share": float((y.float() <= tau).float().mean())}


def evonorm_s0(
    num_features: int, groups: int = 32, eps: float = 1e-5, apply_act: bool = True
) -> EvoNormS0:
    """timm EvoNorm2dS0 (batch-free, sample-wise; groups capped at the channel count)."""
    return EvoNormS0(num_features, groups=min(groups, num_features), eps=eps, apply_act=apply_act)


def frn(num_features: int, eps: float = 1e-6, apply_act: bool = True) -> FilterResponseNormTLU:
    """timm FilterResponseNormTlu2d: Filter Response Normalization with a learned threshold."""
    return FilterResponseNormTLU(num_features, eps=eps, apply_act=apply_act)
