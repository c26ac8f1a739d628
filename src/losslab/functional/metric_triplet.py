"""Triplet margin loss over all valid triplets of a labelled batch (or mined ones), and :func:`all_triplets`.

Part of the metric-learning family: distances, embedding/label checks and pair masks are shared
with :mod:`losslab.functional.metric`, whose module docstring states the family's conventions
(normalization, ``distance`` strategies, ``reduction="none"`` and NaN rules).
"""
from __future__ import annotations

import torch

from .._checks import check_integer, check_ndim, check_nonnegative, hyperparameter_checks, validation_enabled
from .._numerics import compute_dtype
from .._reduction import Reduction, reduce
from ..registry import Example, Reference, register
from ._examples import randn
from .metric import (
    Average,
    Distance,
    _check_average,
    _check_distance,
    _check_flag,
    _check_labels,
    _embeddings,
    _labelled,
    _pair_masks,
    _warn_no_positive,
    pairwise_distance,
)

__all__ = [
    "all_triplets",
    "triplet_margin_loss",
]

FACENET_PAPER = Reference(
    title="FaceNet: A Unified Embedding for Face Recognition and Clustering",
    authors="Florian Schroff, Dmitry Kalenichenko, James Philbin",
    year=2015,
    url="https://arxiv.org/abs/1503.03832",
)


