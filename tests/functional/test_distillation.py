"""Distillation objectives against explicit loops over the papers' formulas (written here, in float64).

References are plain Python over ``math`` (one sample, one class at a time) or NumPy; nothing
is imported from the package under test except the objective itself.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import losslab
from losslab import functional as LF

F64 = torch.float64


def _softmax_row(row, temperature=1.0):
    z = [x / temperature for x in row]
    m = max(z)
    e = [math.exp(x - m) for x in z]
    s = sum(e)
    return [v / s for v in e]


# The generators f of D_f(P||Q) = sum_k q_k f(p_k / q_k), written from their definitions.
GENERATORS = {
    "kl": lambda u: u * math.log(u),
    "reverse_kl": lambda u: -math.log(u),
    "js": lambda u: 0.5 * (u * math.log(u) - (u + 1) * math.log((u + 1) / 2)),
    "total_variation": lambda u: 0.5 * abs(u - 1),
    "hellinger": lambda u: 0.5 * (math.sqrt(u) - 1) ** 2,
    "chi2": lambda u: (u - 1) ** 2,
    "jeffreys": lambda u: (u - 1) * math.log(u),
    "alpha": lambda u, a=0.3: (u ** a - a * u - (1 - a)) / (a * (a - 1)),
}


def _fdiv(p, q, name):
    return sum(qk * GENERATORS[name](pk / qk) for pk, qk in zip(p, q))


def _kd_loop(s, t, temperature, divergence, target=None, ce_weight=0.0, ignore=-100):
    values, kept = [], []
    for i in range(s.shape[0]):
        if target is not None and int(target[i]) == ignore:
            values.append(0.0)
            continue
        p = _softmax_row(t[i].tolist(), temperature)
        q = _softmax_row(s[i].tolist(), temperature)
        v = (1 - ce_weight) * temperature ** 2 * _fdiv(p, q, divergence)
        if ce_weight:
            v += ce_weight * -math.log(_softmax_row(s[i].tolist())[int(target[i])])
        values.append(v)
        kept.append(v)
    return torch.tensor(values, dtype=F64), (sum(kept) / len(kept) if kept else 0.0)


# --------------------------------------------------------------------------- kd_loss
@pytest.mark.parametrize("divergence", sorted(GENERATORS))
def test_kd_loss_every_divergence_of_the_table_matches_the_generator_sum(divergence):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=g, dtype=F64), torch.randn(5, 4, generator=g, dtype=F64)
    none = LF.kd_loss(s, t, temperature=2.5, divergence=divergence, alpha=0.3, reduction="none")
    ref, mean = _kd_loop(s, t, 2.5, divergence)
    torch.testing.assert_close(none, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(LF.kd_loss(s, t, temperature=2.5, divergence=divergence, alpha=0.3),
                               torch.tensor(mean, dtype=F64), rtol=1e-10, atol=1e-12)


def test_kd_loss_forward_kl_is_hinton_and_reverse_swaps_the_arguments():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, 6, generator=g, dtype=F64), torch.randn(3, 6, generator=g, dtype=F64)
    for i in range(3):
        p, q = _softmax_row(t[i].tolist(), 3.0), _softmax_row(s[i].tolist(), 3.0)
        fwd = 9 * sum(pk * math.log(pk / qk) for pk, qk in zip(p, q))      # T^2 KL(teacher || student)
        rev = 9 * sum(qk * math.log(qk / pk) for pk, qk in zip(p, q))      # T^2 KL(student || teacher)
        assert LF.kd_loss(s, t, temperature=3.0, reduction="none")[i].item() == pytest.approx(fwd, rel=1e-12)
        assert LF.kd_loss(s, t, temperature=3.0, divergence="reverse_kl",
                          reduction="none")[i].item() == pytest.approx(rev, rel=1e-12)


def test_kd_loss_ce_mix_and_ignored_tokens_leave_both_terms_and_the_mean():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 4, 5, generator=g, dtype=F64), torch.randn(2, 4, 5, generator=g, dtype=F64)
    y = torch.randint(0, 5, (2, 4), generator=g)
    y[0, 0] = y[1, 3] = -100
    none = LF.kd_loss(s, t, temperature=2.0, target=y, ce_weight=0.25, reduction="none")
    ref, mean = _kd_loop(s.reshape(8, 5), t.reshape(8, 5), 2.0, "kl", y.reshape(8), 0.25)
    torch.testing.assert_close(none.reshape(8), ref, rtol=1e-10, atol=1e-12)
    mean_out = LF.kd_loss(s, t, temperature=2.0, target=y, ce_weight=0.25)
    assert mean_out.item() == pytest.approx(mean, rel=1e-12)
    # A target with ce_weight=0 only masks.
    masked, mmean = _kd_loop(s.reshape(8, 5), t.reshape(8, 5), 2.0, "kl", y.reshape(8), 0.0)
    assert LF.kd_loss(s, t, temperature=2.0, target=y).item() == pytest.approx(mmean, rel=1e-12)


def test_kd_loss_teacher_gets_no_gradient_and_ce_weight_one_is_cross_entropy():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(4, 3, generator=g, dtype=F64, requires_grad=True)
    t = torch.randn(4, 3, generator=g, dtype=F64, requires_grad=True)
    y = torch.tensor([0, 2, 1, 1])
    LF.kd_loss(s, t, temperature=2.0, divergence="js").backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0
    ce = sum(-math.log(_softmax_row(s[i].tolist())[int(y[i])]) for i in range(4)) / 4
    assert LF.kd_loss(s, t, target=y, ce_weight=1.0).item() == pytest.approx(ce, rel=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": 0.0}, "temperature"),
    ({"temperature": -1.0}, "temperature"),
    ({"divergence": "forward_kl"}, "divergence"),
    ({"ce_weight": 0.5}, "target"),
    ({"ce_weight": 1.5}, "ce_weight"),
])
def test_kd_loss_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LF.kd_loss(torch.randn(2, 3), torch.randn(2, 3), **kwargs)
    if "ce_weight" not in kwargs or kwargs["ce_weight"] > 1:
        with pytest.raises(ValueError, match=match):
            losslab.nn.KDLoss(**kwargs)


def test_kd_loss_class_counts_must_match():
    with pytest.raises(ValueError, match="teacher_logits.*class count"):
        LF.kd_loss(torch.randn(2, 3), torch.randn(2, 4))


def test_kd_loss_bfloat16_is_computed_in_float32():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(8, 7, generator=g).bfloat16(), torch.randn(8, 7, generator=g).bfloat16()
    out = LF.kd_loss(s, t, temperature=2.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, LF.kd_loss(s.float(), t.float(), temperature=2.0))


# --------------------------------------------------------------------------- sinkhorn_kd_loss
def _sinkhorn_ones(W, eps, iters=20000):
    """The authors' normalization (all-ones marginals), as plain NumPy scaling iterations."""
    K = np.exp(-W / eps)
    u, v = np.ones(W.shape[0]), np.ones(W.shape[1])
    for _ in range(iters):
        u = 1.0 / (K @ v)
        v = 1.0 / (K.T @ u)
    return u[:, None] * K * v[None, :]


