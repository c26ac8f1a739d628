"""Module wrappers for the large_vocab family."""
from __future__ import annotations

__all__: list[str] = []
