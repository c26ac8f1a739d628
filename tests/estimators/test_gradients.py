"""Gradient statistics (losslab.estimators.gradients): loops over the formulas, Monte Carlo
unbiasedness with tolerances from the estimators' own standard errors (fixed generators),
and the p.grad helper in a training loop."""
from __future__ import annotations

import math

import pytest
import torch

from losslab.estimators import (
    grad_sq_norms,
    gradient_noise_scale,
    mse_optimal_mixing_weight,
    norm_test,
)

F64 = torch.float64


# --------------------------------------------------------------------------- p.grad helper
def test_grad_sq_norms_reads_every_group():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    unused = torch.nn.Parameter(torch.ones(2))  # grad stays None: counts 0
    model(torch.randn(5, 3)).pow(2).sum().backward()
    params = list(model.parameters())
    total = sum(float(p.grad.double().pow(2).sum()) for p in params)
    assert grad_sq_norms(model).tolist() == pytest.approx([total], rel=1e-12)
    assert grad_sq_norms(params + [unused]).tolist() == pytest.approx([total], rel=1e-12)
    groups = [{"params": params[:2]}, {"params": params[2:]}, {"params": [unused]}]
    opt = torch.optim.SGD(groups, lr=0.1)
    expected = [sum(float(p.grad.double().pow(2).sum()) for p in params[:2]),
                sum(float(p.grad.double().pow(2).sum()) for p in params[2:]), 0.0]
    assert grad_sq_norms(opt).tolist() == pytest.approx(expected, rel=1e-12)
    assert grad_sq_norms(groups).tolist() == pytest.approx(expected, rel=1e-12)
    assert grad_sq_norms(opt).dtype == F64
    with pytest.raises(TypeError, match="params"):
        grad_sq_norms([1, 2])


# --------------------------------------------------------------------------- gradient noise scale
def _per_sample_gradients(gen, n, G, L):
    """n i.i.d. per-sample gradients G + L z, covariance L L^T."""
    return G + torch.randn(n, G.numel(), generator=gen, dtype=F64) @ L.T


def test_gradient_noise_scale_matches_the_formulas_in_a_loop():
    gen = torch.Generator().manual_seed(1)
    small = 2.0 + torch.rand(5, 2, generator=gen, dtype=F64)
    large = 1.0 + torch.rand(5, 2, generator=gen, dtype=F64)
    b, B = 4, 32
    out = gradient_noise_scale(small, large, small_batch_size=b, large_batch_size=B)
    for k in range(2):
        g2 = [(B * l - b * s) / (B - b) for s, l in zip(small[:, k].tolist(), large[:, k].tolist())]
        tr = [(s - l) / (1 / b - 1 / B) for s, l in zip(small[:, k].tolist(), large[:, k].tolist())]
        mg, mt = sum(g2) / 5, sum(tr) / 5
        se_g = math.sqrt(sum((v - mg) ** 2 for v in g2) / 4 / 5)
        se_t = math.sqrt(sum((v - mt) ** 2 for v in tr) / 4 / 5)
        assert float(out.grad_sq_norm.value[k]) == pytest.approx(mg, rel=1e-12)
        assert float(out.trace_cov.value[k]) == pytest.approx(mt, rel=1e-12)
        assert float(out.grad_sq_norm.stderr[k]) == pytest.approx(se_g, rel=1e-10)
        assert float(out.trace_cov.stderr[k]) == pytest.approx(se_t, rel=1e-10)
        assert float(out.noise_scale[k]) == pytest.approx(mt / mg, rel=1e-12)


def test_gradient_noise_scale_is_unbiased_monte_carlo():
    """Per-sample gradients with |G|^2 and tr(Sigma) known; the small batch is a subset of the
    large one (as in a training loop). Both estimates land within 4 standard errors."""
    gen = torch.Generator().manual_seed(2)
    p, b, B, reps = 4, 4, 32, 3000
    G = torch.tensor([1.0, -0.5, 0.25, 0.0], dtype=F64)
    L = torch.tril(torch.rand(p, p, generator=gen, dtype=F64)) + torch.eye(p, dtype=F64)
    g2_true, tr_true = float(G.dot(G)), float((L @ L.T).trace())
    g = G + torch.randn(reps, B, p, generator=gen, dtype=F64) @ L.T
    small = g[:, :b].mean(1).pow(2).sum(-1)
    large = g.mean(1).pow(2).sum(-1)
    out = gradient_noise_scale(small, large, small_batch_size=b, large_batch_size=B)
    assert abs(float(out.grad_sq_norm.value) - g2_true) < 4 * float(out.grad_sq_norm.stderr)
    assert abs(float(out.trace_cov.value) - tr_true) < 4 * float(out.trace_cov.stderr)
    # The ratio is consistent: within the delta-method error of the two averages.
    rel = float(out.trace_cov.stderr) / tr_true + float(out.grad_sq_norm.stderr) / g2_true
    assert abs(float(out.noise_scale) / (tr_true / g2_true) - 1) < 4 * rel
    # The naive small-batch squared norm is biased by tr(Sigma) / b: far outside those bounds.
    assert float(small.mean()) - g2_true > 10 * float(out.grad_sq_norm.stderr)


