"""The comp-sum family of classification losses (cross-entropy, GCE, MAE, sum-exponential).

Mao, Mohri and Zhong (2023) write every member as :math:`\\Phi_\\tau(u)` of
:math:`u = \\sum_{k} e^{x_k - x_y} = 1/p_y` (their :math:`1 + \\sum_{k \\ne y}`), with
:math:`\\Phi_\\tau(u) = (u^{1-\\tau} - 1)/(1 - \\tau)` and :math:`\\Phi_1 = \\log`.

The same paper's smooth adversarial comp-sum losses are not provided: the section that defines
their smooth term could not be read, and losslab does not ship an objective whose formula is a
guess.
"""
from __future__ import annotations

import torch

from .._checks import (
    check_class_target,
    check_class_weight,
    check_in_range,
    check_nonnegative,
    hyperparameter_checks,
)
from .._numerics import upcast
from .._reduction import reduce
from ..registry import Reference, register
from ._examples import classification_example
from .classification import _check_logits, _gather_target, check_per_class

__all__ = ["comp_sum_loss", "generalized_cross_entropy"]

COMPSUM_PAPER = Reference(
    title="Cross-Entropy Loss Functions: Theoretical Analysis and Applications",
    authors="Anqi Mao, Mehryar Mohri, Yutao Zhong",
    year=2023,
    url="https://arxiv.org/abs/2304.07288",
)
GCE_PAPER = Reference(
    title="Generalized Cross Entropy Loss for Training Deep Neural Networks with Noisy Labels",
    authors="Zhilu Zhang, Mert R. Sabuncu",
    year=2018,
    url="https://arxiv.org/abs/1805.07836",
)


def _phi_tau(log_u: torch.Tensor, tau: float) -> torch.Tensor:
    """:math:`\\Phi_\\tau(u)` from :math:`\\log u`, in log-space.

    ``u ** (1 - tau)`` is ``exp((1 - tau) * log u)``; ``expm1`` keeps the relative accuracy of
    ``(u^{1-tau} - 1) / (1 - tau)`` when ``(1 - tau) log u`` is small (``tau`` near 1, or
    ``u`` near 1), where ``exp(.) - 1`` would cancel catastrophically.
    """
    if tau == 1:
        return log_u
    return torch.expm1((1.0 - tau) * log_u) / (1.0 - tau)


def _comp_sum_unreduced(x, target, tau, ignore_index):
    """``keep``, ``safe`` target and the per-sample comp-sum loss of float logits ``x``."""
    # log u = log sum_k exp(x_k - x_y) = -log p_y >= 0, from log_softmax: no overflow for any
    # logits, and a +inf logit gives NaN as in cross-entropy (logsumexp(x) - x_y would give
    # log u = inf and, for tau > 1, the finite bound 1 / (tau - 1)).
    keep, safe, logp_y = _gather_target(torch.log_softmax(x, dim=-1), target, ignore_index)
    return keep, safe, _phi_tau(-logp_y, tau)


def _check_comp_sum(*, tau=None, weight=None, **_) -> None:
    if tau is None:
        raise TypeError("comp_sum_loss needs tau (0: sum-exponential, 1: cross-entropy, 2: MAE)")
    check_nonnegative(tau, "tau")
    check_per_class(weight, "weight")


def _check_gce(*, q=0.7, weight=None, **_) -> None:
    check_in_range(q, "q", 0.0, 1.0, low_inclusive=False)
    check_per_class(weight, "weight")


def _class_weight(weight, safe, dtype):
    return None if weight is None else upcast(weight, dtype)[safe]


