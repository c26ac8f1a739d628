"""Numerical helpers shared by the objectives.

Low-precision inputs (float16, bfloat16) are computed in float32 and losses are
returned in float32 (autocast's rule for losses); float64 stays float64.
"""
from __future__ import annotations

import math

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32."""
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            return torch.float64
    return torch.float32


def upcast(x: torch.Tensor | None, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """Return ``x`` in the compute dtype: float16/bfloat16 -> float32 (or ``dtype``)."""
    if x is None or not x.is_floating_point():
        return x
    if dtype is not None:
        return x if x.dtype == dtype else x.to(dtype)
    return x.float() if x.dtype in LOW_PRECISION else x


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate everywhere.

    Uses ``log(-expm1(x))`` near 0 and ``log1p(-exp(x))`` for ``x < -log 2``
    (Mächler 2012, "Accurately computing log(1 - exp(-|a|))").
    """
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``cap * tanh(logits / cap)`` (Gemma-2's logit soft-capping); identity for ``None``."""
    if cap is None:
        return logits
    return cap * torch.tanh(logits / cap)


def softplus(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + exp(x))`` accurate to round-off for every ``x``.

    ``torch.nn.functional.softplus`` switches to the identity above ``threshold=20``,
    an absolute error of ``exp(-20) ≈ 2e-9`` that float64 references notice;
    ``logaddexp(x, 0) = max(x, 0) + log1p(exp(-|x|))`` has no such switch.
    """
    return torch.logaddexp(x, torch.zeros((), dtype=x.dtype, device=x.device))
