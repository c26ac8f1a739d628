"""Module wrappers for the transport family."""
from __future__ import annotations

__all__: list[str] = []
