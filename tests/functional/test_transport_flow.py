"""W-CFM (weighted conditional flow matching) against a loop over the paper's formula, its limits,
its link to entropic OT (POT's Sinkhorn), gradients, reductions and bad input."""
import math

import pytest
import torch

import losslab
from losslab import functional as LF

F64 = torch.float64


def _batch(seed=0, b=7, shape=(3,), shift=0.7):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(b, *shape, generator=g, dtype=F64)
    x0 = torch.randn(b, *shape, generator=g, dtype=F64)
    x1 = torch.randn(b, *shape, generator=g, dtype=F64) + shift
    return v, x0, x1


# ----------------------------------------------------------------------------- the reference
LOOP_COSTS = {
    "euclidean": lambda a, b: math.sqrt(sum((p - q) ** 2 for p, q in zip(a, b))),
    "sqeuclidean": lambda a, b: sum((p - q) ** 2 for p, q in zip(a, b)),
    "l1": lambda a, b: sum(abs(p - q) for p, q in zip(a, b)),
}


def _wcfm_loop(v, x0, x1, eps, cost="euclidean", normalize=False):
    """Per-sample w(x0_i, x1_i) * ||v_i - (x1_i - x0_i)||^2 with plain Python floats (rows flattened)."""
    V, A, B = (t.reshape(t.shape[0], -1).tolist() for t in (v, x0, x1))
    c = LOOP_COSTS[cost]
    w = [math.exp(-c(a, b) / eps) for a, b in zip(A, B)]
    if normalize:
        mean_w = sum(w) / len(w)
        w = [wi / mean_w for wi in w]
    res = [sum((vi - (bi - ai)) ** 2 for vi, ai, bi in zip(vr, ar, br)) for vr, ar, br in zip(V, A, B)]
    return [wi * ri for wi, ri in zip(w, res)]


