"""The thin Module wrapper every stateless objective uses."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from .._checks import check_hyperparameters

#: Keyword-only tensor arguments that are per-class constants (stored as buffers by
#: ``__init__``) rather than per-batch inputs (passed to ``forward``).
CLASS_CONSTANTS = ("weight", "prior")


def _takes_per_batch_value(param: inspect.Parameter) -> bool:
    """A keyword-only argument annotated with a tensor (or a generator) changes per batch."""
    ann = param.annotation
    text = ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))
    return "Tensor" in text or "Generator" in text


class FunctionalLoss(torch.nn.Module):
    """``nn.Module`` around a functional objective.

    ``__init__`` takes the function's hyperparameters (numbers, strings, callables) and its
    per-class constants (class ``weight``, ``prior``: registered buffers, so they follow
    ``.to()`` and are in ``state_dict``). It checks them at once, so a bad value fails at
    construction rather than at the first batch. ``forward`` takes what changes from batch
    to batch: the function's positional tensors and its per-batch keyword tensors
    (``mask``, ``negatives``, ``sample_weight``, ``a``/``b``, ``bias``, ...). Trainable
    tensors are therefore always per-call arguments, never copies held by the loss.

    Subclasses name the function once::

        class FocalLoss(FunctionalLoss, function=F.focal_loss, constants=("weight", "alpha")):
            "Module form of :func:`losslab.functional.focal_loss`."

    ``constants`` lists the keyword tensors that are per-class constants (default
    ``("weight", "prior")``); ``batch_args`` overrides which keyword arguments go to
    ``forward`` (default: the keyword-only arguments annotated with a tensor or a
    generator, less the constants).
    """

    _function: Callable[..., Any]
    _hyper_names: tuple[str, ...] = ()
    _batch_names: tuple[str, ...] = ()
    _constant_names: tuple[str, ...] = ()

    def __init_subclass__(
        cls,
        function: Callable[..., Any] | None = None,
        constants: tuple[str, ...] = CLASS_CONSTANTS,
        batch_args: tuple[str, ...] | None = None,
        **kw: Any,
    ) -> None:
        super().__init_subclass__(**kw)
        if function is None:
            return
        cls._function = staticmethod(function)
        sig = inspect.signature(function)
        kwonly = [p for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        if batch_args is None:
            batch_args = tuple(p.name for p in kwonly if _takes_per_batch_value(p) and p.name not in constants)
        unknown = set(batch_args) - {p.name for p in kwonly}
        if unknown:
            raise TypeError(f"{cls.__name__}: batch_args {sorted(unknown)} are not keyword arguments of {function.__name__}")
        hyper = [p for p in kwonly if p.name not in batch_args]
        batch = [p for p in kwonly if p.name in batch_args]
        cls._hyper_names = tuple(p.name for p in hyper)
        cls._batch_names = tuple(p.name for p in batch)
        cls._constant_names = tuple(n for n in constants if n in cls._hyper_names)
        cls._defaults = {p.name: p.default for p in hyper if p.default is not inspect.Parameter.empty}
        self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)

        # Per-class __init__/forward so each Module shows its function's signature
        # (inspect.signature, help(), IDEs) without restating it by hand.
        def __init__(self: FunctionalLoss, **hyperparameters: Any) -> None:
            FunctionalLoss.__init__(self, **hyperparameters)

        def forward(self: FunctionalLoss, *tensors: Any, **per_batch: Any) -> Any:
            return FunctionalLoss.forward(self, *tensors, **per_batch)

        __init__.__signature__ = inspect.Signature([self_param, *hyper])  # type: ignore[attr-defined]
        positional = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        forward.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [self_param, *positional, *batch], return_annotation=sig.return_annotation)
        __init__.__qualname__ = f"{cls.__qualname__}.__init__"
        forward.__qualname__ = f"{cls.__qualname__}.forward"
        cls.__init__ = __init__  # type: ignore[method-assign]
        cls.forward = forward  # type: ignore[method-assign]

    def __init__(self, **hyperparameters: Any) -> None:
        super().__init__()
        name = type(self).__name__
        per_batch = set(hyperparameters) & set(self._batch_names)
        if per_batch:
            raise TypeError(
                f"{name}: {sorted(per_batch)} change from batch to batch; pass them to forward(), "
                f"e.g. loss_fn(..., {sorted(per_batch)[0]}=...)"
            )
        unknown = set(hyperparameters) - set(self._hyper_names)
        if unknown:
            raise TypeError(
                f"{name} got unknown hyperparameter(s) {sorted(unknown)}; it accepts {list(self._hyper_names)}"
            )
        for k, v in hyperparameters.items():
            if isinstance(v, torch.Tensor) and k not in self._constant_names:
                raise TypeError(
                    f"{name}: {k} is a hyperparameter, not a tensor (tensors that change per batch go to "
                    f"forward; per-class constants are {list(self._constant_names)})"
                )
        check_hyperparameters(type(self)._function, {**self._defaults, **hyperparameters})
        self._tensor_hypers: list[str] = []
        self._plain_hypers: dict[str, Any] = {}
        for k, v in hyperparameters.items():
            if isinstance(v, torch.Tensor):
                self.register_buffer(k, v)
                self._tensor_hypers.append(k)
            else:
                self._plain_hypers[k] = v

    def hyperparameters(self) -> dict[str, Any]:
        """The keyword arguments passed to the function on every call."""
        out = dict(self._plain_hypers)
        for k in self._tensor_hypers:
            out[k] = getattr(self, k)
        return out

    def forward(self, *tensors: Any, **per_batch: Any) -> Any:
        unknown = set(per_batch) - set(self._batch_names)
        if unknown:
            raise TypeError(
                f"{type(self).__name__}.forward got unexpected argument(s) {sorted(unknown)}; per-batch arguments "
                f"are {list(self._batch_names)} (hyperparameters go to __init__)"
            )
        return type(self)._function(*tensors, **per_batch, **self.hyperparameters())

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._plain_hypers.items())