def _l1(ps, pt):
    return np.array([[np.abs(ps[i] - pt[j]).sum() for j in range(len(pt))] for i in range(len(ps))])


def test_sinkhorn_kd_value_is_the_reference_code_value_over_B():
    g = torch.Generator().manual_seed(5)
    B = 6
    s, t = torch.randn(B, 4, generator=g, dtype=F64) * 2, torch.randn(B, 4, generator=g, dtype=F64) * 2
    ps = torch.softmax(s / 2.0, -1).numpy()
    pt = torch.softmax(t / 2.0, -1).numpy()
    W = _l1(ps, pt)
    P = _sinkhorn_ones(W, 0.1)
    ref = (P * W).sum()
    ours = LF.sinkhorn_kd_loss(s, t, temperature=2.0, epsilon=0.1, tol=1e-12, max_iter=10000)
    assert (B * ours).item() == pytest.approx(ref, rel=1e-7)


def test_sinkhorn_kd_gradient_is_the_fixed_plan_contracted_with_dW():
    g = torch.Generator().manual_seed(6)
    s = (torch.randn(5, 3, generator=g, dtype=F64) * 2).requires_grad_(True)
    t = torch.randn(5, 3, generator=g, dtype=F64) * 2
    LF.sinkhorn_kd_loss(s, t, epsilon=0.2, tol=1e-12, max_iter=10000).backward()
    ps = torch.softmax(t / 2.0, -1)
    P = torch.tensor(_sinkhorn_ones(_l1(torch.softmax(s.detach() / 2.0, -1).numpy(), ps.numpy()), 0.2)) / 5
    s2 = s.detach().clone().requires_grad_(True)
    q = torch.softmax(s2 / 2.0, -1)
    W = torch.stack([torch.stack([(q[i] - ps[j]).abs().sum() for j in range(5)]) for i in range(5)])
    (P * W).sum().backward()
    torch.testing.assert_close(s.grad, s2.grad, rtol=1e-6, atol=1e-9)


