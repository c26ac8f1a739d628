"""Regression-with-uncertainty objectives against independent references.

Gaussian NLL: torch.nn.functional.gaussian_nll_loss (values and gradients) and a β-NLL loop;
generalized Gaussian: scipy.stats.gennorm.logpdf; Kaplan–Meier weights: a product-limit
loop over distinct times written here (event curve and censoring curve, and Beran's
estimator as a double loop); censored and aggregate losses: loops over the formulas.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import losslab
from losslab.functional import (
    aggregate_response_loss,
    censored_regression_loss,
    gaussian_nll,
    generalized_gaussian_nll,
    kaplan_meier_weights,
)

F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- Gaussian NLL
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("var_shape", ["same", "per_sample", "scalar_like"])
def test_gaussian_nll_matches_torch_values_and_gradients(full, var_shape):
    g = _gen(1)
    mu = torch.randn(8, 3, generator=g, dtype=F64, requires_grad=True)
    y = torch.randn(8, 3, generator=g, dtype=F64)
    shape = {"same": (8, 3), "per_sample": (8,), "scalar_like": (8, 1)}[var_shape]
    var = (torch.rand(shape, generator=g, dtype=F64) + 0.1)
    var.view(-1)[0] = 1e-9  # below eps: clamped with the gradient passed through, as torch does
    var.requires_grad_(True)
    for reduction in ("mean", "sum", "none"):
        ours = gaussian_nll(mu, y, var, full=full, eps=1e-6, reduction=reduction)
        ref = F.gaussian_nll_loss(mu, y, var, full=full, eps=1e-6, reduction=reduction)
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
        g_ours = torch.autograd.grad(ours.sum(), (mu, var))
        g_ref = torch.autograd.grad(ref.sum(), (mu, var))
        for a, b in zip(g_ours, g_ref):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_beta_nll_matches_loop_and_detaches_the_weight():
    g = _gen(2)
    mu = torch.randn(10, generator=g, dtype=F64, requires_grad=True)
    y = torch.randn(10, generator=g, dtype=F64)
    var = (torch.rand(10, generator=g, dtype=F64) + 0.2).requires_grad_(True)
    beta = 0.5
    out = gaussian_nll(mu, y, var, beta=beta, reduction="none")
    m, t, v = mu.detach().numpy(), y.numpy(), var.detach().numpy()
    loop = [v[i] ** beta * 0.5 * (np.log(v[i]) + (t[i] - m[i]) ** 2 / v[i]) for i in range(10)]
    np.testing.assert_allclose(out.detach().numpy(), loop, rtol=1e-12)
    gm, gv = torch.autograd.grad(out.sum(), (mu, var))
    # gradient of the NLL times the (constant) weight var ** beta
    np.testing.assert_allclose(gm.numpy(), v ** beta * (m - t) / v, rtol=1e-12)
    np.testing.assert_allclose(gv.numpy(), v ** beta * 0.5 * (1 / v - (t - m) ** 2 / v ** 2), rtol=1e-12)


def test_gaussian_nll_negative_variance_is_a_value_error():
    mu, y = torch.zeros(3), torch.ones(3)
    with pytest.raises(ValueError, match="var"):
        gaussian_nll(mu, y, torch.tensor([1.0, -0.1, 1.0]))
    with pytest.raises(ValueError, match="var"):
        gaussian_nll(mu, y, torch.ones(4))
    with pytest.raises(ValueError, match="beta"):
        gaussian_nll(mu, y, torch.ones(3), beta=-1.0)


# --------------------------------------------------------------------------- generalized Gaussian
def test_generalized_gaussian_matches_scipy_gennorm():
    stats = pytest.importorskip("scipy.stats")
    g = _gen(3)
    mu = torch.randn(50, generator=g, dtype=F64)
    y = torch.randn(50, generator=g, dtype=F64) * 3
    scale = torch.rand(50, generator=g, dtype=F64) * 2 + 0.05
    shape = torch.rand(50, generator=g, dtype=F64) * 4 + 0.3
    ref = -stats.gennorm.logpdf(y.numpy(), shape.numpy(), loc=mu.numpy(), scale=scale.numpy())
    out = generalized_gaussian_nll(mu, y, scale, shape, reduction="none")
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize("shape_value", [0.1, 1.0, 2.0, 7.5, 20.0])
@pytest.mark.parametrize("residual", [1e-3, 1.0, 1e3])
def test_generalized_gaussian_finite_in_float64_over_the_stated_range(shape_value, residual):
    stats = pytest.importorskip("scipy.stats")
    mu = torch.tensor([0.0, 0.5], dtype=F64, requires_grad=True)
    y = mu.detach() + torch.tensor([residual, -residual], dtype=F64)
    scale = torch.tensor([1.0, 0.3], dtype=F64, requires_grad=True)
    shape = torch.tensor([shape_value, shape_value], dtype=F64, requires_grad=True)
    out = generalized_gaussian_nll(mu, y, scale, shape, reduction="none")
    ref = -stats.gennorm.logpdf(y.numpy(), shape_value, loc=mu.detach().numpy(), scale=scale.detach().numpy())
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-10)
    grads = torch.autograd.grad(out.sum(), (mu, scale, shape))
    assert all(torch.isfinite(gr).all() for gr in grads)
    # d/dshape of (r/a)^b - log b + lgamma(1/b) at one element, by the formula
    r = residual / 1.0
    b = shape_value
    from scipy.special import digamma
    expected = r ** b * np.log(r) - 1 / b - digamma(1 / b) / b ** 2
    assert float(grads[2][0]) == pytest.approx(expected, rel=1e-8)


def test_generalized_gaussian_shape_two_is_a_gaussian():
    mu, y, a = torch.tensor([0.3]), torch.tensor([1.1]), torch.tensor(0.8)
    ours = generalized_gaussian_nll(mu, y, a, torch.tensor(2.0))
    ref = F.gaussian_nll_loss(mu, y, a.reshape(1) ** 2 / 2, full=True)
    torch.testing.assert_close(ours, ref)


def test_generalized_gaussian_bad_inputs():
    mu, y = torch.zeros(3), torch.ones(3)
    with pytest.raises(ValueError, match="shape"):
        generalized_gaussian_nll(mu, y, torch.ones(3), torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="scale"):
        generalized_gaussian_nll(mu, y, torch.tensor([1.0, -1.0, 1.0]), torch.ones(3))
    with pytest.raises(ValueError, match="scale"):
        generalized_gaussian_nll(mu, y, torch.ones(4), torch.ones(3))


# --------------------------------------------------------------------------- Kaplan–Meier
def _km_event_jumps(times, events):
    """Kaplan–Meier curve of the event distribution over distinct times (standard risk set
    #{Y >= t}); each event's weight is its time's jump divided by the events tied there."""
    t, d = np.asarray(times, float), np.asarray(events, int)
    surv, w = 1.0, np.zeros(len(t))
    for u in np.unique(t):
        at_risk = np.sum(t >= u)
        dead = np.sum((t == u) & (d == 1))
        if dead:
            jump = surv * dead / at_risk
            w[(t == u) & (d == 1)] = jump / dead
            surv *= 1 - dead / at_risk
    return w


def _censoring_survival_before(times, events, s):
    """Ŝ_C(s−) with events before censorings at tied times (censoring risk set excludes them)."""
    t, d = np.asarray(times, float), np.asarray(events, int)
    surv = 1.0
    for u in np.unique(t[(d == 0) & (t < s)]):
        risk = np.sum(t > u) + np.sum((t == u) & (d == 0))
        surv *= 1 - np.sum((t == u) & (d == 0)) / risk
    return surv


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kaplan_meier_weights_are_the_event_curve_jumps_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 40
    times = rng.integers(1, 12, n).astype(float)  # many ties, events and censorings mixed
    events = rng.integers(0, 2, n)
    events[np.argmax(times)] = 0  # last observation censored: weights sum below 1
    w = kaplan_meier_weights(torch.tensor(times, dtype=F64), torch.tensor(events)).numpy()
    np.testing.assert_allclose(w, _km_event_jumps(times, events), rtol=1e-12, atol=1e-15)
    ipcw = [events[i] / (n * _censoring_survival_before(times, events, times[i])) for i in range(n)]
    np.testing.assert_allclose(w, ipcw, rtol=1e-12, atol=1e-15)
    assert w.sum() < 1.0


def test_kaplan_meier_weights_without_censoring_are_uniform():
    times = torch.tensor([3.0, 1.0, 2.0, 2.0])
    torch.testing.assert_close(kaplan_meier_weights(times, torch.ones(4, dtype=torch.long)), torch.full((4,), 0.25))


def _beran_loop(times, events, x, h):
    n = len(times)
    out = np.zeros(n)
    for i in range(n):
        k = np.exp(-0.5 * np.sum((x - x[i]) ** 2, 1) / h ** 2)
        b = k / k.sum()
        surv = 1.0
        for u in np.unique(times[(events == 0) & (times < times[i])]):
            cens = (times == u) & (events == 0)
            risk = (times > u) | cens
            surv *= 1 - b[cens].sum() / b[risk].sum()
        out[i] = events[i] / (n * surv)
    return out


def test_conditional_weights_match_beran_loop_and_reduce_to_km():
    rng = np.random.default_rng(5)
    n = 30
    x = rng.normal(size=(n, 2))
    times = np.round(rng.exponential(2.0, n), 1)
    events = rng.integers(0, 2, n)
    w = kaplan_meier_weights(torch.tensor(times), torch.tensor(events), covariates=torch.tensor(x), bandwidth=0.7)
    np.testing.assert_allclose(w.numpy(), _beran_loop(times, events, x, 0.7), rtol=1e-10)
    wide = kaplan_meier_weights(torch.tensor(times), torch.tensor(events), covariates=torch.tensor(x), bandwidth=1e6)
    torch.testing.assert_close(wide, kaplan_meier_weights(torch.tensor(times), torch.tensor(events)),
                               rtol=1e-9, atol=1e-12)


def test_survival_bad_inputs():
    t = torch.tensor([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="events"):
        kaplan_meier_weights(t, torch.tensor([1, 2, 0]))
    with pytest.raises(ValueError, match="times"):
        kaplan_meier_weights(torch.tensor([1.0, -2.0, 3.0]), torch.tensor([1, 1, 0]))
    with pytest.raises(ValueError, match="bandwidth"):
        kaplan_meier_weights(t, torch.tensor([1, 1, 0]), covariates=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="events"):
        censored_regression_loss(torch.zeros(3), t, torch.zeros(3, dtype=torch.long))  # all censored
    with pytest.raises(ValueError, match="sample_weight"):
        censored_regression_loss(torch.zeros(3), t, torch.ones(3, dtype=torch.long), sample_weight=torch.zeros(3))
    with pytest.raises(ValueError, match="pred"):
        censored_regression_loss(torch.zeros(2), t, torch.ones(3, dtype=torch.long))


# --------------------------------------------------------------------------- censored regression
def test_censored_regression_loss_is_the_weighted_risk():
    rng = np.random.default_rng(7)
    n = 25
    times = np.round(rng.exponential(1.0, n), 2)
    events = rng.integers(0, 2, n)
    events[np.argmax(times)] = 1
    pred = torch.tensor(rng.normal(1.0, 0.3, n), requires_grad=True)
    w = _km_event_jumps(times, events)
    tt, ee = torch.tensor(times), torch.tensor(events)
    risk = censored_regression_loss(pred, tt, ee, reduction="sum")
    p = pred.detach().numpy()
    assert float(risk) == pytest.approx(np.sum(w * (p - times) ** 2), rel=1e-12)
    assert w.sum() == pytest.approx(1.0)  # last time is an event: mean == sum
    assert float(censored_regression_loss(pred, tt, ee)) == pytest.approx(float(risk), rel=1e-12)
    absolute = censored_regression_loss(pred, tt, ee, loss="absolute", reduction="none")
    np.testing.assert_allclose(absolute.detach().numpy(), w * np.abs(p - times), rtol=1e-12)
    huber = censored_regression_loss(pred, tt, ee, loss=lambda a, b: F.huber_loss(a, b, reduction="none"),
                                     reduction="sum")
    assert float(huber) == pytest.approx(float((torch.tensor(w) * F.huber_loss(pred, tt, reduction="none")).sum()))
    (grad,) = torch.autograd.grad(risk, pred)
    np.testing.assert_allclose(grad.numpy(), 2 * w * (p - times), rtol=1e-12, atol=1e-15)


def test_censored_module_takes_sample_weight_in_forward():
    t, e = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1, 0, 1])
    w = torch.tensor([0.2, 0.0, 0.5])
    m = losslab.nn.CensoredRegressionLoss(loss="absolute", reduction="sum")
    assert m(torch.zeros(3), t, e, sample_weight=w) == pytest.approx(0.2 * 1 + 0.5 * 3)


