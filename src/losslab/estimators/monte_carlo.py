r"""Monte Carlo means with variance reduction: control variates and importance sampling.

Every estimator returns :class:`~losslab.estimators.Estimate` ``(value, stderr)``, where
``stderr`` estimates the standard deviation of ``value`` over repeated samples. Half-precision
inputs are computed in float32 and the estimate comes back in float32; float64 stays float64.
"""
from __future__ import annotations

import math
import warnings

import torch

from .._checks import check_floating, check_ndim, validation_enabled
from .._numerics import compute_dtype, upcast
from ..registry import Example, Reference, register
from ._estimate import Estimate

__all__ = ["control_variate_mean", "importance_sampling_mean", "effective_sample_size"]

MULTIPLE_EXPECTATIONS = Reference(
    title="Efficient estimation of multiple expectations with the same sample by adaptive importance "
          "sampling and control variates",
    authors="Julien Demange-Chryst, François Bachoc, Jérôme Morio",
    year=2022,
    url="https://arxiv.org/abs/2212.00568",
)
OWEN = Reference(
    title="Monte Carlo theory, methods and examples",
    authors="Art B. Owen",
    year=2013,
    url="https://artowen.su.domains/mc/",
)
F64 = torch.float64


def _stack(e: Estimate) -> torch.Tensor:
    """The conformance suite checks value and stderr together."""
    return torch.stack((e.value, e.stderr))


def _check_samples(f: torch.Tensor, name: str = "f") -> int:
    check_floating(f, name)
    check_ndim(f, name, 1)
    if f.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one sample, got shape {tuple(f.shape)}")
    return f.shape[0]


# --------------------------------------------------------------------------- control variates
def _cv_example(gen):
    n, k = 24, 2
    g = torch.randn(n, k, generator=gen, dtype=F64)
    f = 1.0 + g @ torch.tensor([0.8, -0.5], dtype=F64) + 0.3 * torch.randn(n, generator=gen, dtype=F64)
    return (f, g, torch.zeros(k, dtype=F64)), {}


def _cv_mismatch(gen):
    (f, g, m), kw = _cv_example(gen)
    return (f, g[:-3], m), kw


