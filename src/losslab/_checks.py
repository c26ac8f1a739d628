"""Shared input checks.

Every check raises ``ValueError`` (bad shape or value) or ``TypeError`` (bad dtype or
type) with a message that names the argument and shows what was received. Checks that
read tensor *values* (class index range, probabilities on the simplex, NaN) cost a host
synchronisation; they run only while validation is enabled, which it is by default::

    losslab.set_validation(False)      # e.g. inside torch.compile'd training steps
    with losslab.validation(False): ...

Value checks are skipped automatically while ``torch.compile`` traces (reading a value
would break the graph), so a compiled training step with a losslab objective has no graph
break under the default settings. Shape and dtype checks never read values and always run.

Non-finite inputs: a NaN (or ``+inf``) in an element that counts towards the loss
propagates to a NaN loss; it is never turned into a finite value, and no objective spends
a full extra pass over a large input looking for one. ``-inf`` logits are zero-probability
classes and are handled. Objectives whose solvers iterate (Sinkhorn) raise ``ValueError``
rather than returning NaN.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch

_VALIDATE = True

REDUCTIONS = ("mean", "sum", "none")


def set_validation(enabled: bool) -> None:
    """Switch value-reading input checks on or off globally."""
    global _VALIDATE
    _VALIDATE = bool(enabled)


def validation_enabled() -> bool:
    """Whether value-reading input checks run (never while ``torch.compile`` traces)."""
    return _VALIDATE and not torch.compiler.is_compiling()


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
    """No NaN (infinities are allowed: a logit of -inf is a zero-probability class).

    A full pass over ``x``: use it only on small inputs (kernels, solver inputs), never on
    large logits, where a NaN propagates to the loss instead (module docstring).
    """
    if validation_enabled() and x.is_floating_point() and bool(torch.isnan(x).any()):
        raise ValueError(f"{name} contains NaN")


def check_class_target(
    target: torch.Tensor,
    logits: torch.Tensor,
    *,
    name: str = "target",
    ignore_index: int | None = None,
    logits_name: str = "logits",
) -> torch.Tensor:
    """``target`` holds class indices in ``[0, C)`` (or ``ignore_index``) for ``logits`` of shape ``(*, C)``.

    Any integer dtype is accepted (int64, int32, uint8, ...); the target is returned as
    int64 (the same tensor when it already is), which is what the caller indexes with.
    The common mistakes get a message saying what to do: a floating target (probability
    targets have the logits' shape), and torch's ``(N, C, L)`` layout (losslab puts the
    class dimension last).
    """
    check_tensor(target, name)
    if target.is_floating_point():
        raise TypeError(
            f"{name}: class indices must be integers (got dtype {target.dtype}); "
            f"probability targets have the {logits_name}' shape {_shape(logits)}"
        )
    check_integer(target, name)
    if tuple(target.shape) != tuple(logits.shape[:-1]):
        hint = ""
        if logits.dim() >= 3 and target.dim() == logits.dim() - 1 and target.shape[0] == logits.shape[0] \
                and tuple(target.shape[1:]) == tuple(logits.shape[2:]):
            hint = (f"; losslab puts the class dimension last ({logits_name} of shape (*, C)): for torch's "
                    f"(N, C, ...) layout pass {logits_name}.movedim(1, -1)")
        raise ValueError(
            f"{name} must have shape {tuple(logits.shape[:-1])} (the leading shape of {logits_name}), "
            f"got {_shape(target)}{hint}"
        )
    if target.dtype != torch.int64:
        target = target.long()
    if validation_enabled() and target.numel() > 0:
        num_classes = logits.shape[-1]
        # Fast path: one reduction and one host sync when every index is a class.
        lo, hi = torch.aminmax(target)
        lo, hi = int(lo), int(hi)
        if lo >= 0 and hi < num_classes:
            return target
        # Otherwise (ignored entries or a bad index) find out which; the offending value is
        # looked up only on error.
        bad = (target < 0) | (target >= num_classes)
        if ignore_index is not None:
            bad &= target != ignore_index
        if bool(bad.any()):
            value = int(target[bad][0])
            extra = f" or ignore_index={ignore_index}" if ignore_index is not None else ""
            raise ValueError(f"{name} has class index {value} outside [0, {num_classes}){extra}")
    return target


def probability_sum_atol(dtype: torch.dtype, n: int) -> float:
    """How far from 1 a row of ``n`` probabilities stored in ``dtype`` may sum.

    Half precision: one machine epsilon (rounding each entry of a softmax row to bfloat16
    moves the sum by up to 2^-9; 2^-7 leaves room for a softmax computed in bfloat16), at
    least 1e-3. Otherwise 1e-5 sqrt(n), at least 1e-5.
    """
    if dtype in (torch.float16, torch.bfloat16):
        return max(1e-3, torch.finfo(dtype).eps)
    return 1e-5 * max(1.0, math.sqrt(n))


def check_probabilities(p: torch.Tensor, name: str, *, dim: int = -1, atol: float | None = None) -> None:
    """Entries of ``p`` are in [0, 1] and sum to 1 along ``dim`` (to :func:`probability_sum_atol`)."""
    check_floating(p, name)
    if validation_enabled() and p.numel() > 0:
        p = p.detach()
        if atol is None:
            atol = probability_sum_atol(p.dtype, p.shape[dim])
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
    if validation_enabled() and x.numel() > 0:
        lo = float(x.detach().min())
        if lo < 0 or math.isnan(lo):
            raise ValueError(f"{name} must be non-negative, found {lo:.4g}")


def check_index(index: torch.Tensor, name: str, *, length: int, size: int) -> None:
    """``index`` is an int tensor of shape ``(length,)`` with values in ``[0, size)``."""
    check_integer(index, name)
    if index.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},) (one dataset index per sample), got {_shape(index)}")
    if validation_enabled() and length > 0:
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


# --------------------------------------------------------------------------- hyperparameters of a Module
def _none_or(check):
    def run(value: object, name: str) -> None:
        if value is not None:
            check(value, name)
    return run


def _check_int_at_least(low: int):
    def run(value: object, name: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return run


def _check_number_if_number(check):
    """Apply ``check`` to plain numbers; tensors and callables are checked at call time."""
    def run(value: object, name: str) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            check(value, name)
    return run


def _check_bool(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")


#: The house vocabulary's hyperparameters (CONTRIBUTING.md, "One vocabulary") have one
#: meaning everywhere, so one check each. Objective-specific checks are attached with
#: :func:`hyperparameter_checks`.
COMMON_HYPERPARAMETER_CHECKS = {
    "reduction": lambda v, n: check_reduction(v),
    "temperature": _check_number_if_number(check_positive),
    "label_smoothing": lambda v, n: check_in_range(v, n, 0.0, 1.0),
    "bandwidth": _none_or(_check_number_if_number(check_positive)),
    "tol": _check_number_if_number(check_positive),
    "max_iter": _check_int_at_least(1),
    "chunk_size": _none_or(_check_int_at_least(1)),
    "z_loss": lambda v, n: check_nonnegative(v, n),
    "softcap": _none_or(check_positive),
    "gather": _check_bool,
    "ignore_index": lambda v, n: _check_int_at_least(-(2 ** 63))(v, n),
}


def hyperparameter_checks(checker):
    """Attach ``checker(**hyperparameters)`` to an objective, run by its Module's ``__init__``.

    The checker receives every keyword-only hyperparameter (defaults filled in) and raises
    ``ValueError``/``TypeError`` naming the bad one. The function itself still checks at
    call time; this lets a Module fail at construction, not at the first batch::

        def _check(*, q, **_):
            check_in_range(q, "q", 0, 1, low_inclusive=False)

        @hyperparameter_checks(_check)
        def generalized_cross_entropy(logits, target, *, q=0.7, ...): ...
    """

    def deco(fn):
        fn.__losslab_hyperparameter_check__ = checker
        return fn

    return deco


def check_hyperparameters(function, values: dict) -> None:
    """Run the vocabulary checks and ``function``'s own checker on ``values``."""
    for key, value in values.items():
        check = COMMON_HYPERPARAMETER_CHECKS.get(key)
        if check is not None:
            check(value, key)
    checker = getattr(function, "__losslab_hyperparameter_check__", None)
    if checker is not None:
        checker(**values)
