"""Module wrappers for the preference family."""
from __future__ import annotations

__all__: list[str] = []
