"""classification ldr objectives (see CATALOG.md)."""
from __future__ import annotations

__all__: list[str] = []
