"""The catalog of objectives.

Every public objective is registered with its paper, the seed it comes from, its
properties and a small input factory that drives the conformance suite::

    @register("focal_loss", family="classification", reference=Reference(...),
              example=Example(make=_focal_inputs), noise_robust=False)
    def focal_loss(logits, target, *, gamma=2.0, ...): ...

Registering changes no behaviour. ``get(name)`` returns the function,
``info(name)`` its :class:`LossInfo`, ``list_losses("*kl*")`` the names matching an
fnmatch pattern.
"""
from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["Reference", "Example", "LossInfo", "register", "register_module", "get", "info", "list_losses", "families"]


@dataclass(frozen=True)
class Reference:
    """A paper: title, authors, year and a link (arXiv preferred)."""

    title: str
    authors: str
    year: int
    url: str

    def __str__(self) -> str:
        return f"{self.authors} ({self.year}). {self.title}. {self.url}"


Factory = Callable[[torch.Generator], "tuple[tuple, dict]"]


@dataclass(frozen=True)
class Example:
    """Small float64 inputs for the conformance suite.

    Attributes:
        make: ``make(generator) -> (args, kwargs)``. Positional args are the tensors
            (float64 for floating ones); kwargs the hyperparameters (may hold tensors,
            such as class weights, which the suite does not perturb).
        mismatch: like ``make`` but with inconsistent shapes; must raise ``ValueError``.
        logits: positions of the positional args that are logits / scores, scaled to
            magnitude 1e4 in the extreme-input test. ``()`` skips that test.
        grad: positions checked by ``gradcheck``; ``None`` means every floating arg.
        module_kwargs: maps the function's kwargs to the Module's ``__init__`` kwargs when
            they differ (default: the same kwargs).
        output: extracts the loss tensor from the function's return value when it is
            not a tensor (e.g. a result object); default: the value itself.
    """

    make: Factory
    mismatch: Factory | None = None
    logits: tuple[int, ...] = (0,)
    grad: tuple[int, ...] | None = None
    module_kwargs: Callable[[dict], dict] | None = None
    output: Callable[[Any], torch.Tensor] | None = None


@dataclass
class LossInfo:
    """What the registry knows about one objective."""

    name: str
    family: str
    function: Callable[..., Any]
    reference: Reference
    seed: str | None = None
    module: type | None = None
    example: Example | None = None
    properties: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.function) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    @property
    def supports_reduction(self) -> bool:
        return "reduction" in inspect.signature(self.function).parameters

    @property
    def differentiable(self) -> bool:
        return bool(self.properties.get("differentiable", True))


_REGISTRY: dict[str, LossInfo] = {}


def register(
    name: str | None = None,
    *,
    family: str,
    reference: Reference,
    seed: str | None = None,
    example: Example | None = None,
    **properties: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a public objective under ``name`` (default: the function's name).

    Raises:
        ValueError: if ``name`` is already registered.
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        key = name or fn.__name__
        if key in _REGISTRY and not _same_definition(_REGISTRY[key].function, fn):
            raise ValueError(f"objective {key!r} is already registered (by {_REGISTRY[key].function.__module__})")
        module = _REGISTRY[key].module if key in _REGISTRY else None
        _REGISTRY[key] = LossInfo(
            name=key, family=family, function=fn, reference=reference, seed=seed, example=example,
            properties=dict(properties), module=module,
        )
        return fn

    return deco


def _same_definition(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    """The same function from the same source file, imported twice (e.g. a single-file doctest run)."""
    try:
        return a.__qualname__ == b.__qualname__ and inspect.getsourcefile(a) == inspect.getsourcefile(b)
    except TypeError:
        return False


def register_module(name: str) -> Callable[[type], type]:
    """Class decorator attaching an ``nn.Module`` wrapper to the registered objective ``name``."""

    def deco(cls: type) -> type:
        if name not in _REGISTRY:
            raise ValueError(f"cannot attach {cls.__name__}: no objective named {name!r} is registered")
        existing = _REGISTRY[name].module
        if existing is not None and not (existing.__qualname__ == cls.__qualname__
                                         and inspect.getsourcefile(existing) == inspect.getsourcefile(cls)):
            raise ValueError(f"objective {name!r} already has module {_REGISTRY[name].module.__name__}")
        _REGISTRY[name].module = cls
        return cls

    return deco


def _lookup(name: str) -> LossInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = fnmatch.filter(_REGISTRY, f"*{name}*")
        hint = f"; did you mean one of {close[:5]}?" if close else "; see losslab.list_losses()"
        raise KeyError(f"no objective named {name!r}{hint}") from None


def get(name: str) -> Callable[..., Any]:
    """The function registered as ``name``."""
    return _lookup(name).function


def info(name: str) -> LossInfo:
    """The :class:`LossInfo` registered as ``name``."""
    return _lookup(name)


def list_losses(pattern: str = "*", *, family: str | None = None) -> list[str]:
    """Sorted registered names matching the fnmatch ``pattern`` (and ``family``, if given)."""
    return sorted(
        n for n, i in _REGISTRY.items() if fnmatch.fnmatchcase(n, pattern) and (family is None or i.family == family)
    )


def families() -> list[str]:
    """The families that have at least one registered objective."""
    return sorted({i.family for i in _REGISTRY.values()})
