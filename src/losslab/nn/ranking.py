"""Module wrappers for the ranking family."""
from __future__ import annotations

from .. import functional as F
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["MWLoss", "PairwiseAUCLoss", "PairwiseRankingLoss"]


@register_module("mw_loss")
class MWLoss(FunctionalLoss, function=F.mw_loss):
    """Module form of :func:`losslab.functional.mw_loss`."""


@register_module("pairwise_auc_loss")
class PairwiseAUCLoss(FunctionalLoss, function=F.pairwise_auc_loss):
    """Module form of :func:`losslab.functional.pairwise_auc_loss`."""


@register_module("pairwise_ranking_loss")
class PairwiseRankingLoss(FunctionalLoss, function=F.pairwise_ranking_loss):
    """Module form of :func:`losslab.functional.pairwise_ranking_loss` (``mask`` is a ``forward`` argument)."""
