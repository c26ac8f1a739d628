"""Module wrappers for the kernel divergences and the Gaussian closed forms."""
from __future__ import annotations

from .. import functional as F
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["MMD", "CauchySchwarzDivergence", "GaussianWasserstein2", "GaussianKL", "SlicedWasserstein"]


@register_module("mmd")
class MMD(FunctionalLoss, function=F.mmd):
    """Module form of :func:`losslab.functional.mmd`."""


@register_module("cauchy_schwarz_divergence")
class CauchySchwarzDivergence(FunctionalLoss, function=F.cauchy_schwarz_divergence):
    """Module form of :func:`losslab.functional.cauchy_schwarz_divergence`."""


@register_module("gaussian_wasserstein2")
class GaussianWasserstein2(FunctionalLoss, function=F.gaussian_wasserstein2):
    """Module form of :func:`losslab.functional.gaussian_wasserstein2`."""


@register_module("gaussian_kl")
class GaussianKL(FunctionalLoss, function=F.gaussian_kl):
    """Module form of :func:`losslab.functional.gaussian_kl`."""


@register_module("sliced_wasserstein")
class SlicedWasserstein(FunctionalLoss, function=F.sliced_wasserstein):
    """Module form of :func:`losslab.functional.sliced_wasserstein`.

    ``SlicedWasserstein(num_projections=100, control_variate="lower")(x, y, generator=g)``:
    the directions (``projections``) and their ``generator`` change per batch and go to ``forward``.
    """
