"""Shared input checks.

Every check raises ``ValueError`` (bad shape or value) or ``TypeError`` (bad dtype or
type) with a message that names the argument and shows what was received. Checks that
read tensor *values* (class index range, probabilities on the simplex, NaN) cost a host
synchronisation; they run only while validation is enabled, which it is by default::

    losslab.set_validation(False)      # e.g. inside torch.compile'd training steps
    with losslab.validation(False): ...

Shape and dtype checks never read values and always run.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import torch

_VALIDATE = True

REDUCTIONS = ("mean", "sum", "none")


def set_validation(enabled: bool) -> None:
    """Switch value-reading input checks on or off globally."""
    global _VALIDATE
    _VALIDATE = bool(enabled)


def validation_enabled() -> bool:
    """Whether value-reading input checks run."""
    return _VALIDATE


@contextlib.contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """Context manager that sets validation for its body and restores it after."""
    global _VALIDATE
    old = _VALIDATE
    _VALIDATE = bool(enabled)
    try:
        yield
    finally:
        _VALIDATE = old


def _shape(x: torch.Tensor) -> str:
    return str(tuple(x.shape))


# --------------------------------------------------------------------------- types
def check_tensor(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_floating(x: object, name: str) -> torch.Tensor:
    """``x`` is a floating-point tensor (float16, bfloat16, float32, float64)."""
    check_tensor(x, name)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def check_integer(x: object, name: str) -> torch.Tensor:
    check_tensor(x, name)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (class indices), got dtype {x.dtype}")
    return x


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


# --------------------------------------------------------------------------- shapes
def check_same_shape(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    """``a`` and ``b`` have identical shapes (no silent broadcasting)."""
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, "
            f"got {names[0]} {_shape(a)} and {names[1]} {_shape(b)}"
        )


def check_ndim(x: torch.Tensor, name: str, ndim: int | Sequence[int]) -> None:
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if x.dim() not in allowed:
        want = " or ".join(str(d) for d in allowed)
        raise ValueError(f"{name} must have {want} dimensions, got shape {_shape(x)}")


def check_leading_shape(x: torch.Tensor, name: str, shape: torch.Size, ref: str) -> None:
    """``x.shape`` equals ``shape`` (the leading shape of ``ref``)."""
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (the leading shape of {ref}), got {_shape(x)}")


def check_size(x: torch.Tensor, name: str, dim: int, size: int, what: str) -> None:
    if x.shape[dim] != size:
        raise ValueError(f"{name} must have size {size} in dimension {dim} ({what}), got shape {_shape(x)}")


# --------------------------------------------------------------------------- values
def check_finite(x: torch.Tensor, name: str) -> None:
    """No NaN (infinities are allowed: a logit of -inf is a zero-probability class)."""
    if _VALIDATE and x.is_floating_point() and bool(torch.isnan(x).any()):
        raise ValueError(f"{name} contains NaN")


def check_class_target(
    target: torch.Tensor,
    logits: torch.Tensor,
    *,
    name: str = "target",
    ignore_index: int | None = None,
) -> None:
    """``target`` holds class indices in ``[0, C)`` (or ``ignore_index``) for ``logits`` of shape ``(*, C)``."""
    check_integer(target, name)
    check_leading_shape(target, name, logits.shape[:-1], "logits")
    if _VALIDATE and target.numel() > 0:
        num_classes = logits.shape[-1]
        # Fast path: one reduction and one host sync when every index is a class.
        lo, hi = torch.aminmax(target)
        lo, hi = int(lo), int(hi)
        if lo >= 0 and hi < num_classes:
            return
        # Otherwise (ignored entries or a bad index) find out which; the offending value is
        # looked up only on error.
        bad = (target < 0) | (target >= num_classes)
        if ignore_index is not None:
            bad &= target != ignore_index
        if bool(bad.any()):
            value = int(target[bad][0])
            extra = f" or ignore_index={ignore_index}" if ignore_index is not None else ""
            raise ValueError(f"{name} has class index {value} outside [0, {num_classes}){extra}")


def check_probabilities(p: torch.Tensor, name: str, *, dim: int = -1, atol: float | None = None) -> None:
    """Entries of ``p`` are in [0, 1] and sum to 1 along ``dim``."""
    check_floating(p, name)
    if _VALIDATE and p.numel() > 0:
        if atol is None:
            atol = 1e-3 if p.dtype in (torch.float16, torch.bfloat16) else 1e-5 * max(1.0, math.sqrt(p.shape[dim]))
        if bool(torch.isnan(p).any()):
            raise ValueError(f"{name} contains NaN")
        lo = float(p.min())
        if lo < 0:
            raise ValueError(f"{name} must be non-negative probabilities, found {lo:.4g}")
        s = p.double().sum(dim)
        err = float((s - 1).abs().max())
        if err > atol:
            raise ValueError(f"{name} must sum to 1 along dim {dim}, found a sum off by {err:.4g}")


def check_nonnegative_tensor(x: torch.Tensor, name: str) -> None:
    if _VALIDATE and x.numel() > 0:
        lo = float(x.min())
        if lo < 0 or math.isnan(lo):
            raise ValueError(f"{name} must be non-negative, found {lo:.4g}")


def check_index(index: torch.Tensor, name: str, *, length: int, size: int) -> None:
    """``index`` is an int tensor of shape ``(length,)`` with values in ``[0, size)``."""
    check_integer(index, name)
    if index.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},) (one dataset index per sample), got {_shape(index)}")
    if _VALIDATE and length > 0:
        lo, hi = int(index.min()), int(index.max())
        if lo < 0 or hi >= size:
            raise ValueError(f"{name} has value {lo if lo < 0 else hi} outside [0, {size}) (num_samples={size})")


# --------------------------------------------------------------------------- hyperparameters
def check_positive(value: float, name: str) -> None:
    if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_nonnegative(value: float, name: str) -> None:
    if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_in_range(
    value: float, name: str, low: float, high: float, *, low_inclusive: bool = True, high_inclusive: bool = True
) -> None:
    ok_low = value >= low if low_inclusive else value > low
    ok_high = value <= high if high_inclusive else value < high
    if not (isinstance(value, (int, float)) and ok_low and ok_high):
        lb = "[" if low_inclusive else "("
        rb = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be in {lb}{low}, {high}{rb}, got {value!r}")


def check_choice(value: object, name: str, choices: Sequence[object]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_class_weight(weight: torch.Tensor | None, num_classes: int, name: str = "weight") -> None:
    """Per-class weights: a floating tensor of shape ``(C,)``, non-negative."""
    if weight is None:
        return
    check_floating(weight, name)
    if weight.shape != (num_classes,):
        raise ValueError(f"{name} must have shape ({num_classes},) (one weight per class), got {_shape(weight)}")
    check_nonnegative_tensor(weight, name)


def check_sample_weight(sample_weight: torch.Tensor | None, shape: torch.Size, name: str = "sample_weight") -> None:
    if sample_weight is None:
        return
    check_floating(sample_weight, name)
    check_leading_shape(sample_weight, name, shape, "the per-sample loss")
    check_nonnegative_tensor(sample_weight, name)
