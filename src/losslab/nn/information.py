"""Module wrappers for the information measures."""
from __future__ import annotations

from .. import functional as F
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["Entropy", "VendiScore", "VendiScoreFromKernel"]


@register_module("entropy")
class Entropy(FunctionalLoss, function=F.entropy):
    """Module form of :func:`losslab.functional.entropy`."""


@register_module("vendi_score")
class VendiScore(FunctionalLoss, function=F.vendi_score):
    """Module form of :func:`losslab.functional.vendi_score`."""


@register_module("vendi_score_from_kernel")
class VendiScoreFromKernel(FunctionalLoss, function=F.vendi_score_from_kernel):
    """Module form of :func:`losslab.functional.vendi_score_from_kernel`."""