@torch.no_grad()
def all_triplets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Every valid triplet of a labelled batch as index tensors ``(anchor, positive, negative)``.

    A triplet :math:`(a, p, n)` is valid when :math:`y_p = y_a`, :math:`p \ne a` and
    :math:`y_n \ne y_a`. The triplets are sorted by anchor, then positive, then negative; this
    is the order of ``triplet_margin_loss(..., reduction="none")`` when no ``triplets`` are
    given. Memory is O(T) for :math:`T = \sum_a |P_a||N_a|` triplets (no ``N^3`` mask).

    Args:
        labels: ``(N,)`` integer labels.

    Returns:
        three int64 tensors of shape ``(T,)``.

    Example:
        >>> import torch
        >>> from losslab.functional import all_triplets
        >>> a, p, n = all_triplets(torch.tensor([0, 0, 1]))
        >>> torch.stack([a, p, n]).tolist()
        [[0, 1], [1, 0], [2, 2]]
    """
    check_integer(labels, "labels")
    check_ndim(labels, "labels", 1)
    pos, neg = _pair_masks(labels)
    pairs = pos.nonzero()  # (P, 2), sorted by anchor then positive
    n_neg = neg.sum(1)
    negatives = neg.nonzero()[:, 1]  # every anchor's negatives, anchor by anchor
    first_neg = torch.cumsum(n_neg, 0) - n_neg  # where anchor a's negatives start in `negatives`
    a, p = pairs[:, 0], pairs[:, 1]
    counts = n_neg[a]  # triplets per (anchor, positive) pair
    first_triplet = torch.cumsum(counts, 0) - counts
    within = torch.arange(int(counts.sum()), device=labels.device) - first_triplet.repeat_interleave(counts)
    a_t = a.repeat_interleave(counts)
    return a_t, p.repeat_interleave(counts), negatives[first_neg[a_t] + within]


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
    # A NaN negative distance sorts last, past every searchsorted position, and would be
    # dropped; the full prefix sum holds it, so adding 0 * (full prefix) turns the anchor's
    # loss into NaN (NaN rule) at O(N) cost. Only anchors with a positive score triplets.
    loss = loss + torch.where(pos.any(1), prefix[:, -1], zero) * 0
    nonzero = k.sum(1)
    total = pos.sum(1) * neg.sum(1)
    return loss, nonzero, total


def _check_triplets(triplets, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(triplets, (tuple, list)) or len(triplets) != 3:
        raise ValueError("triplets must be a tuple (anchor, positive, negative) of index tensors")
    a, p, ng = triplets
    for t, name in ((a, "triplets[0]"), (p, "triplets[1]"), (ng, "triplets[2]")):
        check_integer(t, name)
        check_ndim(t, name, 1)
    if not (a.shape == p.shape == ng.shape):
        raise ValueError(
            f"triplets index tensors must have equal lengths, got {tuple(a.shape)}, {tuple(p.shape)}, {tuple(ng.shape)}"
        )
    if validation_enabled() and a.numel() > 0:
        lo = min(int(t.min()) for t in (a, p, ng))
        hi = max(int(t.max()) for t in (a, p, ng))
        if lo < 0 or hi >= n:
            raise ValueError(f"triplets hold index {lo if lo < 0 else hi} outside [0, {n})")
    return a.long(), p.long(), ng.long()


def _check_triplet_margin(*, margin, distance, normalize, average, **_) -> None:
    check_nonnegative(margin, "margin")
    _check_distance(distance)
    _check_flag(normalize, "normalize")
    _check_average(average)


def _nonzero_mean(none: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """Mean over the elements with a positive loss (0 when there is none)."""
    if kwargs.get("average", "nonzero") == "all":
        return none.mean() if none.numel() else none.sum()
    count = (none > 0).sum()
    return none.sum() / count if count > 0 else none.sum() * 0


def _triplet_example() -> Example:
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])

    def mined(gen):
        # A fixed subset of the valid triplets, as a miner would return (per-batch: forward arg).
        a, p, n = all_triplets(labels)
        keep = torch.randperm(a.numel(), generator=gen)[:20]
        return (randn(gen, 8, 4), labels.clone()), {"margin": 0.2, "triplets": (a[keep], p[keep], n[keep])}

    def average_all(gen):
        return (randn(gen, 8, 4), labels.clone()), {"margin": 0.2, "average": "all", "distance": "sqeuclidean"}

    return _labelled(margin=0.2, mean_rule=_nonzero_mean, variants=(mined, average_all))


@register("triplet_margin_loss", family="metric", reference=FACENET_PAPER, seed=None,
          example=_triplet_example(), input_kind="embeddings",
          tags=("metric learning", "triplet loss", "face recognition", "retrieval", "embeddings"))
@hyperparameter_checks(_check_triplet_margin)
def triplet_margin_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 0.05,
    distance: Distance = "euclidean",
    normalize: bool = True,
    triplets: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    average: Average = "nonzero",
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Triplet margin loss over every valid triplet of the batch (or given mined triplets), any distance.

    For a triplet (anchor :math:`a`, positive :math:`p`: same label, :math:`p \ne a`; negative
    :math:`n`: other label) with distances :math:`d`,

    .. math:: \ell_{apn} = [\,d_{ap} - d_{an} + m\,]_+ .

    ``triplets=None`` uses **all** valid triplets; ``triplets=(a, p, n)`` (index tensors, e.g.
    from a miner) scores only those. ``"none"`` returns :math:`\ell_{apn}` for every triplet
    (in the given order, or the order of :func:`all_triplets`); ``"sum"`` is their total;
    ``"mean"`` averages them over the triplets with a positive loss (``average="nonzero"``,
    pytorch-metric-learning's ``AvgNonZeroReducer``, the default of its ``TripletMarginLoss``)
    or over all triplets (``average="all"``), 0 when there is none. So
    ``mean == none.sum() / (none > 0).sum()`` for ``"nonzero"`` and ``none.mean()`` for
    ``"all"``. With the defaults (``margin=0.05``, euclidean distance between normalized
    embeddings, all triplets, ``average="nonzero"``) the value equals
    pytorch-metric-learning's ``TripletMarginLoss()``. A batch without any positive pair
    gives 0 and a ``UserWarning`` (validation on).

    Memory: ``"mean"`` and ``"sum"`` over all triplets never build the :math:`N^3` tensor
    (sorted negative distances and prefix sums per anchor, O(N^2) memory, exact);
    ``"none"`` returns one value per triplet, :math:`T = \sum_a |P_a||N_a|` values.

    Args:
        embeddings: ``(N, D)``.
        labels: ``(N,)`` integer labels.
        margin: :math:`m \ge 0`.
        distance: ``"euclidean"``, ``"sqeuclidean"``, ``"cosine"`` (:math:`1 - \cos`, giving
            :math:`[s_{an} - s_{ap} + m]_+`), ``"dot"`` or a callable; see :func:`pairwise_distance`.
        normalize: L2-normalize the embeddings first (default, as pytorch-metric-learning).
        triplets: optional ``(anchor, positive, negative)`` integer index tensors of equal
            length ``(T,)`` (per batch: a Module takes them in ``forward``); their labels are
            not re-checked.
        average: what ``"mean"`` averages over: ``"nonzero"`` the triplets with a positive
            loss (default), ``"all"`` every triplet.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (one value per triplet).

    Shape:
        embeddings ``(N, D)``, labels ``(N,)``; output ``(T,)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import triplet_margin_loss
        >>> e = torch.tensor([[0.0, 1.0], [0.0, 2.0], [1.0, 0.0]])
        >>> y = torch.tensor([0, 0, 1])
        >>> triplet_margin_loss(e, y, margin=0.5, normalize=False, reduction="none")   # d_ap=1, d_an=sqrt(2), sqrt(5)
        tensor([0.0858, 0.0000])
        >>> triplet_margin_loss(e, y, margin=0.5, normalize=False)   # one triplet with a positive loss
        tensor(0.0858)

    References:
        Schroff, Kalenichenko, Philbin, "FaceNet: A Unified Embedding for Face Recognition and
        Clustering", CVPR 2015, https://arxiv.org/abs/1503.03832; Musgrave et al.,
        "PyTorch Metric Learning", 2020, https://arxiv.org/abs/2008.09164 (reducer conventions).
    """
    _check_triplet_margin(margin=margin, distance=distance, normalize=normalize, average=average)
    e = _embeddings(embeddings, "embeddings", compute_dtype(embeddings), normalize)
    _check_labels(embeddings, labels)
    n = e.shape[0]
    if triplets is not None:
        a, p, ng = _check_triplets(triplets, n)
    d = pairwise_distance(e, e, distance)
    if triplets is None:
        pos, neg = _pair_masks(labels)
        _warn_no_positive("triplet_margin_loss", pos)
        if reduction != "none":
            loss, nonzero, total = _all_triplets(d, pos, neg, margin)
            normalizer = (nonzero if average == "nonzero" else total).to(loss.dtype)
            return reduce(loss, reduction, normalizer=normalizer)
        a, p, ng = all_triplets(labels)
    hinge = torch.relu(d[a, p] - d[a, ng] + margin)
    return reduce(hinge, reduction, normalizer=(hinge > 0).to(hinge.dtype) if average == "nonzero" else None)
