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
from .moments import RunningMoments  # noqa: E402

__all__ += ["RunningMoments"]
from .monte_carlo import control_variate_mean, effective_sample_size, importance_sampling_mean  # noqa: E402

__all__ += ["control_variate_mean", "importance_sampling_mean", "effective_sample_size"]
from .weights import inverse_variance_weights, kl_dro_loss, kl_dro_weights, loss_reweighting  # noqa: E402

__all__ += ["kl_dro_weights", "kl_dro_loss", "loss_reweighting", "inverse_variance_weights"]
from .gradients import (  # noqa: E402
    GradientNoiseScale,
    NormTest,
    grad_sq_norms,
    gradient_noise_scale,
    mse_optimal_mixing_weight,
    norm_test,
)

__all__ += ["grad_sq_norms", "gradient_noise_scale", "GradientNoiseScale", "norm_test", "NormTest",
            "mse_optimal_mixing_weight"]
from .off_policy import doubly_robust_value, ips_value  # noqa: E402

__all__ += ["ips_value", "doubly_robust_value"]
from .calibration import CalibrationError  # noqa: E402

__all__ += ["CalibrationError"]
