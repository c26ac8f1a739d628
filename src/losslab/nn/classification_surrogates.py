"""Module wrappers for AnyLoss and the normalized softmax loss (which owns its proxies)."""
from __future__ import annotations

import math

import torch

from .. import functional as F
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["AnyLoss", "EnsLoss", "NormalizedSoftmaxLoss"]


@register_module("anyloss")
class AnyLoss(FunctionalLoss, function=F.anyloss):
    """Module form of :func:`losslab.functional.anyloss`."""


@register_module("ensloss")
class EnsLoss(FunctionalLoss, function=F.ensloss):
    """Module form of :func:`losslab.functional.ensloss` (pass ``generator=`` or ``seed=`` for reproducibility)."""


@register_module("normalized_softmax_loss")
class NormalizedSoftmaxLoss(torch.nn.Module):
    """:func:`losslab.functional.normalized_softmax_loss` with learnable class proxies ``(C, D)``.

    Args:
        num_classes: number of classes ``C``.
        embedding_size: embedding dimension ``D``.
        temperature: as in the function (0.05).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> from losslab.nn import NormalizedSoftmaxLoss
        >>> crit = NormalizedSoftmaxLoss(num_classes=10, embedding_size=16)
        >>> crit(torch.randn(4, 16), torch.tensor([0, 3, 3, 9])).shape
        torch.Size([])
    """

    def __init__(self, num_classes: int, embedding_size: int, *, temperature: float = 0.05, reduction: str = "mean"):
        super().__init__()
        self.proxies = torch.nn.Parameter(torch.empty(num_classes, embedding_size))
        # Kaiming-uniform like nn.Linear; the scale is irrelevant after normalization.
        torch.nn.init.kaiming_uniform_(self.proxies, a=math.sqrt(5))
        self.temperature, self.reduction = float(temperature), reduction

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.normalized_softmax_loss(
            embeddings, labels, self.proxies, temperature=self.temperature, reduction=self.reduction
        )
