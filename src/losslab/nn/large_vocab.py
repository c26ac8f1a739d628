"""Module wrappers for the large-vocabulary objectives.

The output layer's ``weight`` and ``bias`` belong to the model: they are arguments of
``forward`` on every call, never tensors held (or copied) by the loss, so ``.to()``,
``.double()`` and ``state_dict`` of the loss never see them.
"""
from __future__ import annotations

from .. import functional as F
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["LinearCrossEntropyLoss", "LinearKLDivergence", "LinearJSDivergence"]


@register_module("linear_cross_entropy")
class LinearCrossEntropyLoss(FunctionalLoss, function=F.linear_cross_entropy):
    """Module form of :func:`losslab.functional.linear_cross_entropy`.

    ``LinearCrossEntropyLoss(label_smoothing=0.1)(hidden, head.weight, target, bias=head.bias)``:
    hyperparameters in ``__init__`` (checked there), the head's tensors per call.
    """


@register_module("linear_kl_divergence")
class LinearKLDivergence(FunctionalLoss, function=F.linear_kl_divergence):
    """Module form of :func:`losslab.functional.linear_kl_divergence`:
    ``forward(student_hidden, student_weight, teacher_hidden, teacher_weight, target=None)``."""


@register_module("linear_js_divergence")
class LinearJSDivergence(FunctionalLoss, function=F.linear_js_divergence):
    """Module form of :func:`losslab.functional.linear_js_divergence`:
    ``forward(student_hidden, student_weight, teacher_hidden, teacher_weight, target=None)``."""
