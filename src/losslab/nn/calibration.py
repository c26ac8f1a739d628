"""Module wrappers for the calibration family."""
from __future__ import annotations

__all__: list[str] = []
