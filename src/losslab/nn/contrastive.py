"""Module wrappers for the contrastive family."""
from __future__ import annotations

from .. import functional as F
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["InfoNCELoss", "NTXentLoss", "SupConLoss"]


@register_module("info_nce")
class InfoNCELoss(FunctionalLoss, function=F.info_nce):
    """Module form of :func:`losslab.functional.info_nce`."""


@register_module("nt_xent")
class NTXentLoss(FunctionalLoss, function=F.nt_xent):
    """Module form of :func:`losslab.functional.nt_xent`."""


@register_module("supcon_loss")
class SupConLoss(FunctionalLoss, function=F.supcon_loss):
    """Module form of :func:`losslab.functional.supcon_loss`."""