@register(
    "control_variate_mean",
    family="estimators",
    reference=MULTIPLE_EXPECTATIONS,
    seed=MULTIPLE_EXPECTATIONS.title,
    example=Example(make=_cv_example, mismatch=_cv_mismatch, mismatch_match="g", output=_stack),
    tags=("Monte Carlo", "variance reduction", "control variates", "regression estimator"),
    module_required=False,
)
def control_variate_mean(f: torch.Tensor, g: torch.Tensor, g_mean: torch.Tensor | float) -> Estimate:
    r"""Monte Carlo mean with control variates of known mean, coefficients fitted by least squares.

    .. math::
        \hat\mu_{cv} = \bar f - (\bar g - \mu_g)^\top \hat\beta, \qquad
        \hat\beta = \arg\min_\beta \sum_i \big((f_i - \bar f) - (g_i - \bar g)^\top\beta\big)^2,

    the intercept of the regression of :math:`f` on :math:`g - \mu_g`. With the optimal
    coefficient :math:`\beta^\star = \Sigma_{gg}^{-1}\Sigma_{gf}` (known) the estimator is
    unbiased with variance :math:`\sigma_f^2(1 - R^2)/N`, :math:`R^2` the squared multiple
    correlation of :math:`f` with :math:`g`: never worse than the plain mean. With
    :math:`\hat\beta` fitted on the same sample (as here) it is consistent, with a bias of
    order :math:`1/N`. ``stderr`` is the regression standard error of the intercept,
    :math:`s\sqrt{1/N + d^\top (G_c^\top G_c)^{+} d}` with :math:`d = \bar g - \mu_g`,
    :math:`G_c` the centred controls and :math:`s^2 = \sum_i e_i^2/(N - K - 1)` the
    residual variance (Owen 2013, ch. 8, control variates). It assumes residuals of equal
    variance; when the residual spread depends on :math:`g` (a tail integrand fitted by
    polynomials) it can be optimistic for small :math:`N` (observed: 0.7x the actual spread
    at :math:`N = 50` with three controls, exact by :math:`N = 500`).

    A singular control matrix (a constant control, collinear controls) has no unique
    :math:`\hat\beta`: the least-norm solution is used (pseudo-inverse of the controls,
    each column scaled to unit norm first so that controls of very different scales are not
    mistaken for collinear ones) and a ``UserWarning`` says so; the estimate stays finite.
    The rank check reads values and runs only while validation is enabled
    (``losslab.set_validation``). Differentiable in every input (through the fitted
    :math:`\hat\beta`), except at a singular control matrix.

    Args:
        f: ``(N,)`` samples of the integrand.
        g: ``(N,)`` or ``(N, K)`` control variates evaluated on the same samples.
        g_mean: their known expectations: a number or 0-dim tensor for ``(N,)`` controls,
            ``(K,)`` for ``(N, K)``.

    Shape:
        f ``(N,)``, g ``(N,)`` or ``(N, K)`` with ``N >= K + 2``; ``value`` and ``stderr`` are
        0-dim.

    Returns:
        :class:`Estimate` ``(value, stderr)``.

    Example:
        >>> import torch
        >>> from losslab.estimators import control_variate_mean
        >>> x = torch.rand(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> cv = control_variate_mean(x.exp(), x, 0.5)   # E[exp(U)] = e - 1, control U of mean 1/2
        >>> plain_stderr = x.exp().std() / 1000 ** 0.5
        >>> round(float(cv.value), 3), round(float(cv.stderr / plain_stderr), 2)  # 1 - R^2 = 0.016
        (1.718, 0.13)

    References:
        Demange-Chryst, Bachoc, Morio, "Efficient estimation of multiple expectations with
        the same sample by adaptive importance sampling and control variates", 2022,
        https://arxiv.org/abs/2212.00568. Owen, "Monte Carlo theory, methods and examples",
        2013, ch. 8 (control variates), https://artowen.su.domains/mc/.
    """
    n = _check_samples(f, "f")
    check_floating(g, "g")
    check_ndim(g, "g", (1, 2))
    if g.shape[0] != n:
        raise ValueError(f"g must have {n} rows (one per sample of f {tuple(f.shape)}), got shape {tuple(g.shape)}")
    single = g.dim() == 1
    k = 1 if single else g.shape[1]
    if not isinstance(g_mean, torch.Tensor):
        g_mean = torch.as_tensor(g_mean, dtype=g.dtype, device=g.device)
    check_floating(g_mean, "g_mean")
    want = () if single else (k,)
    if tuple(g_mean.shape) != want and not (single and tuple(g_mean.shape) == (1,)):
        raise ValueError(f"g_mean must have shape {want} (one known mean per control in g {tuple(g.shape)}), "
                         f"got {tuple(g_mean.shape)}")
    if n < k + 2:
        raise ValueError(f"f must hold at least K + 2 = {k + 2} samples for {k} control(s), got {n}")
    dtype = compute_dtype(f, g, g_mean)
    f, g, g_mean = upcast(f, dtype), upcast(g, dtype), upcast(g_mean, dtype)
    g = g.reshape(n, k)
    g_mean = g_mean.reshape(k)
    if validation_enabled() and not bool(torch.isfinite(g).all()):
        # the least-squares fit (an SVD) cannot run on non-finite controls
        raise ValueError("g must be finite (the controls enter a least-squares fit), found NaN or inf")
    g_bar = g.mean(0)
    gc = g - g_bar
    fc = f - f.mean()
    # Unit-norm columns: the pseudo-inverse's cut-off is relative to the largest singular
    # value, so unscaled controls of very different magnitudes would look collinear.
    scale = torch.linalg.vector_norm(gc, dim=0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    z = gc / scale
    z_pinv = torch.linalg.pinv(z)  # (K, N); the least-norm solution when z is rank-deficient
    if validation_enabled():
        rank = int(torch.linalg.matrix_rank(z))
        if rank < k:
            warnings.warn(f"control_variate_mean: the {k} control(s) in g have rank {rank} (constant or collinear "
                          f"controls); using the least-norm coefficients", UserWarning, stacklevel=2)
    b = z_pinv @ fc  # coefficients of the unit-norm controls
    d = (g_bar - g_mean) / scale
    value = f.mean() - d @ b
    resid = fc - z @ b
    s2 = resid.pow(2).sum() / (n - k - 1)
    lever = (z_pinv.mT @ d).pow(2).sum()  # d^T (Z^T Z)^+ d
    stderr = (s2 * (1.0 / n + lever)).sqrt()
    return Estimate(value, stderr)


# --------------------------------------------------------------------------- importance sampling
def _check_log_weights(log_weights: torch.Tensor, n: int | None) -> None:
    check_floating(log_weights, "log_weights")
    check_ndim(log_weights, "log_weights", 1)
    if n is not None and log_weights.shape[0] != n:
        raise ValueError(f"log_weights must have shape ({n},) (one per sample of f), got {tuple(log_weights.shape)}")
    if log_weights.shape[0] == 0:
        raise ValueError("log_weights must hold at least one sample, got shape (0,)")
    if validation_enabled() and bool((log_weights == float("-inf")).all()):
        raise ValueError("log_weights are all -inf: every importance weight is zero")


def _is_example(gen):
    n = 20
    x = torch.randn(n, generator=gen, dtype=F64)
    return (x.sin() + x, 0.3 * x - 0.2 * x * x), {}


def _is_mismatch(gen):
    (f, lw), kw = _is_example(gen)
    return (f, lw[:-2]), kw


@register(
    "importance_sampling_mean",
    family="estimators",
    reference=MULTIPLE_EXPECTATIONS,
    seed=MULTIPLE_EXPECTATIONS.title,
    # Only f is scaled to 1e4: plain IS with log-weights of 1e4 is an estimate near e^{1e4},
    # which no float32 holds (the self-normalized form is invariant to a shift of log_weights).
    example=Example(make=_is_example, mismatch=_is_mismatch, mismatch_match="log_weights", output=_stack,
                    extreme=(0,)),
    tags=("Monte Carlo", "importance sampling", "self-normalized", "variance reduction"),
    module_required=False,
)
def importance_sampling_mean(f: torch.Tensor, log_weights: torch.Tensor, *, self_normalized: bool = False) -> Estimate:
    r"""Importance-sampling estimate of E_p[f] from samples of a proposal q (plain or self-normalized).

    With :math:`x_i \sim q` and :math:`w_i = \exp(\text{log\_weights}_i)`,

    .. math::
        \hat\mu_{IS} = \frac1N \sum_i w_i f_i \quad (w_i = p(x_i)/q(x_i)), \qquad
        \hat\mu_{SN} = \frac{\sum_i w_i f_i}{\sum_i w_i} \quad (w_i \propto p(x_i)/q(x_i)).

    The plain estimator needs normalized densities and is unbiased, with variance
    :math:`\operatorname{Var}_q(wf)/N`; ``stderr`` is the sample standard deviation of
    :math:`w_i f_i` over :math:`\sqrt N`. The self-normalized estimator
    (``self_normalized=True``) needs the weights only up to a constant; it is consistent,
    with a bias of order :math:`1/N`, and ``stderr`` is the delta-method estimate
    :math:`\sqrt{\sum_i \tilde w_i^2 (f_i - \hat\mu_{SN})^2}` with
    :math:`\tilde w = \operatorname{softmax}(\text{log\_weights})` (Owen 2013, ch. 9).

    Weights are handled in log-space: the self-normalized weights are a ``softmax``; the
    plain estimate factors out :math:`e^{\max_i \text{log\_weights}_i}`, so only an estimate
    that is itself beyond the float range overflows. ``-inf`` log-weights are zero weights;
    all of them ``-inf`` raises ``ValueError``.

    Args:
        f: ``(N,)`` integrand values at the samples.
        log_weights: ``(N,)`` log importance weights :math:`\log p(x_i) - \log q(x_i)`.
        self_normalized: use the self-normalized (ratio) estimator.

    Shape:
        f and log_weights ``(N,)``; ``value`` and ``stderr`` are 0-dim.

    Returns:
        :class:`Estimate` ``(value, stderr)``.

    Example:
        >>> import torch
        >>> from losslab.estimators import importance_sampling_mean
        >>> g = torch.Generator().manual_seed(0)
        >>> x = 2.0 + torch.randn(20000, generator=g, dtype=torch.float64)  # proposal N(2, 1)
        >>> log_w = -0.5 * x ** 2 + 0.5 * (x - 2.0) ** 2                    # target N(0, 1)
        >>> est = importance_sampling_mean((x > 2.0).double(), log_w)       # P(X > 2) = 0.02275
        >>> bool(abs(est.value - 0.02275) < 3 * est.stderr)
        True

    References:
        Demange-Chryst, Bachoc, Morio, "Efficient estimation of multiple expectations with
        the same sample by adaptive importance sampling and control variates", 2022,
        https://arxiv.org/abs/2212.00568. Owen, "Monte Carlo theory, methods and examples",
        2013, ch. 9, https://artowen.su.domains/mc/.
    """
    n = _check_samples(f, "f")
    _check_log_weights(log_weights, n)
    dtype = compute_dtype(f, log_weights)
    f, lw = upcast(f, dtype), upcast(log_weights, dtype)
    if self_normalized:
        w = torch.softmax(lw, dim=0)
        value = (w * f).sum()
        stderr = (w.pow(2) * (f - value).pow(2)).sum().sqrt()
        return Estimate(value, stderr)
    # Factor out the largest weight: exp(lw - m) <= 1 never overflows. The shift is a constant
    # (no gradient through it: the value does not depend on it).
    m = lw.detach().amax()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    y = torch.exp(lw - m) * f
    scale = torch.exp(m)
    value = scale * y.mean()
    stderr = scale * y.std(correction=1) / math.sqrt(n)
    return Estimate(value, stderr)


def _ess_example(gen):
    return (torch.randn(12, generator=gen, dtype=F64),), {}


def _ess_mismatch(gen):
    return (torch.randn(3, 4, generator=gen, dtype=F64),), {}


@register(
    "effective_sample_size",
    family="estimators",
    reference=OWEN,
    seed=MULTIPLE_EXPECTATIONS.title,
    example=Example(make=_ess_example, mismatch=_ess_mismatch, mismatch_match="log_weights"),
    tags=("importance sampling", "effective sample size", "Kish", "weight degeneracy"),
    module_required=False,
    batch_level=True,
)
def effective_sample_size(log_weights: torch.Tensor) -> torch.Tensor:
    r"""Kish's effective sample size (Σw)²/Σw² of importance weights, from log-weights without overflow.

    .. math::
        n_e = \frac{(\sum_i w_i)^2}{\sum_i w_i^2}
            = \exp\big(2\,\mathrm{LSE}(\ell) - \mathrm{LSE}(2\ell)\big), \qquad \ell = \text{log\_weights},

    computed from the log-weights, shifted by their maximum, with ``logsumexp``, so weights
    of any magnitude (log-weights of 1e4) neither overflow nor underflow nor lose digits. Between 1 (one weight dominates) and :math:`N`
    (equal weights); invariant to rescaling the weights. It is a diagnostic, not an
    estimator of a population quantity: :math:`\operatorname{Var}(\hat\mu_{SN}) \approx
    \sigma^2/n_e` when :math:`f` and :math:`w` are unrelated (Owen 2013, ch. 9). ``-inf``
    log-weights are zero weights; all of them ``-inf`` raises ``ValueError``.

    Args:
        log_weights: ``(N,)`` log importance weights (any additive constant).

    Shape:
        log_weights ``(N,)``; output 0-dim.

    Returns:
        The effective sample size (a 0-dim tensor; float32 for half-precision input).

    Example:
        >>> import torch
        >>> from losslab.estimators import effective_sample_size
        >>> effective_sample_size(torch.zeros(10))                    # equal weights
        tensor(10.)
        >>> effective_sample_size(torch.tensor([1e4, 0.0, 0.0]))      # one weight dominates
        tensor(1.)

    References:
        Kish, "Survey Sampling", Wiley, 1965. Owen, "Monte Carlo theory, methods and examples",
        2013, ch. 9, https://artowen.su.domains/mc/.
    """
    _check_log_weights(log_weights, None)
    lw = upcast(log_weights)
    # Shift by the largest log-weight first (n_e does not change): with log-weights near 1e4 in
    # float32 the two log-sum-exps would be ~2e4 while their difference is O(log N), keeping
    # only 3 digits of it; after the shift both are O(log N) and the difference keeps them all.
    m = lw.detach().amax()
    lw = lw - torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return torch.exp(2.0 * torch.logsumexp(lw, 0) - torch.logsumexp(2.0 * lw, 0))
