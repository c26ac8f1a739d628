"""Module wrappers for the flow-matching objectives (see :mod:`losslab.functional.transport_flow`)."""
from __future__ import annotations

from .. import functional as F
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["WeightedCFMLoss"]


@register_module("weighted_cfm_loss")
class WeightedCFMLoss(FunctionalLoss, function=F.weighted_cfm_loss):
    """Module form of :func:`losslab.functional.weighted_cfm_loss`: ``WeightedCFMLoss(epsilon=...)(velocity, x0, x1)``."""
