"""Metric-learning objectives on labelled embeddings ``(N, D)``: shared helpers, pair and multi-similarity losses.

This module holds the family's shared pieces (:func:`pairwise_distance`, the embedding/label
checks, the pair masks, the paper references) and the pair-based losses:
:func:`multi_similarity_loss` with its miner :func:`multi_similarity_mine`,
:func:`contrastive_pair_loss`, :func:`threshold_consistent_margin_loss` and the few-shot
:func:`proto_triplet_loss`. The triplet loss and :func:`all_triplets` are in
:mod:`losslab.functional.metric_triplet`, the ICNN loss in :mod:`losslab.functional.metric_fewshot`.

Conventions shared by the family:

* Embeddings are L2-normalized inside (``normalize=True``, the default of
  pytorch-metric-learning's distances); pass ``normalize=False`` to use them as they are.
* Losses built on a distance take it as a strategy: ``distance="euclidean"`` (default),
  ``"sqeuclidean"``, ``"cosine"`` (``1 - cos``), ``"dot"`` (``-<x, y>``) or a callable
  ``f(x, y) -> (n, m)`` distance matrix (SciPy's ``cdist`` names; see
  :func:`pairwise_distance`). Smaller always means closer.
* Selection is separate from scoring: miners such as :func:`multi_similarity_mine` and
  :func:`all_triplets` run without gradient and return boolean masks or index tensors;
  :func:`triplet_margin_loss` accepts mined ``(anchor, positive, negative)`` index tensors.
* ``reduction="none"`` returns the elements that ``"mean"`` averages, so every ``"mean"`` can be
  recomputed from ``"none"`` (and ``"sum" == "none".sum()``): per anchor for
  :func:`multi_similarity_loss` (plain mean), per triplet for :func:`triplet_margin_loss`
  (mean over the triplets with a positive loss by default), an ``(N, N)`` matrix of pair
  losses for :func:`contrastive_pair_loss` and :func:`threshold_consistent_margin_loss` (the
  positive-pair average plus the negative-pair average), per query for :func:`proto_triplet_loss`.
* Every pairwise quantity is a ``B x B`` matrix: ``"mean"`` and ``"sum"`` use O(B^2) memory,
  never O(B^3) (the all-triplets triplet loss is summed per (anchor, positive) pair from sorted
  negative distances); only ``reduction="none"`` of the all-triplets loss returns one value
  per triplet.
* Non-finite inputs (see CONTRIBUTING.md): a NaN embedding gives a NaN loss whenever it takes
  part in a pair, triplet or prototype that is scored; mining and hard-pair selection keep
  pairs whose similarity is NaN instead of silently dropping them.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from .._checks import (
    check_choice,
    check_floating,
    check_integer,
    check_ndim,
    check_nonnegative,
    check_positive,
    hyperparameter_checks,
    validation_enabled,
)
from .._numerics import compute_dtype, softplus, upcast
from .._reduction import Reduction, reduce
from ..registry import Example, Reference, register
from ._examples import randint, randn

__all__ = [
    "pairwise_distance",
    "multi_similarity_mine",
    "multi_similarity_loss",
    "contrastive_pair_loss",
    "threshold_consistent_margin_loss",
    "proto_triplet_loss",
]

Distance = Literal["euclidean", "sqeuclidean", "cosine", "dot"] | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DISTANCES = ("euclidean", "sqeuclidean", "cosine", "dot")
Average = Literal["nonzero", "all"]
MS_PAPER = Reference(
    title="Multi-Similarity Loss with General Pair Weighting for Deep Metric Learning",
    authors="Xun Wang, Xintong Han, Weilin Huang, Dengke Dong, Matthew R. Scott",
    year=2019,
    url="https://arxiv.org/abs/1904.06627",
)
HADSELL_PAPER = Reference(
    title="Dimensionality Reduction by Learning an Invariant Mapping",
    authors="Raia Hadsell, Sumit Chopra, Yann LeCun",
    year=2006,
    url="https://doi.org/10.1109/CVPR.2006.100",
)
TCM_PAPER = Reference(
    title="Threshold-Consistent Margin Loss for Open-World Deep Metric Learning",
    authors="Qin Zhang, Linghan Xu, Qingming Tang, Jun Fang, Ying Nian Wu, Joe Tighe, Yifan Xing",
    year=2023,
    url="https://arxiv.org/abs/2307.04047",
)
TCM_SEED = "Threshold-Consistent Margin Loss for Open-World Deep Metric Learning"
SUSANA_PAPER = Reference(
    title="SuSana Distancia is all you need: Enforcing class separability in metric learning via two novel "
    "distance-based loss functions for few-shot image classification",
    authors="Mauricio Mendez-Ruiz, Jorge Gonzalez-Zapata, Ivan Reyes-Amezcua, Daniel Flores-Araiza, "
    "Francisco Lopez-Tiro, Andres Mendez-Vazquez, Gilberto Ochoa-Ruiz",
    year=2023,
    url="https://arxiv.org/abs/2305.09062",
)
SUSANA_SEED = (
    "SuSana Distancia is all you need: Enforcing class separability in metric learning via two novel "
    "distance-based loss functions for few-shot image classification"
)



# ----------------------------------------------------------------------------- shared helpers
def _embeddings(x: torch.Tensor, name: str, dtype: torch.dtype, normalize: bool) -> torch.Tensor:
    check_floating(x, name)
    check_ndim(x, name, 2)
    x = upcast(x, dtype)
    return F.normalize(x, dim=-1) if normalize else x


def _check_labels(embeddings: torch.Tensor, labels: torch.Tensor, name: str = "labels", ref: str = "embeddings") -> None:
    check_integer(labels, name)
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(
            f"{name} must have shape ({embeddings.shape[0]},) (one per row of {ref}), got {tuple(labels.shape)}"
        )


def _pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean ``(N, N)`` masks of positive pairs (same label, ``i != j``) and negative pairs."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _warn_no_positive(name: str, pos: torch.Tensor) -> None:
    # One host sync, only while validation is on (the value is the same either way).
    if validation_enabled() and pos.numel() > 0 and not bool(pos.any()):
        warnings.warn(f"{name}: no positive pair in the batch (every label is unique); the loss is 0",
                      UserWarning, stacklevel=3)


def _check_distance(distance: object, allowed: tuple[str, ...] = DISTANCES) -> None:
    if not callable(distance):
        check_choice(distance, "distance", allowed)


def _check_flag(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")


def _check_number(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _check_average(average: object) -> None:
    check_choice(average, "average", ("nonzero", "all"))


def pairwise_distance(x: torch.Tensor, y: torch.Tensor | None = None, distance: Distance = "euclidean") -> torch.Tensor:
    r"""Distance matrix ``D[i, j] = d(x_i, y_j)`` for the metric-learning losses (smaller = closer).

    ``"euclidean"``: :math:`\|x_i - y_j\|_2` (``torch.cdist``, whose gradient at a zero distance
    is 0); ``"sqeuclidean"``: :math:`\|x_i\|^2 + \|y_j\|^2 - 2\langle x_i, y_j\rangle`
    clamped at 0; ``"cosine"``: :math:`1 - \cos(x_i, y_j)`; ``"dot"``: :math:`-\langle x_i, y_j\rangle`;
    a callable ``f(x, y)`` must return the ``(n, m)`` matrix itself. The names are SciPy's
    ``cdist`` metric names. No normalization is done here (the losses normalize first when
    ``normalize=True``).

    Args:
        x: ``(n, D)``.
        y: ``(m, D)``; ``None`` means ``x``.
        distance: ``"euclidean"``, ``"sqeuclidean"``, ``"cosine"``, ``"dot"`` or a callable.

    Returns:
        ``(n, m)`` distances.
    """
    y = x if y is None else y
    if callable(distance):
        d = distance(x, y)
        if not isinstance(d, torch.Tensor) or d.shape != (x.shape[0], y.shape[0]):
            got = tuple(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__
            raise ValueError(f"distance callable must return a ({x.shape[0]}, {y.shape[0]}) tensor, got {got}")
        return d
    _check_distance(distance)
    if distance == "euclidean":
        return torch.cdist(x, y)
    if distance == "sqeuclidean":
        return (x.square().sum(-1, keepdim=True) + y.square().sum(-1) - 2 * (x @ y.T)).clamp_min(0)
    if distance == "cosine":
        return 1 - F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T
    return -(x @ y.T)


def _labelled(n: int = 8, d: int = 4, *, mean_rule=None, variants=(), **kw) -> Example:
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])[:n]

    def make(gen):
        return (randn(gen, n, d), labels.clone()), dict(kw)

    def mismatch(gen):
        return (randn(gen, n, d), randint(gen, 3, n - 1)), dict(kw)

    return Example(make=make, mismatch=mismatch, mismatch_match="labels", extreme=None, grad=(0,),
                   mean_rule=mean_rule, variants=tuple(variants))


# ----------------------------------------------------------------------------- multi-similarity
@torch.no_grad()
def multi_similarity_mine(
    sim: torch.Tensor, labels: torch.Tensor, *, epsilon: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The multi-similarity pair miner: keep informative positives and negatives by the ε rule.

    For anchor :math:`i` with positives :math:`P_i` (same label, :math:`j \ne i`) and negatives
    :math:`N_i`, a positive is kept when :math:`S_{ip} - \varepsilon < \max_{n \in N_i} S_{in}` and a
    negative when :math:`S_{in} + \varepsilon > \min_{p \in P_i} S_{ip}` (Wang et al. 2019, Eq. 6-7;
    pytorch-metric-learning's ``MultiSimilarityMiner``). An anchor without negatives keeps no
    positive and one without positives keeps no negative. A pair whose comparison involves a
    NaN similarity is kept (so the NaN reaches the loss instead of being dropped). Runs under
    ``torch.no_grad()``.

    Args:
        sim: ``(N, N)`` similarities (larger = more similar).
        labels: ``(N,)`` integer labels.
        epsilon: margin :math:`\varepsilon \ge 0`.

    Returns:
        ``(pos_mask, neg_mask)``, boolean ``(N, N)``.
    """
    check_nonnegative(epsilon, "epsilon")
    check_ndim(sim, "sim", 2)
    _check_labels(sim, labels, ref="sim")
    pos, neg = _pair_masks(labels)
    inf = torch.tensor(float("inf"), dtype=sim.dtype, device=sim.device)
    hardest_neg = torch.where(neg, sim, -inf).amax(1, keepdim=True)  # -inf: no negative -> no positive kept
    hardest_pos = torch.where(pos, sim, inf).amin(1, keepdim=True)  # +inf: no positive -> no negative kept
    # "not (drop condition)" rather than "keep condition": a comparison with NaN is False, so
    # a NaN similarity (or a NaN hardest pair) keeps the pair and the loss becomes NaN.
    return pos & ~(sim - epsilon >= hardest_neg), neg & ~(sim + epsilon <= hardest_pos)


