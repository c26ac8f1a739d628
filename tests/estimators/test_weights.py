"""Instance weights (losslab.estimators.weights) against loops over the formulas, a Monte Carlo
check of inverse-variance weighting, and the global-batch weights of loss_reweighting on 2
gloo processes."""
from __future__ import annotations

import math

import pytest
import torch
from _spawn import spawn

import losslab
from losslab.estimators import inverse_variance_weights, kl_dro_loss, kl_dro_weights, loss_reweighting

F64 = torch.float64


def _losses(n=11, seed=0, scale=3.0):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=F64) * scale


# --------------------------------------------------------------------------- KL-DRO
@pytest.mark.parametrize("temperature", [0.1, 0.7, 5.0])
def test_kl_dro_weights_and_loss_match_a_loop(temperature):
    ell = _losses()
    e = [math.exp(v / temperature) for v in ell.tolist()]
    ref_w = [v / sum(e) for v in e]
    ref_loss = temperature * math.log(sum(e) / len(e))
    w = kl_dro_weights(ell, temperature=temperature)
    assert not w.requires_grad
    torch.testing.assert_close(w, torch.tensor(ref_w, dtype=F64), rtol=1e-12, atol=0)
    torch.testing.assert_close(kl_dro_loss(ell, temperature=temperature), torch.tensor(ref_loss, dtype=F64),
                               rtol=1e-12, atol=0)


