"""Module wrappers for the distillation family."""
from __future__ import annotations

__all__: list[str] = []
