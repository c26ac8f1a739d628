"""Classification objectives on logits ``(*, C)`` and class targets ``(*)``.

The class dimension is last; leading dimensions are flattened in spirit (any number of
them is accepted). This differs from ``torch.nn.functional.cross_entropy``, which puts
the class dimension second for inputs with more than two dimensions; for ``(N, C)``
inputs the two agree.
"""
from __future__ import annotations

import torch

from .._checks import (
    check_class_target,
    check_class_weight,
    check_finite,
    check_floating,
    check_in_range,
    check_ndim,
    check_nonnegative,
    check_positive,
    check_probabilities,
    check_same_shape,
)
from .._numerics import softcap as _apply_softcap
from .._numerics import upcast
from .._reduction import reduce
from ..registry import Reference, register
from ._examples import classification_example

__all__ = ["cross_entropy", "z_loss"]

ZLOSS_PAPER = Reference(
    title="Small-scale proxies for large-scale Transformer training instabilities",
    authors="Wortsman, Liu, Xiao, Everett, Alemi, Adlam, Co-Reyes, Gur, Kumar, Novak, Pennington, "
    "Sohl-Dickstein, Xu, Lee, Gilmer, Kornblith",
    year=2023,
    url="https://arxiv.org/abs/2309.14322",
)
ZLOSS_SEED = "Small-scale proxies for large-scale Transformer training instabilities"


def _check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    check_floating(logits, name)
    check_ndim(logits, name, tuple(range(1, 9)))
    check_finite(logits, name)


def _check_softcap(softcap: float | None) -> None:
    if softcap is not None:
        check_positive(softcap, "softcap")


