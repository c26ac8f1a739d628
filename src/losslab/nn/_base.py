"""The thin Module wrapper every stateless objective uses."""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch


class FunctionalLoss(torch.nn.Module):
    """``nn.Module`` around a functional objective.

    ``__init__`` takes the function's keyword-only hyperparameters (tensors such as
    class weights become registered buffers, so they follow ``.to()`` and are in
    ``state_dict``); ``forward(*tensors)`` is one keyword call to the function.
    Subclasses name the function once::

        class FocalLoss(FunctionalLoss, function=F.focal_loss):
            "Module form of :func:`losslab.functional.focal_loss`."
    """

    _function: Callable[..., Any]
    _hyper_names: tuple[str, ...] = ()

    def __init_subclass__(cls, function: Callable[..., Any] | None = None, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if function is None:
            return
        cls._function = staticmethod(function)
        sig = inspect.signature(function)
        params = [p for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        cls._hyper_names = tuple(p.name for p in params)
        self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)

        # Per-class __init__/forward so each Module shows its function's signature
        # (inspect.signature, help(), IDEs) without restating it by hand.
        def __init__(self: FunctionalLoss, **hyperparameters: Any) -> None:
            FunctionalLoss.__init__(self, **hyperparameters)

        def forward(self: FunctionalLoss, *tensors: Any) -> torch.Tensor:
            return FunctionalLoss.forward(self, *tensors)

        __init__.__signature__ = inspect.Signature([self_param, *params])  # type: ignore[attr-defined]
        fwd = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        forward.__signature__ = inspect.Signature([self_param, *fwd])  # type: ignore[attr-defined]
        __init__.__qualname__ = f"{cls.__qualname__}.__init__"
        forward.__qualname__ = f"{cls.__qualname__}.forward"
        cls.__init__ = __init__  # type: ignore[method-assign]
        cls.forward = forward  # type: ignore[method-assign]

    def __init__(self, **hyperparameters: Any) -> None:
        super().__init__()
        unknown = set(hyperparameters) - set(self._hyper_names)
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown hyperparameter(s) {sorted(unknown)}; "
                f"it accepts {list(self._hyper_names)}"
            )
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

    def forward(self, *tensors: Any) -> torch.Tensor:
        return type(self)._function(*tensors, **self.hyperparameters())

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._plain_hypers.items())
