"""control_variate_mean, importance_sampling_mean, effective_sample_size.

References: NumPy least squares on the full regression design ``[1, g - g_mean]`` for the
control-variate estimate and its standard error; explicit sums over the formulas for
importance sampling and the effective sample size; Monte Carlo over repeated samples on
problems with known answers (E[exp(U)] = e - 1; P(X > 2) = scipy.stats.norm.sf(2) for
X ~ N(0, 1)), with tolerances from the estimators' own spread over the repeats.
"""
import math
import warnings

import numpy as np
import pytest
import torch

import losslab
from losslab.estimators import Estimate, control_variate_mean, effective_sample_size, importance_sampling_mean

E_MINUS_1 = math.e - 1.0  # E[exp(U)], U ~ U(0, 1)
TAIL = 0.022750131948179195  # P(X > 2), X ~ N(0, 1): scipy.stats.norm.sf(2)


# --------------------------------------------------------------------------- control variates
def _regression_reference(f, g, g_mean):
    """The intercept of OLS of f on [1, g - g_mean] and its classical standard error (NumPy)."""
    f, g = np.asarray(f, float), np.asarray(g, float).reshape(len(f), -1)
    d = g - np.asarray(g_mean, float).reshape(1, -1)
    # Columns scaled to unit spread (the intercept and its standard error do not change): the
    # unscaled design of controls 1e-4 .. 1e4 would have a condition number near 1e8.
    x = np.column_stack([np.ones(len(f)), d / d.std(0)])
    coef, *_ = np.linalg.lstsq(x, f, rcond=None)
    resid = f - x @ coef
    s2 = resid @ resid / (len(f) - x.shape[1])
    return coef[0], math.sqrt(s2 * np.linalg.inv(x.T @ x)[0, 0])


