"""Module wrappers for the regression-with-uncertainty objectives."""
from __future__ import annotations

from .. import functional as F
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["GaussianNLLLoss", "GeneralizedGaussianNLLLoss", "CensoredRegressionLoss", "AggregateResponseLoss"]


@register_module("gaussian_nll")
class GaussianNLLLoss(FunctionalLoss, function=F.gaussian_nll):
    """Module form of :func:`losslab.functional.gaussian_nll` (``var`` is a forward input)."""


@register_module("generalized_gaussian_nll")
class GeneralizedGaussianNLLLoss(FunctionalLoss, function=F.generalized_gaussian_nll):
    """Module form of :func:`losslab.functional.generalized_gaussian_nll` (``scale`` and ``shape``
    are forward inputs: a network predicts them)."""


@register_module("censored_regression_loss")
class CensoredRegressionLoss(FunctionalLoss, function=F.censored_regression_loss, batch_args=("sample_weight",)):
    """Module form of :func:`losslab.functional.censored_regression_loss` (``sample_weight`` goes to forward)."""


@register_module("aggregate_response_loss")
class AggregateResponseLoss(FunctionalLoss, function=F.aggregate_response_loss):
    """Module form of :func:`losslab.functional.aggregate_response_loss`."""
