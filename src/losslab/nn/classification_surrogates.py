"""Modules for AnyLoss, EnsLoss (which owns its random stream) and the normalized softmax loss (which owns its proxies)."""
from __future__ import annotations

import math

import torch

from .. import functional as F
from .._checks import check_hyperparameters
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["AnyLoss", "EnsLoss", "NormalizedSoftmaxLoss"]


@register_module("anyloss")
class AnyLoss(FunctionalLoss, function=F.anyloss):
    """Module form of :func:`losslab.functional.anyloss`."""


@register_module("ensloss")
class EnsLoss(torch.nn.Module):
    """:func:`losslab.functional.ensloss` drawing from its own random stream (a new loss every call).

    With ``seed`` the Module owns a CPU ``torch.Generator`` seeded once: successive calls
    draw successive derivatives (what training needs), the sequence is reproducible, and
    the generator's state is saved in ``state_dict()`` (as extra state) so that a resumed
    run draws exactly what the uninterrupted one would. The first call equals
    ``ensloss(..., seed=seed)``. Without ``seed`` it draws from torch's global generator.

    Args:
        boxcox_lambda: as in the function (0).
        seed: optional int seeding the Module's generator.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> from losslab.nn import EnsLoss
        >>> crit = EnsLoss(seed=0)
        >>> x, t = torch.tensor([2.0, -0.5, 0.3]), torch.tensor([1, 1, 0])
        >>> bool(crit(x, t) != crit(x, t))   # a fresh draw per call
        True
    """

    def __init__(self, *, boxcox_lambda: float = 0.0, seed: int | None = None, reduction: str = "mean") -> None:
        super().__init__()
        check_hyperparameters(F.ensloss, {"boxcox_lambda": boxcox_lambda, "seed": seed, "reduction": reduction})
        self.boxcox_lambda, self.reduction, self.seed = float(boxcox_lambda), reduction, seed
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.ensloss(
            logits, target, boxcox_lambda=self.boxcox_lambda, generator=self.generator, reduction=self.reduction
        )

    def get_extra_state(self) -> torch.Tensor:
        """The generator's state (a uint8 tensor; empty when drawing from torch's global generator)."""
        if self.generator is None:
            return torch.empty(0, dtype=torch.uint8)
        return self.generator.get_state()

    def set_extra_state(self, state) -> None:
        if isinstance(state, dict):  # the earlier format: {"generator_state": tensor or None}
            state = state.get("generator_state")
        if state is not None and state.numel() > 0:
            if self.generator is None:
                self.generator = torch.Generator()
            self.generator.set_state(state)

    def extra_repr(self) -> str:
        return f"boxcox_lambda={self.boxcox_lambda}, seed={self.seed}, reduction={self.reduction!r}"


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
        for name, value in (("num_classes", num_classes), ("embedding_size", embedding_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        check_hyperparameters(F.normalized_softmax_loss, {"temperature": temperature, "reduction": reduction})
        self.proxies = torch.nn.Parameter(torch.empty(num_classes, embedding_size))
        # Kaiming-uniform like nn.Linear; the scale is irrelevant after normalization.
        torch.nn.init.kaiming_uniform_(self.proxies, a=math.sqrt(5))
        self.temperature, self.reduction = float(temperature), reduction

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.normalized_softmax_loss(
            embeddings, labels, self.proxies, temperature=self.temperature, reduction=self.reduction
        )
