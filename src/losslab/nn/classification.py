"""Module wrappers for the classification family."""
from __future__ import annotations

import torch

from .. import functional as F
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["CrossEntropyLoss", "ZLoss", "FocalLoss", "SphericalZLoss", "LogitAdjustedLoss", "AdaptiveLogitAdjustedLoss"]


@register_module("cross_entropy")
class CrossEntropyLoss(FunctionalLoss, function=F.cross_entropy):
    """Module form of :func:`losslab.functional.cross_entropy`; hyperparameters are its keyword arguments."""


@register_module("z_loss")
class ZLoss(FunctionalLoss, function=F.z_loss):
    """Module form of :func:`losslab.functional.z_loss`."""


@register_module("focal_loss")
class FocalLoss(FunctionalLoss, function=F.focal_loss):
    """Module form of :func:`losslab.functional.focal_loss`."""


@register_module("spherical_z_loss")
class SphericalZLoss(FunctionalLoss, function=F.spherical_z_loss):
    """Module form of :func:`losslab.functional.spherical_z_loss`."""


@register_module("logit_adjusted_cross_entropy")
class LogitAdjustedLoss(FunctionalLoss, function=F.logit_adjusted_cross_entropy):
    """Module form of :func:`losslab.functional.logit_adjusted_cross_entropy` with a fixed prior."""


class AdaptiveLogitAdjustedLoss(torch.nn.Module):
    r"""Logit-adjusted cross-entropy whose per-class prior follows each class's learning status (PromptMRG).

    Trains with :func:`losslab.functional.logit_adjusted_cross_entropy` using a per-class
    vector :math:`b` (a registered buffer, so it is in ``state_dict``) in place of the
    prior; no adjustment is applied at inference (use the raw logits there).

    Update rule (call :meth:`update` after each epoch with validation predictions):
    :math:`b_k` = the mean predicted probability of class :math:`k` over validation samples
    whose label is :math:`k`, then :math:`b \leftarrow b / \max_k b_k`. A class without
    validation samples keeps its previous value. Initial :math:`b`: the class
    frequencies divided by their maximum (``class_counts``), or all ones.

    Args:
        num_classes: number of classes :math:`C`.
        class_counts: optional ``(C,)`` training-set class counts for the initial :math:`b`.
        tau: adjustment strength.
        floor: smallest allowed :math:`b_k` (keeps :math:`\log b_k` finite), default 1e-4.

    Example:
        >>> import torch
        >>> from losslab.nn import AdaptiveLogitAdjustedLoss
        >>> crit = AdaptiveLogitAdjustedLoss(3, class_counts=torch.tensor([50.0, 30.0, 20.0]))
        >>> loss = crit(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
        >>> crit.update(torch.softmax(torch.randn(6, 3), -1), torch.tensor([0, 0, 1, 1, 2, 2]))
        >>> float(crit.status.max())
        1.0
    """

    def __init__(
        self, num_classes: int, *, class_counts: torch.Tensor | None = None, tau: float = 1.0, floor: float = 1e-4
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        init = torch.ones(num_classes) if class_counts is None else class_counts.detach().double().clone()
        if init.shape != (num_classes,) or bool((init < 0).any()):
            raise ValueError(f"class_counts must be a non-negative ({num_classes},) tensor, got {tuple(init.shape)}")
        self.tau = float(tau)
        self.floor = float(floor)
        self.register_buffer("status", (init / init.max()).clamp_min(floor).float())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.logit_adjusted_cross_entropy(logits, target, prior=self.status, tau=self.tau)

    @torch.no_grad()
    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """Set each class's status from validation probabilities ``(N, C)`` and labels ``(N,)``."""
        c = self.status.shape[0]
        if probs.dim() != 2 or probs.shape[1] != c or target.shape != probs.shape[:1]:
            raise ValueError(f"update expects probs (N, {c}) and target (N,), got {tuple(probs.shape)} and {tuple(target.shape)}")
        p_true = probs.double().gather(1, target.long().unsqueeze(1)).squeeze(1)
        sums = torch.zeros(c, dtype=torch.float64, device=probs.device).index_add_(0, target.long(), p_true)
        counts = torch.bincount(target.long(), minlength=c).to(torch.float64)
        new = torch.where(counts > 0, sums / counts.clamp_min(1), self.status.double())
        self.status.copy_((new / new.max().clamp_min(1e-300)).clamp_min(self.floor).to(self.status.dtype))
