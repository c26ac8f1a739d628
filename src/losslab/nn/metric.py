"""Module wrappers for the metric family."""
from __future__ import annotations

__all__: list[str] = []