def test_gradient_noise_scale_in_a_training_loop_per_parameter_group():
    """The docstring's loop on a linear least-squares model: the per-group estimates from p.grad
    equal the formula applied to the norms of explicitly computed mean gradients."""
    gen = torch.Generator().manual_seed(3)
    model = torch.nn.Linear(3, 1).double()
    opt = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias]}], lr=0.0)
    b, B = 2, 8
    small, large, manual_s, manual_l = [], [], [], []
    for _ in range(6):
        x = torch.randn(B, 3, generator=gen, dtype=F64)
        y = torch.randn(B, 1, generator=gen, dtype=F64)
        for n, store, manual in ((b, small, manual_s), (B, large, manual_l)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x[:n]), y[:n]).backward()
            store.append(grad_sq_norms(opt))
            r = (model(x[:n]) - y[:n]).detach()  # d/dw mean (r^2) = 2 mean(r x), d/db = 2 mean(r)
            manual.append([float((2 * (r * x[:n]).mean(0)).pow(2).sum()), float((2 * r.mean()) ** 2)])
    out = gradient_noise_scale(torch.stack(small), torch.stack(large), small_batch_size=b, large_batch_size=B)
    ref = gradient_noise_scale(torch.tensor(manual_s, dtype=F64), torch.tensor(manual_l, dtype=F64),
                               small_batch_size=b, large_batch_size=B)
    assert out.noise_scale.shape == (2,)
    torch.testing.assert_close(out.noise_scale, ref.noise_scale, rtol=1e-10, atol=1e-12)


def test_gradient_noise_scale_bad_input():
    s, l = torch.ones(3, 2), torch.ones(3, 2)
    with pytest.raises(ValueError, match="large_batch_size"):
        gradient_noise_scale(s, l, small_batch_size=8, large_batch_size=8)
    with pytest.raises(ValueError, match="small_batch_size"):
        gradient_noise_scale(s, l, small_batch_size=0, large_batch_size=8)
    with pytest.raises(ValueError, match="large_sq_norms"):
        gradient_noise_scale(s, l[:2], small_batch_size=1, large_batch_size=8)
    one = gradient_noise_scale(s[:1], l[:1], small_batch_size=1, large_batch_size=8)
    assert torch.isnan(one.trace_cov.stderr).all() and torch.isfinite(one.trace_cov.value).all()


# --------------------------------------------------------------------------- norm test
def test_norm_test_matches_a_loop_over_microbatch_gradients():
    gen = torch.Generator().manual_seed(4)
    g = torch.randn(7, 5, generator=gen, dtype=F64) + 0.3  # 7 microbatch mean gradients
    mean = g.mean(0)
    spread = sum(float((g[j] - mean).pow(2).sum()) for j in range(7))
    var = spread / (7 * 6)
    ratio = var / float(mean.pow(2).sum())
    for eta in (0.2, 0.5, 2.0):
        out = norm_test(g.pow(2).sum(-1), mean.pow(2).sum(), eta=eta, microbatch_size=3)
        assert float(out.ratio) == pytest.approx(ratio, rel=1e-10)
        assert bool(out.increase) == (ratio > eta ** 2)
        expected = math.ceil(21 * ratio / eta ** 2) if ratio > eta ** 2 else 21
        assert int(out.batch_size) == expected


def test_norm_test_variance_is_unbiased_monte_carlo():
    """E[tr Var-hat(g)] = tr(Sigma) / B for M microbatches of b i.i.d. per-sample gradients."""
    gen = torch.Generator().manual_seed(5)
    p, m, b, reps = 3, 4, 2, 4000
    G = torch.tensor([0.5, 1.0, -1.0], dtype=F64)
    scale = torch.tensor([1.0, 2.0, 0.5], dtype=F64)
    per_sample = G + scale * torch.randn(reps, m, b, p, generator=gen, dtype=F64)
    micro = per_sample.mean(2)                      # (reps, M, P)
    batch = micro.mean(1)                           # (reps, P)
    out = norm_test(micro.pow(2).sum(-1).T, batch.pow(2).sum(-1), eta=0.5, microbatch_size=b)
    var_hat = out.ratio * batch.pow(2).sum(-1)      # the variance estimate of each replication
    truth = float(scale.pow(2).sum()) / (m * b)
    se = float(var_hat.std()) / math.sqrt(reps)
    assert abs(float(var_hat.mean()) - truth) < 4 * se


