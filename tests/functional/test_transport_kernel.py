"""Kernel divergences against loops, and Gaussian closed forms against SciPy / torch.distributions."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from losslab import functional as LF

F64 = torch.float64


def _xy(seed=0, n=9, m=7, d=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=F64), torch.randn(m, d, generator=g, dtype=F64) + 0.4


KLOOP = {
    "gaussian": lambda r, s: math.exp(-r * r / (2 * s * s)),
    "laplacian": lambda r, s: math.exp(-r / s),
    "imq": lambda r, s: (1 + r * r / (s * s)) ** -0.5,
}


def _mmd_loop(x, y, kernel, s, unbiased):
    k = KLOOP[kernel]
    X, Y = x.tolist(), y.tolist()
    dist = lambda u, v: math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v)))
    def avg(A, B, skip_diag):
        vals = [k(dist(u, v), s) for i, u in enumerate(A) for j, v in enumerate(B) if not (skip_diag and i == j)]
        return sum(vals) / len(vals)
    return avg(X, X, unbiased) + avg(Y, Y, unbiased) - 2 * avg(X, Y, False)


@pytest.mark.parametrize("kernel", ["gaussian", "laplacian", "imq"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_mmd_matches_loop(kernel, unbiased):
    x, y = _xy()
    ours = LF.mmd(x, y, kernel=kernel, bandwidth=1.3, unbiased=unbiased).item()
    np.testing.assert_allclose(ours, _mmd_loop(x, y, kernel, 1.3, unbiased), rtol=1e-10)


def test_median_heuristic_bandwidth():
    x, y = _xy(1)
    z = torch.cat([x, y]).numpy()
    d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
    med = np.median(d[~np.eye(len(z), dtype=bool)])
    # torch's median of an even count is the lower middle value; numpy's averages the two.
    vals = np.sort(d[~np.eye(len(z), dtype=bool)])
    lower = vals[(len(vals) - 1) // 2]
    assert LF.median_heuristic(x, y).item() == pytest.approx(lower, rel=1e-12)
    assert abs(lower - med) <= abs(vals[len(vals) // 2] - vals[(len(vals) - 1) // 2])
    torch.testing.assert_close(LF.mmd(x, y), LF.mmd(x, y, bandwidth=float(lower)))


def test_cauchy_schwarz_matches_loop_and_is_stable_far_apart():
    x, y = _xy(2)
    s = 0.9
    k = lambda u, v: math.exp(-sum((a - b) ** 2 for a, b in zip(u, v)) / (2 * s * s))
    X, Y = x.tolist(), y.tolist()
    mean = lambda A, B: sum(k(u, v) for u in A for v in B) / (len(A) * len(B))
    ref = math.log(mean(X, X)) + math.log(mean(Y, Y)) - 2 * math.log(mean(X, Y))
    np.testing.assert_allclose(LF.cauchy_schwarz_divergence(x, y, bandwidth=s).item(), ref, rtol=1e-10)
    far = LF.cauchy_schwarz_divergence(x, y + 1e3, bandwidth=s)  # kernel values underflow to 0 in a naive sum
    assert torch.isfinite(far) and far.item() > 1e5


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000))
def test_kernel_divergences_nonnegative_and_zero_on_itself(seed):
    x, y = _xy(seed)
    assert LF.mmd(x, y).item() >= -1e-12 and LF.cauchy_schwarz_divergence(x, y).item() >= -1e-12
    assert abs(LF.mmd(x, x).item()) < 1e-12 and abs(LF.cauchy_schwarz_divergence(x, x).item()) < 1e-12


def _gaussians(seed=0, d=3):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(d, d, generator=g, dtype=F64), torch.randn(d, d, generator=g, dtype=F64)
    return (torch.randn(d, generator=g, dtype=F64), a @ a.T + 0.5 * torch.eye(d, dtype=F64),
            torch.randn(d, generator=g, dtype=F64), b @ b.T + 0.5 * torch.eye(d, dtype=F64))


def test_gaussian_w2_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    m1, s1, m2, s2 = _gaussians()
    r2 = linalg.sqrtm(s2.numpy())
    cross = linalg.sqrtm(r2 @ s1.numpy() @ r2).real
    ref = ((m1 - m2) ** 2).sum().item() + np.trace(s1.numpy() + s2.numpy() - 2 * cross)
    np.testing.assert_allclose(LF.gaussian_wasserstein2(m1, s1, m2, s2).item(), ref, rtol=1e-10)
    np.testing.assert_allclose(LF.gaussian_wasserstein2(m1, s1, m2, s2, squared=False).item(), math.sqrt(ref), rtol=1e-10)
    assert LF.gaussian_wasserstein2(m1, s1, m1, s1).item() == pytest.approx(0.0, abs=1e-10)


def test_gaussian_kl_matches_torch_distributions_and_batches():
    from torch.distributions import MultivariateNormal, kl_divergence

    m1, s1, m2, s2 = _gaussians(1)
    ref = kl_divergence(MultivariateNormal(m1, s1), MultivariateNormal(m2, s2))
    torch.testing.assert_close(LF.gaussian_kl(m1, s1, m2, s2), ref, rtol=1e-10, atol=1e-12)
    batch = [_gaussians(s) for s in range(3)]
    stacked = [torch.stack(t) for t in zip(*batch)]
    torch.testing.assert_close(LF.gaussian_kl(*stacked, reduction="none"), torch.stack([LF.gaussian_kl(*b) for b in batch]))


def test_bad_input():
    x, y = _xy()
    with pytest.raises(ValueError, match="feature dimension"):
        LF.mmd(x, y[:, :2])
    with pytest.raises(ValueError, match="bandwidth"):
        LF.mmd(x, y, bandwidth=0.0)
    with pytest.raises(ValueError, match="kernel"):
        LF.mmd(x, y, kernel="rbf")
    with pytest.raises(ValueError, match="bandwidth"):
        LF.cauchy_schwarz_divergence(x, y, bandwidth=-1.0)
    with pytest.raises(ValueError, match="unbiased"):
        LF.mmd(x[:1], y, unbiased=True)
    m1, s1, m2, s2 = _gaussians()
    with pytest.raises(ValueError, match="cov1 must be positive definite"):
        LF.gaussian_kl(m1, -s1, m2, s2)
    with pytest.raises(ValueError, match="cov1 must be symmetric"):
        LF.gaussian_kl(m1, s1 + torch.triu(torch.ones(3, 3, dtype=F64), 1), m2, s2)
    with pytest.raises(ValueError, match="cov1 must have shape"):
        LF.gaussian_wasserstein2(m1, s1[:2, :2], m2, s2)
    with pytest.raises(ValueError, match="mean1 and mean2"):
        LF.gaussian_kl(m1, s1, m2[:2], s2)


def test_sliced_wasserstein_equals_pot_with_same_projections():
    ot = pytest.importorskip("ot")
    x, y = _xy(3, n=20, m=20)
    theta = torch.nn.functional.normalize(torch.randn(3, 30, generator=torch.Generator().manual_seed(0), dtype=F64), dim=0)
    for p in (1, 2, 3):
        ref = ot.sliced_wasserstein_distance(x.numpy(), y.numpy(), projections=theta.numpy(), p=p)
        np.testing.assert_allclose(LF.sliced_wasserstein(x, y, projections=theta, p=p).item(), float(ref), rtol=1e-10)


def test_control_variates_reduce_variance_at_equal_projections():
    """Over 200 draws of L = 10 directions, both control variates cut the variance of SW_2^2 by an
    order of magnitude on these anisotropic Gaussian clouds (this setting measured 16.7x for the
    lower and 11.9x for the upper control variate)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g, dtype=F64) * torch.tensor([3.0, 1, 1, 0.5, 0.2], dtype=F64)
    y = torch.randn(64, 5, generator=g, dtype=F64) + torch.tensor([2.0, -1, 0, 0, 0], dtype=F64)
    est = {cv: [] for cv in (None, "lower", "upper")}
    for rep in range(200):
        for cv in est:
            gen = torch.Generator().manual_seed(rep)  # same directions for the three estimators
            est[cv].append(LF.sliced_wasserstein(x, y, num_projections=10, control_variate=cv, generator=gen).item() ** 2)
    var = {cv: float(np.var(v)) for cv, v in est.items()}
    assert var[None] > 8 * var["lower"] and var[None] > 8 * var["upper"], var
    # unbiasedness up to Monte Carlo error: the means agree within 3 standard errors
    se = math.sqrt(var[None] / 200)
    for cv in ("lower", "upper"):
        assert abs(np.mean(est[cv]) - np.mean(est[None])) < 3 * se + 1e-12


