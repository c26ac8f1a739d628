"""Module wrappers for the transport family."""
from __future__ import annotations

from .. import functional as F
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["SinkhornDivergence", "MongeGap"]


@register_module("sinkhorn_divergence")
class SinkhornDivergence(FunctionalLoss, function=F.sinkhorn_divergence):
    """Module form of :func:`losslab.functional.sinkhorn_divergence`."""


@register_module("monge_gap")
class MongeGap(FunctionalLoss, function=F.monge_gap):
    """Module form of :func:`losslab.functional.monge_gap`."""
