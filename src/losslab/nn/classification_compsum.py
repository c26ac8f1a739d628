"""Module wrappers for the comp-sum family."""
from __future__ import annotations

from .. import functional as F
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["CompSumLoss", "GeneralizedCrossEntropyLoss"]


@register_module("comp_sum_loss")
class CompSumLoss(FunctionalLoss, function=F.comp_sum_loss):
    """Module form of :func:`losslab.functional.comp_sum_loss`."""


@register_module("generalized_cross_entropy")
class GeneralizedCrossEntropyLoss(FunctionalLoss, function=F.generalized_cross_entropy):
    """Module form of :func:`losslab.functional.generalized_cross_entropy`."""
