"""Module wrappers for the few-shot metric losses (see :mod:`losslab.functional.metric_fewshot`)."""
from __future__ import annotations

from .. import functional as F
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["ICNNLoss"]


@register_module("icnn_loss")
class ICNNLoss(FunctionalLoss, function=F.icnn_loss):
    """Module form of :func:`losslab.functional.icnn_loss` (one scalar per episode)."""
