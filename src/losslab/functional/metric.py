"""Metric-learning objectives on labelled embeddings ``(N, D)``: pair, triplet and multi-similarity losses.

Conventions shared by the family:

* Embeddings are L2-normalized inside (``normalize=True``, the default of
  pytorch-metric-learning's distances); pass ``normalize=False`` to use them as they are.
* Losses built on a distance take it as a strategy (DESIGN.md rule 10):
  ``distance="euclidean"`` (default), ``"squared_euclidean"``, ``"cosine"`` (``1 - cos``),
  ``"dot"`` (``-<x, y>``) or a callable ``f(x, y) -> (n, m)`` distance matrix; see
  :func:`pairwise_distance`. Smaller always means closer.
* Selection is separate from scoring (rule 11): miners such as :func:`multi_similarity_mine`
  run under ``torch.no_grad()`` and return boolean masks; :func:`triplet_margin_loss` accepts
  mined ``(anchor, positive, negative)`` index tensors.
* ``reduction="none"`` returns one value per anchor (its summed pair/triplet terms), so
  ``"sum" == "none".sum()``; ``"mean"`` is each loss's documented average (pytorch-metric-learning's
  reducers where the loss matches that library).
* Every pairwise quantity is a ``B x B`` matrix: memory is O(B^2), never O(B^3) (the all-triplets
  triplet loss is summed per (anchor, positive) pair from sorted negative distances).
"""
from __future__ import annotations

import warnings
from typing import Callable, Union

import torch
import torch.nn.functional as F

from .._checks import (
    check_choice,
    check_floating,
    check_integer,
    check_ndim,
    check_nonnegative,
    check_positive,
    validation_enabled,
)
from .._numerics import compute_dtype, softplus, upcast
from .._reduction import reduce
from ..registry import Example, Reference, register
from ._examples import randint, randn

__all__ = [
    "pairwise_distance",
    "multi_similarity_mine",
    "multi_similarity_loss",
    "triplet_margin_loss",
    "contrastive_pair_loss",
    "threshold_consistent_margin_loss",
    "proto_triplet_loss",
]