@pytest.mark.parametrize("k", [1, 3])
def test_control_variate_matches_the_regression_intercept(k):
    gen = torch.Generator().manual_seed(k)
    g = torch.randn(50, k, generator=gen, dtype=torch.float64) * torch.tensor([1e-4, 1.0, 1e4][:k], dtype=torch.float64)
    f = 2.0 + (g / g.std(0)).sum(1) + torch.randn(50, generator=gen, dtype=torch.float64)
    g_mean = torch.linspace(-0.1, 0.1, k, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # controls of very different scales are not "collinear"
        est = control_variate_mean(f, g, g_mean)
    assert isinstance(est, Estimate)
    value, se = _regression_reference(f.numpy(), g.numpy(), g_mean.numpy())
    np.testing.assert_allclose(float(est.value), value, rtol=1e-10)
    np.testing.assert_allclose(float(est.stderr), se, rtol=1e-8)


def test_one_dimensional_control_takes_a_number_or_a_0dim_mean():
    x = torch.rand(100, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = control_variate_mean(x.exp(), x, 0.5)
    b = control_variate_mean(x.exp(), x, torch.tensor(0.5, dtype=torch.float64))
    c = control_variate_mean(x.exp(), x[:, None], torch.tensor([0.5], dtype=torch.float64))
    for e in (b, c):
        torch.testing.assert_close(e.value, a.value, rtol=0, atol=0)
        torch.testing.assert_close(e.stderr, a.stderr, rtol=0, atol=0)
    np.testing.assert_allclose(float(a.value), _regression_reference(x.exp().numpy(), x.numpy(), 0.5)[0], rtol=1e-12)


def test_control_variates_are_unbiased_and_reduce_the_variance_on_a_known_integral():
    """E[exp(U)] = e - 1 with the controls U (mean 1/2) and U^2 (mean 1/3). Theory for the single
    control U: variance ratio 1 - R^2 = 0.0162 (Var e^U = (e^2 - 1)/2 - (e - 1)^2,
    Cov(U, e^U) = 1 - (e - 1)/2, Var U = 1/12)."""
    reps, n = 400, 200
    gen = torch.Generator().manual_seed(0)
    u = torch.rand(reps, n, generator=gen, dtype=torch.float64)
    f = u.exp()
    plain = f.mean(1)
    one = [control_variate_mean(f[r], u[r], 0.5) for r in range(reps)]
    two = [control_variate_mean(f[r], torch.stack([u[r], u[r] ** 2], 1), torch.tensor([0.5, 1 / 3]).double())
           for r in range(reps)]
    var_f = (math.e ** 2 - 1) / 2 - E_MINUS_1 ** 2
    r2 = (1 - E_MINUS_1 / 2) ** 2 / (var_f / 12)
    for ests in (one, two):
        values = torch.stack([e.value for e in ests])
        sd = float(values.std())
        # unbiased within 4 standard errors of the mean over repeats (the O(1/N) bias of the
        # fitted coefficient is far below that)
        assert abs(float(values.mean()) - E_MINUS_1) < 4 * sd / math.sqrt(reps)
        # the reported stderr matches the actual spread: a variance estimated from 400 repeats is
        # within +-25 % of its expectation (3.5 sigma, sigma ~ sqrt(2 / 399) = 7 %)
        mean_se2 = float(torch.stack([e.stderr for e in ests]).pow(2).mean())
        assert mean_se2 == pytest.approx(sd ** 2, rel=0.25)
        coverage = float(((values - E_MINUS_1).abs() < 2 * torch.stack([e.stderr for e in ests])).double().mean())
        assert 0.9 < coverage < 0.99
    ratio_one = float(torch.stack([e.value for e in one]).var() / plain.var())
    ratio_two = float(torch.stack([e.value for e in two]).var() / plain.var())
    # 400 repeats: a variance ratio is within +-25 % of its expectation far beyond 3 sigma
    assert 0.75 * (1 - r2) < ratio_one < 1.25 * (1 - r2)
    assert ratio_two < 0.2 * ratio_one  # U^2 captures most of what U leaves


def test_singular_controls_fall_back_to_least_norm_with_a_warning():
    x = torch.rand(60, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = control_variate_mean(x.exp(), x, 0.5)
    with pytest.warns(UserWarning, match="rank 1"):
        dup = control_variate_mean(x.exp(), torch.stack([x, 2 * x], 1), torch.tensor([0.5, 1.0]).double())
    torch.testing.assert_close(dup.value, ref.value)
    with pytest.warns(UserWarning, match="rank"):
        const = control_variate_mean(x.exp(), torch.stack([x, torch.ones_like(x)], 1), torch.tensor([0.5, 1.0]).double())
    torch.testing.assert_close(const.value, ref.value)
    with pytest.warns(UserWarning, match="rank 0"):
        only_const = control_variate_mean(x.exp(), torch.ones_like(x), 1.0)
    torch.testing.assert_close(only_const.value, x.exp().mean())
    assert torch.isfinite(torch.stack([*dup, *const, *only_const])).all()


def test_control_variate_bad_input_names_the_argument():
    f, g = torch.randn(10), torch.randn(10, 2)
    with pytest.raises(ValueError, match="g must have 10 rows"):
        control_variate_mean(f, g[:8], torch.zeros(2))
    with pytest.raises(ValueError, match="g_mean"):
        control_variate_mean(f, g, torch.zeros(3))
    with pytest.raises(ValueError, match="f must hold at least"):
        control_variate_mean(f[:3], g[:3], torch.zeros(2))
    with pytest.raises(ValueError, match="f must have 1"):
        control_variate_mean(f[:, None], g, torch.zeros(2))
    with pytest.raises(ValueError, match="g must be finite"):
        control_variate_mean(f, g.index_fill(0, torch.tensor([0]), float("nan")), torch.zeros(2))


# --------------------------------------------------------------------------- importance sampling
def _loop_is(f, lw, self_normalized):
    f, w = [float(v) for v in f], [math.exp(float(v)) for v in lw]
    n = len(f)
    if self_normalized:
        sw = sum(w)
        v = sum(wi * fi for wi, fi in zip(w, f)) / sw
        return v, math.sqrt(sum((wi / sw) ** 2 * (fi - v) ** 2 for wi, fi in zip(w, f)))
    y = [wi * fi for wi, fi in zip(w, f)]
    m = sum(y) / n
    return m, math.sqrt(sum((yi - m) ** 2 for yi in y) / (n - 1) / n)


@pytest.mark.parametrize("self_normalized", [False, True])
def test_importance_sampling_matches_a_loop(self_normalized):
    gen = torch.Generator().manual_seed(2)
    f, lw = torch.randn(30, generator=gen, dtype=torch.float64), torch.randn(30, generator=gen, dtype=torch.float64)
    lw[3] = float("-inf")  # a zero weight
    est = importance_sampling_mean(f, lw, self_normalized=self_normalized)
    value, se = _loop_is(f, lw, self_normalized)
    np.testing.assert_allclose([float(est.value), float(est.stderr)], [value, se], rtol=1e-12)


def test_importance_sampling_of_a_gaussian_tail_is_unbiased_and_beats_plain_monte_carlo():
    """P(X > 2), X ~ N(0, 1), from the proposal N(2, 1). Theory: Var_q(w 1{x>2}) = e^4 P(Z > 4) - p^2
    = 0.00121, against p(1 - p) = 0.0222 for plain Monte Carlo (ratio 0.055)."""
    reps, n = 300, 500
    gen = torch.Generator().manual_seed(3)
    x = 2.0 + torch.randn(reps, n, generator=gen, dtype=torch.float64)
    lw = -0.5 * x ** 2 + 0.5 * (x - 2.0) ** 2
    f = (x > 2.0).double()
    ests = [importance_sampling_mean(f[r], lw[r]) for r in range(reps)]
    values = torch.stack([e.value for e in ests])
    var = float(values.var())
    assert abs(float(values.mean()) - TAIL) < 4 * math.sqrt(var / reps)
    # a variance estimated from 300 repeats is within +-25 % of its expectation (3.5 sigma,
    # sigma ~ sqrt(2 / 299) = 8 %)
    assert float(torch.stack([e.stderr for e in ests]).pow(2).mean()) == pytest.approx(var, rel=0.25)
    theory = (math.exp(4) * 3.1671241833119857e-05 - TAIL ** 2) / n  # P(Z > 4) = scipy.stats.norm.sf(4)
    assert var == pytest.approx(theory, rel=0.25)
    assert var / (TAIL * (1 - TAIL) / n) < 0.1  # plain Monte Carlo: p(1 - p) / n


def test_self_normalized_importance_sampling_is_consistent_with_unnormalized_weights():
    """E[X^2] = 1 for X ~ N(0, 1), from the wider proposal N(0, 1.5^2) with weights known only up to
    a constant (e^1000, which overflows float64: only the log-space computation survives it).
    The O(1/n) bias of the ratio estimator (n = 500) is far below the tolerance."""
    reps, n = 300, 500
    gen = torch.Generator().manual_seed(4)
    x = 1.5 * torch.randn(reps, n, generator=gen, dtype=torch.float64)
    lw = -0.5 * x ** 2 + 0.5 * (x / 1.5) ** 2 + 1000.0
    ests = [importance_sampling_mean(x[r] ** 2, lw[r], self_normalized=True) for r in range(reps)]
    values = torch.stack([e.value for e in ests])
    var = float(values.var())
    assert abs(float(values.mean()) - 1.0) < 4 * math.sqrt(var / reps)
    assert float(torch.stack([e.stderr for e in ests]).pow(2).mean()) == pytest.approx(var, rel=0.25)
    # plain Monte Carlo from p itself: Var(X^2) / n = 2 / n; this proposal does better on X^2's tails
    assert var < 2.0 / n


def test_importance_sampling_factors_out_the_largest_weight():
    f = torch.ones(4)
    lw = torch.full((4,), 88.5)  # e^88.5 = 2.7e38 < float32 max, but the sum of 4 such weights overflows
    assert not torch.isfinite(torch.exp(lw).sum())
    est = importance_sampling_mean(f, lw)
    assert torch.isfinite(est.value) and est.value.dtype == torch.float32
    np.testing.assert_allclose(float(est.value), math.exp(88.5), rtol=1e-6)
    assert float(est.stderr) == 0.0


def test_importance_sampling_bad_input():
    with pytest.raises(ValueError, match="log_weights are all -inf"):
        importance_sampling_mean(torch.ones(3), torch.full((3,), float("-inf")))
    with pytest.raises(ValueError, match="log_weights must have shape"):
        importance_sampling_mean(torch.ones(3), torch.zeros(4))
    with pytest.raises(ValueError, match="f must hold at least one"):
        importance_sampling_mean(torch.ones(0), torch.zeros(0))
    with pytest.raises(TypeError, match="log_weights"):
        importance_sampling_mean(torch.ones(3), torch.zeros(3, dtype=torch.long))


def test_half_precision_is_computed_in_float32():
    gen = torch.Generator().manual_seed(4)
    f, lw = torch.randn(20, generator=gen), torch.randn(20, generator=gen)
    for sn in (False, True):
        low = importance_sampling_mean(f.bfloat16(), lw.bfloat16(), self_normalized=sn)
        ref = importance_sampling_mean(f.bfloat16().float(), lw.bfloat16().float(), self_normalized=sn)
        assert low.value.dtype == torch.float32 and low.stderr.dtype == torch.float32
        torch.testing.assert_close(torch.stack(low), torch.stack(ref))


# --------------------------------------------------------------------------- effective sample size
def test_effective_sample_size_matches_the_loop_and_survives_huge_log_weights():
    lw = torch.randn(25, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    w = [math.exp(float(v)) for v in lw]
    np.testing.assert_allclose(float(effective_sample_size(lw)), sum(w) ** 2 / sum(v * v for v in w), rtol=1e-12)
    assert float(effective_sample_size(torch.zeros(7))) == pytest.approx(7.0)
    # invariant to a constant; log-weights of 1e4 (weights e^1e4) in float32
    shifted = (lw + 1e4).float()  # float32 rounds the log-weights to a spacing of 1e-3: compare on those
    w = [math.exp(float(v) - 1e4) for v in shifted.double()]
    big = effective_sample_size(shifted)
    assert torch.isfinite(big) and float(big) == pytest.approx(sum(w) ** 2 / sum(v * v for v in w), rel=1e-5)
    assert float(effective_sample_size(torch.tensor([1e4, 1e4, 0.0, float("-inf")]))) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="log_weights"):
        effective_sample_size(torch.full((3,), float("-inf")))


def test_registered_as_estimators():
    for name in ("control_variate_mean", "importance_sampling_mean", "effective_sample_size"):
        info = losslab.info(name)
        assert info.family == "estimators" and not info.properties.get("module_required", True)
        assert name in losslab.estimators.__all__