def _log1p_sum_exp(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise ``log(1 + sum_{mask} exp(x))``, 0 for rows without any kept entry.

    ``logsumexp`` over the kept entries, then ``softplus`` (= ``log(1 + e^lse)``): no overflow for
    any scale. Rows without an entry get a constant 0 row before the ``logsumexp`` so that neither
    the value nor the gradient sees a row of ``-inf`` (whose logsumexp backward is NaN).
    """
    any_row = mask.any(1, keepdim=True)
    neg_inf = torch.tensor(float("-inf"), dtype=x.dtype, device=x.device)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    x = torch.where(mask, x, torch.where(any_row, neg_inf, zero))
    return torch.where(any_row.squeeze(1), softplus(torch.logsumexp(x, dim=1)), zero)


def _check_multi_similarity(*, alpha, beta, base, epsilon, mining, **_) -> None:
    check_positive(alpha, "alpha")
    check_positive(beta, "beta")
    _check_number(base, "base")
    check_nonnegative(epsilon, "epsilon")
    _check_flag(mining, "mining")


@register("multi_similarity_loss", family="metric", reference=MS_PAPER, seed=None,
          example=_labelled(), input_kind="embeddings",
          tags=("metric learning", "pair mining", "pair weighting", "image retrieval", "embeddings"))
@hyperparameter_checks(_check_multi_similarity)
def multi_similarity_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    epsilon: float = 0.1,
    mining: bool = True,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Multi-similarity loss with its ε pair mining (Wang et al. 2019), on cosine similarities.

    With :math:`S_{ij}` the cosine similarity and :math:`\tilde P_i, \tilde N_i` the pairs kept by
    :func:`multi_similarity_mine` (all pairs when ``mining=False``), the loss of anchor :math:`i` is

    .. math::
        \ell_i = \frac1\alpha\log\Big(1 + \sum_{p \in \tilde P_i} e^{-\alpha(S_{ip} - \lambda)}\Big)
               + \frac1\beta\log\Big(1 + \sum_{n \in \tilde N_i} e^{\beta(S_{in} - \lambda)}\Big),

    each term computed as ``softplus(logsumexp(...))`` over the kept pairs (no overflow for any
    :math:`\alpha, \beta`). An empty sum gives 0, so anchors without (kept) positives or
    negatives contribute only the other term or nothing. ``"none"`` returns :math:`\ell_i` for
    every anchor and ``"mean"`` is their plain mean over **all** anchors, as
    pytorch-metric-learning's ``MultiSimilarityLoss`` (``MeanReducer``); with ``mining=True``
    the value equals that loss with ``MultiSimilarityMiner(epsilon)``. The mining decision is
    not differentiated (it runs under ``no_grad``). A batch without any positive pair gives 0
    and a ``UserWarning`` (validation on). One documented difference: pytorch-metric-learning
    returns 0 when the miner keeps at most one positive *and* at most one negative pair; this
    function scores those pairs.

    Memory is a few ``N x N`` matrices; no Python loop, no host sync (except the warning check).

    Args:
        embeddings: ``(N, D)``, L2-normalized inside.
        labels: ``(N,)`` integer labels.
        alpha: positive scale :math:`\alpha > 0` (2 in the paper's CUB setting and pytorch-metric-learning).
        beta: negative scale :math:`\beta > 0` (50).
        base: similarity offset :math:`\lambda` (0.5; "base" in pytorch-metric-learning).
        epsilon: mining margin :math:`\varepsilon \ge 0` (0.1; the paper's ε, not a smoothing constant).
        mining: apply the ε pair mining (default) or use every pair.
        reduction: ``"mean"`` (over all anchors), ``"sum"`` or ``"none"`` (one value per anchor).

    Shape:
        embeddings ``(N, D)``, labels ``(N,)``; output ``(N,)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import multi_similarity_loss
        >>> e = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> round(float(multi_similarity_loss(e, y)), 4)   # well separated: the miner keeps nothing
        0.0
        >>> round(float(multi_similarity_loss(e, y, mining=False)), 4)
        0.1583

    References:
        Wang, Han, Huang, Dong, Scott, "Multi-Similarity Loss with General Pair Weighting for
        Deep Metric Learning", CVPR 2019, https://arxiv.org/abs/1904.06627.
    """
    _check_multi_similarity(alpha=alpha, beta=beta, base=base, epsilon=epsilon, mining=mining)
    e = _embeddings(embeddings, "embeddings", compute_dtype(embeddings), True)
    _check_labels(embeddings, labels)
    sim = e @ e.T
    all_pos, all_neg = _pair_masks(labels)
    _warn_no_positive("multi_similarity_loss", all_pos)
    pos, neg = multi_similarity_mine(sim.detach(), labels, epsilon=epsilon) if mining else (all_pos, all_neg)
    pos_term = _log1p_sum_exp(-alpha * (sim - base), pos) / alpha
    neg_term = _log1p_sum_exp(beta * (sim - base), neg) / beta
    return reduce(pos_term + neg_term, reduction)


# ----------------------------------------------------------------------------- pair losses
def _two_set_mean(lp: torch.Tensor, count_p: torch.Tensor, ln: torch.Tensor, count_n: torch.Tensor) -> torch.Tensor:
    """``sum(lp) / count_p + sum(ln) / count_n``, each term 0 when its count is 0."""
    return reduce(lp, "mean", normalizer=count_p) + reduce(ln, "mean", normalizer=count_n)


def _pair_mean_rule(none: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """Documented "mean" of :func:`contrastive_pair_loss` from its ``(N, N)`` "none" output."""
    labels = args[1]
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(labels.numel(), dtype=torch.bool)
    total = none.sum() * 0
    for mask in (same & ~eye, ~same):
        values = none[mask]
        count = (values > 0).sum() if kwargs.get("average", "nonzero") == "nonzero" else mask.sum()
        total = total + (values.sum() / count if count > 0 else 0)
    return total


def _contrastive_pair_example() -> Example:
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])

    def average_all(gen):
        return (randn(gen, 8, 4), labels.clone()), {"neg_margin": 1.2, "pos_margin": 0.3, "average": "all"}

    return _labelled(neg_margin=1.2, mean_rule=_pair_mean_rule, variants=(average_all,))


