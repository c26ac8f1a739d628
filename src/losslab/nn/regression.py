"""Module wrappers for the regression family."""
from __future__ import annotations

__all__: list[str] = []
