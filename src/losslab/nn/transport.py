"""Module wrappers for the transport family."""
from __future__ import annotations

from .. import functional as F
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["SinkhornDivergence", "MongeGap"]


@register_module("sinkhorn_divergence")
class SinkhornDivergence(FunctionalLoss, function=F.sinkhorn_divergence):
    """Module form of :func:`losslab.functional.sinkhorn_divergence`.

    ``__init__`` takes the solver's hyperparameters (``epsilon``, ``cost``, ``scaling``, ...,
    checked at construction); ``forward(x, y, *, a=None, b=None)`` the point clouds and their
    per-batch sample weights.
    """


@register_module("monge_gap")
class MongeGap(FunctionalLoss, function=F.monge_gap):
    """Module form of :func:`losslab.functional.monge_gap`.

    ``__init__`` takes the solver's hyperparameters (checked at construction);
    ``forward(x, mapped, *, a=None)`` the samples, their images and their per-batch weights.
    """
