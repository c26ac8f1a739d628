"""Module wrappers for the classification family."""
from __future__ import annotations

import torch

from .. import functional as F
from .._checks import check_class_target, check_floating, check_hyperparameters, check_in_range
from ..distributed import is_distributed
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
class FocalLoss(FunctionalLoss, function=F.focal_loss, constants=("weight", "alpha")):
    """Module form of :func:`losslab.functional.focal_loss`."""


@register_module("spherical_z_loss")
class SphericalZLoss(FunctionalLoss, function=F.spherical_z_loss):
    """Module form of :func:`losslab.functional.spherical_z_loss`."""


@register_module("logit_adjusted_cross_entropy")
class LogitAdjustedLoss(FunctionalLoss, function=F.logit_adjusted_cross_entropy):
    """Module form of :func:`losslab.functional.logit_adjusted_cross_entropy` with a fixed prior."""


@register_module("logit_adjusted_cross_entropy")
class AdaptiveLogitAdjustedLoss(torch.nn.Module):
    r"""Logit-adjusted cross-entropy whose per-class prior follows each class's learning status (PromptMRG).

    Trains with :func:`losslab.functional.logit_adjusted_cross_entropy` using a per-class
    vector :math:`b` (the registered buffer ``status``, so it is in ``state_dict`` and
    follows ``.to()``) in place of the prior: the loss is CE on :math:`x + \tau\log b`.
    **No adjustment at inference**: predict with the raw logits (this module is only the
    training loss; calling it in ``eval()`` mode still adjusts).

    Initial :math:`b`: the training-set class frequencies divided by their maximum
    (``class_counts`` in the constructor, or :meth:`set_class_counts` later), else all
    ones (plain CE until the first :meth:`update`).

    Update rule (call :meth:`update` after each epoch with validation predictions):
    :math:`b_k` = the mean predicted probability of class :math:`k` over the validation
    samples whose label is :math:`k`, then :math:`b \leftarrow b / \max_k b_k`. Poorly
    learned classes get a small :math:`b_k`, hence a larger margin. A class without
    validation samples keeps its previous value (before the division by the new maximum);
    :math:`b` is floored at ``floor`` so :math:`\log b` stays finite. Under
    ``torch.distributed`` the per-class sums and counts are all-reduced over ``group``
    (every rank must call :meth:`update`), so every rank ends with the same :math:`b`
    as a single process seeing the whole validation set.

    Args:
        num_classes: number of classes :math:`C \ge 2`.
        class_counts: optional ``(C,)`` non-negative training-set class counts.
        tau: adjustment strength :math:`\tau \ge 0`.
        floor: smallest allowed :math:`b_k` (keeps :math:`\log b_k` finite), default 1e-4.
        ignore_index: target value whose samples are left out of the loss.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> from losslab.nn import AdaptiveLogitAdjustedLoss
        >>> crit = AdaptiveLogitAdjustedLoss(3, class_counts=torch.tensor([50.0, 30.0, 20.0]))
        >>> crit.status
        tensor([1.0000, 0.6000, 0.4000])
        >>> loss = crit(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
        >>> probs = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.6, 0.2], [0.1, 0.6, 0.3]])
        >>> crit.update(probs, torch.tensor([0, 1, 2]))  # b = (0.9, 0.6, 0.3) / 0.9
        >>> crit.status
        tensor([1.0000, 0.6667, 0.3333])
    """

    def __init__(
        self,
        num_classes: int,
        *,
        class_counts: torch.Tensor | None = None,
        tau: float = 1.0,
        floor: float = 1e-4,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        # The function's own checks (tau >= 0, reduction, ignore_index) with the prior this
        # Module starts from (all ones): a bad value fails here, not at the first batch.
        check_hyperparameters(F.logit_adjusted_cross_entropy, {
            "prior": torch.ones(num_classes), "tau": tau, "ignore_index": ignore_index, "reduction": reduction})
        check_in_range(floor, "floor", 0.0, 1.0, low_inclusive=False)
        self.tau = float(tau)
        self.floor = float(floor)
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self.register_buffer("status", torch.ones(num_classes))
        if class_counts is not None:
            self.set_class_counts(class_counts)

    @torch.no_grad()
    def set_class_counts(self, class_counts: torch.Tensor) -> None:
        """Set :math:`b` to the class frequencies divided by their maximum (floored at ``floor``)."""
        c = self.status.shape[0]
        counts = torch.as_tensor(class_counts).detach().to(torch.float64)
        # (counts >= 0).all(): a NaN count is rejected too.
        if counts.shape != (c,) or not bool((counts >= 0).all()) or not bool((counts > 0).any()):
            raise ValueError(
                f"class_counts must be a non-negative ({c},) tensor with a positive entry, got {counts.tolist()}"
            )
        self.status.copy_((counts / counts.max()).clamp_min(self.floor).to(self.status))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.logit_adjusted_cross_entropy(
            logits, target, prior=self.status, tau=self.tau, ignore_index=self.ignore_index, reduction=self.reduction
        )

    @torch.no_grad()
    def update(self, probs: torch.Tensor, target: torch.Tensor, *, group=None) -> None:
        """Set each class's status from validation probabilities ``(N, C)`` and labels ``(N,)``."""
        c = self.status.shape[0]
        check_floating(probs, "probs")
        if probs.dim() != 2 or probs.shape[1] != c:
            raise ValueError(f"probs must have shape (N, {c}), got {tuple(probs.shape)}")
        t = check_class_target(target, probs, logits_name="probs")
        p_true = probs.to(torch.float64).gather(1, t.unsqueeze(1)).squeeze(1)
        sums = torch.zeros(c, dtype=torch.float64, device=probs.device).index_add_(0, t, p_true)
        counts = torch.bincount(t, minlength=c).to(torch.float64)
        if is_distributed(group):
            # One collective for both: every rank gets the global per-class sums and counts.
            both = torch.cat([sums, counts])
            torch.distributed.all_reduce(both, group=group)
            sums, counts = both[:c], both[c:]
        prev = self.status.to(torch.float64)
        # Empty class: keep its previous value (no division by a zero count).
        new = torch.where(counts > 0, sums / counts.clamp_min(1), prev)
        # All-zero b (every validation sample got probability 0 for its class): the
        # normalization would divide by 0; the floor below then sets every class to it.
        new = new / new.max().clamp_min(torch.finfo(torch.float64).tiny)
        self.status.copy_(new.clamp_min(self.floor).to(self.status))

    def extra_repr(self) -> str:
        return f"num_classes={self.status.shape[0]}, tau={self.tau}, floor={self.floor}"
