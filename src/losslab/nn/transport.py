"""Module wrappers for the transport family."""
from __future__ import annotations

from .. import functional as F
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["SinkhornDivergence"]


@register_module("sinkhorn_divergence")
class SinkhornDivergence(FunctionalLoss, function=F.sinkhorn_divergence):
    """Module form of :func:`losslab.functional.sinkhorn_divergence`."""
