r"""Rank-safe collectives for objectives whose value or state depends on the whole batch.

Single-process use (``torch.distributed`` not available, not initialized, or a group of
one rank) makes every function here the identity, so objectives call them unconditionally.

Exact distributed objectives
----------------------------
A batch-level objective (contrastive negatives, pairwise ranking, ...) trained on
:math:`W` ranks, rank :math:`r` holding :math:`n_r` samples (sizes may differ, total
:math:`N = \sum_r n_r`), should behave exactly like single-process training on the
concatenated batch, whose loss is :math:`L = \frac1N \sum_{i=1}^{N} \ell_i(Z)` with
:math:`Z` the concatenated embeddings. The rule used by every ``gather=True`` objective
(one helper, :func:`reduce_gathered`):

1. :func:`gather` concatenates the embeddings of every rank (rank order) so that every
   rank sees all :math:`N` candidates; each rank evaluates :math:`\ell_i` only for its
   *own* anchors. Anchors may be taken from the local tensor directly: only the owning
   rank has that direct path, so its gradient is already the full term (rule 3).
2. **Each rank returns its share**: its anchors' values multiplied by :math:`W`.
   ``"none"`` gives :math:`W\ell_i` for the local anchors, ``"sum"`` their sum
   :math:`W\sum_{i\in r}\ell_i` (so ``"sum" == "none".sum()`` on every rank) and
   ``"mean"`` that sum divided by the *global* count :math:`N` (of anchors, or of kept
   anchors): :math:`L_r = \frac{W}{N}\sum_{i \in r}\ell_i`. Then the **mean over ranks**
   of the returned values is the single-process value, :math:`\frac1W\sum_r L_r = L`
   (also for ``"sum"``, and for uneven :math:`n_r`); dividing the concatenation of the
   ranks' ``"none"`` outputs by :math:`W` gives the single-process ``"none"`` output. A
   rank's own value is *not* the global loss: log :func:`global_value` (the mean over
   ranks, on every rank) instead. To reduce ``"none"`` yourself, divide its sum by the
   global count :math:`N`, not by the local size.
3. The backward of :func:`gather` *sums* (all-reduce) the incoming gradients of all ranks
   and hands each rank the slice of its own shard, unscaled. The gradient that reaches
   rank :math:`r`'s local embeddings is therefore
   :math:`\sum_s \partial L_s/\partial z_r = W\,\partial L/\partial z_r`, and after
   DistributedDataParallel *averages* the parameter gradients over the :math:`W` ranks the
   model receives :math:`\frac1W\sum_r W\,\frac{\partial L}{\partial z_r}\frac{\partial z_r}{\partial\theta}
   = \partial L/\partial\theta`, the single-process gradient.

Every rank must take part in every collective: call the objective (and ``backward``) on
all ranks. A shape or dtype disagreement between ranks (other than dim 0) raises
``ValueError`` on every rank, after one fixed-size exchange of the shapes, so no rank is
left waiting. Collectives run on the device of the tensors passed in (a CUDA tensor with
NCCL, a CPU tensor with gloo), whatever the backend is called.

Logging
-------
Because each rank returns its share, print or log ``global_value(loss)``, the value of the
single-process objective on the concatenated batch, identical on every rank::

    loss = losslab.functional.nt_xent(query, key, gather=True)
    loss.backward()
    value = losslab.distributed.global_value(loss)   # a collective: call it on every rank
    if rank == 0:
        print(float(value))
"""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "world_size", "rank", "rank_and_world", "gather", "gather_no_grad", "gather_sizes",
           "local_offset", "shard_layout", "reduce_gathered", "global_value"]

_MAX_DIM = 8
# dtype codes exchanged with the shapes (index + 1; 0 = unknown dtype).
_DTYPES = (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128,
)


def is_distributed(group=None) -> bool:
    """True when ``torch.distributed`` is initialized and ``group`` (default: world) has more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def world_size(group=None) -> int:
    """Number of ranks in ``group`` (1 when not distributed)."""
    return dist.get_world_size(group) if is_distributed(group) else 1


def rank(group=None) -> int:
    """This process's rank in ``group`` (0 when not distributed)."""
    return dist.get_rank(group) if is_distributed(group) else 0