@pytest.mark.parametrize("cost", ["euclidean", "sqeuclidean"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("eps", [0.5, 3.0])
def test_matches_loop(cost, normalize, eps):
    v, x0, x1 = _batch()
    ref = torch.tensor(_wcfm_loop(v, x0, x1, eps, cost, normalize), dtype=F64)
    kw = dict(epsilon=eps, cost=cost, normalize=normalize)
    torch.testing.assert_close(LF.weighted_cfm_loss(v, x0, x1, reduction="none", **kw), ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(LF.weighted_cfm_loss(v, x0, x1, **kw), ref.mean(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(LF.weighted_cfm_loss(v, x0, x1, reduction="sum", **kw), ref.sum(), rtol=1e-12, atol=1e-14)


def test_image_shaped_samples_flatten_per_sample():
    v, x0, x1 = _batch(seed=3, b=4, shape=(2, 3, 3))
    ref = torch.tensor(_wcfm_loop(v, x0, x1, 4.0), dtype=F64)
    out = LF.weighted_cfm_loss(v, x0, x1, epsilon=4.0, reduction="none")
    assert out.shape == (4,)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-14)


def test_callable_cost_uses_the_diagonal_of_the_cost_matrix():
    v, x0, x1 = _batch(seed=1)
    l1 = lambda a, b: torch.cdist(a, b, p=1)  # noqa: E731  (the sinkhorn cost-matrix contract)
    ref = torch.tensor(_wcfm_loop(v, x0, x1, 2.0, "l1"), dtype=F64)
    out = LF.weighted_cfm_loss(v, x0, x1, epsilon=2.0, cost=l1, reduction="none")
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-14)


def test_gibbs_pair_weights_match_loop_and_loss():
    v, x0, x1 = _batch(seed=2)
    w = LF.gibbs_pair_weights(x0, x1, epsilon=1.5)
    ref = [math.exp(-LOOP_COSTS["euclidean"](a, b) / 1.5) for a, b in zip(x0.tolist(), x1.tolist())]
    torch.testing.assert_close(w, torch.tensor(ref, dtype=F64), rtol=1e-12, atol=0)
    wn = LF.gibbs_pair_weights(x0, x1, epsilon=1.5, normalize=True)
    torch.testing.assert_close(wn, w / w.mean(), rtol=1e-12, atol=0)
    unweighted = (v - (x1 - x0)).square().sum(1)
    torch.testing.assert_close(LF.weighted_cfm_loss(v, x0, x1, epsilon=1.5, reduction="none"), w * unweighted)


# ----------------------------------------------------------------------------- limits
@pytest.mark.parametrize("normalize", [False, True])
def test_large_epsilon_recovers_independent_cfm(normalize):
    """ε → ∞: every weight tends to 1, the loss to the plain I-CFM regression."""
    v, x0, x1 = _batch(seed=4)
    icfm = sum(sum((p - (b - a)) ** 2 for p, a, b in zip(vr, ar, br))
               for vr, ar, br in zip(v.tolist(), x0.tolist(), x1.tolist())) / v.shape[0]
    out = LF.weighted_cfm_loss(v, x0, x1, epsilon=1e12, normalize=normalize)
    torch.testing.assert_close(out, torch.tensor(icfm, dtype=F64), rtol=1e-10, atol=0)


def test_raw_weights_grow_with_epsilon():
    v, x0, x1 = _batch(seed=5)
    losses = [LF.weighted_cfm_loss(v, x0, x1, epsilon=e, reduction="none") for e in (0.1, 1.0, 10.0, 100.0)]
    for lo, hi in zip(losses, losses[1:]):
        assert bool((lo <= hi).all()) and bool((lo < hi).any())


def test_small_epsilon_normalized_concentrates_on_the_closest_pair():
    v, x0, x1 = _batch(seed=6, b=9)
    dist = (x0 - x1).norm(dim=1)
    gaps = dist.sort().values.diff()
    assert float(gaps[0]) > 0.02  # the closest pair is unique by a margin (fixed seed)
    i = int(dist.argmin())
    closest = float((v[i] - (x1[i] - x0[i])).square().sum())
    out = LF.weighted_cfm_loss(v, x0, x1, epsilon=1e-4, normalize=True)
    torch.testing.assert_close(out, torch.tensor(closest, dtype=F64), rtol=1e-12, atol=0)


def test_normalized_weights_survive_float32_underflow():
    """d = 2000: distances ≈ 63, so exp(-c/ε) with ε = 0.5 (≈ e^-126) is 0 in float32 for every
    pair; the normalized weights (log-space) stay finite and match a float64 log-space reference."""
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn(6, 2000, generator=g)
    x1 = torch.randn(6, 2000, generator=g) + 0.1
    v = torch.randn(6, 2000, generator=g)
    raw = LF.gibbs_pair_weights(x0, x1, epsilon=0.5)
    assert bool((raw == 0).all())
    w = LF.gibbs_pair_weights(x0, x1, epsilon=0.5, normalize=True)
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w.sum(), torch.tensor(6.0))
    out = LF.weighted_cfm_loss(v, x0, x1, epsilon=0.5, normalize=True)
    a, b, vd = x0.double(), x1.double(), v.double()
    logw = [-math.sqrt(sum((p - q) ** 2 for p, q in zip(r0, r1))) / 0.5 for r0, r1 in zip(a.tolist(), b.tolist())]
    top = max(logw)
    wref = [math.exp(lw - top) for lw in logw]  # shifted before exp: the float64 reference must not underflow
    wref = [6 * wi / sum(wref) for wi in wref]
    res = (vd - (b - a)).square().sum(1).tolist()
    ref = sum(wi * ri for wi, ri in zip(wref, res)) / 6
    torch.testing.assert_close(out.double(), torch.tensor(ref, dtype=F64), rtol=1e-4, atol=0)


# ----------------------------------------------------------------------------- link to entropic OT
def test_gibbs_reweighting_is_the_eot_plan_between_tilted_marginals():
    """The paper's key fact: μ⊗ν reweighted by e^{-c/ε} (normalized) is the entropic-OT plan between
    its own (tilted) marginals. W-CFM over all pairs of two discrete measures must then equal
    EOT-CFM with POT's Sinkhorn plan for those marginals."""
    ot = pytest.importorskip("ot")
    g = torch.Generator().manual_seed(8)
    n, m, d, eps = 5, 4, 2, 0.8
    X = torch.randn(n, d, generator=g, dtype=F64)
    Y = torch.randn(m, d, generator=g, dtype=F64) * 0.7 + 1.0
    x0 = X.repeat_interleave(m, 0)  # all n*m pairs (x_i, y_j), row i*m + j
    x1 = Y.repeat(n, 1)
    v = torch.randn(n * m, d, generator=g, dtype=F64)
    wcfm = LF.weighted_cfm_loss(v, x0, x1, epsilon=eps, normalize=True)

    C = torch.cdist(X, Y).numpy()  # the Euclidean cost
    K = torch.exp(-torch.from_numpy(C) / eps)
    q = K / K.sum()  # the Gibbs-reweighted product of two uniform measures
    a_tilt, b_tilt = q.sum(1).numpy(), q.sum(0).numpy()
    P = torch.from_numpy(ot.sinkhorn(a_tilt, b_tilt, C, reg=eps, method="sinkhorn_log", numItermax=100000,
                                     stopThr=1e-14))
    sq = (v - (x1 - x0)).square().sum(1).reshape(n, m)
    eot_cfm = (P * sq).sum()
    torch.testing.assert_close(wcfm, eot_cfm, rtol=1e-9, atol=0)

    # The marginals really are tilted here: the EOT plan between the *untilted* (uniform)
    # marginals weights the pairs differently (the bias the paper analyses).
    P_uniform = torch.from_numpy(ot.sinkhorn(torch.full((n,), 1 / n, dtype=F64).numpy(),
                                             torch.full((m,), 1 / m, dtype=F64).numpy(), C, reg=eps,
                                             method="sinkhorn_log", numItermax=100000, stopThr=1e-14))
    assert float((P_uniform - q).abs().max()) > 1e-2


def test_minimizer_over_a_constant_field_is_the_weighted_mean_velocity():
    """argmin_v Σ_i w_i ||v - u_i||^2 = Σ w_i u_i / Σ w_i: the gradient there is zero."""
    _, x0, x1 = _batch(seed=9)
    w = LF.gibbs_pair_weights(x0, x1, epsilon=1.0)
    u = x1 - x0
    v_star = ((w[:, None] * u).sum(0) / w.sum()).requires_grad_(True)
    loss = LF.weighted_cfm_loss(v_star.expand_as(u), x0, x1, epsilon=1.0)
    (grad,) = torch.autograd.grad(loss, v_star)
    torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-14)
    # ... and the unweighted mean (the I-CFM minimizer) is not a stationary point of W-CFM.
    v_plain = u.mean(0).requires_grad_(True)
    (g_plain,) = torch.autograd.grad(LF.weighted_cfm_loss(v_plain.expand_as(u), x0, x1, epsilon=1.0), v_plain)
    assert float(g_plain.abs().max()) > 1e-3


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("cost", ["euclidean", "sqeuclidean"])
@pytest.mark.parametrize("normalize", [False, True])
def test_gradcheck_through_the_weights(cost, normalize):
    v, x0, x1 = (t.clone().requires_grad_(True) for t in _batch(seed=10, b=5))
    fn = lambda a, b, c: LF.weighted_cfm_loss(a, b, c, epsilon=1.3, cost=cost, normalize=normalize,  # noqa: E731
                                             detach_weights=False)
    assert torch.autograd.gradcheck(fn, (v, x0, x1), eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("normalize", [False, True])
def test_detached_weights_gradients_are_the_constant_weight_ones(normalize):
    v, x0, x1 = _batch(seed=11)
    B = v.shape[0]
    w = torch.tensor([math.exp(-LOOP_COSTS["euclidean"](a, b) / 1.0) for a, b in zip(x0.tolist(), x1.tolist())],
                     dtype=F64)
    if normalize:
        w = w / w.mean()
    r = v - (x1 - x0)
    inputs = [t.clone().requires_grad_(True) for t in (v, x0, x1)]
    loss = LF.weighted_cfm_loss(*inputs, epsilon=1.0, normalize=normalize)
    gv, g0, g1 = torch.autograd.grad(loss, inputs)
    expected = 2 * w[:, None] * r / B  # d/dv of (1/B) Σ w_i ||v_i - x1_i + x0_i||^2, w constant
    torch.testing.assert_close(gv, expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(g0, expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(g1, -expected, rtol=1e-12, atol=1e-15)
    # Differentiating through the weights changes the x0/x1 gradients but neither the value nor dv.
    inputs2 = [t.clone().requires_grad_(True) for t in (v, x0, x1)]
    loss2 = LF.weighted_cfm_loss(*inputs2, epsilon=1.0, normalize=normalize, detach_weights=False)
    gv2, g02, _ = torch.autograd.grad(loss2, inputs2)
    torch.testing.assert_close(loss2, loss, rtol=0, atol=0)
    torch.testing.assert_close(gv2, gv, rtol=1e-12, atol=1e-15)
    assert float((g02 - g0).abs().max()) > 1e-6


def test_gradients_finite_when_a_pair_coincides():
    v, x0, x1 = _batch(seed=12)
    x1 = x1.clone()
    x1[2] = x0[2]  # zero distance: the Euclidean cost's kink
    inputs = [t.clone().requires_grad_(True) for t in (v, x0, x1)]
    loss = LF.weighted_cfm_loss(*inputs, epsilon=0.7, detach_weights=False)
    grads = torch.autograd.grad(loss, inputs)
    assert all(torch.isfinite(gr).all() for gr in grads)


# ----------------------------------------------------------------------------- reductions, dtypes, module
def test_reductions_and_shapes():
    v, x0, x1 = _batch(seed=13, b=6)
    none = LF.weighted_cfm_loss(v, x0, x1, epsilon=2.0, reduction="none")
    assert none.shape == (6,)
    torch.testing.assert_close(LF.weighted_cfm_loss(v, x0, x1, epsilon=2.0, reduction="sum"), none.sum(), rtol=1e-14, atol=0)
    torch.testing.assert_close(LF.weighted_cfm_loss(v, x0, x1, epsilon=2.0), none.mean(), rtol=1e-14, atol=0)
    empty = LF.weighted_cfm_loss(v[:0], x0[:0], x1[:0], epsilon=2.0)
    assert empty.shape == () and float(empty) == 0.0


def test_low_precision_inputs_give_float32():
    v, x0, x1 = (t.to(torch.bfloat16) for t in _batch(seed=14))
    out = LF.weighted_cfm_loss(v, x0, x1, epsilon=2.0, normalize=True)
    assert out.dtype == torch.float32
    ref = LF.weighted_cfm_loss(v.float(), x0.float(), x1.float(), epsilon=2.0, normalize=True)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_module_wraps_the_function():
    v, x0, x1 = _batch(seed=15)
    m = losslab.nn.WeightedCFMLoss(epsilon=2.0, cost="sqeuclidean", normalize=True)
    assert losslab.info("weighted_cfm_loss").module is losslab.nn.WeightedCFMLoss
    torch.testing.assert_close(m(v, x0, x1), LF.weighted_cfm_loss(v, x0, x1, epsilon=2.0, cost="sqeuclidean",
                                                                  normalize=True), rtol=0, atol=0)
    assert "epsilon=2.0" in repr(m)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("eps", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_epsilon(eps):
    v, x0, x1 = _batch()
    with pytest.raises(ValueError, match="epsilon"):
        LF.weighted_cfm_loss(v, x0, x1, epsilon=eps)
    with pytest.raises(ValueError, match="epsilon"):
        LF.gibbs_pair_weights(x0, x1, epsilon=eps)


def test_bad_inputs_name_the_argument():
    v, x0, x1 = _batch()
    with pytest.raises(ValueError, match="cost"):
        LF.weighted_cfm_loss(v, x0, x1, epsilon=1.0, cost="manhattan")
    with pytest.raises(ValueError, match="velocity"):
        LF.weighted_cfm_loss(v[:, :2], x0, x1, epsilon=1.0)
    with pytest.raises(ValueError, match="x0 and x1"):
        LF.weighted_cfm_loss(v, x0, x1[:-1], epsilon=1.0)
    with pytest.raises(ValueError, match="x0 and x1"):
        LF.weighted_cfm_loss(v[:, 0], x0[:, 0], x1[:, 0], epsilon=1.0)  # no feature dimension
    with pytest.raises(ValueError, match="reduction"):
        LF.weighted_cfm_loss(v, x0, x1, epsilon=1.0, reduction="batchmean")
    with pytest.raises(TypeError, match="x1"):
        LF.weighted_cfm_loss(v, x0, x1.long(), epsilon=1.0)


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("where", [0, 1, 2])
def test_nan_in_a_row_gives_a_nan_loss(validate, where):
    """No NaN scan over the (possibly image-sized) inputs: a NaN propagates to its row's loss, and
    a NaN sample with normalized weights to every row's (they share the normalizer)."""
    inputs = [t.clone() for t in _batch()]
    inputs[where][3, 1] = float("nan")
    with losslab.validation(validate):
        raw = LF.weighted_cfm_loss(*inputs, epsilon=1.0, reduction="none")
        assert torch.isnan(raw[3]) and torch.isfinite(raw[[0, 1, 2, 4, 5, 6]]).all()
        assert torch.isnan(LF.weighted_cfm_loss(*inputs, epsilon=1.0))
        normalized = LF.weighted_cfm_loss(*inputs, epsilon=1.0, normalize=True, reduction="none")
        if where:  # a NaN sample: every normalized weight is NaN
            assert torch.isnan(normalized).all()
            assert torch.isnan(LF.gibbs_pair_weights(inputs[1], inputs[2], epsilon=1.0)[3])
        else:  # a NaN velocity: that row only
            assert torch.isnan(normalized[3]) and torch.isfinite(normalized[[0, 1, 2, 4, 5, 6]]).all()


def test_module_checks_hyperparameters_at_construction():
    for kw, msg in [({}, "epsilon is required"), ({"epsilon": 0.0}, "epsilon"), ({"epsilon": 1.0, "cost": "l1"}, "cost"),
                    ({"epsilon": 1.0, "reduction": "avg"}, "reduction")]:
        with pytest.raises(ValueError, match=msg):
            losslab.nn.WeightedCFMLoss(**kw)
    with pytest.raises(TypeError, match="detach_weights"):
        losslab.nn.WeightedCFMLoss(epsilon=1.0, detach_weights="no")


# ----------------------------------------------------------------------------- the path helper
def test_cfm_interpolate_path_and_target():
    _, x0, x1 = _batch(seed=16, b=4, shape=(2, 3))
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=F64)
    xt, ut = LF.cfm_interpolate(x0, x1, t)
    for i, ti in enumerate(t.tolist()):
        torch.testing.assert_close(xt[i], ti * x1[i] + (1 - ti) * x0[i], rtol=0, atol=1e-15)
    torch.testing.assert_close(xt[0], x0[0], rtol=0, atol=0)
    torch.testing.assert_close(xt[3], x1[3], rtol=0, atol=0)
    torch.testing.assert_close(ut, x1 - x0, rtol=0, atol=0)
    xs, _ = LF.cfm_interpolate(x0, x1, 0.5)  # a float time for the whole batch
    torch.testing.assert_close(xs, 0.5 * (x0 + x1), rtol=0, atol=1e-15)


def test_cfm_interpolate_noise():
    _, x0, x1 = _batch(seed=17)
    t = torch.full((x0.shape[0],), 0.3, dtype=F64)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    xt, ut = LF.cfm_interpolate(x0, x1, t, sigma=0.2, noise=z)
    torch.testing.assert_close(xt, 0.3 * x1 + 0.7 * x0 + 0.2 * z, rtol=0, atol=1e-15)
    torch.testing.assert_close(ut, x1 - x0, rtol=0, atol=0)  # σ leaves the target unchanged
    a, _ = LF.cfm_interpolate(x0, x1, t, sigma=0.2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, xt, rtol=0, atol=0)  # the same draw from the same generator


def test_cfm_interpolate_bad_input():
    _, x0, x1 = _batch()
    with pytest.raises(ValueError, match="t must lie in"):
        LF.cfm_interpolate(x0, x1, torch.full((x0.shape[0],), 1.5, dtype=F64))
    with pytest.raises(ValueError, match="t must have shape"):
        LF.cfm_interpolate(x0, x1, torch.rand(3, dtype=F64))
    with pytest.raises(ValueError, match="sigma"):
        LF.cfm_interpolate(x0, x1, 0.5, sigma=-0.1)
    with pytest.raises(ValueError, match="noise"):
        LF.cfm_interpolate(x0, x1, 0.5, sigma=0.1, noise=torch.zeros(2, 2, dtype=F64))