# --------------------------------------------------------------------------- aggregate responses
@pytest.mark.parametrize("rho", [0.0, 0.4, 1.0])
def test_aggregate_response_loss_matches_loop(rho):
    rng = np.random.default_rng(3)
    n, b = 30, 6
    bag = rng.integers(0, b, n)
    bag[:b] = np.arange(b)
    f = rng.normal(size=n)
    ybar = rng.normal(size=b)
    loop = []
    for a in range(b):
        members = f[bag == a]
        bag_term = (ybar[a] - members.mean()) ** 2
        inst_term = np.mean((ybar[a] - members) ** 2)
        loop.append((1 - rho) * bag_term + rho * inst_term)
        # the paper's identity: instance = bag + within-bag variance
        assert inst_term == pytest.approx(bag_term + members.var())
    out = aggregate_response_loss(torch.tensor(f), torch.tensor(ybar), torch.tensor(bag), rho=rho, reduction="none")
    np.testing.assert_allclose(out.numpy(), loop, rtol=1e-12)
    assert float(aggregate_response_loss(torch.tensor(f), torch.tensor(ybar), torch.tensor(bag), rho=rho)) \
        == pytest.approx(np.mean(loop))


def test_aggregate_empty_bag_and_bad_index():
    f = torch.tensor([1.0, 2.0, 3.0])
    ybar = torch.tensor([1.5, 9.0, 3.0])
    bag = torch.tensor([0, 0, 2])  # bag 1 has no member
    none = aggregate_response_loss(f, ybar, bag, reduction="none")
    assert none[1] == 0 and float(aggregate_response_loss(f, ybar, bag)) == pytest.approx(none.sum() / 2)
    with pytest.raises(ValueError, match="bag_index"):
        aggregate_response_loss(f, ybar, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="bag_index"):
        aggregate_response_loss(f, ybar, torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="rho"):
        losslab.nn.AggregateResponseLoss(rho=1.5)
