"""LDR-KL Module and the stateful ALDR-KL Module."""
from __future__ import annotations

import torch

from .. import functional as F
from .._checks import check_floating, check_hyperparameters, check_index, check_ndim
from ..functional.classification_ldr import _aldr_kl
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["LDRKLLoss", "AdaptiveLDRKLLoss"]


@register_module("ldr_kl_loss")
class LDRKLLoss(FunctionalLoss, function=F.ldr_kl_loss):
    """Module form of :func:`losslab.functional.ldr_kl_loss`."""


@register_module("aldr_kl_loss")
class AdaptiveLDRKLLoss(torch.nn.Module):
    r"""ALDR-KL with every training sample's λ_i kept in a buffer, indexed by dataset index.

    ``forward(logits, target, index)``, with ``index`` the dataset indices of the batch's
    samples (e.g. returned by the ``Dataset`` next to each sample):

    1. reads the stored :math:`\lambda_i` = ``lam[index]``;
    2. updates them in closed form (:func:`losslab.functional.aldr_kl_update`):
       :math:`p = \operatorname{softmax}(f/\lambda_i)`,
       :math:`\lambda_i \leftarrow \lambda_0\big(1 - \mathrm{KL}(p\,\|\,\tfrac1K)/(\alpha\log K)\big)
       \in [\lambda_0(1-1/\alpha), \lambda_0]`;
    3. in training mode, writes the new values back into ``lam`` (``.eval()`` reads the
       state without changing it);
    4. returns :func:`losslab.functional.aldr_kl_loss` at the new :math:`\lambda_i`
       (gradient with :math:`\lambda` held constant).

    State: the buffer ``lam`` of shape ``(num_samples,)``, float32, initialised to
    ``lam0``. It is in ``state_dict()`` and follows ``.to()``; a Module loaded from a
    state dict continues exactly as the original would. Indices within one step should be
    distinct (as from any sampler over the dataset); for a repeated index one of the new
    values is kept.

    Distributed: when ``torch.distributed`` is initialized, every rank's ``(index, new λ)``
    pairs are gathered (no gradient; uneven batch sizes allowed) and written on every rank,
    so the buffer stays identical everywhere and equal to single-process training on the
    concatenated batch. All ranks must call ``forward`` in training mode together.

    Args:
        num_samples: size of the training set (indices lie in ``[0, num_samples)``).
        lam0, alpha, margin, logit_transform, ignore_index, reduction: as in
            :func:`~losslab.functional.aldr_kl_loss`.

    Example:
        >>> import torch
        >>> from losslab.nn import AdaptiveLDRKLLoss
        >>> crit = AdaptiveLDRKLLoss(num_samples=100)
        >>> logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
        >>> loss = crit(logits, torch.tensor([0, 2]), torch.tensor([7, 50]))
        >>> crit.lam[[7, 50, 0]]      # sample 7 is confident: smaller lambda; 0 was not visited
        tensor([ 9.9132, 10.0000, 10.0000])
    """

    lam: torch.Tensor

    def __init__(
        self,
        num_samples: int,
        *,
        lam0: float = 10.0,
        alpha: float = 2.0,
        margin: float = 0.1,
        logit_transform: str | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        check_hyperparameters(F.aldr_kl_loss, {
            "lam0": lam0, "alpha": alpha, "margin": margin, "logit_transform": logit_transform,
            "ignore_index": ignore_index, "reduction": reduction})
        self.lam0, self.alpha, self.margin = float(lam0), float(alpha), float(margin)
        self.logit_transform, self.ignore_index, self.reduction = logit_transform, ignore_index, reduction
        self.register_buffer("lam", torch.full((num_samples,), float(lam0), dtype=torch.float32))

    @property
    def num_samples(self) -> int:
        return self.lam.shape[0]

    def forward(self, logits: torch.Tensor, target: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        check_floating(logits, "logits")
        check_ndim(logits, "logits", 2)
        check_index(index, "index", length=logits.shape[0], size=self.num_samples)
        # int64 whatever integer dtype came in (a uint8 index would be read as a boolean mask).
        index = index.to(device=self.lam.device, dtype=torch.long)
        loss, new_lam = _aldr_kl(
            logits,
            target,
            self.lam[index].to(logits.device),
            lam0=self.lam0,
            alpha=self.alpha,
            margin=self.margin,
            logit_transform=self.logit_transform,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
        )
        if self.training:
            self._store(index, new_lam)
        return loss

    @torch.no_grad()
    def _store(self, index: torch.Tensor, new_lam: torch.Tensor) -> None:
        new_lam = new_lam.detach().to(device=self.lam.device, dtype=self.lam.dtype)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Imported here: single-process use never touches the collectives.
            from ..distributed import gather_no_grad

            index = gather_no_grad(index)
            new_lam = gather_no_grad(new_lam)
        self.lam[index] = new_lam

    def extra_repr(self) -> str:
        return (f"num_samples={self.num_samples}, lam0={self.lam0}, alpha={self.alpha}, margin={self.margin}, "
                f"logit_transform={self.logit_transform!r}")