def _check_contrastive_pair(*, pos_margin, neg_margin, distance, normalize, average, **_) -> None:
    check_nonnegative(pos_margin, "pos_margin")
    check_nonnegative(neg_margin, "neg_margin")
    if neg_margin < pos_margin:
        raise ValueError(f"neg_margin must be >= pos_margin, got neg_margin={neg_margin} < pos_margin={pos_margin}")
    _check_distance(distance)
    _check_flag(normalize, "normalize")
    _check_average(average)


@register("contrastive_pair_loss", family="metric", reference=HADSELL_PAPER, seed=None,
          example=_contrastive_pair_example(), input_kind="embeddings",
          tags=("metric learning", "siamese", "pair loss", "embeddings"))
@hyperparameter_checks(_check_contrastive_pair)
def contrastive_pair_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    distance: Distance = "euclidean",
    normalize: bool = True,
    average: Average = "nonzero",
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Classic contrastive pair loss: pull positives within ``pos_margin``, push negatives beyond ``neg_margin``.

    Over every ordered pair :math:`(a, j)`, :math:`j \ne a`, with distance :math:`d_{aj}`:

    .. math::
        \ell^+_{ap} = [\,d_{ap} - m_+\,]_+ \ (y_p = y_a), \qquad
        \ell^-_{an} = [\,m_- - d_{an}\,]_+ \ (y_n \ne y_a).

    ``"none"`` returns the ``(N, N)`` matrix of pair losses (:math:`\ell^+` at positive pairs,
    :math:`\ell^-` at negative pairs, 0 on the diagonal), ``"sum"`` its total. ``"mean"`` is
    **the average of the positive-pair losses plus the average of the negative-pair losses**
    (pytorch-metric-learning's convention: each kind of pair is reduced on its own and the two
    averages are added), each over its pairs with a positive loss (``average="nonzero"``,
    ``AvgNonZeroReducer``) or over all its pairs (``average="all"``); an empty set averages to
    0. From ``none`` and the label masks ``P`` (positive pairs) and ``N`` (negative pairs):
    ``mean == none[P].sum() / (none[P] > 0).sum() + none[N].sum() / (none[N] > 0).sum()``.
    So ``"mean"`` is not ``none.mean()``.

    With the defaults (euclidean distance between normalized embeddings, ``pos_margin=0``,
    ``neg_margin=1``) it equals pytorch-metric-learning's ``ContrastiveLoss()``. Margins are on
    this function's distance scale: for ``distance="cosine"`` (``1 - cos``) the library's
    similarity margins :math:`m^{sim}` correspond to :math:`m = 1 - m^{sim}`. Hadsell et al. square
    the terms; this is the unsquared form of the peer library. A batch without any positive
    pair still scores its negatives and warns (validation on).

    Args:
        embeddings: ``(N, D)``.
        labels: ``(N,)`` integer labels.
        pos_margin: :math:`m_+ \ge 0`.
        neg_margin: :math:`m_- \ge m_+`.
        distance: ``"euclidean"``, ``"sqeuclidean"``, ``"cosine"``, ``"dot"`` or a callable;
            see :func:`pairwise_distance`.
        normalize: L2-normalize the embeddings first (default).
        average: what each of the two ``"mean"`` averages runs over: ``"nonzero"`` the pairs
            with a positive loss (default), ``"all"`` every pair of that kind.
        reduction: ``"mean"`` (see above), ``"sum"`` or ``"none"`` (the ``(N, N)`` pair losses).

    Shape:
        embeddings ``(N, D)``, labels ``(N,)``; output ``(N, N)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import contrastive_pair_loss
        >>> e = torch.tensor([[0.0, 0.0], [0.0, 0.5], [0.6, 0.0]])
        >>> y = torch.tensor([0, 0, 1])
        >>> contrastive_pair_loss(e, y, normalize=False, reduction="none")
        tensor([[0.0000, 0.5000, 0.4000],
                [0.5000, 0.0000, 0.2190],
                [0.4000, 0.2190, 0.0000]])
        >>> contrastive_pair_loss(e, y, normalize=False)   # (0.5 + 0.5) / 2 + (0.4 + 0.219) * 2 / 4
        tensor(0.8095)

    References:
        Hadsell, Chopra, LeCun, "Dimensionality Reduction by Learning an Invariant Mapping",
        CVPR 2006, https://doi.org/10.1109/CVPR.2006.100.
    """
    _check_contrastive_pair(pos_margin=pos_margin, neg_margin=neg_margin, distance=distance, normalize=normalize,
                            average=average)
    e = _embeddings(embeddings, "embeddings", compute_dtype(embeddings), normalize)
    _check_labels(embeddings, labels)
    d = pairwise_distance(e, e, distance)
    pos, neg = _pair_masks(labels)
    _warn_no_positive("contrastive_pair_loss", pos)
    zero = torch.zeros((), dtype=d.dtype, device=d.device)
    lp = torch.where(pos, torch.relu(d - pos_margin), zero)  # relu keeps NaN: a NaN pair stays NaN
    ln = torch.where(neg, torch.relu(neg_margin - d), zero)
    if reduction != "mean":
        return reduce(lp + ln, reduction)
    if average == "nonzero":
        return _two_set_mean(lp, (lp > 0).to(d.dtype), ln, (ln > 0).to(d.dtype))
    return _two_set_mean(lp, pos.to(d.dtype), ln, neg.to(d.dtype))


def _tcm_mean_rule(none: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """Documented "mean" of :func:`threshold_consistent_margin_loss` from its ``(N, N)`` "none" output."""
    x = F.normalize(args[0], dim=-1)
    s = x @ x.T
    labels = args[1]
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(labels.numel(), dtype=torch.bool)
    hard_pos = same & ~eye & (s <= kwargs.get("margin_plus", 0.9))
    hard_neg = ~same & (s >= kwargs.get("margin_minus", 0.5))
    total = none.sum() * 0
    for mask in (hard_pos, hard_neg):
        total = total + (none[mask].sum() / mask.sum() if mask.any() else 0)
    return total


def _check_tcm(*, lambda_plus, lambda_minus, margin_plus, margin_minus, **_) -> None:
    check_nonnegative(lambda_plus, "lambda_plus")
    check_nonnegative(lambda_minus, "lambda_minus")
    for v, name in ((margin_plus, "margin_plus"), (margin_minus, "margin_minus")):
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and -1.0 <= v <= 1.0):
            raise ValueError(f"{name} must be a cosine margin in [-1, 1], got {v!r}")


@register("threshold_consistent_margin_loss", family="metric", reference=TCM_PAPER, seed=TCM_SEED,
          example=_labelled(margin_plus=0.5, margin_minus=-0.2, mean_rule=_tcm_mean_rule), input_kind="embeddings",
          regularizer=True, tags=("metric learning", "open-world", "threshold consistency", "regularizer", "retrieval"))
@hyperparameter_checks(_check_tcm)
def threshold_consistent_margin_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    lambda_plus: float = 1.0,
    lambda_minus: float = 1.0,
    margin_plus: float = 0.9,
    margin_minus: float = 0.5,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Threshold-consistent margin (TCM) regularizer: penalize hard positive and hard negative pairs by cosine margins.

    With cosine similarities :math:`S`, positive pairs :math:`P` (same label, :math:`i \ne j`) and
    negative pairs :math:`N`, the hard pairs are :math:`H_+ = \{(i, j) \in P: S_{ij} \le m_+\}`
    and :math:`H_- = \{(i, j) \in N: S_{ij} \ge m_-\}`, and

    .. math::
        \mathcal L = \frac{\lambda_+}{|H_+|}\sum_{H_+} (m_+ - S_{ij})
                   + \frac{\lambda_-}{|H_-|}\sum_{H_-} (S_{ij} - m_-),

    each fraction 0 when its set is empty. It is added to a base loss (the paper uses it with
    e.g. a softmax or pair loss). Pairs are ordered (each unordered pair counts twice), as in
    pytorch-metric-learning's ``ThresholdConsistentMarginLoss``, whose defaults
    (:math:`\lambda_\pm = 1`, :math:`m_+ = 0.9`, :math:`m_- = 0.5`) are used and whose value this
    equals. ``"none"`` returns the ``(N, N)`` matrix of pair terms (:math:`\lambda_+(m_+ - S_{ij})`
    on :math:`H_+`, :math:`\lambda_-(S_{ij} - m_-)` on :math:`H_-`, 0 elsewhere) and ``"sum"`` its
    total; ``"mean"`` is :math:`\mathcal L`, the average over :math:`H_+` plus the average over
    :math:`H_-` (not ``none.mean()``). A pair whose similarity is NaN counts as hard, so a NaN
    embedding gives a NaN loss.

    Args:
        embeddings: ``(N, D)`` (cosine similarity: normalized inside).
        labels: ``(N,)`` integer labels.
        lambda_plus, lambda_minus: weights :math:`\lambda_\pm \ge 0`.
        margin_plus, margin_minus: cosine margins :math:`m_+, m_-` in :math:`[-1, 1]`.
        reduction: ``"mean"`` (:math:`\mathcal L`), ``"sum"`` or ``"none"`` (the ``(N, N)`` pair terms).

    Shape:
        embeddings ``(N, D)``, labels ``(N,)``; output ``(N, N)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import threshold_consistent_margin_loss
        >>> e = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
        >>> threshold_consistent_margin_loss(e, torch.tensor([0, 0, 1]))   # (0.9 - 0.6) + (0.8 - 0.5)
        tensor(0.6000)

    References:
        Zhang, Xu, Tang, Fang, Wu, Tighe, Xing, "Threshold-Consistent Margin Loss for Open-World
        Deep Metric Learning", ICLR 2024, https://arxiv.org/abs/2307.04047.
    """
    _check_tcm(lambda_plus=lambda_plus, lambda_minus=lambda_minus, margin_plus=margin_plus, margin_minus=margin_minus)
    e = _embeddings(embeddings, "embeddings", compute_dtype(embeddings), True)
    _check_labels(embeddings, labels)
    s = e @ e.T
    pos, neg = _pair_masks(labels)
    _warn_no_positive("threshold_consistent_margin_loss", pos)
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    # "not easy" rather than "hard": a NaN similarity fails every comparison and is kept.
    hard_pos = pos & ~(s > margin_plus)
    hard_neg = neg & ~(s < margin_minus)
    lp = lambda_plus * torch.where(hard_pos, margin_plus - s, zero)
    ln = lambda_minus * torch.where(hard_neg, s - margin_minus, zero)
    if reduction != "mean":
        return reduce(lp + ln, reduction)
    return _two_set_mean(lp, hard_pos.to(s.dtype), ln, hard_neg.to(s.dtype))


