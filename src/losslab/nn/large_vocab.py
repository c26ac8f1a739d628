"""Module wrappers for the large-vocabulary objectives (the weight stays the caller's)."""
from __future__ import annotations

from .. import functional as F
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["LinearCrossEntropyLoss", "LinearKLDivergence", "LinearJSDivergence"]


@register_module("linear_cross_entropy")
class LinearCrossEntropyLoss(FunctionalLoss, function=F.linear_cross_entropy):
    """Module form of :func:`losslab.functional.linear_cross_entropy`: ``forward(hidden, weight, target)``."""


@register_module("linear_kl_divergence")
class LinearKLDivergence(FunctionalLoss, function=F.linear_kl_divergence):
    """Module form of :func:`losslab.functional.linear_kl_divergence`."""


@register_module("linear_js_divergence")
class LinearJSDivergence(FunctionalLoss, function=F.linear_js_divergence):
    """Module form of :func:`losslab.functional.linear_js_divergence`."""
