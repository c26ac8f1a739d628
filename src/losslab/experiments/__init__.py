"""Experiments the ``losslab run`` command can run, one module each.

An experiment module defines ``NAME`` (the CLI name), ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Modules are discovered by name, so
adding a file here is enough. Raise :class:`ExperimentError` for bad input: the CLI
prints it on one line and exits with status 2.
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


class ExperimentError(ValueError):
    """Bad experiment input, reported as a one-line error with exit status 2."""


def discover() -> dict[str, ModuleType]:
    found: dict[str, ModuleType] = {}
    for mod_info in pkgutil.iter_modules(__path__):
        if mod_info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{mod_info.name}")
        if hasattr(mod, "NAME") and hasattr(mod, "run"):
            found[mod.NAME] = mod
    return dict(sorted(found.items()))
