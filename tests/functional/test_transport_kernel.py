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
    np.testing.assert_allclose(LF.cauchy_schwarz_divergence(x, y, sigma=s).item(), ref, rtol=1e-10)
    far = LF.cauchy_schwarz_divergence(x, y + 1e3, sigma=s)  # kernel values underflow to 0 in a naive sum
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
    torch.testing.assert_close(LF.gaussian_kl(*stacked), torch.stack([LF.gaussian_kl(*b) for b in batch]))


def test_bad_input():
    x, y = _xy()
    with pytest.raises(ValueError, match="feature dimension"):
        LF.mmd(x, y[:, :2])
    with pytest.raises(ValueError, match="bandwidth"):
        LF.mmd(x, y, bandwidth=0.0)
    with pytest.raises(ValueError, match="kernel"):
        LF.mmd(x, y, kernel="rbf")
    with pytest.raises(ValueError, match="sigma"):
        LF.cauchy_schwarz_divergence(x, y, sigma=-1.0)
    m1, s1, m2, s2 = _gaussians()
    with pytest.raises(ValueError, match="positive definite"):
        LF.gaussian_kl(m1, -s1, m2, s2)
    with pytest.raises(ValueError, match="symmetric"):
        LF.gaussian_kl(m1, s1 + torch.triu(torch.ones(3, 3, dtype=F64), 1), m2, s2)
    with pytest.raises(ValueError, match="S1 must have shape"):
        LF.gaussian_wasserstein2(m1, s1[:2, :2], m2, s2)


def test_sliced_wasserstein_equals_pot_with_same_projections():
    ot = pytest.importorskip("ot")
    x, y = _xy(3, n=20, m=20)
    theta = torch.nn.functional.normalize(torch.randn(3, 30, generator=torch.Generator().manual_seed(0), dtype=F64), dim=0)
    for p in (1, 2, 3):
        ref = ot.sliced_wasserstein_distance(x.numpy(), y.numpy(), projections=theta.numpy(), p=p)
        np.testing.assert_allclose(LF.sliced_wasserstein(x, y, projections=theta, p=p).item(), float(ref), rtol=1e-10)


def test_control_variates_reduce_variance_at_equal_projections():
    """Over 200 draws of L = 10 directions, both control variates cut the variance of SW_2^2."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g, dtype=F64) * torch.tensor([3.0, 1, 1, 0.5, 0.2], dtype=F64)
    y = torch.randn(64, 5, generator=g, dtype=F64) + torch.tensor([2.0, -1, 0, 0, 0], dtype=F64)
    est = {cv: [] for cv in (None, "lower", "upper")}
    for rep in range(200):
        for cv in est:
            gen = torch.Generator().manual_seed(rep)  # same directions for the three estimators
            est[cv].append(LF.sliced_wasserstein(x, y, num_projections=10, control_variate=cv, generator=gen).item() ** 2)
    var = {cv: float(np.var(v)) for cv, v in est.items()}
    assert var["lower"] < 0.8 * var[None] and var["upper"] < 0.8 * var[None], var
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
