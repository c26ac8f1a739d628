"""Contrastive objectives on embeddings (cosine similarity over a temperature) and their diagnostics.

Memory is O(B·D) saved for backward plus one block of at most ``_BLOCK_ELEMS`` similarities
at a time: ``info_nce``, ``nt_xent`` and ``supcon_loss`` share :class:`_RowLogSumExp`, which
computes each anchor's log-sum-exp over its candidates block by block, keeps only the
per-row values, and recomputes the similarity blocks in backward (the B × B matrix is never
stored). With ``gather=True`` every rank contrasts its local anchors with the embeddings of
all ranks and scales its loss so that distributed training is exactly single-process
training on the concatenated batch (see :mod:`losslab.distributed`).
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from .._checks import check_reduction, check_floating, check_integer, check_ndim, check_positive, check_same_shape, validation_enabled
from .._numerics import compute_dtype, upcast
from .._reduction import reduce
from ..distributed import gather as _gather
from ..distributed import gather_no_grad, rank_and_world
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


def _layout(n_local: int, group, device) -> tuple[int, int, int]:
    """(world size, this rank's offset in the gathered batch, total size) — (1, 0, n) alone."""
    rank, world = rank_and_world(group)
    if world == 1:
        return 1, 0, n_local
    sizes = gather_no_grad(torch.tensor([n_local], device=device), group=group)
    return world, int(sizes[:rank].sum()), int(sizes.sum())


def _reduce_gathered(loss: torch.Tensor, reduction: str, world: int, denom: int) -> torch.Tensor:
    """The exactness rule: W * local sum (/ global count for "mean"); "none" stays local."""
    check_reduction(reduction)
    if reduction == "none":
        return loss
    total = loss.sum() * world
    return total if reduction == "sum" else total / max(denom, 1)


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
    direction from the same blocks). Forward keeps only these vectors; backward recomputes
    each block of similarities, turns it into softmax weights ``exp(s - lse)`` (entries
    <= 1: no overflow for any scale) and accumulates ``dA = scale * P @ C`` and
    ``dC = scale * P^T @ A``. Column log-sum-exps are accumulated across row blocks with
    ``logaddexp`` (the streaming form of a log-sum-exp).
    """

    @staticmethod
    def forward(ctx, anchors, cands, scale, exclude, ncols):
        n, m = anchors.shape[0], cands.shape[0]
        rows = max(1, _BLOCK_ELEMS // max(m, 1))
        lse = anchors.new_empty(n)
        clse = anchors.new_full((ncols,), float("-inf"))
        for i in range(0, n, rows):
            s = _sim_block(anchors, cands, scale, exclude, i, min(i + rows, n))
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
        scale, rows, n, ncols = ctx.scale, ctx.rows, anchors.shape[0], clse.shape[0]
        zero = torch.zeros((), dtype=lse.dtype, device=lse.device)
        # A row without any candidate has lse = -inf; use 0 there so that its block row
        # is exp(-inf) = 0 instead of NaN.
        lse = torch.where(torch.isinf(lse), zero, lse)
        d_anchors = torch.empty_like(anchors) if ctx.needs_input_grad[0] else None
        d_cands = torch.zeros_like(cands) if ctx.needs_input_grad[1] else None
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
        return d_anchors, d_cands, None, None, None


def _sim_block(anchors, cands, scale, exclude, i, j):
    s = torch.mm(anchors[i:j], cands.T).mul_(scale)
    if exclude is not None:  # an anchor is not its own negative: -inf at its own column
        s[torch.arange(j - i, device=s.device), exclude[i:j]] = float("-inf")
    return s


def _row_lse(anchors, cands, temperature, exclude=None):
    """Differentiable per-row log-sum-exp of ``<a_i, c_j> / temperature`` over ``j != exclude[i]``."""
    return _RowLogSumExp.apply(anchors, cands, 1.0 / temperature, exclude, 0)[0]


def _row_col_lse(anchors, cands, temperature, ncols):
    """Row log-sum-exps over all of ``cands`` and column log-sum-exps of its first ``ncols`` columns."""
    return _RowLogSumExp.apply(anchors, cands, 1.0 / temperature, None, ncols)


def _pair_views(n=6, d=4, **kw) -> Example:
    def make(gen):
        return (randn(gen, n, d), randn(gen, n, d)), dict(kw)

    def mismatch(gen):
        return (randn(gen, n, d), randn(gen, n - 1, d)), dict(kw)

    return Example(make=make, mismatch=mismatch, logits=(0, 1))


@register("info_nce", family="contrastive", reference=CPC_PAPER, seed=BEHAVIOUR_SEED, example=_pair_views(temperature=0.5),
          input_kind="embeddings", batch_level=True)
def info_nce(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    temperature: float = 0.07,
    symmetric: bool = True,
    negatives: torch.Tensor | None = None,
    gather: bool = False,
    group=None,
    reduction: str = "mean",
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

    Args:
        query: ``(B, D)`` embeddings (normalized inside).
        key: ``(B, D)`` embeddings of the positives.
        temperature: :math:`\tau > 0`.
        symmetric: average both directions.
        negatives: optional ``(M, D)`` extra negatives for the query→key direction (e.g. a
            memory queue). Not gathered: under ``gather=True`` every rank should pass the
            same bank; DDP's averaging then gives its single-process gradient.
        gather: contrast with the queries and keys of every rank (exact under DDP, uneven
            batch sizes allowed); ``group``: the process group (a group implies
            ``gather``). Each rank returns ``W / N_global`` times the sum of its anchors'
            losses (``W`` times for ``"sum"``; ``"none"`` stays per local anchor), see
            :mod:`losslab.distributed`.
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
    check_same_shape(query, key, ("query", "key"))
    dtype = compute_dtype(query, key)
    q, k = _embeddings(query, "query", dtype), _embeddings(key, "key", dtype)
    world, offset, total = _layout(q.shape[0], group, q.device) if gather or group is not None else (1, 0, q.shape[0])
    keys, queries = (_gather(k, group=group), _gather(q, group=group)) if world > 1 else (k, q)
    cands = keys
    if negatives is not None:
        nn_ = _embeddings(negatives, "negatives", dtype)
        if nn_.shape[1] != q.shape[1]:
            raise ValueError(f"negatives must have {q.shape[1]} features, got shape {tuple(negatives.shape)}")
        cands = torch.cat([keys, nn_])
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
        return _reduce_gathered(loss, reduction, world, total)
    return reduce(loss, reduction)


@register("nt_xent", family="contrastive", reference=SIMCLR_PAPER, seed=BEHAVIOUR_SEED, example=_pair_views(temperature=0.5),
          input_kind="embeddings", batch_level=True)
def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.1,
    gather: bool = False,
    group=None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""SimCLR's NT-Xent: both views pooled, each anchor's positive is its other view, 2B − 2 negatives.

    With the 2B unit embeddings :math:`z = [\hat z^{(1)}; \hat z^{(2)}]`, :math:`s_{ab} = \langle z_a, z_b\rangle`
    and :math:`p(a)` the other view of :math:`a`,

    .. math::
        \ell_a = -\log\frac{e^{s_{a\,p(a)}/\tau}}{\sum_{b \ne a} e^{s_{ab}/\tau}} .

    Equal to pytorch-metric-learning's ``SelfSupervisedLoss(NTXentLoss(τ), symmetric=True)``.
    Memory: the 2B × 2B similarity matrix is never stored; each anchor's log-sum-exp is
    computed block by block and the blocks are recomputed in backward (the peer's NT-Xent
    builds O(B³) intermediates, 34 GB at B = 1024). Not twice differentiable
    (``create_graph=True`` raises).

    Args:
        z1, z2: ``(B, D)`` embeddings of the two views (normalized inside).
        temperature: :math:`\tau > 0`.
        gather: pool the views of every rank (exact under DDP, uneven batch sizes allowed);
            ``group``: the process group (a group implies
            ``gather``). Each rank returns ``W / N_global`` times the sum of its anchors'
            losses (``W`` times for ``"sum"``; ``"none"`` stays per local anchor), see
            :mod:`losslab.distributed`.
        reduction: ``"mean"`` over the 2B anchors, ``"sum"`` or ``"none"``.

    Shape:
        z1, z2 ``(B, D)``; output ``(2B,)`` for ``"none"`` (view-1 anchors first), else a scalar.

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
    check_same_shape(z1, z2, ("z1", "z2"))
    dtype = compute_dtype(z1, z2)
    a1, a2 = _embeddings(z1, "z1", dtype), _embeddings(z2, "z2", dtype)
    b = z1.shape[0]
    world, offset, total = _layout(b, group, a1.device) if gather or group is not None else (1, 0, b)
    cand = torch.cat([_gather(a1, group=group), _gather(a2, group=group)]) if world > 1 else torch.cat([a1, a2])
    anchors = torch.cat([a1, a2])
    local = torch.arange(b, device=a1.device) + offset
    own = torch.cat([local, local + total])  # each anchor's own column in the pooled batch
    # positive logit: <view 1, view 2> / tau, the same for both anchors of a pair
    pos = (a1 * a2).sum(-1) / temperature
    loss = _row_lse(anchors, cand, temperature, own) - torch.cat([pos, pos])
    if world > 1:
        return _reduce_gathered(loss, reduction, world, 2 * total)
    return reduce(loss, reduction)


def _labelled(n=8, d=4, **kw) -> Example:
    def make(gen):
        return (randn(gen, n, d), torch.tensor([0, 1, 2, 0, 1, 2, 0, 3])), dict(kw)

    def mismatch(gen):
        return (randn(gen, n, d), randint(gen, 3, n - 1)), dict(kw)

    return Example(make=make, mismatch=mismatch, logits=(0,))


def _check_labels(embeddings, labels):
    check_integer(labels, "labels")
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(f"labels must have shape ({embeddings.shape[0]},) (one per embedding), got {tuple(labels.shape)}")


@register("supcon_loss", family="contrastive", reference=SUPCON_PAPER, seed=BEHAVIOUR_SEED, example=_labelled(temperature=0.5),
          input_kind="embeddings", batch_level=True)
def supcon_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 0.1,
    gather: bool = False,
    group=None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Supervised contrastive loss: every same-label sample is a positive (SupCon "out" form).

    For anchor :math:`i` with positives :math:`P(i) = \{p \ne i: y_p = y_i\}`,

    .. math::
        \ell_i = -\frac{1}{|P(i)|}\sum_{p \in P(i)} \log\frac{e^{s_{ip}/\tau}}{\sum_{a \ne i} e^{s_{ia}/\tau}} .

    ``"mean"`` averages over anchors that have a positive, as pytorch-metric-learning's
    ``SupConLoss`` does; anchors without one contribute 0 to ``"none"``/``"sum"``. A batch in
    which no anchor has a positive gives 0 and a ``UserWarning`` (when validation is on).
    The positives' mean logit comes from per-class embedding sums (no N × N mask) and the
    denominator from a blockwise log-sum-exp recomputed in backward; not twice differentiable.

    Args:
        embeddings: ``(N, D)`` (normalized inside).
        labels: ``(N,)`` integer labels.
        temperature: :math:`\tau > 0`.
        gather: contrast with the embeddings of every rank (exact under DDP, uneven batch
            sizes allowed); ``group``: the process group (a group implies
            ``gather``). Each rank returns ``W / N_global`` times the sum of its anchors'
            losses (``W`` times for ``"sum"``; ``"none"`` stays per local anchor), see
            :mod:`losslab.distributed`.
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
    e = _embeddings(embeddings, "embeddings", compute_dtype(embeddings))
    _check_labels(embeddings, labels)
    n = e.shape[0]
    world, offset, total = _layout(n, group, e.device) if gather or group is not None else (1, 0, n)
    cand, cand_labels = (_gather(e, group=group), gather_no_grad(labels, group=group)) if world > 1 else (e, labels)
    own = torch.arange(n, device=e.device) + offset
    # The positives' mean logit without the (n, N) matrix: sum_{p in P(i)} c_p is anchor i's
    # class sum minus its own embedding, so (1/|P(i)|) sum_p s_ip = <e_i, S_{y_i} - e_i> / (tau |P(i)|).
    classes, inverse, counts = torch.unique(cand_labels, return_inverse=True, return_counts=True)
    class_sum = torch.zeros((classes.shape[0], cand.shape[1]), dtype=cand.dtype, device=cand.device)
    class_sum = class_sum.index_add(0, inverse, cand)
    mine = inverse[offset : offset + n]
    n_pos = counts[mine] - 1
    has_pos = n_pos > 0
    pos = (e * (class_sum[mine] - cand[own])).sum(-1) / (temperature * n_pos.clamp_min(1).to(e.dtype))
    zero = torch.zeros((), dtype=e.dtype, device=e.device)
    loss = torch.where(has_pos, _row_lse(e, cand, temperature, own) - pos, zero)
    if world > 1 or validation_enabled():  # one host sync: the global count of anchors with a positive
        n_anchors = int((counts[inverse] > 1).sum())
    if validation_enabled() and total > 0 and n_anchors == 0:
        warnings.warn("supcon_loss: no anchor has a positive (every label is unique); the loss is 0", UserWarning,
                      stacklevel=2)
    if world > 1:
        return _reduce_gathered(loss, reduction, world, n_anchors)
    return reduce(loss, reduction, mask=has_pos)


@register("alignment", family="contrastive", reference=ALIGN_UNIFORM_PAPER, seed=BEHAVIOUR_SEED,
          example=_pair_views(alpha=2.0), input_kind="embeddings", module_required=False)
def alignment(x: torch.Tensor, y: torch.Tensor, *, alpha: float = 2.0, reduction: str = "mean") -> torch.Tensor:
    r"""Alignment of positive pairs: the mean of ‖x̂_i − ŷ_i‖^α over unit-normalized pairs (lower is better).

    .. math:: \mathcal L_{\text{align}} = \frac1n\sum_i \|\hat x_i - \hat y_i\|_2^{\alpha}

    Args:
        x, y: ``(n, D)`` embeddings of positive pairs (normalized inside).
        alpha: :math:`\alpha > 0` (2 in the paper).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        output ``(n,)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import alignment
        >>> alignment(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))   # |e1 - e2|^2
        tensor(2.0000)

    References:
        Wang & Isola, "Understanding Contrastive Representation Learning through Alignment
        and Uniformity on the Hypersphere", ICML 2020, https://arxiv.org/abs/2005.10242.
    """
    check_positive(alpha, "alpha")
    check_same_shape(x, y, ("x", "y"))
    dtype = compute_dtype(x, y)
    d = _embeddings(x, "x", dtype) - _embeddings(y, "y", dtype)
    # |d|^alpha from the squared norm, floored so that identical pairs keep a finite gradient.
    sq = d.square().sum(-1)
    return reduce(sq.clamp_min(torch.finfo(dtype).tiny).pow(alpha / 2) * (sq > 0), reduction)


def _single_view(n=7, d=3, **kw) -> Example:
    def make(gen):
        return (randn(gen, n, d),), dict(kw)

    def mismatch(gen):
        return (randn(gen, n),), dict(kw)

    return Example(make=make, mismatch=mismatch, logits=(0,))


@register("uniformity", family="contrastive", reference=ALIGN_UNIFORM_PAPER, seed=BEHAVIOUR_SEED,
          example=_single_view(t=2.0), input_kind="embeddings", module_required=False, batch_level=True)
def uniformity(x: torch.Tensor, *, t: float = 2.0) -> torch.Tensor:
    r"""Uniformity on the hypersphere: log of the mean Gaussian potential over distinct pairs (lower is more uniform).

    .. math:: \mathcal L_{\text{uniform}} = \log\frac{2}{n(n-1)}\sum_{i<j} e^{-t\|\hat x_i - \hat x_j\|^2}

    computed as a ``logsumexp`` (finite even when every pair is far apart).

    Args:
        x: ``(n, D)`` embeddings (normalized inside), :math:`n \ge 2`.
        t: :math:`t > 0` (2 in the paper).

    Shape:
        output a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import uniformity
        >>> uniformity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))   # antipodal: -t * 4
        tensor(-8.)

    References:
        Wang & Isola, ICML 2020, https://arxiv.org/abs/2005.10242.
    """
    check_positive(t, "t")
    e = _embeddings(x, "x", compute_dtype(x))
    n = e.shape[0]
    if n < 2:
        raise ValueError(f"uniformity needs at least 2 embeddings, got {n}")
    iu = torch.triu_indices(n, n, offset=1, device=e.device)
    sq = (2 - 2 * (e @ e.T)).clamp_min(0)[iu[0], iu[1]]  # |a - b|^2 = 2 - 2 <a, b> on the sphere
    return torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel())


@register("tolerance", family="contrastive", reference=BEHAVIOUR_PAPER, seed=BEHAVIOUR_SEED,
          example=_labelled(), input_kind="embeddings", module_required=False, batch_level=True)
def tolerance(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""Tolerance to semantically similar samples: mean cosine similarity of distinct same-class pairs.

    .. math:: T = \frac{1}{|\{(i, j): i \ne j, y_i = y_j\}|}\sum_{i \ne j,\, y_i = y_j} \langle \hat f_i, \hat f_j\rangle

    High tolerance means same-class samples stay close; Wang & Liu show that a small
    temperature makes contrastive representations more uniform but less tolerant. 0 when no
    class has two samples.

    Args:
        features: ``(n, D)`` (normalized inside).
        labels: ``(n,)`` integer labels (used only for the metric, not for training).

    Shape:
        output a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import tolerance
        >>> tolerance(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0, 0, 1]))
        tensor(0.)

    References:
        Wang & Liu, "Understanding the Behaviour of Contrastive Loss", CVPR 2021,
        https://arxiv.org/abs/2012.09740.
    """
    e = _embeddings(features, "features", compute_dtype(features))
    _check_labels(features, labels)
    n = e.shape[0]
    same = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~torch.eye(n, dtype=torch.bool, device=e.device)
    total = torch.where(same, e @ e.T, torch.zeros((), dtype=e.dtype, device=e.device)).sum()
    count = same.sum().to(e.dtype)
    return total / torch.where(count == 0, torch.ones_like(count), count)
