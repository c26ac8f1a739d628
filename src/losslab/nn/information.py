"""Module wrappers for the information measures."""
from __future__ import annotations

from .. import functional as F
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["Entropy", "VendiScore", "VendiScoreFromKernel", "DiffusionSpectralEntropy", "DiffusionSpectralMutualInformation",
           "ConditionalMutualInformation", "CSQuadraticMutualInformation"]


@register_module("entropy")
class Entropy(FunctionalLoss, function=F.entropy):
    """Module form of :func:`losslab.functional.entropy`."""


@register_module("vendi_score")
class VendiScore(FunctionalLoss, function=F.vendi_score):
    """Module form of :func:`losslab.functional.vendi_score`."""


@register_module("vendi_score_from_kernel")
class VendiScoreFromKernel(FunctionalLoss, function=F.vendi_score_from_kernel):
    """Module form of :func:`losslab.functional.vendi_score_from_kernel`."""


@register_module("conditional_mutual_information")
class ConditionalMutualInformation(FunctionalLoss, function=F.conditional_mutual_information):
    """Module form of :func:`losslab.functional.conditional_mutual_information`."""


@register_module("cs_quadratic_mutual_information")
class CSQuadraticMutualInformation(FunctionalLoss, function=F.cs_quadratic_mutual_information):
    """Module form of :func:`losslab.functional.cs_quadratic_mutual_information`."""


@register_module("diffusion_spectral_entropy")
class DiffusionSpectralEntropy(FunctionalLoss, function=F.diffusion_spectral_entropy):
    """Module form of :func:`losslab.functional.diffusion_spectral_entropy`."""


@register_module("diffusion_spectral_mutual_information")
class DiffusionSpectralMutualInformation(FunctionalLoss, function=F.diffusion_spectral_mutual_information):
    """Module form of :func:`losslab.functional.diffusion_spectral_mutual_information`."""
