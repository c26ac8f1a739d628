"""Input factories for the conformance suite (see :class:`losslab.registry.Example`).

Each factory takes a ``torch.Generator`` and returns ``(args, kwargs)`` with float64
floating tensors; the suite casts them to other dtypes itself.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..registry import Example

F64 = torch.float64
IGNORE = -100


def randn(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=F64) * scale


def randint(gen: torch.Generator, high: int, *shape: int) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=gen)


def class_weighted_mean(none: torch.Tensor, args: tuple, kwargs: dict, *, target_pos: int = 1) -> torch.Tensor:
    """torch's cross-entropy rule: ``sum(none) / sum(weight[target])`` over kept targets.

    ``none`` already carries the class weights (``none_i = w_{y_i} * loss_i``); without
    ``weight`` the denominator is the number of kept targets; with nothing kept the mean is 0.
    """
    target = args[target_pos]
    keep = target != kwargs.get("ignore_index", IGNORE)
    w = kwargs.get("weight")
    if w is None:
        denom = keep.sum().to(none.dtype)
    else:
        denom = torch.where(keep, w.to(none.dtype)[target.clamp(0, w.numel() - 1)], 0).sum()
    return none.sum() / denom if denom > 0 else none.sum() * 0


def classification_example(
    n: int = 7,
    c: int = 5,
    *,
    weight: bool = False,
    ignore_index: bool = False,
    leading_dims: bool = True,
    **kwargs: Any,
) -> Example:
    """``(logits (n, c), target (n,))`` plus fixed hyperparameters ``kwargs``.

    ``weight`` / ``ignore_index``: the objective accepts class weights / ignored targets;
    the example then carries variants with them (and with extra leading dimensions), the
    mean rule is :func:`class_weighted_mean`, and an all-ignored batch checks that
    ``"mean"`` is 0 with zero gradients.
    """

    def make(gen: torch.Generator) -> tuple[tuple, dict]:
        return (randn(gen, n, c), randint(gen, c, n)), dict(kwargs)

    def mismatch(gen: torch.Generator) -> tuple[tuple, dict]:
        return (randn(gen, n, c), randint(gen, c, n - 2)), dict(kwargs)

    def with_leading(gen: torch.Generator) -> tuple[tuple, dict]:
        target = randint(gen, c, 2, 3)
        if ignore_index:
            target[0, 1] = IGNORE
        kw = dict(kwargs)
        if weight:
            kw["weight"] = torch.rand(c, generator=gen, dtype=F64) + 0.1
        return (randn(gen, 2, 3, c), target), kw

    def with_weight_and_ignored(gen: torch.Generator) -> tuple[tuple, dict]:
        target = randint(gen, c, n)
        kw = dict(kwargs)
        if ignore_index:
            target[::3] = IGNORE
        if weight:
            w = torch.rand(c, generator=gen, dtype=F64) + 0.1
            w[0] = 0.0  # a zero class weight is legal and must not divide by zero
            kw["weight"] = w
        return (randn(gen, n, c), target), kw

    def empty(gen: torch.Generator) -> tuple[tuple, dict]:
        return (randn(gen, n, c), torch.full((n,), IGNORE, dtype=torch.long)), dict(kwargs)

    variants: list = []
    if leading_dims:
        variants.append(with_leading)
    if weight or ignore_index:
        variants.append(with_weight_and_ignored)
    return Example(
        make=make, mismatch=mismatch, mismatch_match="target", extreme=(0,),
        mean_rule=class_weighted_mean if (weight or ignore_index) else None,
        variants=tuple(variants), empty=empty if ignore_index else None,
    )


def pair_logits_example(n: int = 6, c: int = 5, *, mask: bool = False, **kwargs: Any) -> Example:
    """Two logit tensors ``(n, c)`` (e.g. P and Q of a divergence).

    ``mask``: the objective takes a per-sample ``mask``; the example then carries a
    variant with some rows masked out (and leading dimensions) and an all-masked batch.
    """

    def make(gen: torch.Generator) -> tuple[tuple, dict]:
        return (randn(gen, n, c), randn(gen, n, c)), dict(kwargs)

    def mismatch(gen: torch.Generator) -> tuple[tuple, dict]:
        return (randn(gen, n, c), randn(gen, n, c + 1)), dict(kwargs)

    def masked(gen: torch.Generator) -> tuple[tuple, dict]:
        m = torch.rand(2, 3, generator=gen) > 0.4
        m[0, 0] = True
        return (randn(gen, 2, 3, c), randn(gen, 2, 3, c)), {**kwargs, "mask": m}

    def empty(gen: torch.Generator) -> tuple[tuple, dict]:
        return (randn(gen, n, c), randn(gen, n, c)), {**kwargs, "mask": torch.zeros(n, dtype=torch.bool)}

    def kept_mean(none: torch.Tensor, args: tuple, kw: dict) -> torch.Tensor:
        m = kw.get("mask")
        if m is None:
            return none.mean()
        k = m.sum()
        return none.sum() / k if k > 0 else none.sum() * 0

    return Example(
        make=make, mismatch=mismatch, mismatch_match="p_logits|q_logits", extreme=(0, 1),
        mean_rule=kept_mean if mask else None, variants=(masked,) if mask else (), empty=empty if mask else None,
    )


def custom_example(
    make: Callable[[torch.Generator], tuple[tuple, dict]],
    mismatch: Callable[[torch.Generator], tuple[tuple, dict]] | None = None,
    **options: Any,
) -> Example:
    return Example(make=make, mismatch=mismatch, **options)