Distance = Union[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
DISTANCES = ("euclidean", "squared_euclidean", "cosine", "dot")

MS_PAPER = Reference(
    title="Multi-Similarity Loss with General Pair Weighting for Deep Metric Learning",
    authors="Xun Wang, Xintong Han, Weilin Huang, Dengke Dong, Matthew R. Scott",
    year=2019,
    url="https://arxiv.org/abs/1904.06627",
)
FACENET_PAPER = Reference(
    title="FaceNet: A Unified Embedding for Face Recognition and Clustering",
    authors="Florian Schroff, Dmitry Kalenichenko, James Philbin",
    year=2015,
    url="https://arxiv.org/abs/1503.03832",
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


def pairwise_distance(x: torch.Tensor, y: torch.Tensor | None = None, distance: Distance = "euclidean") -> torch.Tensor:
    r"""Distance matrix ``D[i, j] = d(x_i, y_j)`` for the metric-learning losses (smaller = closer).

    ``"euclidean"``: :math:`\|x_i - y_j\|_2` (``torch.cdist``, whose gradient at a zero distance
    is 0); ``"squared_euclidean"``: :math:`\|x_i\|^2 + \|y_j\|^2 - 2\langle x_i, y_j\rangle`
    clamped at 0; ``"cosine"``: :math:`1 - \cos(x_i, y_j)`; ``"dot"``: :math:`-\langle x_i, y_j\rangle`;
    a callable ``f(x, y)`` must return the ``(n, m)`` matrix itself. No normalization is done
    here (the losses normalize first when ``normalize=True``).

    Args:
        x: ``(n, D)``.
        y: ``(m, D)``; ``None`` means ``x``.
        distance: a name from ``("euclidean", "squared_euclidean", "cosine", "dot")`` or a callable.

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
    check_choice(distance, "distance", DISTANCES)
    if distance == "euclidean":
        return torch.cdist(x, y)
    if distance == "squared_euclidean":
        return (x.square().sum(-1, keepdim=True) + y.square().sum(-1) - 2 * (x @ y.T)).clamp_min(0)
    if distance == "cosine":
        return 1 - F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T
    return -(x @ y.T)


def _labelled(n: int = 8, d: int = 4, **kw) -> Example:
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])[:n]

    def make(gen):
        return (randn(gen, n, d), labels.clone()), dict(kw)

    def mismatch(gen):
        return (randn(gen, n, d), randint(gen, 3, n - 1)), dict(kw)

    return Example(make=make, mismatch=mismatch, logits=(0,), grad=(0,))


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
    positive and one without positives keeps no negative. Runs under ``torch.no_grad()``.

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
    return pos & (sim - epsilon < hardest_neg), neg & (sim + epsilon > hardest_pos)


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


@register("multi_similarity_loss", family="metric", reference=MS_PAPER, seed=None,
          example=_labelled(), input_kind="embeddings", batch_level=True)
def multi_similarity_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    epsilon: float = 0.1,
    mining: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Multi-similarity loss with its ε pair mining (Wang et al. 2019), on cosine similarities.

    With :math:`S_{ij}` the cosine similarity and :math:`\tilde P_i, \tilde N_i` the pairs kept by
    :func:`multi_similarity_mine` (all pairs when ``mining=False``), the loss of anchor :math:`i` is

    .. math::
        \ell_i = \frac1\alpha\log\Big(1 + \sum_{p \in \tilde P_i} e^{-\alpha(S_{ip} - \lambda)}\Big)
               + \frac1\beta\log\Big(1 + \sum_{n \in \tilde N_i} e^{\beta(S_{in} - \lambda)}\Big),

    each term computed as ``softplus(logsumexp(...))`` over the kept pairs (no overflow for any
    :math:`\alpha, \beta`). An empty sum gives 0, so anchors without (kept) positives or
    negatives contribute only the other term or nothing. ``"mean"`` averages over **all**
    anchors, as pytorch-metric-learning's ``MultiSimilarityLoss`` (``MeanReducer``); with
    ``mining=True`` the value equals that loss with ``MultiSimilarityMiner(epsilon)``. The
    mining decision is not differentiated (it runs under ``no_grad``). A batch without any
    positive pair gives 0 and a ``UserWarning`` (validation on). One documented difference:
    pytorch-metric-learning returns 0 when the miner keeps at most one positive *and* at most
    one negative pair; this function scores those pairs.

    Memory is a few ``N x N`` matrices; no Python loop, no host sync (except the warning check).

    Args:
        embeddings: ``(N, D)``, L2-normalized inside.
        labels: ``(N,)`` integer labels.
        alpha: positive scale :math:`\alpha > 0` (2 in the paper's CUB setting and pytorch-metric-learning).
        beta: negative scale :math:`\beta > 0` (50).
        base: similarity offset :math:`\lambda` (0.5; "base" in pytorch-metric-learning).
        epsilon: mining margin :math:`\varepsilon \ge 0` (0.1).
        mining: apply the ε pair mining (default) or use every pair.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

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
    check_positive(alpha, "alpha")
    check_positive(beta, "beta")
    check_nonnegative(epsilon, "epsilon")
    if not isinstance(base, (int, float)):
        raise ValueError(f"base must be a number, got {base!r}")
    e = _embeddings(embeddings, "embeddings", compute_dtype(embeddings), True)
    _check_labels(embeddings, labels)
    sim = e @ e.T
    all_pos, all_neg = _pair_masks(labels)
    _warn_no_positive("multi_similarity_loss", all_pos)
    pos, neg = multi_similarity_mine(sim.detach(), labels, epsilon=epsilon) if mining else (all_pos, all_neg)
    pos_term = _log1p_sum_exp(-alpha * (sim - base), pos) / alpha
    neg_term = _log1p_sum_exp(beta * (sim - base), neg) / beta
    return reduce(pos_term + neg_term, reduction)


# ----------------------------------------------------------------------------- triplet
def _check_average(average: str) -> None:
    check_choice(average, "average", ("nonzero", "all"))


def _all_triplets(d: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, margin: float):
    r"""Per-anchor :math:`\sum_{p, n} [d_{ap} - d_{an} + m]_+` over all valid triplets, in O(N^2) memory.

    For anchor :math:`a` sort its negative distances; for each positive :math:`p` the negatives
    with a positive hinge are those with :math:`d_{an} < d_{ap} + m`, i.e. the first
    :math:`k_{ap}` sorted ones (``searchsorted``), and their hinge sum is
    :math:`k_{ap}(d_{ap} + m) - \sum_{j < k_{ap}} d_{a(j)}` (a prefix sum). Sorting keeps the
    gradient (the sorted values are gathered from ``d``). Returns (loss, count of nonzero
    triplets, count of all triplets) per anchor.
    """
    inf = torch.tensor(float("inf"), dtype=d.dtype, device=d.device)
    zero = torch.zeros((), dtype=d.dtype, device=d.device)
    neg_sorted, _ = torch.where(neg, d, inf).sort(dim=1)
    # Prefix sums over the finite (valid) entries; the +inf padding sorts last and never enters a prefix.
    prefix = torch.cat([torch.zeros_like(neg_sorted[:, :1]), torch.where(torch.isinf(neg_sorted), zero, neg_sorted)], 1)
    prefix = prefix.cumsum(1)
    shifted = d + margin
    k = torch.searchsorted(neg_sorted.detach().contiguous(), shifted.detach().contiguous(), right=False)
    k = torch.where(pos, k, torch.zeros_like(k))
    hinge_sum = k.to(d.dtype) * shifted - prefix.gather(1, k)
    loss = torch.where(pos, hinge_sum, zero).sum(1)
    nonzero = k.sum(1)
    total = pos.sum(1) * neg.sum(1)
    return loss, nonzero, total


@register("triplet_margin_loss", family="metric", reference=FACENET_PAPER, seed=None,
          example=_labelled(margin=0.2), input_kind="embeddings", batch_level=True)
def triplet_margin_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 0.05,
    distance: Distance = "euclidean",
    normalize: bool = True,
    triplets: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    average: str = "nonzero",
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Triplet margin loss over every valid triplet of the batch (or given mined triplets), any distance.

    For a triplet (anchor :math:`a`, positive :math:`p`: same label, :math:`p \ne a`; negative
    :math:`n`: other label) with distances :math:`d`,

    .. math:: \ell_{apn} = [\,d_{ap} - d_{an} + m\,]_+ .

    ``triplets=None`` uses **all** valid triplets, summed per anchor without building the
    :math:`N^3` tensor (sorted negative distances and prefix sums, O(N^2) memory, exact).
    ``triplets=(a, p, n)`` (index tensors, e.g. from a miner) scores only those. ``"none"``
    returns each anchor's summed hinge; ``"mean"`` divides the total by the number of
    triplets with a positive loss (``average="nonzero"``, pytorch-metric-learning's
    ``AvgNonZeroReducer``, the default of its ``TripletMarginLoss``) or by the number of
    triplets (``average="all"``); 0 when that number is 0. With the defaults
    (``margin=0.05``, euclidean distance between normalized embeddings, all triplets,
    ``average="nonzero"``) the value equals pytorch-metric-learning's ``TripletMarginLoss()``.
    A batch without any positive pair gives 0 and a ``UserWarning`` (validation on).

    Args:
        embeddings: ``(N, D)``.
        labels: ``(N,)`` integer labels.
        margin: :math:`m \ge 0`.
        distance: see :func:`pairwise_distance` (``"cosine"`` gives :math:`[s_{an} - s_{ap} + m]_+`).
        normalize: L2-normalize the embeddings first (default, as pytorch-metric-learning).
        triplets: optional ``(anchor, positive, negative)`` int64 index tensors of equal length
            ``(T,)``; their labels are not re-checked.
        average: ``"nonzero"`` or ``"all"``, the ``"mean"`` denominator.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        embeddings ``(N, D)``, labels ``(N,)``; output ``(N,)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import triplet_margin_loss
        >>> e = torch.tensor([[0.0, 1.0], [0.0, 2.0], [1.0, 0.0]])
        >>> y = torch.tensor([0, 0, 1])
        >>> triplet_margin_loss(e, y, margin=0.5, normalize=False, reduction="none")   # d_ap=1, d_an=sqrt(2), sqrt(5)
        tensor([0.0858, 0.0000, 0.0000])

    References:
        Schroff, Kalenichenko, Philbin, "FaceNet: A Unified Embedding for Face Recognition and
        Clustering", CVPR 2015, https://arxiv.org/abs/1503.03832; Musgrave et al.,
        "PyTorch Metric Learning", 2020, https://arxiv.org/abs/2008.09164 (reducer conventions).
    """
    check_nonnegative(margin, "margin")
    _check_average(average)
    e = _embeddings(embeddings, "embeddings", compute_dtype(embeddings), normalize)
    _check_labels(embeddings, labels)
    n = e.shape[0]
    d = pairwise_distance(e, e, distance)
    if triplets is None:
        pos, neg = _pair_masks(labels)
        _warn_no_positive("triplet_margin_loss", pos)
        loss, nonzero, total = _all_triplets(d, pos, neg, margin)
    else:
        a, p, ng = _check_triplets(triplets, n)
        hinge = torch.relu(d[a, p] - d[a, ng] + margin)
        loss = torch.zeros(n, dtype=d.dtype, device=d.device).index_add(0, a, hinge)
        nonzero = torch.zeros(n, dtype=torch.long, device=d.device).index_add(0, a, (hinge > 0).long())
        total = torch.bincount(a, minlength=n)
    normalizer = (nonzero if average == "nonzero" else total).to(loss.dtype)
    return reduce(loss, reduction, normalizer=normalizer)


def _check_triplets(triplets, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(triplets, (tuple, list)) or len(triplets) != 3:
        raise ValueError("triplets must be a tuple (anchor, positive, negative) of index tensors")
    a, p, ng = triplets
    for t, name in ((a, "triplets[0]"), (p, "triplets[1]"), (ng, "triplets[2]")):
        check_integer(t, name)
        check_ndim(t, name, 1)
    if not (a.shape == p.shape == ng.shape):
        raise ValueError(f"triplet index tensors must have equal lengths, got {tuple(a.shape)}, {tuple(p.shape)}, {tuple(ng.shape)}")
    if validation_enabled() and a.numel() > 0:
        lo = min(int(t.min()) for t in (a, p, ng))
        hi = max(int(t.max()) for t in (a, p, ng))
        if lo < 0 or hi >= n:
            raise ValueError(f"triplets hold index {lo if lo < 0 else hi} outside [0, {n})")
    return a.long(), p.long(), ng.long()


# ----------------------------------------------------------------------------- pair losses
def _two_term_reduce(pos_loss, pos_norm, neg_loss, neg_norm, reduction):
    """``reduce`` each term with its own "mean" denominator; "none"/"sum" add them per anchor."""
    return reduce(pos_loss, reduction, normalizer=pos_norm) + reduce(neg_loss, reduction, normalizer=neg_norm)


@register("contrastive_pair_loss", family="metric", reference=HADSELL_PAPER, seed=None,
          example=_labelled(neg_margin=1.2), input_kind="embeddings", batch_level=True)
def contrastive_pair_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    distance: Distance = "euclidean",
    normalize: bool = True,
    average: str = "nonzero",
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Classic contrastive pair loss: pull positives within ``pos_margin``, push negatives beyond ``neg_margin``.

    Over every ordered pair :math:`(a, j)`, :math:`j \ne a`, with distance :math:`d_{aj}`:

    .. math::
        \ell^+_{ap} = [\,d_{ap} - m_+\,]_+ \ (y_p = y_a), \qquad
        \ell^-_{an} = [\,m_- - d_{an}\,]_+ \ (y_n \ne y_a).

    ``"mean"`` averages the positive terms and the negative terms **separately** and adds the
    two averages, each over its pairs with a positive loss (``average="nonzero"``,
    pytorch-metric-learning's ``AvgNonZeroReducer``) or over all its pairs (``"all"``); an empty
    set averages to 0. ``"none"`` returns each anchor's summed terms, ``"sum"`` their total.
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
        distance: see :func:`pairwise_distance`.
        normalize: L2-normalize the embeddings first (default).
        average: ``"nonzero"`` or ``"all"`` (see above).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        embeddings ``(N, D)``, labels ``(N,)``; output ``(N,)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import contrastive_pair_loss
        >>> e = torch.tensor([[0.0, 0.0], [0.0, 0.5], [0.6, 0.0]])
        >>> contrastive_pair_loss(e, torch.tensor([0, 0, 1]), normalize=False, reduction="none")
        tensor([0.9000, 0.7190, 0.6190])

    References:
        Hadsell, Chopra, LeCun, "Dimensionality Reduction by Learning an Invariant Mapping",
        CVPR 2006, https://doi.org/10.1109/CVPR.2006.100.
    """
    check_nonnegative(pos_margin, "pos_margin")
    check_nonnegative(neg_margin, "neg_margin")
    if neg_margin < pos_margin:
        raise ValueError(f"neg_margin must be >= pos_margin, got neg_margin={neg_margin} < pos_margin={pos_margin}")
    _check_average(average)
    e = _embeddings(embeddings, "embeddings", compute_dtype(embeddings), normalize)
    _check_labels(embeddings, labels)
    d = pairwise_distance(e, e, distance)
    pos, neg = _pair_masks(labels)
    _warn_no_positive("contrastive_pair_loss", pos)
    zero = torch.zeros((), dtype=d.dtype, device=d.device)
    lp = torch.where(pos, torch.relu(d - pos_margin), zero)
    ln = torch.where(neg, torch.relu(neg_margin - d), zero)
    if average == "nonzero":
        np_, nn_ = (lp > 0).sum(1), (ln > 0).sum(1)
    else:
        np_, nn_ = pos.sum(1), neg.sum(1)
    return _two_term_reduce(lp.sum(1), np_.to(d.dtype), ln.sum(1), nn_.to(d.dtype), reduction)


@register("threshold_consistent_margin_loss", family="metric", reference=TCM_PAPER, seed=TCM_SEED,
          example=_labelled(margin_plus=0.5, margin_minus=-0.2), input_kind="embeddings", batch_level=True,
          regularizer=True)
def threshold_consistent_margin_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    lambda_plus: float = 1.0,
    lambda_minus: float = 1.0,
    margin_plus: float = 0.9,
    margin_minus: float = 0.5,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Threshold-consistent margin (TCM) regularizer: penalize hard positive and hard negative pairs by cosine margins.

    With cosine similarities :math:`S`, positive pairs :math:`P` (same label, :math:`i \ne j`) and
    negative pairs :math:`N`:

    .. math::
        \mathcal L = \lambda_+ \frac{\sum_{P} (m_+ - S_{ij})\,\mathbb 1[S_{ij} \le m_+]}{\sum_{P}\mathbb 1[S_{ij} \le m_+]}
                   + \lambda_- \frac{\sum_{N} (S_{ij} - m_-)\,\mathbb 1[S_{ij} \ge m_-]}{\sum_{N}\mathbb 1[S_{ij} \ge m_-]},

    each fraction 0 when its set of hard pairs is empty. It is added to a base loss (the
    paper uses it with e.g. a softmax or pair loss). Pairs are ordered (each unordered pair
    counts twice), as in pytorch-metric-learning's ``ThresholdConsistentMarginLoss``, whose
    defaults (:math:`\lambda_\pm = 1`, :math:`m_+ = 0.9`, :math:`m_- = 0.5`) are used and whose value
    this equals. ``"none"`` returns each anchor's :math:`\lambda`-weighted sums of hard-pair
    terms (``"sum"`` their total); ``"mean"`` is :math:`\mathcal L` above.

    Args:
        embeddings: ``(N, D)`` (cosine similarity: normalized inside).
        labels: ``(N,)`` integer labels.
        lambda_plus, lambda_minus: weights :math:`\lambda_\pm \ge 0`.
        margin_plus, margin_minus: cosine margins :math:`m_+, m_-` in :math:`[-1, 1]`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        embeddings ``(N, D)``, labels ``(N,)``; output ``(N,)`` for ``"none"``, else a scalar.

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
    check_nonnegative(lambda_plus, "lambda_plus")
    check_nonnegative(lambda_minus, "lambda_minus")
    for v, name in ((margin_plus, "margin_plus"), (margin_minus, "margin_minus")):
        if not (isinstance(v, (int, float)) and -1.0 <= v <= 1.0):
            raise ValueError(f"{name} must be a cosine margin in [-1, 1], got {v!r}")
    e = _embeddings(embeddings, "embeddings", compute_dtype(embeddings), True)
    _check_labels(embeddings, labels)
    s = e @ e.T
    pos, neg = _pair_masks(labels)
    _warn_no_positive("threshold_consistent_margin_loss", pos)
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    hard_pos = pos & (s <= margin_plus)
    hard_neg = neg & (s >= margin_minus)
    lp = lambda_plus * torch.where(hard_pos, margin_plus - s, zero).sum(1)
    ln = lambda_minus * torch.where(hard_neg, s - margin_minus, zero).sum(1)
    return _two_term_reduce(lp, hard_pos.sum(1).to(s.dtype), ln, hard_neg.sum(1).to(s.dtype), reduction)


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

    return Example(make=make, mismatch=mismatch, logits=(0, 2), grad=(0, 2))


@register("proto_triplet_loss", family="metric", reference=SUSANA_PAPER, seed=SUSANA_SEED,
          example=_few_shot_example(), input_kind="embeddings", batch_level=True)
def proto_triplet_loss(
    support: torch.Tensor,
    support_labels: torch.Tensor,
    query: torch.Tensor,
    query_labels: torch.Tensor,
    *,
    margin: float = 0.5,
    distance: Distance = "euclidean",
    reduction: str = "mean",
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
    be a support class and the support must have at least 2 classes.

    Args:
        support: ``(S, D)`` support embeddings.
        support_labels: ``(S,)`` integer classes.
        query: ``(Q, D)`` query embeddings.
        query_labels: ``(Q,)`` integer classes (each present in ``support_labels``).
        margin: :math:`m \ge 0` (0.5 in the authors' code).
        distance: see :func:`pairwise_distance`.
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
    check_nonnegative(margin, "margin")
    dtype = compute_dtype(support, query)
    s = _embeddings(support, "support", dtype, False)
    q = _embeddings(query, "query", dtype, False)
    _check_labels(support, support_labels, "support_labels", "support")
    _check_labels(query, query_labels, "query_labels", "query")
    if s.shape[1] != q.shape[1]:
        raise ValueError(f"support and query must have the same embedding size, got {tuple(s.shape)} and {tuple(q.shape)}")
    classes, inverse = torch.unique(support_labels, return_inverse=True)
    k = classes.shape[0]
    if k < 2:
        raise ValueError(f"proto_triplet_loss needs at least 2 support classes, got {k}")
    counts = torch.bincount(inverse, minlength=k).to(dtype)
    protos = torch.zeros((k, s.shape[1]), dtype=dtype, device=s.device).index_add(0, inverse, s) / counts[:, None]
    # Position of each query's class among the sorted support classes.
    where = torch.searchsorted(classes, query_labels).clamp_max(k - 1)
    if validation_enabled() and q.shape[0] > 0 and not bool((classes[where] == query_labels).all()):
        bad = query_labels[classes[where] != query_labels][0]
        raise ValueError(f"query_labels has class {int(bad)} that no support embedding has")
    d = pairwise_distance(q, protos, distance)
    own = d.gather(1, where[:, None]).squeeze(1)
    inf = torch.tensor(float("inf"), dtype=dtype, device=d.device)
    other = torch.where(torch.arange(k, device=d.device) == where[:, None], inf, d).amin(1)
    return reduce(torch.relu(own - other + margin), reduction)