# ----------------------------------------------------------------------------- few-shot
def _few_shot_example(margin: float = 0.5) -> Example:
    def make(gen):
        support = randn(gen, 6, 4)
        query = randn(gen, 5, 4)
        return (support, torch.tensor([0, 0, 1, 1, 2, 2]), query, torch.tensor([0, 1, 2, 0, 1])), {"margin": margin}

    def mismatch(gen):
        support = randn(gen, 6, 4)
        query = randn(gen, 5, 4)
        return (support, torch.tensor([0, 0, 1, 1, 2, 2]), query, torch.tensor([0, 1, 2])), {"margin": margin}

    def unsorted_sqeuclidean(gen):
        support = randn(gen, 7, 4)
        query = randn(gen, 4, 4)
        return ((support, torch.tensor([5, 2, 5, 9, 2, 9, 9]), query, torch.tensor([9, 2, 5, 9])),
                {"margin": margin, "distance": "sqeuclidean"})

    return Example(make=make, mismatch=mismatch, mismatch_match="query_labels", extreme=None, grad=(0, 2),
                   variants=(unsorted_sqeuclidean,))


def _check_proto_triplet(*, margin, distance, **_) -> None:
    check_nonnegative(margin, "margin")
    _check_distance(distance)


@register("proto_triplet_loss", family="metric", reference=SUSANA_PAPER, seed=SUSANA_SEED,
          example=_few_shot_example(), input_kind="embeddings",
          tags=("few-shot", "prototypical networks", "metric learning", "episodes", "class separability"))