def test_sinkhorn_kd_permuted_batch_costs_nothing_and_teacher_has_no_gradient():
    s = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
    t = s[[2, 0, 1]].clone().requires_grad_(True)
    x = s.clone().requires_grad_(True)
    out = LF.sinkhorn_kd_loss(x, t, epsilon=0.01)
    assert out.item() < 1e-4
    out.backward()
    assert t.grad is None
    with pytest.raises(ValueError, match="epsilon"):
        LF.sinkhorn_kd_loss(x, t, epsilon=0.0)
    with pytest.raises(ValueError, match="temperature"):
        losslab.nn.SinkhornKDLoss(temperature=-2.0)


# --------------------------------------------------------------------------- nd_loss
def test_nd_loss_matches_the_loop():
    g = torch.Generator().manual_seed(7)
    s, t = torch.randn(6, 4, generator=g, dtype=F64), torch.randn(6, 4, generator=g, dtype=F64) * 2
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    c = torch.randn(3, 4, generator=g, dtype=F64)
    ref = []
    for i in range(6):
        cy = c[int(y[i])].tolist()
        cn = math.sqrt(sum(v * v for v in cy))
        dot = sum(a * b / cn for a, b in zip(s[i].tolist(), cy))
        ns = math.sqrt(sum(v * v for v in s[i].tolist()))
        nt = math.sqrt(sum(v * v for v in t[i].tolist()))
        ref.append(1 - dot / max(ns, nt))
    torch.testing.assert_close(LF.nd_loss(s, t, y, c, reduction="none"), torch.tensor(ref, dtype=F64))
    tt, cc = t.clone().requires_grad_(True), c.clone().requires_grad_(True)
    LF.nd_loss(s.clone().requires_grad_(True), tt, y, cc).backward()
    assert tt.grad is None and cc.grad is None
    with pytest.raises(ValueError, match="target"):
        LF.nd_loss(s, t, torch.tensor([0, 1, 2, 3, 0, 1]), c)


# --------------------------------------------------------------------------- dual_head_kd_loss
def test_dual_head_matches_the_loop_and_the_binary_kl_form():
    g = torch.Generator().manual_seed(8)
    z1, z2, t = (torch.randn(5, 4, generator=g, dtype=F64) * 3 for _ in range(3))
    y = torch.tensor([0, 3, -100, 1, 2])
    T = 2.0
    ref = []
    for i in range(5):
        if int(y[i]) == -100:
            ref.append(0.0)
            continue
        ce = -math.log(_softmax_row(z1[i].tolist())[int(y[i])])
        logit = 0.0
        for a, b in zip(z2[i].tolist(), t[i].tolist()):
            d = a - b
            sig = 1 / (1 + math.exp(-d / T))
            # KL(Bern(1/2) || Bern(sigma(d / T))), the authors' BinaryKLNorm, equals log cosh(d / 2T).
            bkl = 0.5 * math.log(0.5 / sig) + 0.5 * math.log(0.5 / (1 - sig))
            assert bkl == pytest.approx(math.log(math.cosh(d / (2 * T))), rel=1e-9, abs=1e-12)
            logit += T * T * bkl
        ref.append(ce + logit)
    none = LF.dual_head_kd_loss(z1, z2, t, y, temperature=T, reduction="none")
    torch.testing.assert_close(none, torch.tensor(ref, dtype=F64), rtol=1e-9, atol=1e-12)
    assert LF.dual_head_kd_loss(z1, z2, t, y, temperature=T).item() == pytest.approx(sum(ref) / 4, rel=1e-9)
    with pytest.raises(ValueError, match="temperature"):
        LF.dual_head_kd_loss(z1, z2, t, y, temperature=0.0)