@register(
    "cross_entropy",
    family="classification",
    reference=ZLOSS_PAPER,
    seed=ZLOSS_SEED,
    example=classification_example(label_smoothing=0.1, z_loss=1e-3),
    input_kind="logits",
    classification_calibrated=True,
    bounded=False,
    noise_robust=False,
)
def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Cross-entropy with class weights, label smoothing, soft targets, z-loss and soft-capping.

    With :math:`\tilde x = c\tanh(x/c)` when ``softcap=c`` (else :math:`\tilde x = x`),
    :math:`Z = \log\sum_k e^{\tilde x_k}` and smoothing :math:`\varepsilon`, the loss of one
    sample with class index :math:`y` is

    .. math::
        \ell = w_y\Big[(1-\varepsilon)(Z - \tilde x_y) + \lambda_z Z^2\Big]
             + \frac{\varepsilon}{C}\sum_k w_k (Z - \tilde x_k),

    where :math:`w` are the class weights (all 1 by default) and
    :math:`\lambda_z` = ``z_loss`` (PaLM's auxiliary log-partition penalty, weighted by the
    token's class weight). With probability targets :math:`p` the loss is
    :math:`\sum_k w_k \tilde p_k (Z - \tilde x_k) + \lambda_z Z^2`, with
    :math:`\tilde p = (1-\varepsilon)p + \varepsilon/C`.

    ``reduction="mean"`` follows ``F.cross_entropy``: with class indices it divides by
    :math:`\sum_i w_{y_i}` over non-ignored samples; with probability targets by the
    number of samples. Where the options overlap the result equals
    ``F.cross_entropy`` to float round-off. Unlike torch, a batch whose samples are all
    ignored gives 0 (with zero gradients) rather than NaN.

    Everything is computed from :math:`Z` (one ``logsumexp``) and gathered logits, in
    float32 for half/bfloat16 inputs, so no :math:`N\times C` log-probability matrix is
    kept for backward beyond what ``logsumexp`` needs.

    Args:
        logits: unnormalized scores, shape ``(*, C)``.
        target: class indices ``(*)`` (int64), or class probabilities ``(*, C)``.
        weight: per-class weights ``(C,)``.
        ignore_index: class index whose samples are left out (class-index targets only).
        label_smoothing: :math:`\varepsilon \in [0, 1]`, as in torch.
        z_loss: coefficient :math:`\lambda_z \ge 0` of :math:`Z^2` (1e-4 in PaLM).
        softcap: ``c > 0`` applies :math:`c\tanh(x/c)` to the logits first (Gemma 2 uses 30).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        logits ``(*, C)``; target ``(*)`` or ``(*, C)``; output ``(*)`` for ``"none"``,
        else a scalar. float32 for half/bfloat16 inputs.

    Example:
        >>> import torch
        >>> from losslab.functional import cross_entropy
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
        >>> target = torch.tensor([0, 2])
        >>> torch.allclose(cross_entropy(logits, target),
        ...                torch.nn.functional.cross_entropy(logits, target))
        True
        >>> cross_entropy(logits, target, z_loss=1e-4, reduction="none").shape
        torch.Size([2])

    References:
        Wortsman et al., "Small-scale proxies for large-scale Transformer training
        instabilities", 2023, https://arxiv.org/abs/2309.14322 (z-loss);
        Chowdhery et al., "PaLM", 2022, https://arxiv.org/abs/2204.02311;
        Szegedy et al., "Rethinking the Inception Architecture", 2016 (label smoothing).
    """
    _check_logits(logits)
    check_in_range(label_smoothing, "label_smoothing", 0.0, 1.0)
    check_nonnegative(z_loss, "z_loss")
    _check_softcap(softcap)
    num_classes = logits.shape[-1]
    check_class_weight(weight, num_classes)

    x = _apply_softcap(upcast(logits), softcap)
    w = upcast(weight, x.dtype)
    eps = float(label_smoothing)
    lse = torch.logsumexp(x, dim=-1)

    if target.is_floating_point():
        check_same_shape(target, logits, ("target", "logits"))
        check_probabilities(target, "target")
        p = upcast(target, x.dtype)
        if eps > 0:
            p = p * (1.0 - eps) + eps / num_classes
        if w is not None:
            p = p * w
        # -sum_k p_k log softmax(x)_k = sum_k p_k (Z - x_k)
        loss = lse * p.sum(-1) - (p * x).sum(-1)
        if z_loss > 0:
            loss = loss + z_loss * lse.square()
        return reduce(loss, reduction)

    check_class_target(target, logits, ignore_index=ignore_index)
    keep = target != ignore_index
    safe_target = torch.where(keep, target, torch.zeros((), dtype=target.dtype, device=target.device))
    x_y = x.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1)
    loss = lse - x_y
    if eps > 0:
        loss = loss * (1.0 - eps)
    if z_loss > 0:
        loss = loss + z_loss * lse.square()
    if w is None:
        if eps > 0:
            # (eps/C) sum_k (Z - x_k) = eps (Z - mean_k x_k)
            loss = loss + eps * (lse - x.mean(-1))
        return reduce(loss, reduction, mask=keep)
    w_y = w[safe_target]
    loss = loss * w_y
    if eps > 0:
        loss = loss + (eps / num_classes) * (lse * w.sum() - x @ w)
    return reduce(loss, reduction, mask=keep, normalizer=w_y)


@register(
    "z_loss",
    family="classification",
    reference=ZLOSS_PAPER,
    seed=ZLOSS_SEED,
    example=classification_example(),
    input_kind="logits",
    bounded=False,
)
def z_loss(
    logits: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    softcap: float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""The log-partition penalty Z² = logsumexp(logits)² alone (PaLM's auxiliary loss).

    .. math:: \ell = \Big(\log\sum_k e^{x_k}\Big)^2

    It pushes the softmax normalizer towards 1 so that logits do not drift, which
    stabilises large-scale training. Add ``coefficient * z_loss(logits)`` to a loss, or
    use ``cross_entropy(..., z_loss=coefficient)`` to fuse the two.

    Args:
        logits: ``(*, C)``.
        target: optional class indices ``(*)``, used only to leave out samples equal to
            ``ignore_index`` (the same masking as :func:`cross_entropy`).
        ignore_index: see ``target``.
        softcap: apply :math:`c\tanh(x/c)` first, as in :func:`cross_entropy`.
        reduction: ``"mean"`` (over kept samples), ``"sum"`` or ``"none"``.

    Shape:
        logits ``(*, C)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import z_loss
        >>> z_loss(torch.zeros(2, 4))  # (log 4)^2
        tensor(1.9218)

    References:
        Wortsman et al., "Small-scale proxies for large-scale Transformer training
        instabilities", 2023, https://arxiv.org/abs/2309.14322;
        Chowdhery et al., "PaLM", 2022, https://arxiv.org/abs/2204.02311.
    """
    _check_logits(logits)
    _check_softcap(softcap)
    x = _apply_softcap(upcast(logits), softcap)
    loss = torch.logsumexp(x, dim=-1).square()
    if target is None:
        return reduce(loss, reduction)
    check_class_target(target, logits, ignore_index=ignore_index)
    return reduce(loss, reduction, mask=target != ignore_index)
