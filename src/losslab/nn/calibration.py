"""Module wrappers for the calibration objectives.

The calibration error is a metric, not a loss: its streaming form is
:class:`losslab.estimators.CalibrationError`; temperature fitting is a procedure
(:func:`losslab.functional.fit_temperature`).
"""
from __future__ import annotations

from .. import functional as F
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["BrierScoreLoss", "CorrectnessAwareLoss", "HCalibrationLoss"]


@register_module("brier_score")
class BrierScoreLoss(FunctionalLoss, function=F.brier_score):
    """Module form of :func:`losslab.functional.brier_score`."""


@register_module("correctness_aware_loss")
class CorrectnessAwareLoss(FunctionalLoss, function=F.correctness_aware_loss):
    """Module form of :func:`losslab.functional.correctness_aware_loss`."""


@register_module("h_calibration_loss")
class HCalibrationLoss(FunctionalLoss, function=F.h_calibration_loss):
    """Module form of :func:`losslab.functional.h_calibration_loss`."""