@register(
    "comp_sum_loss",
    family="classification",
    reference=COMPSUM_PAPER,
    seed=COMPSUM_PAPER.title,
    # tau >= 1 keeps the loss bounded by log-growth (the extreme-logit check); tau < 1 grows
    # like exp((1 - tau) * logit gap) and overflows float32 for gaps beyond ~88 / (1 - tau).
    example=classification_example(weight=True, ignore_index=True, tau=1.5),
    tags=("noisy labels", "label noise", "robust loss", "mean absolute error", "MAE", "GCE"),
    input_kind="logits",
    classification_calibrated=True,
    # Robust (bounded by 1 / (tau - 1)) for tau > 1: MAE (tau = 2) is the most robust row of
    # the README's noisy-labels table; tau = 1 is cross-entropy.
    noise_robust=True,
)
@hyperparameter_checks(_check_comp_sum)
def comp_sum_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    tau: float,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Comp-sum loss Φ_τ(Σ_k exp(x_k − x_y)): one family for sum-exponential, CE, GCE and MAE.

    With :math:`u = \sum_k e^{x_k - x_y} = 1 + \sum_{k \ne y} e^{x_k - x_y} = 1/p_y`,

    .. math::
        \ell_\tau = \Phi_\tau(u), \qquad
        \Phi_\tau(u) = \begin{cases} \log u & \tau = 1,\\
        \dfrac{u^{1-\tau} - 1}{1 - \tau} & \tau \ne 1. \end{cases}

    This is the paper's definition with no extra normalization. Members:
    :math:`\tau = 0` the sum-exponential loss :math:`\sum_{k\ne y} e^{x_k - x_y}`;
    :math:`\tau = 1` cross-entropy; :math:`\tau \in (1, 2)` generalized cross-entropy
    :math:`(1 - p_y^q)/q` with :math:`q = \tau - 1`; :math:`\tau = 2` the mean absolute error
    :math:`1 - p_y` (half of Ghosh et al.'s :math:`\lVert e_y - p\rVert_1 = 2(1 - p_y)`).
    Larger :math:`\tau` is more robust to label noise (bounded by :math:`1/(\tau - 1)` for
    :math:`\tau > 1`) and slower to fit.

    Computed in log-space: :math:`\log u = -\log p_y` from ``log_softmax`` and
    :math:`\Phi_\tau(u) = \operatorname{expm1}((1-\tau)\log u)/(1-\tau)`, which is accurate
    near :math:`\tau = 1`. For :math:`\tau < 1` the loss itself grows exponentially in the
    logit gap and can overflow float32 (a property of the loss, not of the code).

    ``weight`` follows ``F.cross_entropy``: sample :math:`i` is multiplied by
    :math:`w_{y_i}` and ``"mean"`` divides by :math:`\sum_i w_{y_i}` over kept samples, so
    ``comp_sum_loss(..., tau=1, weight=w)`` equals ``F.cross_entropy(..., weight=w)``.

    Args:
        logits: ``(*, C)``.
        target: ``(*)`` class indices.
        tau: :math:`\tau \ge 0`.
        weight: optional per-class weights ``(C,)``.
        ignore_index: target value whose samples are left out.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        logits ``(*, C)``, target ``(*)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import comp_sum_loss
        >>> x, t = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
        >>> p_y = torch.softmax(x, -1)[0, 0]
        >>> torch.allclose(comp_sum_loss(x, t, tau=2.0), 1 - p_y)   # MAE
        True
        >>> torch.allclose(comp_sum_loss(x, t, tau=1.0), -p_y.log())  # cross-entropy
        True

    References:
        Mao, Mohri, Zhong, "Cross-Entropy Loss Functions: Theoretical Analysis and
        Applications", ICML 2023, https://arxiv.org/abs/2304.07288.
    """
    _check_logits(logits)
    _check_comp_sum(tau=tau, weight=weight)
    check_class_weight(weight, logits.shape[-1])
    target = check_class_target(target, logits, ignore_index=ignore_index)
    x = upcast(logits)
    keep, safe, loss = _comp_sum_unreduced(x, target, tau, ignore_index)
    return reduce(loss, reduction, weight=_class_weight(weight, safe, x.dtype), mask=keep)


@register(
    "generalized_cross_entropy",
    family="classification",
    reference=GCE_PAPER,
    seed=COMPSUM_PAPER.title,
    example=classification_example(weight=True, ignore_index=True, q=0.7),
    tags=("noisy labels", "label noise", "robust loss", "GCE"),
    input_kind="logits",
    bounded=True,
    noise_robust=True,
)
@hyperparameter_checks(_check_gce)
def generalized_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    q: float = 0.7,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Generalized cross-entropy (1 − p_y^q)/q, between CE (q → 0) and MAE (q = 1).

    .. math:: \ell = \frac{1 - p_y^{\,q}}{q}, \qquad p = \operatorname{softmax}(x),

    computed as :math:`-\operatorname{expm1}(q \log p_y)/q` from ``log_softmax`` (never
    from ``softmax``, whose :math:`p_y` underflows). Bounded by :math:`1/q`, hence robust
    to label noise; the comp-sum loss with :math:`\tau = 1 + q`. The paper's truncated
    variant :math:`L_{trunc}` (a per-sample pruning schedule) is not included.
    ``weight`` follows ``F.cross_entropy`` (see :func:`comp_sum_loss`).

    Args:
        logits: ``(*, C)``.
        target: ``(*)`` class indices.
        q: :math:`q \in (0, 1]` (0.7 in the paper).
        weight: optional per-class weights ``(C,)``.
        ignore_index: target value whose samples are left out.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        logits ``(*, C)``, target ``(*)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import generalized_cross_entropy, comp_sum_loss
        >>> x, t = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([1])
        >>> torch.allclose(generalized_cross_entropy(x, t, q=0.7), comp_sum_loss(x, t, tau=1.7))
        True

    References:
        Zhang & Sabuncu, "Generalized Cross Entropy Loss for Training Deep Neural Networks
        with Noisy Labels", NeurIPS 2018, https://arxiv.org/abs/1805.07836;
        Mao, Mohri, Zhong, ICML 2023, https://arxiv.org/abs/2304.07288.
    """
    _check_logits(logits)
    _check_gce(q=q, weight=weight)
    check_class_weight(weight, logits.shape[-1])
    target = check_class_target(target, logits, ignore_index=ignore_index)
    x = upcast(logits)
    keep, safe, logp_y = _gather_target(torch.log_softmax(x, dim=-1), target, ignore_index)
    # 1 - p^q = -expm1(q log p): exact as p -> 1, and p^q never formed from an underflowed p.
    loss = -torch.expm1(q * logp_y) / q
    return reduce(loss, reduction, weight=_class_weight(weight, safe, x.dtype), mask=keep)