def rank_and_world(group=None) -> tuple[int, int]:
    """``(rank, world size)`` of this process in ``group``; ``(0, 1)`` when not distributed."""
    if not is_distributed(group):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _exchange_shapes(t: torch.Tensor, group) -> list[int]:
    """All-gather (dtype, ndim, shape) with a fixed-size message; raise on every rank on mismatch.

    Returns the dim-0 size of every rank, in rank order.
    """
    world = dist.get_world_size(group)
    meta = torch.full((2 + _MAX_DIM,), -1, dtype=torch.long)
    meta[0] = _DTYPES.index(t.dtype) + 1 if t.dtype in _DTYPES else 0
    if 1 <= t.dim() <= _MAX_DIM:
        meta[1] = t.dim()
        meta[2 : 2 + t.dim()] = torch.tensor(t.shape, dtype=torch.long)
    else:  # scalars and > 8 dims are exchanged as "invalid" so that every rank raises together
        meta[1] = -1
    # The message travels on the tensor's own device, the one the data collective uses too
    # (CPU with gloo, CUDA with NCCL, another accelerator with its backend); the backend's
    # name says nothing reliable about it (e.g. "cpu:gloo,cuda:nccl", out-of-tree backends).
    meta = meta.to(t.device)
    metas = [torch.empty_like(meta) for _ in range(world)]
    dist.all_gather(metas, meta, group=group)
    rows = torch.stack(metas).cpu().tolist()
    shapes = [tuple(m[2 : 2 + m[1]]) if m[1] >= 1 else None for m in rows]
    dtypes = [_DTYPES[m[0] - 1] if m[0] > 0 else None for m in rows]
    if any(s is None for s in shapes):
        raise ValueError(f"gather: every rank must pass a tensor with 1 to {_MAX_DIM} dimensions, got shapes {shapes}")
    if any(len(s) != len(shapes[0]) or s[1:] != shapes[0][1:] for s in shapes) or any(d != dtypes[0] for d in dtypes):
        seen = ", ".join(f"rank {i}: {s} {d}" for i, (s, d) in enumerate(zip(shapes, dtypes)))
        raise ValueError(
            f"gather: every rank must pass the same dtype and the same shape except dim 0, got {seen}"
        )
    return [s[0] for s in shapes]


def _all_gather_padded(t: torch.Tensor, sizes: list[int], group) -> torch.Tensor:
    world = len(sizes)
    pad = max(sizes)
    t = t.contiguous()
    if t.shape[0] != pad:  # pad to the largest shard: all_gather needs equal shapes
        padded = t.new_zeros((pad, *t.shape[1:]))
        padded[: t.shape[0]] = t
    else:
        padded = t
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded, group=group)
    return torch.cat([o[:n] for o, n in zip(out, sizes)], dim=0)


def gather_sizes(tensor: torch.Tensor, *, group=None) -> list[int]:
    """Dim-0 sizes of ``tensor`` on every rank (after the cross-rank shape/dtype check)."""
    if not is_distributed(group):
        return [tensor.shape[0]] if tensor.dim() > 0 else [1]
    return _exchange_shapes(tensor, group)


def gather_no_grad(tensor: torch.Tensor, *, group=None) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, in rank order, without autograd.

    Local sizes along dim 0 may differ between ranks (they are exchanged first and the
    shards padded to the largest); all other dimensions and the dtype must agree, and a
    mismatch raises ``ValueError`` on every rank. Used to synchronise state (labels,
    indices, per-sample buffers). Identity (detached) when not distributed.
    """
    if not is_distributed(group):
        return tensor.detach()
    t = tensor.detach()
    sizes = _exchange_shapes(t, group)
    return _all_gather_padded(t, sizes, group)


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, group, sizes):
        ctx.group, ctx.sizes = group, sizes
        ctx.rank = dist.get_rank(group)
        return _all_gather_padded(tensor.detach(), sizes, group)

    @staticmethod
    def backward(ctx, grad):
        # Sum the gradients every rank computed w.r.t. the gathered tensor, then keep our
        # own shard. No 1/W: the per-rank losses carry the factor W (module docstring).
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        lo = sum(ctx.sizes[: ctx.rank])
        return grad[lo : lo + ctx.sizes[ctx.rank]], None, None


def gather(tensor: torch.Tensor, *, group=None) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0 (rank order), with gradients to the owners.

    Uneven dim-0 sizes are supported. The backward all-reduces (sums) the gradient of the
    gathered tensor over ranks and returns this rank's slice; see the module docstring for
    the loss scaling that makes DDP training exact. Every rank must call it (and later
    ``backward``). A shape/dtype mismatch between ranks raises ``ValueError`` on every
    rank. Identity when not distributed.

    Args:
        tensor: local shard ``(n_r, *)``.
        group: process group (default: the world).

    Shape:
        output ``(sum_r n_r, *)``.
    """
    if not is_distributed(group):
        return tensor
    sizes = _exchange_shapes(tensor, group)
    return _Gather.apply(tensor, group, sizes)


