"""Module wrappers for the policy-gradient objectives."""
from __future__ import annotations

from .. import functional as F
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["GRPOLoss"]


@register_module("grpo_loss")
class GRPOLoss(FunctionalLoss, function=F.grpo_loss, batch_args=("ref_logps", "num_items")):
    """Module form of :func:`losslab.functional.grpo_loss`.

    ``forward(policy_logps, old_logps, advantages, mask, ref_logps=None, num_items=None)``;
    the hyperparameters (``beta``, ``epsilon``, ``loss_type``, ...) and ``group`` go to ``__init__``.
    """
