"""The one place where losses are reduced.

Every objective computes its unreduced loss (per element or per sample) and calls
:func:`reduce` once. Invariant tested for every objective::

    f(..., reduction="sum") == f(..., reduction="none").sum()

``"mean"`` with weights or a mask is the weighted mean over the kept elements,
``sum(w * loss) / sum(w)`` (torch's cross-entropy rule). When nothing is kept (all
masked, zero total weight, or an empty batch) ``"mean"`` returns 0 with zero gradients
rather than NaN.
"""
from __future__ import annotations

from typing import Literal

import torch

from ._checks import check_reduction

Reduction = Literal["mean", "sum", "none"]


def reduce(
    loss: torch.Tensor,
    reduction: str,
    *,
    weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    normalizer: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce an unreduced loss.

    Args:
        loss: the unreduced loss, any shape.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        weight: per-element weights broadcastable to ``loss``; the loss is multiplied by it
            and ``"mean"`` divides by its sum over kept elements.
        mask: boolean, broadcastable to ``loss``; ``False`` elements are set to 0 (also
            when they hold NaN/inf) and are left out of the ``"mean"`` denominator.
        normalizer: per-element denominator weights for ``"mean"`` when the loss already
            carries its weights (e.g. cross-entropy with class weights and label
            smoothing, where the loss is not ``w_y`` times an unweighted loss). Defaults
            to ``weight``.

    Returns:
        ``loss`` weighted and masked for ``"none"``, else a scalar.
    """
    check_reduction(reduction)
    if weight is not None:
        loss = loss * weight
    if mask is not None:
        # where(), not multiplication: masked elements may hold inf/NaN (e.g. an ignored
        # token's gather of an invalid index is never computed, but a masked log(0) is).
        loss = torch.where(mask, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    if reduction == "none":
        return loss
    denom_w = normalizer if normalizer is not None else weight
    if reduction == "mean" and denom_w is None and mask is None:
        # One kernel and one autograd node for the plain mean; an empty batch gives 0
        # (torch's mean of nothing is NaN).
        return loss.mean() if loss.numel() > 0 else loss.sum()
    total = loss.sum()
    if reduction == "sum":
        return total
    if denom_w is None:
        denom = mask.expand(loss.shape).sum().to(loss.dtype)
    else:
        denom_w = denom_w.to(loss.dtype).expand(loss.shape)
        if mask is not None:
            denom_w = torch.where(mask, denom_w, torch.zeros((), dtype=loss.dtype, device=loss.device))
        denom = denom_w.sum()
    # Nothing kept: total is 0 too, so 0 / 1 = 0 with zero gradients (torch gives NaN).
    return total / torch.where(denom == 0, torch.ones_like(denom), denom)