def test_sliced_wasserstein_bad_input():
    x, y = _xy(n=10, m=8)
    with pytest.raises(ValueError, match="same number of points"):
        LF.sliced_wasserstein(x, y)
    with pytest.raises(ValueError, match="p must be"):
        LF.sliced_wasserstein(x, x, p=0.5)
    with pytest.raises(ValueError, match="p = 2"):
        LF.sliced_wasserstein(x, x, p=1, control_variate="lower")
    with pytest.raises(ValueError, match="projections must have shape"):
        LF.sliced_wasserstein(x, x, projections=torch.ones(2, 4, dtype=F64))


# --------------------------------------------------------------------------- batches and reductions
@pytest.mark.parametrize("fn,kw", [(LF.mmd, dict(bandwidth=1.1)), (LF.mmd, dict(kernel="laplacian", unbiased=True)),
                                   (LF.mmd, {}), (LF.cauchy_schwarz_divergence, dict(bandwidth=0.8)),
                                   (LF.cauchy_schwarz_divergence, {})])
def test_batched_clouds_are_independent_items(fn, kw):
    """(B, n, d) inputs: "none" is the (B,) values of the items computed one by one (the median
    heuristic per item too); "mean"/"sum" reduce them; an unbatched pair is 0-dim for every reduction."""
    pairs = [_xy(seed) for seed in range(3)]
    x, y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    one_by_one = torch.stack([fn(a, b, **kw) for a, b in pairs])
    none = fn(x, y, reduction="none", **kw)
    assert none.shape == (3,)
    torch.testing.assert_close(none, one_by_one, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fn(x, y, **kw), one_by_one.mean(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fn(x, y, reduction="sum", **kw), one_by_one.sum(), rtol=1e-12, atol=1e-14)
    for reduction in ("none", "mean", "sum"):
        out = fn(*pairs[0], reduction=reduction, **kw)
        assert out.shape == () and out.item() == pytest.approx(one_by_one[0].item(), rel=1e-12, abs=1e-14)


def test_gaussian_closed_forms_batch_over_leading_dims():
    items = [_gaussians(s) for s in range(6)]
    stacked = [torch.stack(t).reshape(2, 3, *t[0].shape) for t in zip(*items)]
    for fn in (LF.gaussian_kl, LF.gaussian_wasserstein2):
        ref = torch.stack([fn(*it) for it in items]).reshape(2, 3)
        none = fn(*stacked, reduction="none")
        assert none.shape == (2, 3)
        torch.testing.assert_close(none, ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(fn(*stacked), ref.mean(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(fn(*stacked, reduction="sum"), ref.sum(), rtol=1e-10, atol=1e-12)
        assert all(fn(*items[0], reduction=r).shape == () for r in ("none", "mean", "sum"))


# --------------------------------------------------------------------------- gradients at special points
def test_gaussian_w2_gradient_finite_for_isotropic_covariances():
    """Regression: differentiating V sqrt(L) V^T through eigh gave NaN for repeated eigenvalues
    (W2 between N(0, I) and N(1, 4I)). With S1 = I, S2 = 4I in d = 2:
    W2^2 = |m1 - m2|^2 + tr S1 + tr S2 - 4 tr(S1^{1/2}), so dW/dS1 = I - 2 S1^{-1/2} = -I and
    dW/dS2 = I - S2^{-1/2} S1^{1/2} ... = I - (1/2) I at this point (by hand)."""
    m1 = torch.zeros(2, dtype=F64, requires_grad=True)
    s1 = torch.eye(2, dtype=F64, requires_grad=True)
    s2 = (4 * torch.eye(2, dtype=F64)).requires_grad_(True)
    w = LF.gaussian_wasserstein2(m1, s1, torch.ones(2, dtype=F64), s2)
    w.backward()
    assert w.item() == pytest.approx(4.0, rel=1e-12)
    torch.testing.assert_close(s1.grad, -torch.eye(2, dtype=F64), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s2.grad, 0.5 * torch.eye(2, dtype=F64), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m1.grad, -2 * torch.ones(2, dtype=F64))
    # The function is differentiable there: finite differences agree (repeated eigenvalues in both).
    sym = lambda a: 0.5 * (a + a.T)  # noqa: E731
    args = (torch.zeros(3, dtype=F64), 2 * torch.eye(3, dtype=F64), torch.ones(3, dtype=F64),
            torch.diag(torch.tensor([1.0, 1.0, 3.0], dtype=F64)))
    args = tuple(a.clone().requires_grad_(True) for a in args)
    for squared in (True, False):
        assert torch.autograd.gradcheck(
            lambda a, b, c, e: LF.gaussian_wasserstein2(a, sym(b), c, sym(e), squared=squared), args)


def test_gaussian_w2_singular_covariance_matches_scipy_with_finite_gradient():
    linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(5)
    a = torch.randn(4, 2, generator=g, dtype=F64)
    s1 = a @ a.T  # rank 2 of 4
    m1, m2 = torch.randn(4, generator=g, dtype=F64), torch.randn(4, generator=g, dtype=F64)
    s2 = torch.eye(4, dtype=F64) * 0.7
    r2 = linalg.sqrtm(s2.numpy())
    ref = ((m1 - m2) ** 2).sum().item() + np.trace(s1.numpy() + s2.numpy() - 2 * linalg.sqrtm(r2 @ s1.numpy() @ r2).real)
    s1r = s1.clone().requires_grad_(True)
    w = LF.gaussian_wasserstein2(m1, s1r, m2, s2)
    assert w.item() == pytest.approx(ref, rel=1e-8)
    w.backward()
    assert torch.isfinite(s1r.grad).all()
    # Identical Gaussians: W2 = 0, and the gradient of W2 (not squared) there is 0, not NaN.
    s = s1r.detach().clone().requires_grad_(True)
    w0 = LF.gaussian_wasserstein2(m1, s, m1, s1, squared=False)
    w0.backward()
    assert w0.item() == pytest.approx(0.0, abs=1e-6) and torch.isfinite(s.grad).all()


def test_sliced_wasserstein_gradient_finite_at_zero_distance():
    """SW_2 = sqrt(mean A) has an infinite derivative at 0 (x == y): the gradient is 0, not NaN."""
    x, _ = _xy(4, n=10, m=10)
    for p in (1.0, 2.0, 3.0):
        xr = x.clone().requires_grad_(True)
        out = LF.sliced_wasserstein(xr, x, p=p, generator=torch.Generator().manual_seed(0))
        out.backward()
        assert out.item() == 0.0 and torch.isfinite(xr.grad).all()


# --------------------------------------------------------------------------- non-finite inputs
def test_nan_inputs_give_nan():
    """A NaN coordinate propagates to the value (no NaN scan over the inputs; no LAPACK error)."""
    x, y = _xy(5, n=8, m=8)
    bad = x.clone()
    bad[2, 1] = float("nan")
    for out in (LF.mmd(bad, y), LF.mmd(bad, y, bandwidth=1.0, kernel="laplacian"), LF.cauchy_schwarz_divergence(bad, y),
                LF.sliced_wasserstein(bad, y, num_projections=4, generator=torch.Generator().manual_seed(0)),
                LF.sliced_wasserstein(bad, y, num_projections=4, control_variate="upper")):
        assert torch.isnan(out)
    batch = torch.stack([x, bad])
    none = LF.mmd(batch, torch.stack([y, y]), bandwidth=1.0, reduction="none")
    assert torch.isfinite(none[0]) and torch.isnan(none[1])
    m1, s1, m2, s2 = _gaussians(2)
    s_bad = s1.clone()
    s_bad[0, 1] = s_bad[1, 0] = float("nan")
    m_bad = m1.clone()
    m_bad[0] = float("nan")
    for fn in (LF.gaussian_kl, LF.gaussian_wasserstein2):
        assert torch.isnan(fn(m1, s_bad, m2, s2)) and torch.isnan(fn(m1, s1, m2, s_bad))
        assert torch.isnan(fn(m_bad, s1, m2, s2))
        none = fn(torch.stack([m1, m1]), torch.stack([s1, s_bad]), torch.stack([m2, m2]), torch.stack([s2, s2]),
                  reduction="none")
        assert torch.isfinite(none[0]) and torch.isnan(none[1])


# --------------------------------------------------------------------------- modules
def test_modules_take_per_batch_tensors_in_forward_and_check_hyperparameters():
    import losslab

    x, y = _xy(6, n=12, m=12)
    sw = losslab.nn.SlicedWasserstein(num_projections=9, control_variate="lower")
    ref = LF.sliced_wasserstein(x, y, num_projections=9, control_variate="lower", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(sw(x, y, generator=torch.Generator().manual_seed(3)), ref, rtol=0, atol=0)
    theta = torch.nn.functional.normalize(torch.randn(3, 4, dtype=F64), dim=0)
    torch.testing.assert_close(sw(x, y, projections=theta),
                               LF.sliced_wasserstein(x, y, projections=theta, control_variate="lower"), rtol=0, atol=0)
    with pytest.raises(TypeError, match="forward"):
        losslab.nn.SlicedWasserstein(projections=theta)
    for make, msg in [(lambda: losslab.nn.SlicedWasserstein(num_projections=0), "num_projections"),
                      (lambda: losslab.nn.SlicedWasserstein(p=0.5), "p must be"),
                      (lambda: losslab.nn.SlicedWasserstein(p=1, control_variate="lower"), "p = 2"),
                      (lambda: losslab.nn.SlicedWasserstein(control_variate="both"), "control_variate"),
                      (lambda: losslab.nn.MMD(kernel="rbf"), "kernel"),
                      (lambda: losslab.nn.MMD(bandwidth=-1.0), "bandwidth"),
                      (lambda: losslab.nn.CauchySchwarzDivergence(bandwidth=0.0), "bandwidth"),
                      (lambda: losslab.nn.GaussianKL(reduction="avg"), "reduction")]:
        with pytest.raises(ValueError, match=msg):
            make()
    with pytest.raises(TypeError, match="squared"):
        losslab.nn.GaussianWasserstein2(squared=1)
