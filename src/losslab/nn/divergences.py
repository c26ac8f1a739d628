"""Module wrappers for the divergences family."""
from __future__ import annotations

__all__: list[str] = []
