"""timm's batch-free norms, registered under short names (the layers are timm's own classes).

EvoNorm-S0 (Liu et al. 2020, arXiv 2004.02967): y = x·σ(v·x)/group_std(x)·γ + β, an activation
built in. FRN + TLU (Singh & Krishnan 2020, arXiv 1911.09737): y = max(γ·x/sqrt(ν² + ε) + β, τ)
with ν² the per-channel mean of x² over H, W. Both keep the ReLU that follows in the backbone.
"""

from __future__ import annotations

from timm.layers import EvoNorm2dS0, FilterResponseNormTlu2d
from torch import nn


def evonorm_s0(num_features: int, groups: int = 32, eps: float = 1e-5) -> nn.Module:
    """timm EvoNorm2dS0 (batch-free, sample-wise; groups capped at the channel count)."""
    return EvoNorm2dS0(num_features, groups=min(groups, num_features), eps=eps)


def frn(num_features: int, eps: float = 1e-6) -> nn.Module:
    """timm FilterResponseNormTlu2d: Filter Response Normalization with a learned threshold."""
    return FilterResponseNormTlu2d(num_features, eps=eps)
