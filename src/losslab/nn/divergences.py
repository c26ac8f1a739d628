"""Module wrappers for the categorical divergences.

Hyperparameters (``temperature``, ``alpha``, ``beta``, ``divergence``, ``reduction``, ...) go
to ``__init__`` and are checked there; the per-batch ``mask`` goes to ``forward``::

    loss_fn = KLDivergence(temperature=2.0)
    loss = loss_fn(teacher_logits, student_logits, mask=labels != -100)
"""
from __future__ import annotations

from .. import functional as F
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["KLDivergence", "JSDivergence", "GeneralizedJSDivergence", "AlphaDivergence", "TotalVariation",
           "HellingerDistance", "FDivergence"]


@register_module("kl_divergence")
class KLDivergence(FunctionalLoss, function=F.kl_divergence):
    """Module form of :func:`losslab.functional.kl_divergence`: ``forward(p_logits, q_logits, *, mask=None)``, P first."""


@register_module("js_divergence")
class JSDivergence(FunctionalLoss, function=F.js_divergence):
    """Module form of :func:`losslab.functional.js_divergence`: ``forward(p_logits, q_logits, *, mask=None)``."""


@register_module("generalized_js_divergence")
class GeneralizedJSDivergence(FunctionalLoss, function=F.generalized_js_divergence):
    """Module form of :func:`losslab.functional.generalized_js_divergence`: ``forward(p_logits, q_logits, *, mask=None)``."""


@register_module("alpha_divergence")
class AlphaDivergence(FunctionalLoss, function=F.alpha_divergence):
    """Module form of :func:`losslab.functional.alpha_divergence`: ``forward(p_logits, q_logits, *, mask=None)``."""


@register_module("total_variation")
class TotalVariation(FunctionalLoss, function=F.total_variation):
    """Module form of :func:`losslab.functional.total_variation`: ``forward(p_logits, q_logits, *, mask=None)``."""


@register_module("hellinger_distance")
class HellingerDistance(FunctionalLoss, function=F.hellinger_distance):
    """Module form of :func:`losslab.functional.hellinger_distance`: ``forward(p_logits, q_logits, *, mask=None)``."""


@register_module("f_divergence")
class FDivergence(FunctionalLoss, function=F.f_divergence):
    """Module form of :func:`losslab.functional.f_divergence`: ``forward(p_logits, q_logits, *, mask=None)``."""
