"""Contrastive objectives on embeddings (cosine similarity over a temperature) and their diagnostics.

Memory is O(B·D) saved for backward plus one block of at most ``_BLOCK_ELEMS`` similarities
at a time: ``info_nce``, ``nt_xent`` and ``supcon_loss`` share :class:`_RowLogSumExp`, which
computes each anchor's log-sum-exp over its candidates block by block, keeps only the
per-row values, and recomputes the similarity blocks in backward (the B × B matrix is never
stored). With ``gather=True`` every rank contrasts its local anchors with the embeddings of
all ranks and returns its *share* of the loss, so that distributed training is exactly
single-process training on the concatenated batch; the global value for logging is
:func:`losslab.distributed.global_value` (see :mod:`losslab.distributed`).
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from .._checks import (
    check_floating,
    check_integer,
    check_ndim,
    check_positive,
    check_same_shape,
    hyperparameter_checks,
    validation_enabled,
)
from .._numerics import compute_dtype, upcast
from .._reduction import Reduction, reduce
from ..distributed import gather as _gather
from ..distributed import gather_no_grad, reduce_gathered, shard_layout
from ..registry import Example, Reference, register
from ._examples import randint, randn

__all__ = ["info_nce", "nt_xent", "supcon_loss", "alignment", "uniformity", "tolerance"]

BEHAVIOUR_PAPER = Reference(
    title="Understanding the Behaviour of Contrastive Loss",
    authors="Feng Wang, Huaping Liu",
    year=2021,
    url="https://arxiv.org/abs/2012.09740",
)
BEHAVIOUR_SEED = "Understanding the Behaviour of Contrastive Loss"
CPC_PAPER = Reference(
    title="Representation Learning with Contrastive Predictive Coding",
    authors="Aaron van den Oord, Yazhe Li, Oriol Vinyals",
    year=2018,
    url="https://arxiv.org/abs/1807.03748",
)
SIMCLR_PAPER = Reference(
    title="A Simple Framework for Contrastive Learning of Visual Representations",
    authors="Ting Chen, Simon Kornblith, Mohammad Norouzi, Geoffrey Hinton",
    year=2020,
    url="https://arxiv.org/abs/2002.05709",
)
SUPCON_PAPER = Reference(
    title="Supervised Contrastive Learning",
    authors="Prannay Khosla, Piotr Teterwak, Chen Wang, Aaron Sarna, Yonglong Tian, Phillip Isola, Aaron Maschinot, Ce Liu, Dilip Krishnan",
    year=2020,
    url="https://arxiv.org/abs/2004.11362",
)
ALIGN_UNIFORM_PAPER = Reference(
    title="Understanding Contrastive Representation Learning through Alignment and Uniformity on the Hypersphere",
    authors="Tongzhou Wang, Phillip Isola",
    year=2020,
    url="https://arxiv.org/abs/2005.10242",
)


def _layout(x: torch.Tensor, gather: bool, group) -> tuple[int, int, int]:
    """(world size, this rank's offset in the gathered batch, total size) — (1, 0, n) alone."""
    if gather or group is not None:
        return shard_layout(x, group=group)
    return 1, 0, x.shape[0]


def _check_gather(*, gather: bool, **_) -> None:
    if not isinstance(gather, bool):
        raise TypeError(f"gather must be a bool, got {gather!r}")


def _check_info_nce(*, symmetric: bool, **kw) -> None:
    _check_gather(**kw)
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool, got {symmetric!r}")


def _check_alpha(*, alpha: float, **_) -> None:
    check_positive(alpha, "alpha")


def _check_t(*, t: float, **_) -> None:
    check_positive(t, "t")


def _embeddings(x: torch.Tensor, name: str, dtype) -> torch.Tensor:
    check_floating(x, name)
    check_ndim(x, name, 2)
    return F.normalize(upcast(x, dtype), dim=-1)


# Rows per block are chosen so that one block holds about this many similarities
# (16 MiB in float32): big enough for efficient matmuls, small next to the B x B matrix.
_BLOCK_ELEMS = 1 << 22


class _RowLogSumExp(torch.autograd.Function):
    """Row (and optionally column) log-sum-exps of ``scale * A @ C^T`` without storing the matrix.

    ``lse_i = logsumexp_j s_ij`` over ``j != exclude_i``; with ``ncols > 0`` also
    ``clse_j = logsumexp_i s_ij`` for the first ``ncols`` columns (CLIP's key -> query
    direction from the same blocks). ``cands=None`` means ``C = A`` (self-similarities;
    one input, so that ``torch.compile`` traces it: it refuses the same tensor passed
    twice). Forward keeps only these vectors; backward recomputes each block of
    similarities, turns it into softmax weights ``exp(s - lse)`` (entries <= 1: no
    overflow for any scale) and accumulates ``dA = scale * P @ C`` and
    ``dC = scale * P^T @ A``. Column log-sum-exps are accumulated across row blocks with
    ``logaddexp`` (the streaming form of a log-sum-exp).
    """

    @staticmethod
    def forward(ctx, anchors, cands, scale, exclude, ncols):
        ctx.self_cands = cands is None
        c = anchors if cands is None else cands
        n, m = anchors.shape[0], c.shape[0]
        rows = max(1, _BLOCK_ELEMS // max(m, 1))
        lse = anchors.new_empty(n)
        clse = anchors.new_full((ncols,), float("-inf"))
        for i in range(0, n, rows):
            s = _sim_block(anchors, c, scale, exclude, i, min(i + rows, n))
            torch.logsumexp(s, dim=1, out=lse[i : i + s.shape[0]])
            if ncols:
                clse = torch.logaddexp(clse, torch.logsumexp(s[:, :ncols], dim=0))
        ctx.save_for_backward(anchors, cands, lse, clse, exclude)
        ctx.scale, ctx.rows = scale, rows
        return lse, clse

    @staticmethod
    def backward(ctx, grad, grad_col):
        if torch.is_grad_enabled():
            # create_graph=True: the in-place block recomputation below is not itself
            # differentiable; fail loudly instead of returning a silently partial Hessian.
            raise RuntimeError("info_nce / nt_xent / supcon_loss are not twice differentiable (create_graph=True)")
        anchors, cands, lse, clse, exclude = ctx.saved_tensors
        self_cands = ctx.self_cands
        if self_cands:
            cands = anchors
        scale, rows, n, ncols = ctx.scale, ctx.rows, anchors.shape[0], clse.shape[0]
        zero = torch.zeros((), dtype=lse.dtype, device=lse.device)
        # A row without any candidate has lse = -inf; use 0 there so that its block row
        # is exp(-inf) = 0 instead of NaN (isneginf: a NaN lse stays NaN and propagates).
        lse = torch.where(torch.isneginf(lse), zero, lse)
        need_a = ctx.needs_input_grad[0]
        need_c = ctx.needs_input_grad[1] or (self_cands and need_a)
        d_anchors = torch.empty_like(anchors) if need_a else None
        d_cands = torch.zeros_like(cands) if need_c else None
        col_w = None
        if ncols and grad_col is not None:
            col_w = grad_col * scale
        for i in range(0, n, rows):
            j = min(i + rows, n)
            s = _sim_block(anchors, cands, scale, exclude, i, j)
            if col_w is not None:  # column softmax weights, before s is overwritten
                pc = (s[:, :ncols] - clse).exp_().mul_(col_w)
            p = s.sub_(lse[i:j, None]).exp_().mul_(grad[i:j, None] * scale)  # dL/ds * scale, in place
            if col_w is not None:
                p[:, :ncols] += pc
            if d_anchors is not None:
                torch.mm(p, cands, out=d_anchors[i:j])
            if d_cands is not None:
                d_cands.addmm_(p.T, anchors[i:j])
        if self_cands:  # C = A: both paths reach the one input
            return (d_anchors + d_cands if need_a else None), None, None, None, None
        return d_anchors, d_cands, None, None, None


def _sim_block(anchors, cands, scale, exclude, i, j):
    s = torch.mm(anchors[i:j], cands.T).mul_(scale)
    if exclude is not None:  # an anchor is not its own negative: -inf at its own column
        s[torch.arange(j - i, device=s.device), exclude[i:j]] = float("-inf")
    return s


def _row_lse(anchors, cands, temperature, exclude=None):
    """Differentiable per-row log-sum-exp of ``<a_i, c_j> / temperature`` over ``j != exclude[i]``.

    ``cands=None``: the anchors are their own candidates.
    """
    return _RowLogSumExp.apply(anchors, cands, 1.0 / temperature, exclude, 0)[0]


def _row_col_lse(anchors, cands, temperature, ncols):
    """Row log-sum-exps over all of ``cands`` and column log-sum-exps of its first ``ncols`` columns."""
    return _RowLogSumExp.apply(anchors, cands, 1.0 / temperature, None, ncols)


def _pair_views(n=6, d=4, negatives=False, **kw) -> Example:
    def make(gen):
        return (randn(gen, n, d), randn(gen, n, d)), dict(kw)

    def mismatch(gen):
        return (randn(gen, n, d), randn(gen, n - 1, d)), dict(kw)

    def with_negatives(gen):  # extra negatives, both directions and one way
        return (randn(gen, n, d), randn(gen, n, d)), {**kw, "negatives": randn(gen, 3, d)}

    def one_way(gen):
        return (randn(gen, n, d), randn(gen, n, d)), {**kw, "negatives": randn(gen, 2, d), "symmetric": False}

    return Example(make=make, mismatch=mismatch, mismatch_match="query|key", extreme=(0, 1),
                   variants=(with_negatives, one_way) if negatives else ())


def _warn_single_pair(name: str, total: int, extra: str = "") -> None:
    if total == 1 and validation_enabled():
        warnings.warn(f"{name}: a batch of one pair has no negatives{extra}; the loss is 0", UserWarning, stacklevel=3)


@register("info_nce", family="contrastive", reference=CPC_PAPER, seed=BEHAVIOUR_SEED,
          example=_pair_views(temperature=0.5, negatives=True), input_kind="embeddings",
          tags=("self-supervised", "clip", "infonce", "image-text", "retrieval", "distributed"))
@hyperparameter_checks(_check_info_nce)
def info_nce(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    temperature: float = 0.07,
    symmetric: bool = True,
    negatives: torch.Tensor | None = None,
    gather: bool = False,
    group=None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""InfoNCE, CLIP style: key i is query i's positive, the other keys (and extra negatives) its negatives.

    With cosine similarities :math:`s_{ij} = \langle \hat q_i, \hat k_j\rangle` (unit vectors),

    .. math::
        \ell_i = -\log\frac{e^{s_{ii}/\tau}}{\sum_j e^{s_{ij}/\tau} + \sum_m e^{\langle\hat q_i, \hat n_m\rangle/\tau}},

    i.e. cross-entropy over each row of the similarity matrix with target :math:`i` (B − 1
    in-batch negatives, plus the optional ``negatives``). ``symmetric=True`` averages it with
    the key→query direction (rows of :math:`S^\top`, without the extra negatives), as CLIP does.
    For SimCLR's pooled version with 2B − 2 negatives see :func:`nt_xent`. The B × B
    matrix is processed in row blocks and recomputed in backward (both directions from the
    same blocks), so memory stays O((B + M)·D) plus one block; not twice differentiable.
    A batch of one pair without ``negatives`` has no negative: the loss is 0 and a
    ``UserWarning`` says so (when validation is on).

    Args:
        query: ``(B, D)`` embeddings (normalized inside).
        key: ``(B, D)`` embeddings of the positives (row ``i`` goes with ``query[i]``).
        temperature: :math:`\tau > 0`.
        symmetric: average both directions.
        negatives: optional ``(M, D)`` extra negatives for the query→key direction (e.g. a
            memory queue; per batch, a ``forward`` argument of the Module). Not gathered:
            under ``gather=True`` every rank should pass the same bank; DDP's averaging then
            gives its single-process gradient.
        gather: contrast with the queries and keys of every rank (exact under DDP, uneven
            batch sizes allowed); ``group``: the process group (a group implies ``gather``).
            Each rank then returns its *share*: ``W`` times its local anchors' values
            (``"none"``, ``"sum"``), the ``"mean"`` dividing their sum by the global number
            of anchors, so that the mean over the ``W`` ranks is the single-process value.
            Log :func:`losslab.distributed.global_value` of the loss, not a rank's own
            value (rule in :mod:`losslab.distributed`).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per local query).

    Shape:
        query, key ``(B, D)``; output ``(B,)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import info_nce
        >>> q = torch.eye(3)
        >>> info_nce(q, q, temperature=0.1) < 1e-3   # perfectly aligned, orthogonal negatives
        tensor(True)

    References:
        van den Oord, Li, Vinyals, "Representation Learning with Contrastive Predictive
        Coding", 2018, https://arxiv.org/abs/1807.03748; Radford et al., "Learning
        Transferable Visual Models From Natural Language Supervision" (CLIP), 2021,
        https://arxiv.org/abs/2103.00020.
    """
    check_positive(temperature, "temperature")
    _check_info_nce(symmetric=symmetric, gather=gather)
    check_same_shape(query, key, ("query", "key"))
    dtype = compute_dtype(query, key)
    q, k = _embeddings(query, "query", dtype), _embeddings(key, "key", dtype)
    world, offset, total = _layout(q, gather, group)
    keys, queries = (_gather(k, group=group), _gather(q, group=group)) if world > 1 else (k, q)
    cands = keys
    if negatives is not None:
        nn_ = _embeddings(negatives, "negatives", dtype)
        if nn_.shape[1] != q.shape[1]:
            raise ValueError(f"negatives must have {q.shape[1]} features, got shape {tuple(negatives.shape)}")
        cands = torch.cat([keys, nn_])
    else:
        _warn_single_pair("info_nce", total, " (pass `negatives`)")
    # -log softmax at the positive = lse over the row - s_ii; s_ii is one dot product per pair.
    pos = (q * k).sum(-1) / temperature
    if symmetric and world == 1:
        # key -> query direction = columns of the same matrix: one pass gives both
        row, col = _row_col_lse(q, cands, temperature, k.shape[0])
        loss = 0.5 * (row + col) - pos
    elif symmetric:
        # local keys against the queries of every rank (columns of the full matrix)
        loss = 0.5 * (_row_lse(q, cands, temperature) + _row_lse(k, queries, temperature)) - pos
    else:
        loss = _row_lse(q, cands, temperature) - pos
    if world > 1:
        return reduce_gathered(loss, reduction, world=world, count=total)
    return reduce(loss, reduction)


@register("nt_xent", family="contrastive", reference=SIMCLR_PAPER, seed=BEHAVIOUR_SEED, example=_pair_views(temperature=0.5),
          input_kind="embeddings", tags=("self-supervised", "simclr", "ntxent", "two views", "distributed"))
@hyperparameter_checks(_check_gather)
def nt_xent(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    temperature: float = 0.1,
    gather: bool = False,
    group=None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""SimCLR's NT-Xent: both views pooled, each anchor's positive is its other view, 2B − 2 negatives.

    With the 2B unit embeddings :math:`z = [\hat q; \hat k]` (the two views),
    :math:`s_{ab} = \langle z_a, z_b\rangle` and :math:`p(a)` the other view of :math:`a`,

    .. math::
        \ell_a = -\log\frac{e^{s_{a\,p(a)}/\tau}}{\sum_{b \ne a} e^{s_{ab}/\tau}} .

    Equal to pytorch-metric-learning's ``SelfSupervisedLoss(NTXentLoss(τ), symmetric=True)``.
    Memory: the 2B × 2B similarity matrix is never stored; each anchor's log-sum-exp is
    computed block by block and the blocks are recomputed in backward (the peer's NT-Xent
    builds O(B³) intermediates, 34 GB at B = 1024). Not twice differentiable
    (``create_graph=True`` raises). A batch of one pair has no negative: the loss is 0 and a
    ``UserWarning`` says so (when validation is on), as :func:`supcon_loss` does.

    Args:
        query, key: ``(B, D)`` embeddings of the two views, row ``i`` of each from the same
            sample (normalized inside).
        temperature: :math:`\tau > 0`.
        gather: pool the views of every rank (exact under DDP, uneven batch sizes allowed);
            ``group``: the process group (a group implies ``gather``). Each rank then
            returns its *share*: ``W`` times its local anchors' values (``"none"``,
            ``"sum"``), the ``"mean"`` dividing their sum by the global number of anchors
            2N, so that the mean over the ``W`` ranks is the single-process value. Log
            :func:`losslab.distributed.global_value` of the loss, not a rank's own value
            (rule in :mod:`losslab.distributed`).
        reduction: ``"mean"`` over the 2B anchors, ``"sum"`` or ``"none"``.

    Shape:
        query, key ``(B, D)``; output ``(2B,)`` for ``"none"`` (``query`` anchors first), else
        a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import nt_xent
        >>> nt_xent(torch.eye(4), torch.eye(4), temperature=0.1) < 1e-3
        tensor(True)

    References:
        Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of
        Visual Representations", ICML 2020, https://arxiv.org/abs/2002.05709.
    """
    check_positive(temperature, "temperature")
    _check_gather(gather=gather)
    check_same_shape(query, key, ("query", "key"))
    dtype = compute_dtype(query, key)
    a1, a2 = _embeddings(query, "query", dtype), _embeddings(key, "key", dtype)
    b = a1.shape[0]
    world, offset, total = _layout(a1, gather, group)
    _warn_single_pair("nt_xent", total)
    anchors = torch.cat([a1, a2])
    # Candidates: the pooled views of every rank; alone, the anchors themselves (None).
    cand = torch.cat([_gather(a1, group=group), _gather(a2, group=group)]) if world > 1 else None
    local = torch.arange(b, device=a1.device) + offset
    own = torch.cat([local, local + total])  # each anchor's own column in the pooled batch
    # positive logit: <view 1, view 2> / tau, the same for both anchors of a pair
    pos = (a1 * a2).sum(-1) / temperature
    loss = _row_lse(anchors, cand, temperature, own) - torch.cat([pos, pos])
    if world > 1:
        return reduce_gathered(loss, reduction, world=world, count=2 * total)
    return reduce(loss, reduction)


def _labelled(n=8, d=4, mean_rule=None, **kw) -> Example:
    def make(gen):
        return (randn(gen, n, d), torch.tensor([0, 1, 2, 0, 1, 2, 0, 3])), dict(kw)

    def mismatch(gen):
        return (randn(gen, n, d), randint(gen, 3, n - 1)), dict(kw)

    def int32_labels(gen):  # any integer dtype; a class (4) with one sample only
        return (randn(gen, n, d), torch.tensor([4, 1, 1, 0, 2, 2, 0, 1], dtype=torch.int32)), dict(kw)

    return Example(make=make, mismatch=mismatch, mismatch_match="labels", extreme=(0,), mean_rule=mean_rule,
                   variants=(int32_labels,))


def _same_label_counts(labels: torch.Tensor) -> torch.Tensor:
    """Per sample, the number of *other* samples with its label (a loop-free reference for the Examples)."""
    return (labels[:, None] == labels[None, :]).sum(1) - 1


def _mean_over_anchors_with_a_positive(none: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    k = (_same_label_counts(args[1]) > 0).sum()
    return none.sum() / k if k > 0 else none.sum() * 0


def _mean_over_same_label_pairs(none: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    k = _same_label_counts(args[1]).sum()
    return none.sum() / k if k > 0 else none.sum() * 0


def _check_labels(embeddings, labels):
    check_integer(labels, "labels")
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(f"labels must have shape ({embeddings.shape[0]},) (one per embedding), got {tuple(labels.shape)}")


def _label_groups(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(group, count)``: a group id in ``[0, N)`` per sample (same label, same id) and each group's size.

    Sort-based with static shapes (no ``torch.unique``, whose output size depends on the
    values and would break a compiled graph); ``count`` has length N, unused ids count 0.
    """
    n = labels.shape[0]
    sorted_labels, order = torch.sort(labels, stable=True)
    starts = torch.ones(n, dtype=torch.bool, device=labels.device)
    starts[1:] = sorted_labels[1:] != sorted_labels[:-1]
    group_sorted = torch.cumsum(starts, 0) - 1
    group = torch.empty_like(group_sorted).scatter_(0, order, group_sorted)
    count = torch.zeros(n, dtype=group.dtype, device=labels.device).index_add_(0, group, torch.ones_like(group))
    return group, count


@register("supcon_loss", family="contrastive", reference=SUPCON_PAPER, seed=BEHAVIOUR_SEED,
          example=_labelled(temperature=0.5, mean_rule=_mean_over_anchors_with_a_positive), input_kind="embeddings",
          tags=("supervised contrastive", "supcon", "labels", "distributed"))
@hyperparameter_checks(_check_gather)
def supcon_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 0.1,
    gather: bool = False,
    group=None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Supervised contrastive loss: every same-label sample is a positive (SupCon "out" form).

    For anchor :math:`i` with positives :math:`P(i) = \{p \ne i: y_p = y_i\}`,

    .. math::
        \ell_i = -\frac{1}{|P(i)|}\sum_{p \in P(i)} \log\frac{e^{s_{ip}/\tau}}{\sum_{a \ne i} e^{s_{ia}/\tau}} .

    ``"mean"`` averages over the anchors that have a positive, as pytorch-metric-learning's
    ``SupConLoss`` does: ``"none"`` holds every anchor's :math:`\ell_i`, 0 for anchors without
    a positive, so ``"mean"`` is ``"none".sum()`` over the number of anchors with a positive.
    A batch in which no anchor has a positive gives 0 and a ``UserWarning`` (when validation
    is on). The positives' mean logit comes from per-class embedding sums (no N × N mask) and
    the denominator from a blockwise log-sum-exp recomputed in backward; not twice
    differentiable.

    Args:
        embeddings: ``(N, D)`` (normalized inside).
        labels: ``(N,)`` integer labels (any integer dtype).
        temperature: :math:`\tau > 0`.
        gather: contrast with the embeddings of every rank (exact under DDP, uneven batch
            sizes allowed); ``group``: the process group (a group implies ``gather``). Each
            rank then returns its *share*: ``W`` times its local anchors' values (``"none"``,
            ``"sum"``), the ``"mean"`` dividing their sum by the global number of anchors with
            a positive, so that the mean over the ``W`` ranks is the single-process value.
            Log :func:`losslab.distributed.global_value` of the loss, not a rank's own value
            (rule in :mod:`losslab.distributed`).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        embeddings ``(N, D)``, labels ``(N,)``; output ``(N,)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import supcon_loss
        >>> e = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
        >>> supcon_loss(e, torch.tensor([0, 0, 1, 1]), temperature=0.1) < 1e-3
        tensor(True)

    References:
        Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020,
        https://arxiv.org/abs/2004.11362.
    """
    check_positive(temperature, "temperature")
    _check_gather(gather=gather)
    e = _embeddings(embeddings, "embeddings", compute_dtype(embeddings))
    _check_labels(embeddings, labels)
    n = e.shape[0]
    world, offset, total = _layout(e, gather, group)
    cand, cand_labels = (_gather(e, group=group), gather_no_grad(labels, group=group)) if world > 1 else (e, labels)
    own = torch.arange(n, device=e.device) + offset
    # The positives' mean logit without the (n, N) matrix: sum_{p in P(i)} c_p is anchor i's
    # class sum minus its own embedding, so (1/|P(i)|) sum_p s_ip = <e_i, S_{y_i} - e_i> / (tau |P(i)|).
    inverse, counts = _label_groups(cand_labels)
    class_sum = torch.zeros_like(cand).index_add(0, inverse, cand)
    mine = inverse[offset : offset + n]
    n_pos = counts[mine] - 1
    has_pos = n_pos > 0
    pos = (e * (class_sum[mine] - cand[own])).sum(-1) / (temperature * n_pos.clamp_min(1).to(e.dtype))
    zero = torch.zeros((), dtype=e.dtype, device=e.device)
    lse = _row_lse(e, cand if world > 1 else None, temperature, own)
    loss = torch.where(has_pos, lse - pos, zero)
    if world > 1 or validation_enabled():  # one host sync: the global count of anchors with a positive
        n_anchors = int((counts[inverse] > 1).sum())
    if validation_enabled() and total > 0 and n_anchors == 0:
        warnings.warn("supcon_loss: no anchor has a positive (every label is unique); the loss is 0", UserWarning,
                      stacklevel=2)
    if world > 1:
        return reduce_gathered(loss, reduction, world=world, count=n_anchors)
    return reduce(loss, reduction, mask=has_pos)


@register("alignment", family="contrastive", reference=ALIGN_UNIFORM_PAPER, seed=BEHAVIOUR_SEED,
          example=_pair_views(alpha=2.0), input_kind="embeddings", module_required=False,
          tags=("diagnostic", "metric", "alignment", "hypersphere"))
@hyperparameter_checks(_check_alpha)
def alignment(query: torch.Tensor, key: torch.Tensor, *, alpha: float = 2.0, reduction: Reduction = "mean") -> torch.Tensor:
    r"""Alignment of positive pairs: the mean of ‖q̂_i − k̂_i‖^α over unit-normalized pairs (lower is better).

    .. math:: \mathcal L_{\text{align}} = \frac1n\sum_i \|\hat q_i - \hat k_i\|_2^{\alpha}

    Args:
        query, key: ``(n, D)`` embeddings of positive pairs, row ``i`` of each from the same
            sample (normalized inside).
        alpha: :math:`\alpha > 0` (2 in the paper).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per pair).

    Shape:
        query, key ``(n, D)``; output ``(n,)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import alignment
        >>> alignment(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))   # |e1 - e2|^2
        tensor(2.0000)

    References:
        Wang & Isola, "Understanding Contrastive Representation Learning through Alignment
        and Uniformity on the Hypersphere", ICML 2020, https://arxiv.org/abs/2005.10242.
    """
    _check_alpha(alpha=alpha)
    check_same_shape(query, key, ("query", "key"))
    dtype = compute_dtype(query, key)
    d = _embeddings(query, "query", dtype) - _embeddings(key, "key", dtype)
    # |d|^alpha from the squared norm, floored so that identical pairs keep a finite gradient
    # (clamp_min keeps NaN, and NaN * False is NaN: a NaN input still gives a NaN loss).
    sq = d.square().sum(-1)
    return reduce(sq.clamp_min(torch.finfo(dtype).tiny).pow(alpha / 2) * (sq > 0), reduction)


def _single_view(n=7, d=3, **kw) -> Example:
    def make(gen):
        return (randn(gen, n, d),), dict(kw)

    def mismatch(gen):
        return (randn(gen, n),), dict(kw)

    return Example(make=make, mismatch=mismatch, mismatch_match="embeddings", extreme=(0,))


@register("uniformity", family="contrastive", reference=ALIGN_UNIFORM_PAPER, seed=BEHAVIOUR_SEED,
          example=_single_view(t=2.0), input_kind="embeddings", module_required=False, batch_level=True,
          tags=("diagnostic", "metric", "uniformity", "hypersphere", "collapse"))
@hyperparameter_checks(_check_t)
def uniformity(embeddings: torch.Tensor, *, t: float = 2.0) -> torch.Tensor:
    r"""Uniformity on the hypersphere: log of the mean Gaussian potential over distinct pairs (lower is more uniform).

    .. math:: \mathcal L_{\text{uniform}} = \log\frac{2}{n(n-1)}\sum_{i<j} e^{-t\|\hat x_i - \hat x_j\|^2}

    computed as a ``logsumexp`` (finite even when every pair is far apart). A single number
    of the whole set (the log of a mean has no per-sample terms): no ``reduction``.

    Args:
        embeddings: ``(n, D)`` (normalized inside), :math:`n \ge 2`.
        t: the paper's :math:`t > 0` (2 in the paper), the scale of the Gaussian potential
            (a multiplier of squared distances, not a temperature).

    Shape:
        embeddings ``(n, D)``; output a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import uniformity
        >>> uniformity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))   # antipodal: -t * 4
        tensor(-8.)

    References:
        Wang & Isola, ICML 2020, https://arxiv.org/abs/2005.10242.
    """
    _check_t(t=t)
    e = _embeddings(embeddings, "embeddings", compute_dtype(embeddings))
    n = e.shape[0]
    if n < 2:
        raise ValueError(f"uniformity needs at least 2 embeddings, got {n}")
    iu = torch.triu_indices(n, n, offset=1, device=e.device)
    # |a - b|^2 = 2 - 2 <a, b> on the sphere; clamp_min keeps NaN (a NaN input gives NaN).
    sq = (2 - 2 * (e @ e.T)).clamp_min(0)[iu[0], iu[1]]
    return torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel())


@register("tolerance", family="contrastive", reference=BEHAVIOUR_PAPER, seed=BEHAVIOUR_SEED,
          example=_labelled(mean_rule=_mean_over_same_label_pairs), input_kind="embeddings", module_required=False,
          tags=("diagnostic", "metric", "tolerance", "temperature"))
def tolerance(embeddings: torch.Tensor, labels: torch.Tensor, *, reduction: Reduction = "mean") -> torch.Tensor:
    r"""Tolerance to semantically similar samples: mean cosine similarity of distinct same-class pairs.

    .. math:: T = \frac{1}{|\{(i, j): i \ne j, y_i = y_j\}|}\sum_{i \ne j,\, y_i = y_j} \langle \hat e_i, \hat e_j\rangle

    High tolerance means same-class samples stay close; Wang & Liu show that a small
    temperature makes contrastive representations more uniform but less tolerant.

    Per sample :math:`i`, ``"none"`` gives :math:`\sum_{j \ne i,\, y_j = y_i} \langle \hat e_i, \hat e_j\rangle`,
    the sum over its same-class partners (0 for a sample alone in its class; divide by its
    number of partners for its own mean similarity). ``"mean"`` divides the sum of these by
    the number of same-class (ordered) pairs, which is :math:`T` above; it is 0 when no class
    has two samples. ``"sum"`` is the sum over the pairs.

    Args:
        embeddings: ``(n, D)`` (normalized inside).
        labels: ``(n,)`` integer labels (used only for the metric, not for training).
        reduction: ``"mean"`` (:math:`T`), ``"sum"`` or ``"none"`` (per sample, see above).

    Shape:
        embeddings ``(n, D)``, labels ``(n,)``; output ``(n,)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import tolerance
        >>> tolerance(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0, 0, 1]))
        tensor(0.)

    References:
        Wang & Liu, "Understanding the Behaviour of Contrastive Loss", CVPR 2021,
        https://arxiv.org/abs/2012.09740.
    """
    e = _embeddings(embeddings, "embeddings", compute_dtype(embeddings))
    _check_labels(embeddings, labels)
    n = e.shape[0]
    same = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~torch.eye(n, dtype=torch.bool, device=e.device)
    # Only same-class pairs count: where() leaves the other similarities (and their NaNs) out.
    per_sample = torch.where(same, e @ e.T, torch.zeros((), dtype=e.dtype, device=e.device)).sum(1)
    return reduce(per_sample, reduction, normalizer=same.sum(1))