# --------------------------------------------------------------------------- multi_teacher_kd_loss
def test_multi_teacher_matches_the_loop():
    g = torch.Generator().manual_seed(9)
    s, t = torch.randn(2, 4, 3, generator=g, dtype=F64), torch.randn(2, 4, 3, generator=g, dtype=F64) * 2
    tau, w = [1.5, 4.0], [0.2, 0.8]
    ref = []
    for i in range(4):
        v = 0.0
        for k in range(2):
            p, q = _softmax_row(t[k, i].tolist(), tau[k]), _softmax_row(s[k, i].tolist())
            v += w[k] * sum(pk * math.log(pk / qk) for pk, qk in zip(p, q))
        ref.append(v)
    out = LF.multi_teacher_kd_loss(s, t, temperature=torch.tensor(tau), teacher_weight=torch.tensor(w),
                                   reduction="none")
    torch.testing.assert_close(out, torch.tensor(ref, dtype=F64))
    with pytest.raises(ValueError, match="temperature"):
        LF.multi_teacher_kd_loss(s, t, temperature=torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="teacher_weight"):
        LF.multi_teacher_kd_loss(s, t, teacher_weight=torch.ones(3))


# --------------------------------------------------------------------------- boundary_kd_loss
def _bpkd_loop(s, t, y, r, T, we, wb):
    n, h, w, c = s.shape
    out = []
    for b in range(n):
        edge = [[False] * w for _ in range(h)]
        for i in range(h):
            for j in range(w):
                labels = {int(y[b, a, e]) for a in range(max(0, i - r), min(h, i + r + 1))
                          for e in range(max(0, j - r), min(w, j + r + 1))}
                edge[i][j] = len(labels) > 1
        e_vals = []
        for i in range(h):
            for j in range(w):
                if edge[i][j]:
                    p, q = _softmax_row(t[b, i, j].tolist(), T), _softmax_row(s[b, i, j].tolist(), T)
                    e_vals.append(T * T * sum(pk * math.log(pk / qk) for pk, qk in zip(p, q)))
        edge_loss = sum(e_vals) / len(e_vals) if e_vals else 0.0
        body = [(i, j) for i in range(h) for j in range(w) if not edge[i][j]]
        body_loss = 0.0
        if body:
            for k in range(c):
                p = _softmax_row([t[b, i, j, k].item() for i, j in body], T)
                q = _softmax_row([s[b, i, j, k].item() for i, j in body], T)
                body_loss += T * T * sum(pk * math.log(pk / qk) for pk, qk in zip(p, q)) / c
        out.append(we * edge_loss + wb * body_loss)
    return torch.tensor(out, dtype=F64)


@pytest.mark.parametrize("radius", [0, 1, 2, 5])
def test_boundary_kd_matches_the_loop(radius):
    g = torch.Generator().manual_seed(10)
    s, t = torch.randn(2, 5, 6, 3, generator=g, dtype=F64), torch.randn(2, 5, 6, 3, generator=g, dtype=F64)
    y = torch.zeros(2, 5, 6, dtype=torch.long)
    y[:, :, 3:] = 1
    y[1, 2:, :2] = 2
    out = LF.boundary_kd_loss(s, t, y, radius=radius, temperature=1.5, edge_weight=0.7, body_weight=1.3,
                              reduction="none")
    torch.testing.assert_close(out, _bpkd_loop(s, t, y, radius, 1.5, 0.7, 1.3), rtol=1e-9, atol=1e-12)


def test_boundary_kd_layout_hint_and_bad_radius():
    with pytest.raises(ValueError, match="radius"):
        LF.boundary_kd_loss(torch.randn(1, 4, 4, 2), torch.randn(1, 4, 4, 2), torch.zeros(1, 4, 4, dtype=torch.long),
                            radius=-1)
    with pytest.raises(ValueError, match="class dimension last"):
        LF.boundary_kd_loss(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))


# --------------------------------------------------------------------------- trajectory_loss
def test_trajectory_loss_matches_the_loop_and_detaches_the_past():
    g = torch.Generator().manual_seed(11)
    z = torch.randn(4, 5, generator=g, dtype=F64, requires_grad=True)
    past = torch.randn(4, 5, generator=g, dtype=F64, requires_grad=True)
    ref = [25 * sum(pk * math.log(pk / qk) for pk, qk in zip(_softmax_row(past[i].tolist(), 5.0),
                                                              _softmax_row(z[i].tolist(), 5.0))) for i in range(4)]
    torch.testing.assert_close(LF.trajectory_loss(z, past, reduction="none"), torch.tensor(ref, dtype=F64))
    m = torch.tensor([True, False, True, False])
    out = LF.trajectory_loss(z, past, mask=m)
    assert out.item() == pytest.approx((ref[0] + ref[2]) / 2, rel=1e-12)
    out.backward()
    assert past.grad is None
