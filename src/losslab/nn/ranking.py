"""Module wrappers for the ranking family."""
from __future__ import annotations

__all__: list[str] = []