def test_norm_test_bad_input():
    with pytest.raises(ValueError, match="eta"):
        norm_test(torch.ones(3), torch.ones(()), eta=0.0)
    with pytest.raises(ValueError, match="microbatch_sq_norms"):
        norm_test(torch.ones(1), torch.ones(()), eta=0.5)
    with pytest.raises(ValueError, match="batch_sq_norm"):
        norm_test(torch.ones(3, 2), torch.ones(3), eta=0.5)
    with pytest.raises(ValueError, match="microbatch_size"):
        norm_test(torch.ones(3), torch.ones(()), eta=0.5, microbatch_size=0)


# --------------------------------------------------------------------------- MSE-optimal mixing
def _plugin_mse(alpha, a, b, ba, bb):
    """The estimated MSE of alpha g_a + (1 - alpha) g_b, written out with numpy-free loops."""
    mix = alpha * a + (1 - alpha) * b
    bias = alpha * ba + (1 - alpha) * bb
    var = float(((mix - mix.mean(0)) ** 2).sum()) / (a.shape[0] - 1)
    return var + float(bias.pow(2).sum())


def test_mixing_weight_minimizes_the_estimated_mse():
    gen = torch.Generator().manual_seed(6)
    a = 2.0 * torch.randn(50, 4, generator=gen, dtype=F64)
    b = 0.4 * a + 0.6 * torch.randn(50, 4, generator=gen, dtype=F64)
    for ba, bb in ((torch.zeros(4, dtype=F64), torch.zeros(4, dtype=F64)),
                   (torch.zeros(4, dtype=F64), torch.full((4,), 0.8, dtype=F64)),
                   (torch.full((4,), 0.1, dtype=F64), torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=F64))):
        alpha = float(mse_optimal_mixing_weight(a, b, bias_a=ba, bias_b=bb))
        grid = [k / 2000 for k in range(2001)]
        best = min(grid, key=lambda t: _plugin_mse(t, a, b, ba, bb))
        assert alpha == pytest.approx(best, abs=1e-3)
        assert 0.0 <= alpha <= 1.0


def test_mixing_weight_is_consistent_and_optimal_monte_carlo():
    """g_a unbiased with large variance, g_b biased with small variance and correlated with g_a:
    the population alpha* (closed form) minimizes the Monte Carlo MSE, and the plug-in estimate
    from draws lands within 4 standard errors (over replications) of it."""
    gen = torch.Generator().manual_seed(7)
    p = 3
    G = torch.tensor([1.0, 0.0, -1.0], dtype=F64)
    bias_b = torch.tensor([1.0, -0.8, 0.6], dtype=F64)
    sa, sb, rho = 2.0, 0.5, 0.1

    def draws(n):
        z1 = torch.randn(n, p, generator=gen, dtype=F64)
        z2 = torch.randn(n, p, generator=gen, dtype=F64)
        ga = G + sa * z1
        gb = G + bias_b + sb * (rho * z1 + math.sqrt(1 - rho ** 2) * z2)
        return ga, gb

    tr_a, tr_b, tr_c = p * sa ** 2, p * sb ** 2, p * rho * sa * sb
    bb2 = float(bias_b.dot(bias_b))
    alpha_true = (tr_b - tr_c + bb2) / (tr_a + tr_b - 2 * tr_c + bb2)   # 2.45 / 14.15, inside (0, 1)
    assert 0.1 < alpha_true < 0.3
    ga, gb = draws(200000)
    mse = {t: float(((t * ga + (1 - t) * gb - G) ** 2).sum(-1).mean()) for t in
           [alpha_true - 0.05, alpha_true, alpha_true + 0.05]}
    assert mse[alpha_true] < mse[alpha_true - 0.05] and mse[alpha_true] < mse[alpha_true + 0.05]
    est = torch.stack([mse_optimal_mixing_weight(*draws(4000), bias_b=bias_b) for _ in range(40)])
    se = float(est.std()) / math.sqrt(40)
    assert abs(float(est.mean()) - alpha_true) < 4 * se


def test_mixing_weight_edge_cases_and_bad_input():
    a = torch.randn(10, 3, generator=torch.Generator().manual_seed(8), dtype=F64)
    assert float(mse_optimal_mixing_weight(a, a.clone())) == 0.5
    assert float(mse_optimal_mixing_weight(a, 10 * a)) == 1.0      # b is much noisier: all weight on a
    assert float(mse_optimal_mixing_weight(10 * a, a)) == 0.0
    with pytest.raises(ValueError, match="samples_b"):
        mse_optimal_mixing_weight(a, a[:, :2])
    with pytest.raises(ValueError, match="samples_a"):
        mse_optimal_mixing_weight(a[:1], a[:1])
    with pytest.raises(ValueError, match="bias_a"):
        mse_optimal_mixing_weight(a, a, bias_a=torch.zeros(2, dtype=F64))
