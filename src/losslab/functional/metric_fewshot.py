"""Few-shot metric-learning objectives on one labelled episode: the ICNN loss.

The second loss of Mendez-Ruiz et al. (2023), the first being :func:`proto_triplet_loss` in
:mod:`losslab.functional.metric` (whose reference, distance strategy and input checks are
reused here). Where the definition comes from: the paper's body could not be read when this
was written (only its abstract), so every formula, default and edge case below follows the
authors' public training code (``maumruiz/FSL-Loss``, ``algorithms/icnn_loss.py``: the
``modified_score`` used by ``get_icnn_loss``), re-derived, not copied; differences from that
code are listed in :func:`icnn_loss`.

The ICNN score is a property of a whole labelled set (its intra/inter-class terms are averages
over the anchors that have such neighbours, and the loss is :math:`-\\log` of the score), so
:func:`icnn_loss` returns one scalar per episode and takes no ``reduction`` (as the other
set-level objectives, e.g. :func:`mmd` or :func:`uniformity`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from .._checks import check_choice, hyperparameter_checks, validation_enabled
from .._numerics import compute_dtype
from ..registry import Example, register
from ._examples import randint, randn
from .metric import SUSANA_PAPER, SUSANA_SEED, _check_labels, _embeddings, pairwise_distance

__all__ = ["icnn_score", "icnn_loss"]

# "dot" (-<x, y>) can be negative: the ICNN ratios assume distances >= 0.
ICNN_DISTANCES = ("euclidean", "sqeuclidean", "cosine")
ICNNDistance = Literal["euclidean", "sqeuclidean", "cosine"] | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_int(value: object, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_icnn(*, k, neighbours, distance, **_) -> None:
    _check_int(k, "k", 1)
    if neighbours is not None:
        _check_int(neighbours, "neighbours", 1)  # [k, N - 1] is checked with N known
    if not callable(distance):
        check_choice(distance, "distance", ICNN_DISTANCES)


def _icnn_terms(
    embeddings: torch.Tensor, labels: torch.Tensor, k: int, neighbours: int | None, distance: ICNNDistance
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(lambda_intra, lambda_inter, gamma, nan_guard)`` of one labelled set (see :func:`icnn_loss`)."""
    _check_icnn(k=k, neighbours=neighbours, distance=distance)
    x = _embeddings(embeddings, "embeddings", compute_dtype(embeddings), False)
    _check_labels(embeddings, labels)
    n = x.shape[0]
    if n < 3:
        raise ValueError(f"embeddings must hold at least 3 rows (an anchor needs 2 neighbours), got {n}")
    # The authors' rule for small sets: k shrinks to N - 2 and the gamma term is then the constant 1.
    clamped = k + 2 >= n
    k = n - 2 if clamped else k
    m = k + 1 if neighbours is None else neighbours
    if not k <= m <= n - 1:
        raise ValueError(f"neighbours must be in [k, N - 1] = [{k}, {n - 1}] (k after the small-set rule), got {m}")

    d = pairwise_distance(x, x, distance)
    if callable(distance) and validation_enabled() and bool((d < 0).any()):
        raise ValueError("distance callable returned negative values; the ICNN ratios need distances >= 0")
    inf = torch.tensor(float("inf"), dtype=d.dtype, device=d.device)
    zero = torch.zeros((), dtype=d.dtype, device=d.device)
    eye = torch.eye(n, dtype=torch.bool, device=d.device)
    # An anchor is never its own neighbour; topk keeps the gradient of the selected distances.
    dist, idx = torch.topk(torch.where(eye, inf, d), m, dim=1, largest=False, sorted=True)
    same = labels[idx] == labels.unsqueeze(1)  # (N, m)

    # delta_i: nearest other-class distance among the m neighbours (+inf when there is none).
    delta = torch.where(same, inf, dist).amin(1)
    dk, sk = dist[:, :k], same[:, :k]
    # The code's (d / delta) / max(1, max_j d_j / delta) is d / max(delta, d_ik) (rows are sorted).
    denom = torch.maximum(delta, dk[:, -1])
    ok = torch.isfinite(denom) & (denom > 0)  # inf: no other class nearby -> 0; 0: all distances 0 -> 0
    ratio = torch.where(ok.unsqueeze(1), dk / torch.where(ok, denom, 1.0).unsqueeze(1), zero)

    sk_f = sk.to(d.dtype)
    n_same = sk_f.sum(1)
    per_anchor = (ratio * sk_f).sum(1) / n_same.clamp_min(1)  # mean over the same-class neighbours
    anchors = (n_same > 0).sum().to(d.dtype)
    lam_intra = 1 - per_anchor.sum() / anchors.clamp_min(1)  # 1 when no anchor has a same-class neighbour

    other = torch.where(sk, zero, dk)
    top = other.amax()  # largest other-class distance among all first-k neighbours of the set
    scaled = other / torch.where(top > 0, top, 1.0)
    n_other = (~sk).sum(1).to(d.dtype)
    per_anchor_o = scaled.sum(1) / n_other.clamp_min(1)
    anchors_o = (n_other > 0).sum().to(d.dtype)
    # The code's |0 - 1| = 1 when no first-k neighbour of any anchor is of another class.
    lam_inter = torch.where(anchors_o > 0, per_anchor_o.sum() / anchors_o.clamp_min(1), 1.0)

    gamma = torch.ones((), dtype=d.dtype, device=d.device) if clamped else (n_same / k).mean()
    # NaN rule: the nearest-neighbour selection (topk) ranks NaN distances last and would drop a
    # NaN embedding. Its self-distance d_ii is NaN for every built-in distance, so adding the
    # NaN self-distances (0 otherwise, also for a callable that puts inf on the diagonal) to the
    # score propagates it at O(N) cost.
    diag = d.diagonal()
    nan_guard = torch.where(torch.isnan(diag), diag, zero).sum()
    return lam_intra, lam_inter, gamma, nan_guard


