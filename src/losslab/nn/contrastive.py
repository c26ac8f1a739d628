"""Module wrappers for the contrastive family."""
from __future__ import annotations

__all__: list[str] = []