@hyperparameter_checks(_check_proto_triplet)
def proto_triplet_loss(
    support: torch.Tensor,
    support_labels: torch.Tensor,
    query: torch.Tensor,
    query_labels: torch.Tensor,
    *,
    margin: float = 0.5,
    distance: Distance = "euclidean",
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Proto-triplet loss for few-shot episodes: each query against its class prototype and the nearest other one.

    Prototypes are the class means of the support embeddings, :math:`c_k = \frac{1}{|S_k|}\sum_{x \in S_k} x`
    (as in prototypical networks). A query :math:`q` of class :math:`y` is the anchor, its own
    prototype the positive and the closest prototype of another class the negative:

    .. math:: \ell_q = \big[\, d(q, c_y) - \min_{k \ne y} d(q, c_k) + m \,\big]_+ .

    Embeddings are used as they are (no normalization; the paper works on the raw backbone
    features). The authors' code takes the euclidean distance as
    :math:`\sqrt{\|q - c\|^2 + 10^{-6}}`; this function uses the exact distance (an option of
    :func:`pairwise_distance`; pass a callable to reproduce the offset). Every query label must
    be a support class and the support must have at least 2 classes (checked while validation
    is on). ``"none"`` returns :math:`\ell_q` per query and ``"mean"`` their plain mean.
    Labels need not be sorted or contiguous; no ``torch.unique`` (so ``torch.compile`` keeps one graph).

    Args:
        support: ``(S, D)`` support embeddings.
        support_labels: ``(S,)`` integer classes.
        query: ``(Q, D)`` query embeddings.
        query_labels: ``(Q,)`` integer classes (each present in ``support_labels``).
        margin: :math:`m \ge 0` (0.5 in the authors' code).
        distance: ``"euclidean"``, ``"sqeuclidean"``, ``"cosine"``, ``"dot"`` or a callable;
            see :func:`pairwise_distance`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per query).

    Shape:
        output ``(Q,)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import proto_triplet_loss
        >>> s = torch.tensor([[0.0, 0.0], [0.0, 2.0], [3.0, 0.0], [3.0, 2.0]])   # prototypes (0, 1), (3, 1)
        >>> q = torch.tensor([[1.0, 1.0], [2.0, 1.0]])
        >>> proto_triplet_loss(s, torch.tensor([0, 0, 1, 1]), q, torch.tensor([0, 0]), reduction="none")
        tensor([0.0000, 1.5000])

    References:
        Mendez-Ruiz et al., "SuSana Distancia is all you need: Enforcing class separability in
        metric learning via two novel distance-based loss functions for few-shot image
        classification", 2023, https://arxiv.org/abs/2305.09062.
    """
    _check_proto_triplet(margin=margin, distance=distance)
    dtype = compute_dtype(support, query)
    s = _embeddings(support, "support", dtype, False)
    q = _embeddings(query, "query", dtype, False)
    _check_labels(support, support_labels, "support_labels", "support")
    _check_labels(query, query_labels, "query_labels", "query")
    if s.shape[1] != q.shape[1]:
        raise ValueError(f"support and query must have the same embedding size, got {tuple(s.shape)} and {tuple(q.shape)}")
    same_class = support_labels[:, None] == support_labels[None, :]  # (S, S)
    # Each class is represented by its first support row: prototype j = mean of the rows of j's class.
    first = ~torch.tril(same_class, diagonal=-1).any(1)  # (S,)
    own = query_labels[:, None] == support_labels[None, :]  # (Q, S)
    if validation_enabled():
        if q.shape[0] > 0 and not bool(own.any(1).all()):
            bad = query_labels[~own.any(1)][0]
            raise ValueError(f"query_labels has class {int(bad)} that no support embedding has")
        if int(first.sum()) < 2:
            raise ValueError(f"proto_triplet_loss needs at least 2 support classes, got {int(first.sum())}")
    # One prototype per support row (rows of a class share it); only each class's first row
    # is compared with the queries. Boolean indexing by `first` would give a data-dependent
    # shape (a graph break under torch.compile); masking keeps every shape static.
    members = same_class.to(dtype)  # (S, S): row j selects the rows of j's class
    protos = (members @ s) / members.sum(1, keepdim=True)  # (S, D)
    d = pairwise_distance(q, protos, distance)  # (Q, S)
    inf = torch.tensor(float("inf"), dtype=d.dtype, device=d.device)
    own_d = torch.where(own & first, d, -inf).amax(1)  # exactly one own prototype per (valid) query
    other_d = torch.where(~own & first, d, inf).amin(1)  # amin propagates NaN (NaN rule)
    return reduce(torch.relu(own_d - other_d + margin), reduction)
