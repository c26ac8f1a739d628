"""Module wrappers for the preference alignment and unlearning objectives."""
from __future__ import annotations

from .. import functional as F
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["DPOLoss", "NPOLoss", "SimPOLoss", "ORPOLoss", "CPOLoss"]


@register_module("dpo_loss")
class DPOLoss(FunctionalLoss, function=F.dpo_loss):
    """Module form of :func:`losslab.functional.dpo_loss`."""


@register_module("npo_loss")
class NPOLoss(FunctionalLoss, function=F.npo_loss):
    """Module form of :func:`losslab.functional.npo_loss`."""


@register_module("simpo_loss")
class SimPOLoss(FunctionalLoss, function=F.simpo_loss):
    """Module form of :func:`losslab.functional.simpo_loss`."""


@register_module("orpo_loss")
class ORPOLoss(FunctionalLoss, function=F.orpo_loss):
    """Module form of :func:`losslab.functional.orpo_loss` (``chosen_nll`` goes to ``forward``)."""


@register_module("cpo_loss")
class CPOLoss(FunctionalLoss, function=F.cpo_loss):
    """Module form of :func:`losslab.functional.cpo_loss` (``chosen_nll`` goes to ``forward``)."""
