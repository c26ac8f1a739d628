"""LDR-KL Module and the stateful ALDR-KL Module."""
from __future__ import annotations

import torch

from .. import functional as F
from .._checks import check_index
from ..distributed import gather_no_grad
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["LDRKLLoss", "AdaptiveLDRKLLoss"]


@register_module("ldr_kl_loss")
class LDRKLLoss(FunctionalLoss, function=F.ldr_kl_loss):
    """Module form of :func:`losslab.functional.ldr_kl_loss`."""


@register_module("aldr_kl_loss")
class AdaptiveLDRKLLoss(torch.nn.Module):
    r"""ALDR-KL with every training sample's λ_i kept in a buffer, indexed by dataset index.

    ``forward(logits, target, index)`` reads :math:`\lambda_i` of the batch's samples,
    applies the closed-form update of :func:`losslab.functional.aldr_kl_update`, stores
    the new values and returns the loss of :func:`losslab.functional.aldr_kl_loss`. The
    state is the buffer ``lam`` of shape ``(num_samples,)`` (initialised to ``lam0``): it
    is saved by ``state_dict()``, follows ``.to()``, and a Module restored from a state
    dict continues exactly as the original would. Under ``torch.distributed`` the new
    values of every rank's samples are gathered and written on every rank, so the buffer
    stays identical everywhere. Updates happen in training mode only (``.eval()`` reads
    the state without changing it).

    Args:
        num_samples: size of the training set (indices lie in ``[0, num_samples)``).
        lam0, alpha, margin, ignore_index, reduction: as in :func:`~losslab.functional.aldr_kl_loss`.

    Example:
        >>> import torch
        >>> from losslab.nn import AdaptiveLDRKLLoss
        >>> crit = AdaptiveLDRKLLoss(num_samples=100)
        >>> logits, target, index = torch.randn(4, 5), torch.tensor([0, 1, 2, 3]), torch.tensor([7, 3, 50, 99])
        >>> loss = crit(logits, target, index)
        >>> bool((crit.lam[index] <= 10.0).all()) and float(crit.lam[0]) == 10.0
        True
    """

    def __init__(
        self,
        num_samples: int,
        *,
        lam0: float = 10.0,
        alpha: float = 2.0,
        margin: float = 0.1,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        self.lam0, self.alpha, self.margin = float(lam0), float(alpha), float(margin)
        self.ignore_index, self.reduction = ignore_index, reduction
        self.register_buffer("lam", torch.full((num_samples,), float(lam0), dtype=torch.float64))

    def forward(self, logits: torch.Tensor, target: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        check_index(index, "index", length=logits.shape[0], size=self.lam.shape[0])
        new_lam = F.aldr_kl_update(logits, self.lam[index], lam0=self.lam0, alpha=self.alpha)
        loss = F.aldr_kl_loss(
            logits,
            target,
            new_lam,
            lam0=self.lam0,
            alpha=self.alpha,
            margin=self.margin,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
        )
        if self.training:
            all_index = gather_no_grad(index)
            all_lam = gather_no_grad(new_lam.to(self.lam.dtype))
            self.lam[all_index] = all_lam
        return loss

    def extra_repr(self) -> str:
        return f"num_samples={self.lam.shape[0]}, lam0={self.lam0}, alpha={self.alpha}, margin={self.margin}"
