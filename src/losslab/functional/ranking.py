"""Ranking and AUC objectives: pairwise surrogates of the Mann–Whitney / AUC statistic.

Scores ``(*, N)`` and binary labels ``(*, N)`` (or real-valued ``target`` whose order is
learned): each leading index is one query (or one image, for per-patch ranking) whose ``N``
items are compared in pairs. The unreduced loss has the leading shape ``(*)``: one value per
query, 0 for a query without any pair (left out of ``"mean"``).

Non-finite inputs (see CONTRIBUTING.md): a NaN score (or target) of an item that forms a pair
gives a NaN value for its query, also for :func:`mann_whitney_auc` (comparisons alone would
count a NaN pair as "not ranked correctly" and return a finite AUC).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as TF

from .._checks import (
    check_choice,
    check_floating,
    check_ndim,
    check_positive,
    check_same_shape,
    hyperparameter_checks,
    validation_enabled,
)
from .._numerics import softplus, upcast
from .._reduction import Reduction, reduce
from ..registry import Example, Reference, register
from ._examples import randint, randn

__all__ = ["mw_loss", "pairwise_auc_loss", "mann_whitney_auc", "pairwise_ranking_loss", "AUC_SURROGATES"]

MW_PAPER = Reference(
    title="Optimizing What Matters: AUC-Driven Learning for Robust Neural Retrieval",
    authors="Nima Sheikholeslami, Erfan Hosseini, Patrice Bechard, Srivatsava Daruru, Sai Rajeswar",
    year=2025,
    url="https://arxiv.org/abs/2510.00137",
)
MW_SEED = "Optimizing What Matters: AUC-Driven Learning for Robust Neural Retrieval"
LIBAUC_PAPER = Reference(
    title="LibAUC: A Deep Learning Library for X-Risk Optimization",
    authors="Zhuoning Yuan, Dixian Zhu, Zi-Hao Qiu, Gang Li, Xuanhui Wang, Tianbao Yang",
    year=2023,
    url="https://arxiv.org/abs/2306.03065",
)
HPM_PAPER = Reference(
    title="Bootstrap Masked Visual Modeling via Hard Patches Mining",
    authors="Haochen Wang, Junsong Fan, Yuxi Wang, Kaiyou Song, Tiancai Wang, Xiangyu Zhang, Zhaoxiang Zhang",
    year=2023,
    url="https://arxiv.org/abs/2312.13714",
)
HPM_SEED = "Bootstrap Masked Visual Modeling via Hard Patches Mining"


def _squared(d: torch.Tensor, margin: float, scale: float) -> torch.Tensor:
    return (margin - d).square()


def _squared_hinge(d: torch.Tensor, margin: float, scale: float) -> torch.Tensor:
    return TF.relu(margin - d).square()


def _hinge(d: torch.Tensor, margin: float, scale: float) -> torch.Tensor:
    return TF.relu(margin - d)


def _logistic(d: torch.Tensor, margin: float, scale: float) -> torch.Tensor:
    # log(1 + exp(-s d)) as softplus: finite for any |d| (log(1+exp(.)) overflows at 89 in float32).
    return softplus(-scale * d)


#: Surrogates ℓ(d) of the 0-1 ranking error on a score difference d = s_pos − s_neg.
AUC_SURROGATES: dict[str, Callable[[torch.Tensor, float, float], torch.Tensor]] = {
    "squared": _squared,
    "squared_hinge": _squared_hinge,
    "hinge": _hinge,
    "logistic": _logistic,
}


def _check_scores_labels(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Validate ``scores``/``labels`` and return the labels as a boolean tensor."""
    check_floating(scores, "scores")
    check_ndim(scores, "scores", tuple(range(1, 9)))
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    check_same_shape(scores, labels, ("scores", "labels"))
    if labels.dtype == torch.bool:
        return labels
    if validation_enabled() and labels.numel() > 0:
        bad = (labels != 0) & (labels != 1)
        if bool(bad.any()):
            raise ValueError(f"labels must be binary (0/1 or bool), found value {labels[bad][0].item()!r}")
    return labels != 0


def _pair_terms(scores: torch.Tensor, pos: torch.Tensor):
    """Differences d[..., i, j] = s_i − s_j and the mask of (positive i, negative j) pairs."""
    d = scores.unsqueeze(-1) - scores.unsqueeze(-2)
    pairs = pos.unsqueeze(-1) & ~pos.unsqueeze(-2)
    n_pos = pos.sum(-1)
    n_pairs = n_pos * (pos.shape[-1] - n_pos)
    return d, pairs, n_pairs


