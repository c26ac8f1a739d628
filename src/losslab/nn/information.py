"""Module wrappers for the information family."""
from __future__ import annotations

__all__: list[str] = []