def icnn_score(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    k: int = 4,
    neighbours: int | None = None,
    distance: ICNNDistance = "euclidean",
) -> torch.Tensor:
    r"""The ICNN (intra/inter-class nearest neighbours) score of a labelled set, in :math:`(0, 1]`.

    :math:`S = \tfrac12\big(\tfrac12(\lambda_{intra} + \lambda_{inter}) + \gamma\big)`; the terms
    and the arguments are those of :func:`icnn_loss`, which returns :math:`-\log S`. Higher is
    better: same-class neighbours close relative to the nearest other class, other-class
    neighbours far, and many same-class neighbours among the ``k`` nearest.

    Returns:
        a scalar (float32 for half/bfloat16 input); NaN if an embedding is NaN.
    """
    lam_intra, lam_inter, gamma, nan_guard = _icnn_terms(embeddings, labels, k, neighbours, distance)
    return ((lam_intra + lam_inter) / 2 + gamma) / 2 + nan_guard


def _icnn_example(k: int = 2, neighbours: int | None = 3) -> Example:
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])

    def make(gen):
        return (randn(gen, 9, 4), labels.clone()), {"k": k, "neighbours": neighbours}

    def mismatch(gen):
        return (randn(gen, 9, 4), randint(gen, 3, 7)), {"k": k, "neighbours": neighbours}

    return Example(make=make, mismatch=mismatch, mismatch_match="labels", extreme=None, grad=(0,))


@register("icnn_loss", family="metric", reference=SUSANA_PAPER, seed=SUSANA_SEED,
          example=_icnn_example(), input_kind="embeddings", batch_level=True,
          tags=("few-shot", "nearest neighbours", "class separability", "metric learning", "episodes"))