def test_kl_dro_loss_is_the_penalized_worst_case_and_its_gradient_is_the_weights():
    ell, lam = _losses(seed=1), 0.4
    w = kl_dro_weights(ell, temperature=lam)
    n = ell.numel()
    # Variational form: max_w sum w l - lam KL(w || uniform), attained at w = softmax(l / lam).
    kl = sum(wi * math.log(wi * n) for wi in w.tolist())
    value = float((w * ell).sum()) - lam * kl
    x = ell.clone().requires_grad_(True)
    loss = kl_dro_loss(x, temperature=lam)
    assert float(loss.detach()) == pytest.approx(value, rel=1e-12)
    # Any other weights give a smaller penalized value.
    other = torch.softmax(torch.randn(n, generator=torch.Generator().manual_seed(2), dtype=F64), 0)
    kl_o = sum(wi * math.log(wi * n) for wi in other.tolist())
    assert float((other * ell).sum()) - lam * kl_o < value
    (grad,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(grad, w, rtol=1e-12, atol=1e-15)


def test_kl_dro_limits_and_large_losses():
    ell = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    assert float(kl_dro_loss(ell, temperature=1e6)) == pytest.approx(2.0, abs=1e-5)
    assert float(kl_dro_loss(ell, temperature=1e-4)) == pytest.approx(3.0 - 1e-4 * math.log(3), abs=1e-9)
    big = torch.tensor([1e4, 2e4], dtype=torch.float32)
    assert torch.isfinite(kl_dro_loss(big, temperature=0.01))
    torch.testing.assert_close(kl_dro_weights(big, temperature=0.01), torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("fn", [kl_dro_weights, kl_dro_loss])
def test_kl_dro_bad_input(fn):
    with pytest.raises(ValueError, match="temperature"):
        fn(_losses(), temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        fn(_losses(), temperature=-1.0)
    with pytest.raises(ValueError, match="losses"):
        fn(torch.zeros(2, 3, dtype=F64), temperature=1.0)
    assert torch.isnan(fn(torch.tensor([0.0, float("nan")], dtype=F64), temperature=1.0)).all()


# --------------------------------------------------------------------------- loss-based reweighting
def _reweighting_loop(losses, strategy, delta, temperature):
    lo, hi = min(losses), max(losses)
    scores = []
    for v in losses:
        h = 2 * delta * (v - lo) / (hi - lo) - delta if hi > lo else -delta
        if strategy == "linupper":
            f = min(h + delta, delta)
        elif strategy == "quadratic":
            f = 1 - h * h / (delta * delta)
        else:
            f = abs(h)
        scores.append(math.exp(f / temperature))
    return [s / sum(scores) for s in scores]


@pytest.mark.parametrize("strategy", ["linupper", "quadratic", "extremes"])
@pytest.mark.parametrize("delta,temperature", [(1.0, 1.0), (0.5, 0.2), (3.0, 4.0)])
def test_loss_reweighting_matches_a_loop(strategy, delta, temperature):
    ell = _losses(n=13, seed=3)
    w = loss_reweighting(ell, strategy=strategy, delta=delta, temperature=temperature)
    ref = _reweighting_loop(ell.tolist(), strategy, delta, temperature)
    torch.testing.assert_close(w, torch.tensor(ref, dtype=F64), rtol=1e-12, atol=1e-15)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)


def test_loss_reweighting_shapes_of_the_strategies():
    ell = torch.linspace(0, 1, 101, dtype=F64)
    lin = loss_reweighting(ell, strategy="linupper")
    assert torch.all(lin[1:51] > lin[:50]) and torch.allclose(lin[50:], lin[50].expand(51))
    quad = loss_reweighting(ell, strategy="quadratic")
    assert int(quad.argmax()) == 50 and float(quad[0]) == pytest.approx(float(quad[-1]))
    ext = loss_reweighting(ell, strategy="extremes")
    assert int(ext.argmin()) == 50 and float(ext[0]) == pytest.approx(float(ext[-1]))


def test_loss_reweighting_edge_cases_and_bad_input():
    w = loss_reweighting(torch.full((5,), 2.5, dtype=F64))
    torch.testing.assert_close(w, torch.full((5,), 0.2, dtype=F64))
    x = _losses().requires_grad_(True)
    assert not loss_reweighting(x).requires_grad
    assert torch.isnan(loss_reweighting(torch.tensor([0.0, float("nan"), 1.0], dtype=F64))).all()
    for kwargs, name in (({"strategy": "linear"}, "strategy"), ({"delta": 0.0}, "delta"),
                         ({"temperature": 0.0}, "temperature")):
        with pytest.raises(ValueError, match=name):
            loss_reweighting(_losses(), **kwargs)


def _reweighting_worker(rank, world, out, shards):
    import torch.distributed as dist

    from losslab.estimators import loss_reweighting as lr

    local = shards[rank]
    out[("world", rank)] = {s: lr(local, strategy=s, delta=0.7, temperature=0.3).tolist()
                            for s in ("linupper", "quadratic", "extremes")}
    group = dist.new_group([0, 1])
    out[("group", rank)] = lr(local, strategy="quadratic", group=group).tolist()


def test_loss_reweighting_global_batch_on_two_processes():
    """Uneven shards (5 and 3 rows): each rank's weights are its rows of the single-process
    weights of the concatenated batch (global min/max and softmax)."""
    full = _losses(n=8, seed=4)
    full[6] = 7.0  # the global maximum lives on rank 1, the minimum is on rank 0
    full[2] = -1.0
    shards = [full[:5].clone(), full[5:].clone()]
    out = spawn(_reweighting_worker, (shards,))
    for s in ("linupper", "quadratic", "extremes"):
        got = torch.tensor(out[("world", 0)][s] + out[("world", 1)][s], dtype=F64)
        ref = loss_reweighting(full, strategy=s, delta=0.7, temperature=0.3)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-15)
    got = torch.tensor(out[("group", 0)] + out[("group", 1)], dtype=F64)
    torch.testing.assert_close(got, loss_reweighting(full, strategy="quadratic"), rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------- inverse-variance weights
def _ess_fraction(weights):
    return sum(weights) ** 2 / (len(weights) * sum(w * w for w in weights))


def _iv_loop(variances, xi):
    inv = [1.0 / (v + xi) for v in variances]
    return [v / sum(inv) for v in inv]


@pytest.mark.parametrize("xi", [None, 0.0, 0.3, 10.0])
def test_inverse_variance_weights_match_a_loop(xi):
    var = _losses(n=9, seed=5) + 0.05
    w = inverse_variance_weights(var, xi=xi)
    torch.testing.assert_close(w, torch.tensor(_iv_loop(var.tolist(), xi or 0.0), dtype=F64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9, 0.99])
def test_inverse_variance_xi_search_finds_the_smallest_xi(fraction):
    var = (torch.rand(20, generator=torch.Generator().manual_seed(6), dtype=F64) ** 4) * 10 + 1e-3
    w = inverse_variance_weights(var, min_effective_fraction=fraction)
    values = var.tolist()
    # Independent search: the effective size as a function of xi, bisection in plain Python
    # from a bracket found by doubling.
    def ess(xi):
        return _ess_fraction([1.0 / (v + xi) for v in values])
    if ess(0.0) >= fraction:
        xi_ref = 0.0
    else:
        lo, hi = 0.0, 1e-3
        while ess(hi) < fraction:
            lo, hi = hi, hi * 2
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if ess(mid) >= fraction else (mid, hi)
        xi_ref = hi
    torch.testing.assert_close(w, torch.tensor(_iv_loop(values, xi_ref), dtype=F64), rtol=1e-9, atol=0)
    assert _ess_fraction(w.tolist()) >= fraction - 1e-12
    if xi_ref > 0:
        assert _ess_fraction(_iv_loop(values, xi_ref * (1 - 1e-6))) < fraction


def test_inverse_variance_effective_size_grows_with_xi():
    var = torch.rand(15, generator=torch.Generator().manual_seed(7), dtype=F64) ** 3 * 5
    sizes = [_ess_fraction(_iv_loop(var.tolist(), xi)) for xi in (1e-4, 1e-3, 1e-2, 0.1, 1, 10, 100)]
    assert all(b >= a for a, b in zip(sizes, sizes[1:]))


def test_inverse_variance_special_cases_and_bad_input():
    var = torch.tensor([0.0, 0.0, 1.0, 2.0], dtype=F64)
    torch.testing.assert_close(inverse_variance_weights(var), torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=F64))
    torch.testing.assert_close(inverse_variance_weights(var, min_effective_fraction=1.0),
                               torch.full((4,), 0.25, dtype=F64))
    assert _ess_fraction(inverse_variance_weights(var, min_effective_fraction=0.8).tolist()) >= 0.8 - 1e-12
    torch.testing.assert_close(inverse_variance_weights(torch.full((3,), 2.0), min_effective_fraction=0.5),
                               torch.full((3,), 1 / 3))
    bad = torch.tensor([1.0, float("nan")])
    with pytest.raises(ValueError, match="variances"):   # the non-negativity check reads the values
        inverse_variance_weights(bad, min_effective_fraction=0.5)
    with losslab.validation(False):                      # unchecked: the NaN propagates
        assert torch.isnan(inverse_variance_weights(bad, min_effective_fraction=0.5)).all()
    for kwargs, name in (({"min_effective_fraction": 0.0}, "min_effective_fraction"),
                         ({"min_effective_fraction": 1.5}, "min_effective_fraction"),
                         ({"xi": -1.0}, "xi"), ({"xi": 1.0, "min_effective_fraction": 0.5}, "xi")):
        with pytest.raises(ValueError, match=name):
            inverse_variance_weights(torch.ones(3), **kwargs)
    with pytest.raises(ValueError, match="variances"):
        inverse_variance_weights(torch.tensor([1.0, -0.5]))


def test_inverse_variance_weighted_mean_is_unbiased_with_minimal_variance():
    """Monte Carlo: y_i ~ N(mu, s_i^2); the weighted mean sum w_i y_i (xi = 0) is unbiased with
    variance 1 / sum(1 / s_i^2) (Gauss-Markov), below the plain mean's sum(s_i^2) / N^2."""
    gen = torch.Generator().manual_seed(8)
    s2 = torch.tensor([0.1, 0.5, 1.0, 2.0, 4.0, 8.0], dtype=F64)
    mu, reps = 1.5, 20000
    y = mu + s2.sqrt() * torch.randn(reps, s2.numel(), generator=gen, dtype=F64)
    est = y @ inverse_variance_weights(s2)
    var_theory = 1.0 / float((1 / s2).sum())
    se = math.sqrt(var_theory / reps)
    assert abs(float(est.mean()) - mu) < 4 * se
    # Sample variance of a normal estimate: relative standard error sqrt(2 / (reps - 1)).
    assert abs(float(est.var()) / var_theory - 1) < 4 * math.sqrt(2 / (reps - 1))
    assert float(est.var()) < float(y.mean(1).var())
