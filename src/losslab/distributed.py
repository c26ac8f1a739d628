"""Rank-safe collectives for objectives whose value or state depends on the whole batch.

Single-process use (``torch.distributed`` not initialized, or world size 1) makes every
function here the identity, so objectives call them unconditionally.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "gather_no_grad"]


def is_distributed(group=None) -> bool:
    """True when ``torch.distributed`` is initialized with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def gather_no_grad(tensor: torch.Tensor, *, group=None) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, in rank order, without autograd.

    Local sizes along dim 0 may differ between ranks (they are exchanged first and the
    shards padded to the largest); all other dimensions and the dtype must agree, and a
    mismatch raises ``ValueError`` on every rank (after one exchange of shapes, so no rank
    is left waiting).
    """
    if not is_distributed(group):
        return tensor.detach()
    world = dist.get_world_size(group)
    t = tensor.detach().contiguous()
    # Exchange (ndim, sizes...) padded to a fixed length so that every rank can check them.
    meta = torch.full((9,), -1, dtype=torch.long, device=t.device)
    meta[0] = t.dim()
    meta[1 : 1 + t.dim()] = torch.tensor(t.shape, dtype=torch.long)
    metas = [torch.empty_like(meta) for _ in range(world)]
    dist.all_gather(metas, meta, group=group)
    shapes = [tuple(int(v) for v in m[1 : 1 + int(m[0])]) for m in metas]
    if any(len(s) != t.dim() or s[1:] != tuple(t.shape[1:]) for s in shapes):
        raise ValueError(f"gather: every rank must pass the same shape except dim 0, got {shapes}")
    sizes = [s[0] for s in shapes]
    pad = max(sizes)
    padded = torch.zeros((pad, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded, group=group)
    return torch.cat([o[:n] for o, n in zip(out, sizes)], dim=0)