@hyperparameter_checks(_check_icnn)
def icnn_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    k: int = 4,
    neighbours: int | None = None,
    distance: ICNNDistance = "euclidean",
) -> torch.Tensor:
    r"""ICNN loss: :math:`-\log` of the intra/inter-class nearest-neighbour score of one labelled episode.

    For each anchor :math:`i` take its :math:`m` nearest other embeddings, sorted, at distances
    :math:`d_{i1} \le \dots \le d_{im}`, with :math:`s_{ij} = 1` when the :math:`j`-th one has the
    anchor's label. With :math:`\delta_i = \min\{d_{ij} : j \le m,\ s_{ij} = 0\}` (the nearest
    other class, :math:`+\infty` if none) and, for the first :math:`k` neighbours,
    :math:`\rho_{ij} = d_{ij} / \max(\delta_i, d_{ik})` (0 when :math:`\delta_i = \infty`):

    .. math::
        \lambda_{intra} &= 1 - \frac{1}{|A|}\sum_{i \in A}
            \frac{\sum_{j \le k} s_{ij}\,\rho_{ij}}{\sum_{j \le k} s_{ij}}, \qquad
        \lambda_{inter} = \frac{1}{|B|}\sum_{i \in B}
            \frac{\sum_{j \le k} (1 - s_{ij})\, d_{ij} / d_{\max}}{\sum_{j \le k} (1 - s_{ij})}, \\
        \gamma &= \frac{1}{N}\sum_i \frac1k \sum_{j \le k} s_{ij}, \qquad
        S = \tfrac12\Big(\tfrac12(\lambda_{intra} + \lambda_{inter}) + \gamma\Big), \qquad
        \mathcal L = -\log S,

    where :math:`A` (:math:`B`) are the anchors with at least one same-class (other-class)
    neighbour among their first :math:`k`, :math:`d_{\max}` is the largest other-class distance
    among all those neighbours, :math:`\lambda_{intra} = 1` if :math:`A = \emptyset` and
    :math:`\lambda_{inter} = 1` if :math:`B = \emptyset`. Small sets: when :math:`k + 2 \ge N`,
    :math:`k` becomes :math:`N - 2` and :math:`\gamma = 1`. :math:`S \in (0, 1]`, so the loss
    is finite and :math:`\ge 0`; it is scale-invariant. :math:`\gamma` and the choice of
    neighbours are piecewise constant: gradients flow through the distances in
    :math:`\lambda_{intra}, \lambda_{inter}` (including the normalizers
    :math:`\delta_i, d_{ik}, d_{\max}`).

    Where this comes from: the authors' code (the paper's text could not be read; no equation
    numbers). How the authors use it in an :math:`n`-way episode: on the support embeddings
    alone (``suppicnn``), or on support and query concatenated with
    ``neighbours = shot + query`` (``fullicnn``); their total loss is the plain mean of the
    selected terms, e.g. :math:`(\mathrm{CE} + \mathcal L_{proto\text{-}triplet} + \mathcal L_{ICNN}) / 3`.
    Differences from that code: exact distances instead of :math:`\sqrt{\|x - y\|^2 + 10^{-6}}`
    (pass a callable to reproduce it), exact empty-set handling instead of :math:`+10^{-7}` in
    denominators, self excluded by index rather than by dropping the nearest point. Their third
    variant (queries scored against support or prototypes) is not provided: there the code
    drops each query's nearest support point as if it were the query itself.

    A NaN embedding gives a NaN loss (the neighbour search alone would rank it last and drop it).

    One value per episode: the score is not a sum of per-sample terms, so there is no
    ``reduction`` (call once per episode and average). Memory is one ``N x N`` distance matrix.

    Args:
        embeddings: ``(N, D)`` embeddings of one episode (used as they are, not normalized).
        labels: ``(N,)`` integer classes.
        k: number of nearest neighbours scored per anchor (4 in the authors' code); at least 1.
        neighbours: :math:`m \ge k`, how many nearest neighbours are searched for the nearest
            other class; ``None`` means ``k + 1`` (the authors' default; their full-episode
            variant uses ``shot + query``). At most ``N - 1``.
        distance: ``"euclidean"`` (default), ``"sqeuclidean"``, ``"cosine"`` or a callable
            returning a non-negative ``(N, N)`` matrix; see :func:`pairwise_distance`.

    Shape:
        embeddings ``(N, D)`` with ``N >= 3``, labels ``(N,)``; output a scalar.

    Returns:
        :math:`-\log S` (float32 for half/bfloat16 input). :func:`icnn_score` returns :math:`S`.

    Example:
        >>> import torch
        >>> from losslab.functional import icnn_loss, icnn_score
        >>> x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> icnn_score(x, y, k=1)   # lambda_intra = 1/2, lambda_inter = 1, gamma = 3/4
        tensor(0.7500)
        >>> icnn_loss(x, y, k=1)    # -log(3/4)
        tensor(0.2877)

    References:
        Mendez-Ruiz et al., "SuSana Distancia is all you need: Enforcing class separability in
        metric learning via two novel distance-based loss functions for few-shot image
        classification", 2023, https://arxiv.org/abs/2305.09062; authors' code:
        https://github.com/maumruiz/FSL-Loss (``algorithms/icnn_loss.py``).
    """
    return -torch.log(icnn_score(embeddings, labels, k=k, neighbours=neighbours, distance=distance))
