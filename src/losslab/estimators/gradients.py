r"""Gradient statistics: the gradient noise scale, the norm test for adaptive batch sizes,
and the MSE-optimal mixing weight of two gradient estimators.

Everything here works on **squared norms** of gradients, which a training loop gets for
free from ``p.grad`` (:func:`grad_sq_norms`), per parameter group, without storing
per-sample gradients. The model of the data: the per-sample gradients :math:`g_i` of a batch
are i.i.d. with mean :math:`G` (the true gradient) and covariance :math:`\Sigma`, so the
mean gradient of a batch of :math:`B` samples has
:math:`\mathbb{E}\lVert g_B\rVert^2 = \lVert G\rVert^2 + \operatorname{tr}\Sigma / B`.

A training loop (one parameter group per optimizer group)::

    from losslab.estimators import grad_sq_norms, gradient_noise_scale

    small, large = [], []
    for step, (x, y) in enumerate(loader):              # batches of size 4 * b
        opt.zero_grad()
        loss_fn(model(x[:b]), y[:b]).backward()          # a small batch of size b
        small.append(grad_sq_norms(opt))
        opt.zero_grad()
        loss_fn(model(x), y).backward()                  # the large batch of size 4 * b
        large.append(grad_sq_norms(opt))
        opt.step()
    gns = gradient_noise_scale(torch.stack(small), torch.stack(large),
                               small_batch_size=b, large_batch_size=4 * b)
    gns.noise_scale          # (G,): tr(Sigma) / |G|^2 per parameter group
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch

from .._checks import check_floating, check_ndim, check_positive, hyperparameter_checks
from .._numerics import upcast
from ..registry import Example, Reference, register
from ._estimate import Estimate

__all__ = ["grad_sq_norms", "gradient_noise_scale", "GradientNoiseScale", "norm_test", "NormTest",
           "mse_optimal_mixing_weight"]

MCCANDLISH = Reference(
    title="An Empirical Model of Large-Batch Training",
    authors="Sam McCandlish, Jared Kaplan, Dario Amodei, OpenAI Dota Team",
    year=2018,
    url="https://arxiv.org/abs/1812.06162",
)
ADADAGRAD = Reference(
    title="AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient Methods",
    authors="Tim Tsz-Kit Lau, Han Liu, Mladen Kolar",
    year=2024,
    url="https://arxiv.org/abs/2402.11215",
)
BYRD = Reference(
    title="Sample size selection in optimization methods for machine learning",
    authors="Richard H. Byrd, Gillian M. Chin, Jorge Nocedal, Yuchen Wu",
    year=2012,
    url="https://doi.org/10.1007/s10107-012-0572-5",
)
BVPO = Reference(
    title="From Noisy Traces to Stable Gradients: Bias-Variance Optimized Preference Optimization "
          "for Aligning Large Reasoning Models",
    authors="Mingkang Zhu, Xi Chen, Bei Yu, Hengshuang Zhao, Jiaya Jia",
    year=2025,
    url="https://arxiv.org/abs/2510.05095",
)


# --------------------------------------------------------------------------- reading p.grad
def grad_sq_norms(params: torch.nn.Module | torch.optim.Optimizer | Iterable) -> torch.Tensor:
    r"""Squared L2 norms of ``p.grad`` summed over each parameter group: Σ_p ‖∇p‖² per group.

    Call it after ``backward()``; it reads ``p.grad`` and changes nothing. A parameter whose
    ``grad`` is ``None`` counts 0. The sums are accumulated in float64 on the device of the
    gradients (one small tensor, no host sync).

    Args:
        params: an optimizer (its ``param_groups``, one norm each), a Module (one group: all
            its parameters), a list of param-group dicts (``{"params": [...]}``) or an iterable
            of tensors (one group).

    Returns:
        float64 tensor ``(G,)`` with one squared norm per group.

    Example:
        >>> import torch
        >>> from losslab.estimators import grad_sq_norms
        >>> lin = torch.nn.Linear(2, 1)
        >>> lin(torch.ones(1, 2)).sum().backward()       # grad of weight: [1, 1]; of bias: 1
        >>> grad_sq_norms(lin)
        tensor([3.], dtype=torch.float64)
        >>> opt = torch.optim.SGD([{"params": [lin.weight]}, {"params": [lin.bias]}], lr=0.1)
        >>> grad_sq_norms(opt)
        tensor([2., 1.], dtype=torch.float64)
    """
    if isinstance(params, torch.optim.Optimizer):
        groups = [g["params"] for g in params.param_groups]
    elif isinstance(params, torch.nn.Module):
        groups = [list(params.parameters())]
    else:
        items = list(params)
        if items and all(isinstance(g, dict) for g in items):
            groups = [list(g["params"]) for g in items]
        elif all(isinstance(p, torch.Tensor) for p in items):
            groups = [items]
        else:
            raise TypeError("params must be an optimizer, a Module, a list of param-group dicts or of tensors")
    device = None
    for group in groups:
        for p in group:
            if p.grad is not None:
                device = p.grad.device
                break
        if device is not None:
            break
    out = torch.zeros(len(groups), dtype=torch.float64, device=device)
    for k, group in enumerate(groups):
        for p in group:
            if p.grad is not None:
                g = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
                out[k] += g.detach().double().pow(2).sum()
    return out


# --------------------------------------------------------------------------- gradient noise scale
class GradientNoiseScale(NamedTuple):
    """Result of :func:`gradient_noise_scale` (one entry per parameter group)."""

    noise_scale: torch.Tensor
    """:math:`\\hat B_{\\text{simple}} = \\hat S / \\widehat{\\lVert G\\rVert^2}` (consistent, not unbiased)."""
    trace_cov: Estimate
    """Unbiased estimate of :math:`\\operatorname{tr}\\Sigma` (per-sample gradient covariance) and its stderr."""
    grad_sq_norm: Estimate
    """Unbiased estimate of :math:`\\lVert G\\rVert^2` and its stderr."""


def _check_batch_sizes(small_batch_size, large_batch_size):
    for value, name in ((small_batch_size, "small_batch_size"), (large_batch_size, "large_batch_size")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if large_batch_size <= small_batch_size:
        raise ValueError(f"large_batch_size must be > small_batch_size, got {large_batch_size} <= {small_batch_size}")


def _check_gns(*, small_batch_size=None, large_batch_size=None, **_):
    _check_batch_sizes(small_batch_size, large_batch_size)


def _mean_and_stderr(x: torch.Tensor) -> Estimate:
    """Mean over dim 0 and its standard error ``std(ddof=1) / sqrt(T)``; NaN stderr for T = 1."""
    t = x.shape[0]
    mean = x.mean(0)
    if t < 2:
        return Estimate(mean, torch.full_like(mean, float("nan")))
    var = (x - mean).pow(2).sum(0) / (t - 1)
    return Estimate(mean, (var / t).sqrt())


def _gns_example(gen: torch.Generator):
    small = 2.0 + torch.rand(6, 3, generator=gen, dtype=torch.float64)
    large = 1.0 + 0.5 * torch.rand(6, 3, generator=gen, dtype=torch.float64)
    return (small, large), {"small_batch_size": 8, "large_batch_size": 64}


def _gns_mismatch(gen: torch.Generator):
    (small, large), kw = _gns_example(gen)
    return (small, large[:4]), kw


@register(
    "gradient_noise_scale",
    family="estimators",
    reference=MCCANDLISH,
    seed=ADADAGRAD.title,
    example=Example(make=_gns_example, mismatch=_gns_mismatch, mismatch_match="large_sq_norms",
                    output=lambda r: r.noise_scale),
    tags=("batch size", "gradient noise", "critical batch size", "gradient variance"),
    module_required=False,
    differentiable=False,
)
@hyperparameter_checks(_check_gns)
def gradient_noise_scale(
    small_sq_norms: torch.Tensor,
    large_sq_norms: torch.Tensor,
    *,
    small_batch_size: int,
    large_batch_size: int,
) -> GradientNoiseScale:
    r"""The simple gradient noise scale tr(Σ)/‖G‖² from squared gradient norms at two batch sizes.

    With :math:`b = ` ``small_batch_size``, :math:`B = ` ``large_batch_size`` and the squared
    norms :math:`s_t = \lVert g_b\rVert^2`, :math:`l_t = \lVert g_B\rVert^2` of mean gradients
    over :math:`b` and :math:`B` samples (row :math:`t` of the inputs: a step, or a microbatch
    pair), McCandlish et al. (2018, App. A.1) estimate

    .. math::
        \widehat{\lVert G\rVert^2}_t = \frac{B\,l_t - b\,s_t}{B - b}, \qquad
        \hat S_t = \frac{s_t - l_t}{1/b - 1/B}, \qquad
        \hat B_{\text{simple}} = \frac{\overline{\hat S}}{\overline{\widehat{\lVert G\rVert^2}}},

    where the bars average over the :math:`T` rows. Since
    :math:`\mathbb{E}\lVert g_n\rVert^2 = \lVert G\rVert^2 + \operatorname{tr}\Sigma/n` for
    i.i.d. per-sample gradients, :math:`\widehat{\lVert G\rVert^2}` and :math:`\hat S` are
    **unbiased** for :math:`\lVert G\rVert^2` and :math:`\operatorname{tr}\Sigma` (whether or
    not the small batch is part of the large one); their standard errors are the spread over
    the rows, ``std(ddof=1) / sqrt(T)`` (NaN for a single row). The noise scale is a ratio of
    the two averages (as the paper recommends: average numerator and denominator separately,
    e.g. over steps, then divide), which is **consistent** as :math:`T \to \infty` but not
    unbiased; with few rows :math:`\widehat{\lVert G\rVert^2}` can be negative (the noise
    dominates), and so can the ratio. Per parameter group: pass ``(T, G)`` inputs from
    :func:`grad_sq_norms`. The small-batch norm of a step may be the average of several
    microbatch norms of size :math:`b` (still unbiased, less noisy).

    Args:
        small_sq_norms: ``(T, *)`` squared norms of mean gradients over ``small_batch_size`` samples.
        large_sq_norms: ``(T, *)`` squared norms of mean gradients over ``large_batch_size`` samples.
        small_batch_size: :math:`b \ge 1`.
        large_batch_size: :math:`B > b`.

    Shape:
        inputs ``(T, *)`` (``*`` e.g. parameter groups); every field of the result ``(*)``.

    Returns:
        :class:`GradientNoiseScale` ``(noise_scale, trace_cov, grad_sq_norm)``, the last two
        :class:`~losslab.estimators.Estimate`. float64 in gives float64; half precision is
        computed in float32.

    Example:
        >>> import torch
        >>> from losslab.estimators import gradient_noise_scale
        >>> # |G|^2 = 1, tr(Sigma) = 8: E|g_b|^2 = 1 + 8/b
        >>> gns = gradient_noise_scale(torch.tensor([2.0]), torch.tensor([1.125]),
        ...                            small_batch_size=8, large_batch_size=64)
        >>> gns.noise_scale, gns.grad_sq_norm.value, gns.trace_cov.value
        (tensor(8.), tensor(1.), tensor(8.))

    References:
        McCandlish, Kaplan, Amodei, "An Empirical Model of Large-Batch Training", 2018,
        https://arxiv.org/abs/1812.06162 (Appendix A.1). Used for adaptive batch sizes by Lau,
        Liu, Kolar, "AdAdaGrad", 2024, https://arxiv.org/abs/2402.11215.
    """
    check_floating(small_sq_norms, "small_sq_norms")
    check_floating(large_sq_norms, "large_sq_norms")
    if small_sq_norms.dim() < 1:
        raise ValueError("small_sq_norms must have a leading dimension T (rows), "
                         f"got shape {tuple(small_sq_norms.shape)}")
    if large_sq_norms.shape != small_sq_norms.shape:
        raise ValueError(f"large_sq_norms must have the shape of small_sq_norms {tuple(small_sq_norms.shape)} "
                         f"(one row per small-batch row), got {tuple(large_sq_norms.shape)}")
    if small_sq_norms.shape[0] == 0:
        raise ValueError("small_sq_norms must have at least one row")
    _check_batch_sizes(small_batch_size, large_batch_size)
    s, l = upcast(small_sq_norms), upcast(large_sq_norms)
    b, B = float(small_batch_size), float(large_batch_size)
    g2 = (B * l - b * s) / (B - b)
    trace = (s - l) / (1.0 / b - 1.0 / B)
    g2_est, trace_est = _mean_and_stderr(g2), _mean_and_stderr(trace)
    return GradientNoiseScale(trace_est.value / g2_est.value, trace_est, g2_est)


# --------------------------------------------------------------------------- norm test
class NormTest(NamedTuple):
    """Result of :func:`norm_test` (one entry per parameter group)."""

    ratio: torch.Tensor
    """:math:`\\widehat{\\operatorname{tr}\\operatorname{Var}}(g) / \\lVert g\\rVert^2`, the test statistic."""
    increase: torch.Tensor
    """``ratio > eta ** 2``: the batch is too small (bool)."""
    batch_size: torch.Tensor
    """The batch size that would pass, :math:`\\lceil B\\,\\text{ratio}/\\eta^2\\rceil`, at least the current."""


def _check_norm_test(*, eta=None, microbatch_size=1, **_):
    check_positive(eta, "eta")
    if isinstance(microbatch_size, bool) or not isinstance(microbatch_size, int) or microbatch_size < 1:
        raise ValueError(f"microbatch_size must be an integer >= 1, got {microbatch_size!r}")


def _norm_test_example(gen: torch.Generator):
    # Microbatch gradients g_j (M, P) give consistent inputs (|g|^2 of their mean).
    g = torch.randn(6, 2, 5, generator=gen, dtype=torch.float64) + 0.5
    return (g.pow(2).sum(-1), g.mean(0).pow(2).sum(-1)), {"eta": 0.5, "microbatch_size": 4}


def _norm_test_mismatch(gen: torch.Generator):
    (m, b), kw = _norm_test_example(gen)
    return (m, b[:1]), kw


@register(
    "norm_test",
    family="estimators",
    reference=BYRD,
    seed=ADADAGRAD.title,
    example=Example(make=_norm_test_example, mismatch=_norm_test_mismatch, mismatch_match="batch_sq_norm",
                    output=lambda r: r.ratio),
    tags=("batch size", "adaptive batch size", "gradient noise", "gradient variance"),
    module_required=False,
    differentiable=False,
)
@hyperparameter_checks(_check_norm_test)
def norm_test(
    microbatch_sq_norms: torch.Tensor,
    batch_sq_norm: torch.Tensor,
    *,
    eta: float,
    microbatch_size: int = 1,
) -> NormTest:
    r"""The norm test for adaptive batch sizes: increase the batch when Var(g) > η²|g|².

    The batch of :math:`B = M b` samples is split into :math:`M \ge 2` microbatches of
    :math:`b` = ``microbatch_size`` samples (:math:`b = 1`: per-sample gradients) with mean
    gradients :math:`g_j`; :math:`g = \frac1M\sum_j g_j` is the batch gradient. From the
    squared norms only,

    .. math::
        \widehat{\operatorname{tr}\operatorname{Var}}(g)
        = \frac{1}{M(M-1)} \sum_{j} \lVert g_j - g\rVert^2
        = \frac{\sum_j \lVert g_j\rVert^2 - M\lVert g\rVert^2}{M(M-1)},

    an **unbiased** estimate of :math:`\operatorname{tr}\operatorname{Cov}(g) = \operatorname{tr}\Sigma/B`
    (i.i.d. microbatches). The norm test of Byrd et al. (2012), used for adaptive batch sizes
    in AdAdaGrad (Lau et al., 2024), asks :math:`\mathbb{E}\lVert g - \nabla L\rVert^2 \le
    \eta^2 \lVert\nabla L\rVert^2` and approximates it by
    :math:`\text{ratio} = \widehat{\operatorname{tr}\operatorname{Var}}(g)/\lVert g\rVert^2 \le \eta^2`.
    When it fails, the batch should grow to :math:`\lceil B\,\text{ratio}/\eta^2\rceil` (the
    size at which the estimated variance :math:`\operatorname{tr}\hat\Sigma/B'` meets the bound).
    ``ratio`` is a ratio of estimates (consistent, not unbiased). Per parameter group: pass
    ``(M, G)`` and ``(G,)`` norms from :func:`grad_sq_norms`. Rounding can make the numerator
    slightly negative when all :math:`g_j` are equal; it is clamped at 0 (a NaN propagates).

    Args:
        microbatch_sq_norms: ``(M, *)`` squared norms :math:`\lVert g_j\rVert^2`, :math:`M \ge 2`.
        batch_sq_norm: ``(*)`` squared norm :math:`\lVert g\rVert^2` of their mean.
        eta: :math:`\eta > 0` (0.1 to 1 in the papers; larger tolerates more noise).
        microbatch_size: samples per microbatch :math:`b`.

    Shape:
        ``microbatch_sq_norms`` ``(M, *)``, ``batch_sq_norm`` ``(*)``; every field ``(*)``.

    Returns:
        :class:`NormTest` ``(ratio, increase, batch_size)``.

    Example:
        >>> import torch
        >>> from losslab.estimators import norm_test
        >>> g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 2.0]])   # 4 per-sample gradients
        >>> out = norm_test(g.pow(2).sum(-1), g.mean(0).pow(2).sum(), eta=0.3)
        >>> out.ratio      # tr Var(g) = (12 - 4 * 2) / (4 * 3) = 1/3, |g|^2 = 2
        tensor(0.1667)
        >>> out.increase, out.batch_size    # 1/6 > 0.09: grow to ceil(4 * (1/6) / 0.09) = 8
        (tensor(True), tensor(8))

    References:
        Byrd, Chin, Nocedal, Wu, "Sample size selection in optimization methods for machine
        learning", Math. Programming 2012, https://doi.org/10.1007/s10107-012-0572-5;
        Lau, Liu, Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient
        Methods", 2024, https://arxiv.org/abs/2402.11215.
    """
    check_floating(microbatch_sq_norms, "microbatch_sq_norms")
    check_floating(batch_sq_norm, "batch_sq_norm")
    _check_norm_test(eta=eta, microbatch_size=microbatch_size)
    if microbatch_sq_norms.dim() < 1 or microbatch_sq_norms.shape[0] < 2:
        raise ValueError("microbatch_sq_norms must have shape (M, *) with M >= 2 microbatches, "
                         f"got {tuple(microbatch_sq_norms.shape)}")
    if batch_sq_norm.shape != microbatch_sq_norms.shape[1:]:
        raise ValueError(f"batch_sq_norm must have shape {tuple(microbatch_sq_norms.shape[1:])} "
                         f"(microbatch_sq_norms without its first dimension), got {tuple(batch_sq_norm.shape)}")
    m = microbatch_sq_norms.shape[0]
    sq = upcast(microbatch_sq_norms)
    g2 = upcast(batch_sq_norm, sq.dtype)
    # sum_j |g_j - g|^2 = sum_j |g_j|^2 - M |g|^2; clamp_min keeps NaN (it propagates).
    spread = (sq.sum(0) - m * g2).clamp_min(0.0)
    var = spread / (m * (m - 1))
    ratio = var / g2
    increase = ratio > eta ** 2
    current = m * microbatch_size
    wanted = torch.ceil(current * ratio / eta ** 2)
    batch_size = torch.where(increase, wanted, torch.full_like(wanted, current))
    batch_size = torch.nan_to_num(batch_size, nan=current, posinf=float(2 ** 62)).clamp(current, 2 ** 62).long()
    return NormTest(ratio, increase, batch_size)


# --------------------------------------------------------------------------- MSE-optimal mixing
def _mixing_example(gen: torch.Generator):
    a = torch.randn(16, 5, generator=gen, dtype=torch.float64) * 2.0
    b = 0.3 * a + 0.5 * torch.randn(16, 5, generator=gen, dtype=torch.float64) + 0.2
    return (a, b), {"bias_b": torch.full((5,), 0.2, dtype=torch.float64)}


def _mixing_mismatch(gen: torch.Generator):
    (a, b), kw = _mixing_example(gen)
    return (a, b[:, :3]), kw


@register(
    "mse_optimal_mixing_weight",
    family="estimators",
    reference=BVPO,
    seed=BVPO.title,
    example=Example(make=_mixing_example, mismatch=_mixing_mismatch, mismatch_match="samples_b"),
    tags=("bias variance", "gradient estimator", "preference optimization", "BVPO"),
    module_required=False,
    differentiable=False,
    batch_level=True,
)
def mse_optimal_mixing_weight(
    samples_a: torch.Tensor,
    samples_b: torch.Tensor,
    *,
    bias_a: torch.Tensor | None = None,
    bias_b: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The α ∈ [0, 1] minimizing the estimated MSE of α g_a + (1 − α) g_b, two gradient estimators.

    For estimators :math:`g_a, g_b \in \mathbb{R}^P` of a gradient :math:`G` with biases
    :math:`b_a, b_b`, covariances :math:`\Sigma_a, \Sigma_b` and cross-covariance :math:`C`,

    .. math::
        \operatorname{MSE}(\alpha) = \lVert \alpha b_a + (1-\alpha) b_b\rVert^2
        + \alpha^2 \operatorname{tr}\Sigma_a + (1-\alpha)^2 \operatorname{tr}\Sigma_b
        + 2\alpha(1-\alpha)\operatorname{tr} C,

    a convex quadratic in :math:`\alpha` whose minimizer, clipped to :math:`[0, 1]`, is

    .. math::
        \alpha^\star = \frac{\operatorname{tr}\Sigma_b - \operatorname{tr}C + \lVert b_b\rVert^2
        - \langle b_a, b_b\rangle}{\operatorname{tr}\Sigma_a + \operatorname{tr}\Sigma_b
        - 2\operatorname{tr}C + \lVert b_a - b_b\rVert^2}.

    This closed form was derived here from the MSE above (setting the derivative to zero);
    it is the BVPO mixing rule of Zhu et al. (2025) with :math:`g_a` their high-variance
    trace-based estimator and :math:`g_b` the low-variance one, but the paper's own equation
    could not be checked line by line. The traces are the unbiased sample (co)variances
    (``ddof=1``) of the paired draws (row :math:`s` of ``samples_a`` and of ``samples_b``
    come from the same data; independent draws give :math:`C \approx 0`). The biases cannot
    be estimated from draws: pass them if known (default 0, i.e. both unbiased). The plug-in
    :math:`\hat\alpha` is **consistent** as the number of draws :math:`S \to \infty`, not
    unbiased (a ratio). When the denominator is 0 (identical estimators) every α is optimal
    and 0.5 is returned. Computed without gradient.

    Args:
        samples_a: ``(S, P)`` draws of :math:`g_a`, :math:`S \ge 2`.
        samples_b: ``(S, P)`` draws of :math:`g_b`, paired with ``samples_a``.
        bias_a: optional ``(P,)`` bias of :math:`g_a`.
        bias_b: optional ``(P,)`` bias of :math:`g_b`.

    Shape:
        samples ``(S, P)``; output a 0-dim tensor.

    Returns:
        :math:`\hat\alpha`, the weight of ``samples_a``'s estimator.

    Example:
        >>> import torch
        >>> from losslab.estimators import mse_optimal_mixing_weight
        >>> gen = torch.Generator().manual_seed(0)
        >>> a = 3.0 * torch.randn(4000, 2, generator=gen, dtype=torch.float64)  # unbiased, tr = 18
        >>> b = 1.0 * torch.randn(4000, 2, generator=gen, dtype=torch.float64)  # unbiased, tr = 2
        >>> round(float(mse_optimal_mixing_weight(a, b)), 2)                    # 2 / (18 + 2) = 0.1
        0.1

    References:
        Zhu et al., "From Noisy Traces to Stable Gradients: Bias-Variance Optimized
        Preference Optimization for Aligning Large Reasoning Models", 2025,
        https://arxiv.org/abs/2510.05095.
    """
    check_floating(samples_a, "samples_a")
    check_floating(samples_b, "samples_b")
    check_ndim(samples_a, "samples_a", 2)
    if samples_b.shape != samples_a.shape:
        raise ValueError(f"samples_b must have the shape of samples_a {tuple(samples_a.shape)} (paired draws), "
                         f"got {tuple(samples_b.shape)}")
    s, p = samples_a.shape
    if s < 2:
        raise ValueError(f"samples_a must hold at least 2 draws (rows), got {s}")
    for bias, name in ((bias_a, "bias_a"), (bias_b, "bias_b")):
        if bias is not None:
            check_floating(bias, name)
            if bias.shape != (p,):
                raise ValueError(f"{name} must have shape ({p},) (one entry per gradient coordinate), "
                                 f"got {tuple(bias.shape)}")
    with torch.no_grad():
        a = upcast(samples_a)
        b = upcast(samples_b, a.dtype)
        da, db = a - a.mean(0), b - b.mean(0)
        tr_a = da.pow(2).sum() / (s - 1)
        tr_b = db.pow(2).sum() / (s - 1)
        tr_c = (da * db).sum() / (s - 1)
        ba = torch.zeros(p, dtype=a.dtype, device=a.device) if bias_a is None else upcast(bias_a, a.dtype)
        bb = torch.zeros(p, dtype=a.dtype, device=a.device) if bias_b is None else upcast(bias_b, a.dtype)
        num = tr_b - tr_c + bb.dot(bb) - ba.dot(bb)
        den = tr_a + tr_b - 2 * tr_c + (ba - bb).pow(2).sum()
        alpha = num / torch.where(den > 0, den, torch.ones_like(den))
        alpha = torch.where(den > 0, alpha, torch.full_like(alpha, 0.5))
        # clamp keeps a NaN (it propagates); where(den > 0) is False for NaN, so recover it.
        alpha = torch.where(torch.isnan(den), den, alpha.clamp(0.0, 1.0))
    return alpha
