"""Entropic OT against POT and geomloss, plus the identities of the dual."""
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from losslab import functional as LF
from losslab.functional.transport import pairwise_cost

F64 = torch.float64
TIGHT = dict(tol=1e-12, max_iter=20000)


def _clouds(seed=0, n=12, m=9, d=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.randn(m, d, generator=g, dtype=F64) * 0.8 + 0.5
    a = torch.rand(n, generator=g, dtype=F64) + 0.2
    b = torch.rand(m, generator=g, dtype=F64) + 0.2
    return x, y, a / a.sum(), b / b.sum()


def test_transport_cost_matches_pot_sinkhorn_log():
    ot = pytest.importorskip("ot")
    x, y, a, b = _clouds()
    C = pairwise_cost(x, y, "sqeuclidean")
    ref = ot.sinkhorn2(a.numpy(), b.numpy(), C.numpy(), reg=0.1, method="sinkhorn_log", numItermax=20000, stopThr=1e-13)
    res = LF.sinkhorn(x, y, a=a, b=b, epsilon=0.1, **TIGHT)
    np.testing.assert_allclose(res.transport_cost.item(), float(ref), rtol=1e-9)


def test_dual_value_plan_marginals_identity():
    x, y, a, b = _clouds(1)
    eps = 0.2
    res = LF.sinkhorn(x, y, a=a, b=b, epsilon=eps, return_plan=True, **TIGHT)
    P = res.plan
    torch.testing.assert_close(P.sum(1), a, rtol=0, atol=1e-10)
    torch.testing.assert_close(P.sum(0), b, rtol=0, atol=1e-10)
    # OT_eps = <P, C> + eps KL(P || a b^T) = <a, f> + <b, g> at the optimum
    kl = (P * torch.log(P / (a[:, None] * b[None, :]))).sum()
    torch.testing.assert_close(res.value, res.transport_cost + eps * kl, rtol=1e-9, atol=1e-12)


def test_zero_weights_no_nan_and_equal_to_reduced_problem():
    x, y, a, b = _clouds(2)
    a0 = a.clone()
    a0[:3] = 0
    a0 = a0 / a0.sum()
    res = LF.sinkhorn(x, y, a=a0, b=b, epsilon=0.1, **TIGHT)
    red = LF.sinkhorn(x[3:], y, a=a0[3:], b=b, epsilon=0.1, **TIGHT)
    assert torch.isfinite(res.value) and torch.isfinite(res.f).all()
    torch.testing.assert_close(res.value, red.value, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(res.transport_cost, red.transport_cost, rtol=1e-9, atol=1e-12)
    xg = x.clone().requires_grad_(True)
    LF.sinkhorn(xg, y, a=a0, b=b, epsilon=0.1, **TIGHT).value.backward()
    assert torch.isfinite(xg.grad).all() and (xg.grad[:3] == 0).all()


def test_envelope_gradient_is_plan_gradient():
    """d OT_eps / d x_i = sum_j P_ij * 2 (x_i - y_j) for the squared Euclidean cost."""
    x, y, a, b = _clouds(3)
    xg = x.clone().requires_grad_(True)
    res = LF.sinkhorn(xg, y, a=a, b=b, epsilon=0.3, return_plan=True, **TIGHT)
    res.value.backward()
    P = res.plan.detach()
    expected = 2 * (P.sum(1, keepdim=True) * x - P @ y)
    torch.testing.assert_close(xg.grad, expected, rtol=1e-8, atol=1e-10)
    # unrolled differentiation converges to the same gradient
    xu = x.clone().requires_grad_(True)
    LF.sinkhorn(xu, y, a=a, b=b, epsilon=0.3, unrolled=True, **TIGHT).value.backward()
    torch.testing.assert_close(xu.grad, expected, rtol=1e-6, atol=1e-8)


def test_batched_equals_loop_and_scaling_same_solution():
    xs, ys = zip(*[_clouds(s)[:2] for s in range(3)])
    x, y = torch.stack(xs), torch.stack(ys)
    batched = LF.sinkhorn(x, y, epsilon=0.2, **TIGHT).value
    single = torch.stack([LF.sinkhorn(x[i], y[i], epsilon=0.2, **TIGHT).value for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-10, atol=1e-12)
    scaled = LF.sinkhorn(x, y, epsilon=0.2, scaling=0.7, **TIGHT).value
    torch.testing.assert_close(scaled, batched, rtol=1e-9, atol=1e-12)


def test_not_converged_warns_with_error():
    x, y, _, _ = _clouds(4)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        LF.sinkhorn(x, y, epsilon=0.001, max_iter=3, tol=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LF.sinkhorn(x, y, epsilon=0.5, **TIGHT)


def test_sinkhorn_divergence_matches_geomloss():
    geomloss = pytest.importorskip("geomloss")
    x, y, a, b = _clouds(5, n=20, m=15)
    blur = 0.7
    # geomloss anneals epsilon and stops after the schedule; scaling close to 1 makes it converge.
    peer = geomloss.SamplesLoss("sinkhorn", p=2, blur=blur, debias=True, scaling=0.97, backend="tensorized")
    ref = peer(a, x, b, y)
    ours = LF.sinkhorn_divergence(x, y, a=a, b=b, epsilon=blur**2, cost="half_sqeuclidean", **TIGHT)
    torch.testing.assert_close(ours, ref.to(F64), rtol=1e-4, atol=1e-7)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_sinkhorn_divergence_nonnegative_and_zero_on_itself(seed):
    x, y, _, _ = _clouds(seed, n=8, m=7)
    assert LF.sinkhorn_divergence(x, y, epsilon=0.3, **TIGHT).item() >= -1e-10
    # The same measure given in another order goes through the general (cross-term) solver;
    # at epsilon = 1 the points are strongly coupled and it converges to 1e-12.
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(seed))
    assert abs(LF.sinkhorn_divergence(x, x[perm], epsilon=1.0, **TIGHT).item()) < 1e-10
    assert LF.sinkhorn_divergence(x, x, epsilon=0.3).item() == 0.0


def test_bad_input():
    x, y, a, b = _clouds()
    with pytest.raises(ValueError, match="feature dimension"):
        LF.sinkhorn(x, torch.randn(4, 3, dtype=F64))
    with pytest.raises(ValueError, match="epsilon"):
        LF.sinkhorn(x, y, epsilon=0.0)
    with pytest.raises(ValueError, match="non-negative"):
        LF.sinkhorn(x, y, a=torch.full((12,), -1 / 12, dtype=F64) * -1 - 2 / 12 * (torch.arange(12) == 0))
    with pytest.raises(ValueError, match="sum to 1"):
        LF.sinkhorn(x, y, a=a * 2)
    with pytest.raises(ValueError, match="a must have shape"):
        LF.sinkhorn(x, y, a=a[:5])
    with pytest.raises(ValueError, match="cost"):
        LF.sinkhorn(x, y, cost="manhattan")
    with pytest.raises(ValueError, match="NaN"):
        LF.sinkhorn(x * float("nan"), y)


def test_monge_gap_definition_and_optimal_maps():
    x, _, a, _ = _clouds(7, n=15)
    t = x @ torch.tensor([[1.2, 0.3], [0.3, 0.8]], dtype=F64) + 0.5  # gradient of a convex quadratic: optimal
    # Plans of a cloud and its image under a monotone map are close to a permutation, where
    # Sinkhorn converges slowly at small epsilon: eps = 0.2 and tol 1e-9 keep the test fast.
    kw = dict(epsilon=0.2, tol=1e-9, max_iter=20000)
    ref = (a * ((x - t) ** 2).sum(-1)).sum() - LF.sinkhorn(x, t, a=a, b=a, **kw).value
    gap = LF.monge_gap(x, t, a=a, **kw)
    torch.testing.assert_close(gap, ref)
    h = -(a * a.log()).sum().item()
    assert -0.2 * h - 1e-9 <= gap.item() < 0.0  # >= -eps H(a) (the identity coupling), ~0 for an optimal map
    scrambled = LF.monge_gap(x, t[torch.randperm(15, generator=torch.Generator().manual_seed(0))],
                             **kw)  # uniform weights: the image measure is unchanged
    assert scrambled.item() > 0.5  # same image measure, non-optimal pairing
    with pytest.raises(ValueError, match="shape of x"):
        LF.monge_gap(x, t[:5])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stabilized_kernel_has_no_subnormal_entries(dtype):
    # Subnormal kernel entries slow every matrix-vector product ~20x on a CPU: the kernel
    # flushes them to exactly 0, and the float32 solve stays as accurate as float64's.
    from losslab.functional.transport import _gibbs, pairwise_cost

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 3, generator=g, dtype=dtype), torch.randn(300, 3, generator=g, dtype=dtype) + 0.5
    C = pairwise_cost(x, y, "half_sqeuclidean")
    K = _gibbs(C, torch.zeros(300, dtype=dtype), torch.zeros(300, dtype=dtype), 0.01)
    assert not bool(((K > 0) & (K < 1e6 * torch.finfo(dtype).tiny)).any())
    assert bool((K == 0).any()) and bool((K > 0).any())
    x, y = x[:100], y[:100]
    v32 = LF.sinkhorn_divergence(x.float(), y.float(), epsilon=0.5, cost="half_sqeuclidean", tol=1e-6, max_iter=100000)
    v64 = LF.sinkhorn_divergence(x.double(), y.double(), epsilon=0.5, cost="half_sqeuclidean", tol=1e-9, max_iter=100000)
    assert abs(v32.item() - v64.item()) <= 1e-5 * abs(v64.item())
