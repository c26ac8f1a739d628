"""Statistical estimators around objectives: moments, Monte Carlo variance reduction,
off-policy values, instance weights, gradient statistics and streaming metrics.

Estimates that come with an uncertainty return :class:`Estimate` ``(value, stderr)``.
Every estimator states in its docstring what it estimates, whether it is unbiased or
consistent, and its variance where known.
"""
from __future__ import annotations

from ._estimate import Estimate

__all__: list[str] = ["Estimate"]

# Each topic module adds its names below (one import line and one __all__ line each).
