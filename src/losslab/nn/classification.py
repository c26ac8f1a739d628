"""Module wrappers for the classification family."""
from __future__ import annotations

from .. import functional as F
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["CrossEntropyLoss", "ZLoss"]


@register_module("cross_entropy")
class CrossEntropyLoss(FunctionalLoss, function=F.cross_entropy):
    """Module form of :func:`losslab.functional.cross_entropy`; hyperparameters are its keyword arguments."""


@register_module("z_loss")
class ZLoss(FunctionalLoss, function=F.z_loss):
    """Module form of :func:`losslab.functional.z_loss`."""
