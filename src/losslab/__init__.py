"""losslab: training objectives from recent research, for PyTorch.

>>> import torch, losslab
>>> logits, target = torch.randn(8, 5), torch.randint(0, 5, (8,))
>>> loss = losslab.functional.cross_entropy(logits, target, z_loss=1e-4)
>>> losslab.get("cross_entropy") is losslab.functional.cross_entropy
True
"""
from __future__ import annotations

from . import distributed, estimators, functional, nn, registry
from ._checks import set_validation, validation, validation_enabled
from ._version import __version__
from .registry import Example, LossInfo, Reference, families, get, info, list_losses, register

__all__ = [
    "functional",
    "nn",
    "registry",
    "distributed",
    "estimators",
    "Reference",
    "Example",
    "LossInfo",
    "register",
    "get",
    "info",
    "list_losses",
    "families",
    "set_validation",
    "validation",
    "validation_enabled",
    "__version__",
]