def _pairwise_surrogate(
    scores: torch.Tensor, labels: torch.Tensor, surrogate: str, margin: float, scale: float, reduction: str
) -> torch.Tensor:
    pos = _check_scores_labels(scores, labels)
    s = upcast(scores)
    d, pairs, n_pairs = _pair_terms(s, pos)
    # Every surrogate keeps NaN (softplus, relu and square do), so a NaN score of a paired item
    # makes its query NaN; where() only zeroes the non-pairs.
    pair_loss = torch.where(pairs, AUC_SURROGATES[surrogate](d, margin, scale), torch.zeros((), dtype=s.dtype))
    has_pairs = n_pairs > 0
    per_query = pair_loss.sum((-1, -2)) / torch.where(has_pairs, n_pairs, 1).to(s.dtype)
    # Queries without both a positive and a negative have no pair: 0 and left out of "mean".
    return reduce(per_query, reduction, mask=has_pairs)


def _queries_with_pairs_mean(none: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """"mean" of the ranking objectives: the mean of "none" over the queries that have both classes."""
    labels = args[1] != 0
    kept = labels.any(-1) & (~labels).any(-1)
    return none.sum() / kept.sum() if kept.any() else none.sum() * 0


def _ranking_example(**kwargs) -> Example:
    def make(gen: torch.Generator):
        labels = randint(gen, 2, 4, 6)
        labels[:, 0], labels[:, 1] = 1, 0  # every query has a positive and a negative
        labels[3] = 1  # ...except the last one, which has no negative (left out of "mean")
        return (randn(gen, 4, 6), labels), dict(kwargs)

    def mismatch(gen: torch.Generator):
        return (randn(gen, 4, 6), randint(gen, 2, 4, 5)), dict(kwargs)

    def leading_dims(gen: torch.Generator):
        labels = randint(gen, 2, 2, 3, 5).bool()  # bool labels
        labels[..., 0], labels[..., 1] = True, False
        labels[1, 2] = False  # a query without positives
        return (randn(gen, 2, 3, 5), labels), dict(kwargs)

    return Example(make=make, mismatch=mismatch, mismatch_match="labels", extreme=None,
                   mean_rule=_queries_with_pairs_mean, variants=(leading_dims,))


@register(
    "mw_loss",
    family="ranking",
    reference=MW_PAPER,
    seed=MW_SEED,
    example=_ranking_example(),
    input_kind="scores",
    bounded=False,
    tags=("auc", "roc", "retrieval", "ranking", "mann-whitney", "class imbalance"),
)
def mw_loss(scores: torch.Tensor, labels: torch.Tensor, *, reduction: Reduction = "mean") -> torch.Tensor:
    r"""Mann–Whitney (MW) loss: binary cross-entropy on every positive-minus-negative score difference.

    For one query with positive items :math:`\mathcal P` and negative items
    :math:`\mathcal N`,

    .. math::
        \ell = \frac{1}{|\mathcal P||\mathcal N|}\sum_{i\in\mathcal P}\sum_{j\in\mathcal N}
               -\log\sigma(s_i - s_j) = \frac{1}{|\mathcal P||\mathcal N|}\sum_{i,j}
               \operatorname{softplus}(s_j - s_i),

    a smooth upper bound (up to :math:`\log 2`) of the area over the ROC curve, 1 − AUC,
    whose 0-1 version is the Mann–Whitney U statistic (:func:`mann_whitney_auc`). It is
    :func:`pairwise_auc_loss` with the logistic surrogate.

    Queries with no positive or no negative item have no pair: their loss is 0 and
    ``"mean"`` averages over the queries that have both.

    Args:
        scores: ``(*, N)`` similarity scores (e.g. query–document), one row per query.
        labels: ``(*, N)`` binary relevance (0/1 or bool).
        reduction: ``"mean"`` over queries with pairs, ``"sum"``, or ``"none"`` (per query).

    Shape:
        scores, labels ``(*, N)``; output ``(*)`` for ``"none"``, else a scalar.
        Memory is :math:`O(N^2)` per query (all pairs are formed).

    Example:
        >>> import torch
        >>> from losslab.functional import mw_loss
        >>> scores = torch.tensor([[2.0, 0.0, 1.0], [0.5, 0.3, -1.0]])
        >>> labels = torch.tensor([[1, 0, 0], [0, 1, 0]])
        >>> mw_loss(scores, labels, reduction="none")
        tensor([0.2201, 0.5196])

    References:
        Sheikholeslami et al., "Optimizing What Matters: AUC-Driven Learning for Robust Neural
        Retrieval", 2025, https://arxiv.org/abs/2510.00137;
        Mann & Whitney, "On a test of whether one of two random variables is
        stochastically larger than the other", 1947.
    """
    return _pairwise_surrogate(scores, labels, "logistic", 0.0, 1.0, reduction)


def _check_pairwise_auc(*, surrogate, margin, scale, **_) -> None:
    check_choice(surrogate, "surrogate", tuple(AUC_SURROGATES))
    check_positive(scale, "scale")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise ValueError(f"margin must be a number, got {margin!r}")


@register(
    "pairwise_auc_loss",
    family="ranking",
    reference=LIBAUC_PAPER,
    example=_ranking_example(surrogate="squared_hinge", margin=1.0),
    input_kind="scores",
    bounded=False,
    tags=("auc", "roc", "class imbalance", "ranking", "x-risk", "hinge", "logistic"),
)
@hyperparameter_checks(_check_pairwise_auc)
def pairwise_auc_loss(
    scores: torch.Tensor,
    labels: torch.Tensor,
    *,
    surrogate: Literal["squared", "squared_hinge", "hinge", "logistic"] = "squared_hinge",
    margin: float = 1.0,
    scale: float = 1.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Pairwise AUC surrogate loss: a convex surrogate of 1 − AUC averaged over positive–negative pairs.

    With :math:`d_{ij} = s_i - s_j` for a positive :math:`i` and a negative :math:`j`,

    .. math::
        \ell = \frac{1}{|\mathcal P||\mathcal N|}\sum_{i\in\mathcal P}\sum_{j\in\mathcal N} \phi(d_{ij}),

    with :math:`\phi` one of (LibAUC's surrogates, margin :math:`m`, scale :math:`s`):
    ``"squared"`` :math:`(m - d)^2`; ``"squared_hinge"`` :math:`\max(m - d, 0)^2` (default,
    as LibAUC's ``PairwiseAUCLoss``); ``"hinge"`` :math:`\max(m - d, 0)`; ``"logistic"``
    :math:`\log(1 + e^{-s d})`, computed as ``softplus(-s d)`` so it stays finite for any
    score gap (``margin`` is unused there). Queries without both classes give 0 and are
    left out of ``"mean"``.

    Args:
        scores: ``(*, N)`` scores.
        labels: ``(*, N)`` binary labels (0/1 or bool).
        surrogate: ``"squared"``, ``"squared_hinge"``, ``"hinge"`` or ``"logistic"``.
        margin: :math:`m` of the margin surrogates.
        scale: :math:`s > 0` of the logistic surrogate.
        reduction: ``"mean"`` over queries with pairs, ``"sum"``, or ``"none"`` (per query).

    Shape:
        scores, labels ``(*, N)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import pairwise_auc_loss
        >>> scores, labels = torch.tensor([0.9, 0.2, 0.4]), torch.tensor([1, 0, 0])
        >>> pairwise_auc_loss(scores, labels)   # ((1-0.7)^2 + (1-0.5)^2) / 2
        tensor(0.1700)

    References:
        Yuan et al., "LibAUC: A Deep Learning Library for X-Risk Optimization", KDD 2023,
        https://arxiv.org/abs/2306.03065;
        Gao & Zhou, "On the Consistency of AUC Pairwise Optimization", IJCAI 2015,
        https://arxiv.org/abs/1208.0645.
    """
    _check_pairwise_auc(surrogate=surrogate, margin=margin, scale=scale)
    return _pairwise_surrogate(scores, labels, surrogate, float(margin), float(scale), reduction)


@register(
    "mann_whitney_auc",
    family="ranking",
    reference=MW_PAPER,
    seed=MW_SEED,
    example=_ranking_example(),
    input_kind="scores",
    differentiable=False,
    module_required=False,
    bounded=True,
    tags=("auc", "roc", "evaluation metric", "retrieval", "mann-whitney"),
)
def mann_whitney_auc(scores: torch.Tensor, labels: torch.Tensor, *, reduction: Reduction = "mean") -> torch.Tensor:
    r"""The AUC as the Mann–Whitney statistic: the fraction of positive–negative pairs ranked correctly.

    Per query,

    .. math::
        \mathrm{AUC} = \frac{1}{|\mathcal P||\mathcal N|}\sum_{i\in\mathcal P}\sum_{j\in\mathcal N}
        \Big(\mathbb 1[s_i > s_j] + \tfrac12\mathbb 1[s_i = s_j]\Big),

    equal to the area under the ROC curve (``sklearn.metrics.roc_auc_score``). A metric,
    not a loss: no gradient. ``"none"`` gives one AUC per query and ``"mean"`` their mean
    over the queries that have both classes (the macro-averaged AUC of a retrieval batch);
    the AUC of a query without both classes is undefined: it is 0 in ``"none"`` and left
    out of ``"mean"`` (``"mean"`` is 0 if no query has both, e.g. a 1-D batch of one class).
    A NaN score of an item that forms a pair gives a NaN AUC for its query. The objectives
    :func:`mw_loss` and :func:`pairwise_auc_loss` are its smooth surrogates.

    Args:
        scores: ``(*, N)`` scores.
        labels: ``(*, N)`` binary labels (0/1 or bool).
        reduction: ``"mean"`` over the queries with both classes, ``"sum"``, or ``"none"``
            (per query). For 1-D input ``"mean"`` is the AUC of the batch.

    Shape:
        scores, labels ``(*, N)``; output ``(*)`` for ``"none"``, else a scalar (float32, or
        float64 for float64 scores).

    Example:
        >>> import torch
        >>> from losslab.functional import mann_whitney_auc
        >>> mann_whitney_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        tensor(0.7500)

    References:
        Mann & Whitney, 1947; Sheikholeslami et al., "Optimizing What Matters: AUC-Driven
        Learning for Robust Neural Retrieval", 2025, https://arxiv.org/abs/2510.00137.
    """
    pos = _check_scores_labels(scores, labels)
    with torch.no_grad():
        s = upcast(scores.detach())
        d, pairs, n_pairs = _pair_terms(s, pos)
        correct = (d > 0).to(s.dtype) + 0.5 * (d == 0).to(s.dtype)
        # Comparisons with NaN are False (a NaN pair would count as "not ranked correctly");
        # keep the NaN instead so that the query's AUC is NaN.
        correct = torch.where(torch.isnan(d), d, correct)
        hits = torch.where(pairs, correct, torch.zeros((), dtype=s.dtype)).sum((-1, -2))
        has_pairs = n_pairs > 0
        auc = hits / torch.where(has_pairs, n_pairs, 1).to(s.dtype)
        return reduce(auc, reduction, mask=has_pairs)


def _ranking_pairs_mean(none: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """"mean" of :func:`pairwise_ranking_loss`: total over the batch / number of ordered pairs t_i > t_j."""
    t = args[1]
    pairs = t.unsqueeze(-1) > t.unsqueeze(-2)
    mask = kwargs.get("mask")
    if mask is not None:
        pairs = pairs & mask.unsqueeze(-1) & mask.unsqueeze(-2)
    count = pairs.sum()
    return none.sum() / count if count > 0 else none.sum() * 0


def _patch_ranking_example() -> Example:
    def make(gen: torch.Generator):
        return (randn(gen, 3, 6), randn(gen, 3, 6)), {}

    def mismatch(gen: torch.Generator):
        return (randn(gen, 3, 6), randn(gen, 3, 7)), {}

    def masked(gen: torch.Generator):
        mask = torch.rand(2, 3, 6, generator=gen) > 0.3
        mask[0, 0] = False  # a sample without any pair
        target = randn(gen, 2, 3, 6)
        target[1, 1, :3] = 0.5  # ties give no pair
        return (randn(gen, 2, 3, 6), target), {"mask": mask}

    def empty(gen: torch.Generator):
        return (randn(gen, 3, 6), randn(gen, 3, 6)), {"mask": torch.zeros(3, 6, dtype=torch.bool)}

    return Example(make=make, mismatch=mismatch, mismatch_match="target", extreme=None, grad=(0,),
                   mean_rule=_ranking_pairs_mean, variants=(masked,), empty=empty)


def _check_mask(mask: torch.Tensor | None, scores: torch.Tensor) -> None:
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    check_same_shape(mask, scores, ("mask", "scores"))


@register(
    "pairwise_ranking_loss",
    family="ranking",
    reference=HPM_PAPER,
    seed=HPM_SEED,
    example=_patch_ranking_example(),
    input_kind="scores",
    bounded=False,
    tags=("ranking", "learning to rank", "relative loss", "masked image modeling", "hard patches", "loss prediction"),
)
def pairwise_ranking_loss(
    scores: torch.Tensor,
    target: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Relative (pairwise) loss for learning the ordering of target values, e.g. predicted per-patch losses.

    Hard Patches Mining trains an auxiliary predictor of the reconstruction loss of each
    patch with a *relative* objective, so that it learns which patches are harder rather
    than the exact loss values. For one sample (image) with items :math:`i, j`, scores
    :math:`s` (the predictions) and target values :math:`t`:

    .. math::
        \ell = \sum_{(i,j):\, t_i > t_j} -\log\sigma(s_i - s_j)
             = \sum_{t_i > t_j}\operatorname{softplus}(s_j - s_i).

    Ties in the target give no pair. ``"none"`` returns :math:`\ell` per sample (a sum over
    its pairs) and ``"sum"`` their total; ``"mean"`` divides the total over the batch by the
    total number of pairs (the reference code's normalisation, a pair-weighted mean, equal to
    the mean over samples when every sample has the same number of pairs), 0 when there is
    no pair. So ``mean == none.sum() / n_pairs`` with ``n_pairs`` the number of
    :math:`(i, j)` with :math:`t_i > t_j` (both kept by ``mask``). The reference code sums
    over ordered pairs in both directions, counting each unordered pair twice in numerator
    and denominator; this is the same value. The target is treated as a constant (detached),
    as in the reference code; unlike it, no ``1e-6`` is added inside the log (``softplus`` is
    exact and finite). A NaN target of a kept item makes its sample NaN.

    Args:
        scores: ``(*, L)`` predicted values (logits of the pairwise order).
        target: ``(*, L)`` real values whose order is learned (e.g. per-patch reconstruction losses).
        mask: optional ``(*, L)`` boolean, per batch (a Module takes it in ``forward``); only
            items where it is True form pairs (e.g. the masked patches).
        reduction: ``"mean"`` (pair-weighted), ``"sum"``, or ``"none"`` (per sample).

    Shape:
        scores, target ``(*, L)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import pairwise_ranking_loss
        >>> scores = torch.tensor([[0.0, 1.0, 2.0]])
        >>> target = torch.tensor([[0.1, 0.5, 0.9]])   # scores already in the right order
        >>> pairwise_ranking_loss(scores, target)
        tensor(0.2512)

    References:
        Wang et al., "Hard Patches Mining for Masked Image Modeling", CVPR 2023,
        https://arxiv.org/abs/2304.05919; the extended version "Bootstrap Masked Visual
        Modeling via Hard Patches Mining", 2023, https://arxiv.org/abs/2312.13714.
    """
    check_floating(scores, "scores")
    check_ndim(scores, "scores", tuple(range(1, 9)))
    check_floating(target, "target")
    check_same_shape(scores, target, ("scores", "target"))
    _check_mask(mask, scores)
    s = upcast(scores)
    t = upcast(target.detach(), s.dtype)
    higher = t.unsqueeze(-1) > t.unsqueeze(-2)  # [..., i, j]: t_i > t_j
    if mask is not None:
        higher = higher & mask.unsqueeze(-1) & mask.unsqueeze(-2)
    pair_loss = softplus(s.unsqueeze(-2) - s.unsqueeze(-1))  # softplus(s_j - s_i) at [..., i, j]
    per_sample = torch.where(higher, pair_loss, torch.zeros((), dtype=s.dtype)).sum((-1, -2))
    # NaN rule: a NaN target fails every comparison, so its item would silently form no pair.
    nan_target = torch.isnan(t) if mask is None else torch.isnan(t) & mask
    per_sample = torch.where(nan_target.any(-1), torch.full((), float("nan"), dtype=s.dtype), per_sample)
    n_pairs = higher.sum((-1, -2)).to(s.dtype)
    return reduce(per_sample, reduction, normalizer=n_pairs)
