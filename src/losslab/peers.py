"""The peer implementation each objective is compared with (``losslab bench``, the docs).

A :class:`Peer` names the implementation a user would otherwise reach for (torch's own loss,
pytorch-metric-learning, geomloss, POT, torchmetrics, or the hand-written torch expression) and
builds a call of it on losslab's inputs, so that ``losslab bench`` times both side by side.
:attr:`losslab.LossInfo.peer` looks the table up.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Peer", "get", "PEERS"]


@dataclass(frozen=True)
class Peer:
    """A peer implementation of one objective.

    Attributes:
        label: what it is, e.g. ``"torch.nn.functional.cross_entropy"``.
        package: the import name of the package it needs (``"torch"``, ``"pytorch_metric_learning"``).
        build: ``build(args, kwargs) -> call``: from losslab's positional inputs and keyword
            arguments (as the registered example makes them, possibly scaled), a zero-argument
            callable computing the peer's loss as a scalar tensor (forward only; the caller
            differentiates it).
    """

    label: str
    package: str
    build: Callable[[tuple, dict], Callable[[], torch.Tensor]]

    def available(self) -> bool:
        """Whether the package it needs is installed."""
        return importlib.util.find_spec(self.package) is not None


PEERS: dict[str, Peer] = {}


def get(name: str) -> Peer | None:
    """The peer of the registered objective ``name``, or None."""
    return PEERS.get(name)
