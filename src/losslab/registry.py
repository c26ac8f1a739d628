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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Reference", "Example", "LossInfo", "register", "register_module", "get", "info", "list_losses", "families",
           "suggest"]


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
    """Small float64 inputs that drive the conformance suite (``tests/test_conformance.py``).

    Attributes:
        make: ``make(generator) -> (args, kwargs)``. Positional args are the tensors
            (float64 for floating ones); kwargs the hyperparameters and per-batch keyword
            tensors (``mask``, ``negatives``, ...; the suite passes these to the Module's
            ``forward``, the rest to its ``__init__``).
        mismatch: like ``make`` but with inconsistent shapes; must raise ``ValueError``.
        mismatch_match: a regular expression the mismatch error message must match; it
            names the offending argument (e.g. ``"target"``).
        extreme: positions of the positional inputs scaled to magnitude 1e4 in the
            extreme-input test (logits, point clouds, embeddings alike). ``None`` means
            every floating positional input; ``()`` skips the test and needs
            ``extreme_skip``, the documented reason (e.g. the input is a distribution).
        extreme_skip: why the extreme-input test does not apply.
        grad: positions checked by ``gradcheck``; ``None`` means every floating arg.
        output: extracts the loss tensor from a return value that is not a tensor (a
            ``NamedTuple``); default: the value itself.
        mean_rule: ``mean_rule(none, args, kwargs) -> tensor``: the documented value of
            ``reduction="mean"`` computed from the ``reduction="none"`` output (default:
            ``none.mean()``, the plain mean). A weighted mean over kept elements is a
            callable dividing ``none.sum()`` by the total weight of the kept elements.
        variants: extra factories run through the reduction checks: inputs carrying class
            weights, ``ignore_index`` and extra leading dimensions wherever the objective
            accepts them.
        empty: a factory for a batch in which nothing is kept (every target ignored, every
            mask entry False); ``"mean"`` must give 0 with zero gradients. Required when
            the objective takes ``ignore_index`` or ``mask``.
        module: for modules that are not thin wrappers (stateful, parameter-owning):
            ``module(generator) -> (module, args, kwargs)`` with ``kwargs`` the per-batch
            keyword arguments of ``forward``; the suite round-trips its ``state_dict``.
    """

    make: Factory
    mismatch: Factory | None = None
    mismatch_match: str | None = None
    extreme: tuple[int, ...] | None = None
    extreme_skip: str | None = None
    grad: tuple[int, ...] | None = None
    output: Callable[[Any], torch.Tensor] | None = None
    mean_rule: Callable[[torch.Tensor, tuple, dict], torch.Tensor] | None = None
    variants: tuple[Factory, ...] = ()
    empty: Factory | None = None
    module: Callable[[torch.Generator], tuple[torch.nn.Module, tuple, dict]] | None = None


@dataclass
class LossInfo:
    """What the registry knows about one objective."""

    name: str
    family: str
    function: Callable[..., Any]
    reference: Reference
    seed: str | None = None
    modules: list[type] = field(default_factory=list)
    example: Example | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()

    @property
    def module(self) -> type | None:
        """The Module form (the first attached); :attr:`modules` lists every one."""
        return self.modules[0] if self.modules else None

    @property
    def batch_level(self) -> bool:
        """A single number of the whole batch (no per-sample values, no ``reduction``)."""
        return bool(self.properties.get("batch_level", False))

    @property
    def graph_breaks(self) -> str | None:
        """Why ``torch.compile`` breaks the graph (e.g. a solver's convergence test), or None."""
        return self.properties.get("graph_breaks")

    def search_text(self) -> str:
        """Everything :func:`list_losses` matches a pattern against (lower case)."""
        props = " ".join(k for k, v in self.properties.items() if v is True)
        return " ".join([self.name, self.family, self.summary, self.reference.title, " ".join(self.tags),
                         props.replace("_", " "), props]).lower()

    @property
    def peer(self):
        """The :class:`losslab.peers.Peer` that ``losslab bench`` compares with, or None."""
        from . import peers

        return peers.get(self.name)

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
    tags: tuple[str, ...] = (),
    **properties: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a public objective under ``name`` (default: the function's name).

    ``tags`` are the words a user searches with (``"noisy labels"``, ``"long tail"``,
    ``"distillation"``, ...): :func:`list_losses` matches names, summaries, paper titles,
    tags and true-valued properties.

    Raises:
        ValueError: if ``name`` is already registered.
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        key = name or fn.__name__
        if key in _REGISTRY and not _same_definition(_REGISTRY[key].function, fn):
            raise ValueError(f"objective {key!r} is already registered (by {_REGISTRY[key].function.__module__})")
        modules = _REGISTRY[key].modules if key in _REGISTRY else []
        _REGISTRY[key] = LossInfo(
            name=key, family=family, function=fn, reference=reference, seed=seed, example=example,
            properties=dict(properties), modules=modules, tags=tuple(tags),
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
    """Class decorator attaching an ``nn.Module`` to the registered objective ``name``.

    An objective may have several Modules (e.g. a stateless wrapper and a stateful
    variant); the first attached is :attr:`LossInfo.module`.
    """

    def deco(cls: type) -> type:
        if name not in _REGISTRY:
            raise ValueError(f"cannot attach {cls.__name__}: no objective named {name!r} is registered")
        mods = _REGISTRY[name].modules
        for i, existing in enumerate(mods):
            if existing.__qualname__ == cls.__qualname__:
                if inspect.getsourcefile(existing) != inspect.getsourcefile(cls):
                    raise ValueError(f"objective {name!r} already has a module named {cls.__name__}")
                mods[i] = cls  # the same class imported twice (single-file doctest run)
                return cls
        mods.append(cls)
        return cls

    return deco


def suggest(name: str, n: int = 5) -> list[str]:
    """Registered names close to ``name``, best first: names it begins, then by edit distance, then substrings."""
    import difflib

    key = name.lower()
    close = [other for other in sorted(_REGISTRY, key=len) if other.startswith(key) and other != key]
    for other in difflib.get_close_matches(key, list(_REGISTRY), n=n, cutoff=0.6):
        if other not in close:
            close.append(other)
    for other in sorted(_REGISTRY):
        if other not in close and (key in other or other in key):
            close.append(other)
    return close[:n]


def _lookup(name: str) -> LossInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = suggest(name)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "; see losslab.list_losses()"
        raise KeyError(f"no objective named {name!r}{hint}") from None


def get(name: str) -> Callable[..., Any]:
    """The function registered as ``name``."""
    return _lookup(name).function


def info(name: str) -> LossInfo:
    """The :class:`LossInfo` registered as ``name``."""
    return _lookup(name)


def list_losses(pattern: str = "*", *, family: str | None = None) -> list[str]:
    """Sorted registered names matching ``pattern`` (and ``family``, if given).

    ``pattern`` is an fnmatch pattern (``"*kl*"``) matched against the name, and also,
    case-insensitively, against the summary, the paper's title, the tags and the
    true-valued properties: ``list_losses("*noisy*")`` finds the noise-robust losses,
    ``list_losses("*long*tail*")`` the long-tail ones.
    """
    pat = pattern.lower()
    return sorted(
        n for n, i in _REGISTRY.items()
        if (family is None or i.family == family)
        and (fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(i.search_text(), pat))
    )


def families() -> list[str]:
    """The families that have at least one registered objective."""
    return sorted({i.family for i in _REGISTRY.values()})
