"""Input factories for the conformance suite (see :class:`losslab.registry.Example`).

Each factory takes a ``torch.Generator`` and returns ``(args, kwargs)`` with float64
floating tensors; the suite casts them to other dtypes itself.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..registry import Example

F64 = torch.float64


def randn(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=F64) * scale


def randint(gen: torch.Generator, high: int, *shape: int) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=gen)


def classification_example(n: int = 7, c: int = 5, **kwargs: Any) -> Example:
    """``(logits (n, c), target (n,))`` plus fixed hyperparameters ``kwargs``."""

    def make(gen: torch.Generator) -> tuple[tuple, dict]:
        return (randn(gen, n, c), randint(gen, c, n)), dict(kwargs)

    def mismatch(gen: torch.Generator) -> tuple[tuple, dict]:
        return (randn(gen, n, c), randint(gen, c, n - 2)), dict(kwargs)

    return Example(make=make, mismatch=mismatch, logits=(0,))


def pair_logits_example(n: int = 6, c: int = 5, **kwargs: Any) -> Example:
    """Two logit tensors ``(n, c)`` (e.g. P and Q of a divergence)."""

    def make(gen: torch.Generator) -> tuple[tuple, dict]:
        return (randn(gen, n, c), randn(gen, n, c)), dict(kwargs)

    def mismatch(gen: torch.Generator) -> tuple[tuple, dict]:
        return (randn(gen, n, c), randn(gen, n, c + 1)), dict(kwargs)

    return Example(make=make, mismatch=mismatch, logits=(0, 1))


def custom_example(
    make: Callable[[torch.Generator], tuple[tuple, dict]],
    mismatch: Callable[[torch.Generator], tuple[tuple, dict]] | None = None,
    **options: Any,
) -> Example:
    return Example(make=make, mismatch=mismatch, **options)
