"""The return type of estimates that come with an uncertainty."""
from __future__ import annotations

from typing import NamedTuple

import torch


class Estimate(NamedTuple):
    """An estimate and its standard error (both tensors).

    ``value`` is the point estimate; ``stderr`` the estimated standard deviation of that
    estimator over repeated samples (the square root of its estimated variance), so that
    ``value ± 2 * stderr`` is an approximate 95 % interval.
    """

    value: torch.Tensor
    stderr: torch.Tensor