def local_offset(local_size: int, *, group=None, device: torch.device | str | None = None) -> tuple[int, int]:
    """``(offset, total)``: where this rank's ``local_size`` rows start in a gathered batch, and its length.

    One small all-gather of the sizes; ``(0, local_size)`` when not distributed. ``device``
    is where that message is built: the device of your tensors (a CUDA device with NCCL;
    default CPU, right for gloo). :func:`shard_layout` takes the device from a tensor.
    """
    if not is_distributed(group):
        return 0, int(local_size)
    sizes = _exchange_shapes(torch.empty((int(local_size),), dtype=torch.int8, device=device), group)
    r = dist.get_rank(group)
    return sum(sizes[:r]), sum(sizes)


def shard_layout(tensor: torch.Tensor, *, group=None) -> tuple[int, int, int]:
    """``(world, offset, total)`` for the local rows of ``tensor`` in the batch gathered over ``group``.

    ``world`` is the number of ranks, ``offset`` where this rank's rows start in the
    gathered batch (rank order), ``total`` its length. One exchange of the shapes (which
    also checks that every rank passes the same dtype and trailing shape);
    ``(1, 0, len(tensor))`` when not distributed.
    """
    if not is_distributed(group):
        return 1, 0, int(tensor.shape[0])
    sizes = _exchange_shapes(tensor, group)
    r = dist.get_rank(group)
    return len(sizes), sum(sizes[:r]), sum(sizes)


def reduce_gathered(
    values: torch.Tensor, reduction: str, *, world: int, count: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Reduce one rank's per-anchor values by the exact-distributed rule (module docstring, rule 2).

    Every value is scaled by ``world`` (its share), then ``"none"`` returns them, ``"sum"``
    their sum (``== "none".sum()``) and ``"mean"`` that sum over ``count``, the *global*
    number of anchors (kept anchors, total weight) of the gathered batch (default: the
    local count times ``world``, right for equal shards only). A ``count`` of 0 (nothing
    kept, so the values are 0) gives 0, not NaN.
    With ``world == 1`` this is the ordinary reduction.

    Args:
        values: the local anchors' unreduced losses (any shape).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        world: number of ranks that each return their share.
        count: the global denominator of ``"mean"`` (a number or a 0-dim tensor).
    """
    from ._checks import check_reduction

    check_reduction(reduction)
    shares = values * world if world != 1 else values
    if reduction == "none":
        return shares
    total = shares.sum()
    if reduction == "sum":
        return total
    if count is None:
        count = values.numel() * world
    if isinstance(count, torch.Tensor):
        count = count.to(total.dtype)
        return total / torch.where(count == 0, torch.ones_like(count), count)
    return total / max(int(count), 1)


def global_value(loss: torch.Tensor, group=None) -> torch.Tensor:
    """The global value of a ``gather=True`` loss, for logging: the mean over ranks, on every rank.

    Each rank's ``"mean"``/``"sum"`` value is only its share (module docstring, rule 2); the
    mean of the shares over ``group`` is the single-process value on the concatenated batch.
    A detached all-reduce, so it is a collective: call it on every rank. Identity (detached)
    without ``torch.distributed``. ``loss`` must have the same shape on every rank (a scalar).

    Example:
        >>> import torch
        >>> from losslab.distributed import global_value
        >>> global_value(torch.tensor(1.5, requires_grad=True))   # single process: the value itself
        tensor(1.5000)
    """
    value = loss.detach()
    if not is_distributed(group):
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM, group=group)
    return value / dist.get_world_size(group)
