"""robust_contrastive_loss (SogCLR / iSogCLR) against explicit loops over the papers' formulas."""
from __future__ import annotations

import math

import pytest
import torch

from losslab.functional import nt_xent, robust_contrastive_loss


def _views(seed, n=6, d=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)


def _loop_g(z1, z2, tau):
    """Per direction and anchor: g_i = mean over the 2B-2 negatives of exp((<x_i, z> - <x_i, x_i^+>) / tau_i)."""
    a = torch.nn.functional.normalize(z1, dim=-1)
    b = torch.nn.functional.normalize(z2, dim=-1)
    n = a.shape[0]
    out = []
    for anchors, same, other in ((a, a, b), (b, b, a)):
        gs = []
        for i in range(n):
            t = tau[i]
            pos = anchors[i] @ other[i]
            terms = [torch.exp((anchors[i] @ same[j] - pos) / t) for j in range(n) if j != i]
            terms += [torch.exp((anchors[i] @ other[j] - pos) / t) for j in range(n) if j != i]
            gs.append(torch.stack(terms).mean())
        out.append(torch.stack(gs))
    return out  # [g^1 (n,), g^2 (n,)]


@pytest.mark.parametrize("seed", range(3))
def test_value_and_first_visit_gradient_equal_loop(seed):
    z1, z2 = _views(seed)
    tau = torch.full((6,), 0.3, dtype=torch.float64)
    x1, x2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    g1, g2 = _loop_g(x1, x2, tau)
    ref = (0.3 * (g1.log() + g2.log()) / 2).mean()
    r1, r2 = torch.autograd.grad(ref, [x1, x2])
    y1, y2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    out = robust_contrastive_loss(y1, y2, temperature=0.3)
    o1, o2 = torch.autograd.grad(out, [y1, y2])
    torch.testing.assert_close(out, ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(o1, r1, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(o2, r2, rtol=1e-10, atol=1e-12)


def test_negatives_only_relation_to_nt_xent():
    # tau * (NT-Xent anchor loss) = tau * (lse over 2B-1 candidates) - s_pos; with the positive removed from
    # the denominator and a mean instead of a sum, l_i = tau * log(exp(nt_i) - 1) - tau * log(2B - 2).
    z1, z2 = _views(1)
    tau, n = 0.5, 6
    nt = nt_xent(z1, z2, temperature=tau, reduction="none")  # (2B,): view-1 anchors then view-2 anchors
    ref = tau * (torch.log(torch.expm1(nt)) - math.log(2 * n - 2))
    out = robust_contrastive_loss(z1, z2, temperature=tau, reduction="none")
    torch.testing.assert_close(out, (ref[:n] + ref[n:]) / 2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.9, 0.3, 1.0])
def test_stateful_gradient_is_sogclr_estimator(gamma):
    z1, z2 = _views(4)
    tau = torch.tensor([0.2, 0.3, 0.4, 0.5, 0.6, 0.7], dtype=torch.float64)
    g = torch.Generator().manual_seed(9)
    u_old = torch.rand(6, 2, generator=g, dtype=torch.float64) * 3 + 0.1
    u_old[2] = float("inf")  # marker replaced below: anchor 2 never seen (log u = -inf)
    log_u = u_old.log()
    log_u[2] = float("-inf")
    x1, x2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    g1, g2 = _loop_g(x1, x2, tau)
    ref_terms, ref_u = [], []
    for k, gk in enumerate((g1, g2)):
        u_new = (1 - gamma) * u_old[:, k] + gamma * gk.detach()
        u_new[2] = gk.detach()[2]  # first visit: u = g
        ref_u.append(u_new)
        ref_terms.append(tau * gk / u_new)  # gradient tau * grad(g) / u (surrogate, value differs)
    surrogate = ((ref_terms[0] + ref_terms[1]) / 2).mean()
    r1, r2 = torch.autograd.grad(surrogate, [x1, x2])
    y1, y2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    out = robust_contrastive_loss(y1, y2, temperature=tau, log_u=log_u, gamma=gamma, return_state=True)
    o1, o2 = torch.autograd.grad(out.loss, [y1, y2])
    torch.testing.assert_close(o1, r1, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(o2, r2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.log_u, torch.stack(ref_u, 1).log(), rtol=1e-12, atol=1e-12)
    # the value stays the mini-batch loss tau_i * log g_i
    ref_value = (tau * (g1.log() + g2.log()) / 2).mean()
    torch.testing.assert_close(out.loss, ref_value.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rho", [0.0, 0.3])
def test_tau_gradient_matches_finite_difference(rho):
    # At u = g (first visit) the returned gradient is d/dtau_i of tau_i log g_i(tau_i) + rho tau_i,
    # averaged over both directions: compare with a central difference of the loop.
    z1, z2 = _views(2)
    tau = torch.tensor([0.15, 0.25, 0.35, 0.45, 0.55, 0.65], dtype=torch.float64)
    out = robust_contrastive_loss(z1, z2, temperature=tau, rho=rho, return_state=True)

    def objective(t):
        g1, g2 = _loop_g(z1, z2, t)
        return (t * (g1.log() + g2.log()) / 2) + rho * t

    h = 1e-6
    fd = torch.stack([(objective(tau + h * e)[i] - objective(tau - h * e)[i]) / (2 * h)
                      for i, e in enumerate(torch.eye(6, dtype=torch.float64))])
    torch.testing.assert_close(out.tau_grad, fd, rtol=1e-6, atol=1e-8)


def test_small_temperature_stays_finite_in_float32():
    z1, z2 = _views(0, n=32, d=8, dtype=torch.float32)
    z1 = (z1 * 1e4).requires_grad_(True)
    log_u = torch.full((32, 2), -150.0)  # an old, tiny estimate (e^-150 underflows float32)
    out = robust_contrastive_loss(z1, z2, temperature=0.005, log_u=log_u, return_state=True)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(z1.grad).all() and torch.isfinite(out.log_u).all()
    assert torch.isfinite(out.tau_grad).all()


def test_reductions():
    z1, z2 = _views(3)
    none = robust_contrastive_loss(z1, z2, reduction="none")
    assert none.shape == (6,)
    torch.testing.assert_close(robust_contrastive_loss(z1, z2, reduction="sum"), none.sum())
    torch.testing.assert_close(robust_contrastive_loss(z1, z2), none.mean())


def test_bad_inputs():
    z1, z2 = _views(0)
    with pytest.raises(ValueError, match="temperature"):
        robust_contrastive_loss(z1, z2, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        robust_contrastive_loss(z1, z2, temperature=torch.full((6,), -0.1, dtype=torch.float64))
    with pytest.raises(ValueError, match="temperature"):
        robust_contrastive_loss(z1, z2, temperature=torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="log_u"):
        robust_contrastive_loss(z1, z2, log_u=torch.zeros(6))
    with pytest.raises(ValueError, match="gamma"):
        robust_contrastive_loss(z1, z2, log_u=torch.zeros(6, 2), gamma=0.0)
    with pytest.raises(ValueError, match="same shape"):
        robust_contrastive_loss(z1, z2[:5])
    with pytest.raises(ValueError, match="at least 2"):
        robust_contrastive_loss(z1[:1], z2[:1])
    with pytest.raises(ValueError, match="rho"):
        robust_contrastive_loss(z1, z2, rho=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        robust_contrastive_loss(z1, z2, reduction="avg")
    with pytest.raises(TypeError, match="return_state"):
        robust_contrastive_loss(z1, z2, return_state=1)
    with pytest.raises(ValueError, match="query and key"):
        robust_contrastive_loss(z1, z2[:, :3])


def test_return_state_is_a_named_tuple_typed_by_overloads():
    import typing

    z1, z2 = _views(0)
    plain = robust_contrastive_loss(query=z1, key=z2, temperature=0.3)
    out = robust_contrastive_loss(z1, z2, temperature=0.3, return_state=True)
    assert isinstance(plain, torch.Tensor) and out._fields[0] == "loss"
    torch.testing.assert_close(out.loss, plain, rtol=0, atol=0)
    overloads = typing.get_overloads(robust_contrastive_loss)
    # (string annotations: the module uses `from __future__ import annotations`)
    by_flag = {o.__annotations__["return_state"]: o.__annotations__["return"] for o in overloads}
    assert by_flag == {"Literal[False]": "torch.Tensor", "Literal[True]": "RobustContrastiveOutput"}


# ----------------------------------------------------------------------------- soft labels (UniME-V2)
from losslab.functional import soft_label_contrastive_loss  # noqa: E402


def _kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("temps", [(0.1, None), (0.5, 0.2)])
def test_soft_label_equals_loop(symmetric, temps):
    g = torch.Generator().manual_seed(5)
    q = torch.randn(4, 6, generator=g, dtype=torch.float64)
    c = torch.randn(4, 5, 6, generator=g, dtype=torch.float64)
    j = torch.rand(4, 5, generator=g, dtype=torch.float64)
    tau, tj = temps
    out = soft_label_contrastive_loss(q, c, j, temperature=tau, judge_temperature=tj, symmetric=symmetric,
                                      reduction="none")
    qn = torch.nn.functional.normalize(q, dim=-1)
    cn = torch.nn.functional.normalize(c, dim=-1)
    for b in range(4):
        s = [float(qn[b] @ cn[b, k]) / tau for k in range(5)]
        P = _softmax([float(x) / (tj or tau) for x in j[b]])
        Q = _softmax(s)
        ref = 0.5 * (_kl(P, Q) + _kl(Q, P)) if symmetric else _kl(P, Q)
        assert float(out[b]) == pytest.approx(ref, rel=1e-10, abs=1e-13)
    torch.testing.assert_close(soft_label_contrastive_loss(q, c, j, temperature=tau, judge_temperature=tj,
                                                           symmetric=symmetric), out.mean())


def test_soft_label_is_zero_iff_distributions_match_and_finite_at_small_temperature():
    g = torch.Generator().manual_seed(6)
    q = torch.randn(3, 4, generator=g)
    c = torch.randn(3, 7, 4, generator=g)
    s = torch.einsum("bd,bkd->bk", torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(c, dim=-1))
    assert float(soft_label_contrastive_loss(q, c, s, temperature=0.1)) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_label_contrastive_loss(q, c, torch.rand(3, 7, generator=g), temperature=0.1)) > 0
    x = q.clone().requires_grad_(True)
    out = soft_label_contrastive_loss(x, c, torch.rand(3, 7, generator=g), temperature=1e-4)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(x.grad).all()


def test_soft_label_bad_inputs():
    q, c, j = torch.randn(2, 3), torch.randn(2, 4, 3), torch.rand(2, 4)
    with pytest.raises(ValueError, match="temperature"):
        soft_label_contrastive_loss(q, c, j, temperature=0.0)
    with pytest.raises(ValueError, match="judge_temperature"):
        soft_label_contrastive_loss(q, c, j, judge_temperature=-1.0)
    with pytest.raises(ValueError, match="candidates"):
        soft_label_contrastive_loss(q, c[:1], j)
    with pytest.raises(ValueError, match="judge_scores"):
        soft_label_contrastive_loss(q, c, j[:, :3])
