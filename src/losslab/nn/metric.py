"""Module wrappers for the metric-learning family (see :mod:`losslab.functional.metric` and
:mod:`losslab.functional.metric_triplet`)."""
from __future__ import annotations

from .. import functional as F
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = [
    "MultiSimilarityLoss",
    "TripletMarginLoss",
    "ContrastivePairLoss",
    "ThresholdConsistentMarginLoss",
    "ProtoTripletLoss",
]


@register_module("multi_similarity_loss")
class MultiSimilarityLoss(FunctionalLoss, function=F.multi_similarity_loss):
    """Module form of :func:`losslab.functional.multi_similarity_loss`."""


@register_module("triplet_margin_loss")
class TripletMarginLoss(FunctionalLoss, function=F.triplet_margin_loss):
    """Module form of :func:`losslab.functional.triplet_margin_loss`.

    Mined ``triplets`` change per batch: pass them to ``forward``, e.g.
    ``loss_fn(embeddings, labels, triplets=(a, p, n))``.
    """


@register_module("contrastive_pair_loss")
class ContrastivePairLoss(FunctionalLoss, function=F.contrastive_pair_loss):
    """Module form of :func:`losslab.functional.contrastive_pair_loss`."""


@register_module("threshold_consistent_margin_loss")
class ThresholdConsistentMarginLoss(FunctionalLoss, function=F.threshold_consistent_margin_loss):
    """Module form of :func:`losslab.functional.threshold_consistent_margin_loss`."""


@register_module("proto_triplet_loss")
class ProtoTripletLoss(FunctionalLoss, function=F.proto_triplet_loss):
    """Module form of :func:`losslab.functional.proto_triplet_loss`."""
