"""Classification objectives against torch, explicit loops over the papers' formulas, and identities."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

import losslab
from losslab import functional as LF

F64 = torch.float64


def _data(n=11, c=5, seed=0, ignore=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=F64) * 2
    t = torch.randint(0, c, (n,), generator=g)
    if ignore:
        t[::4] = -100
    return x, t, g


# --------------------------------------------------------------------------- cross_entropy
@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.15])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_torch_class_indices(use_weight, smoothing, reduction):
    x, t, g = _data()
    w = torch.rand(5, generator=g, dtype=F64) + 0.1 if use_weight else None
    ours = LF.cross_entropy(x, t, weight=w, label_smoothing=smoothing, reduction=reduction)
    ref = TF.cross_entropy(x, t, weight=w, label_smoothing=smoothing, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_matches_torch_probability_targets(use_weight, smoothing):
    x, _, g = _data()
    p = torch.softmax(torch.randn(11, 5, generator=g, dtype=F64), -1)
    w = torch.rand(5, generator=g, dtype=F64) + 0.1 if use_weight else None
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(
            LF.cross_entropy(x, p, weight=w, label_smoothing=smoothing, reduction=reduction),
            TF.cross_entropy(x, p, weight=w, label_smoothing=smoothing, reduction=reduction),
            rtol=1e-12, atol=1e-12,
        )


def test_cross_entropy_gradients_match_torch():
    x, t, g = _data()
    w = torch.rand(5, generator=g, dtype=F64) + 0.1
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    LF.cross_entropy(a, t, weight=w, label_smoothing=0.1).backward()
    TF.cross_entropy(b, t, weight=w, label_smoothing=0.1).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)


def test_cross_entropy_class_dimension_last_for_leading_dims():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 6, generator=g, dtype=F64)
    t = torch.randint(0, 6, (2, 3, 4), generator=g)
    ours = LF.cross_entropy(x, t, reduction="none")
    assert ours.shape == (2, 3, 4)
    ref = TF.cross_entropy(x.reshape(-1, 6), t.reshape(-1), reduction="none").reshape(2, 3, 4)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_z_loss_and_softcap_against_hand_written_terms():
    x, t, _ = _data()
    keep = t != -100
    lse = torch.logsumexp(x, -1)
    ref = TF.cross_entropy(x, t, reduction="none") + 1e-3 * lse.square() * keep
    torch.testing.assert_close(LF.cross_entropy(x, t, z_loss=1e-3, reduction="none"), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(LF.cross_entropy(x, t, z_loss=1e-3), ref.sum() / keep.sum(), rtol=1e-12, atol=1e-12)
    capped = 3.0 * torch.tanh(x / 3.0)
    torch.testing.assert_close(LF.cross_entropy(x, t, softcap=3.0), TF.cross_entropy(capped, t), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(LF.z_loss(x, t, reduction="sum"), (lse.square() * keep).sum(), rtol=1e-12, atol=1e-12)


def test_all_ignored_gives_zero_with_zero_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    out = LF.cross_entropy(x, torch.full((4,), -100), z_loss=1e-4)
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_cross_entropy_bad_input():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"class index 3 outside \[0, 3\)"):
        LF.cross_entropy(x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="target must have shape"):
        LF.cross_entropy(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="label_smoothing"):
        LF.cross_entropy(x, torch.tensor([0, 1, 2, 0]), label_smoothing=1.5)
    with pytest.raises(ValueError, match="z_loss"):
        LF.cross_entropy(x, torch.tensor([0, 1, 2, 0]), z_loss=-1.0)
    with pytest.raises(ValueError, match="softcap"):
        LF.cross_entropy(x, torch.tensor([0, 1, 2, 0]), softcap=0.0)
    with pytest.raises(ValueError, match="weight must have shape"):
        LF.cross_entropy(x, torch.tensor([0, 1, 2, 0]), weight=torch.ones(4))
    with pytest.raises(ValueError, match="sum to 1"):
        LF.cross_entropy(x, torch.rand(4, 3) + 1)
    # NaN logits are not scanned for (a full pass costing more than the loss); they are not
    # hidden either: the loss is NaN.
    assert torch.isnan(LF.cross_entropy(torch.full((2, 3), float("nan")), torch.tensor([0, 1])))


# --------------------------------------------------------------------------- focal
def _focal_loop(x, t, gamma, alpha=None):
    out = []
    for row, y in zip(x.tolist(), t.tolist()):
        if y == -100:
            continue
        m = max(row)
        logz = m + math.log(sum(math.exp(v - m) for v in row))
        p = math.exp(row[y] - logz)
        a = 1.0 if alpha is None else alpha[y]
        out.append(-a * (1 - p) ** gamma * math.log(p))
    return out


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_focal_matches_loop(gamma):
    x, t, g = _data(seed=2)
    alpha = (torch.rand(5, generator=g, dtype=F64) + 0.1)
    ref = _focal_loop(x, t, gamma, alpha.tolist())
    np.testing.assert_allclose(LF.focal_loss(x, t, gamma=gamma, alpha=alpha).item(), np.mean(ref), rtol=1e-10)
    np.testing.assert_allclose(LF.focal_loss(x, t, gamma=gamma, alpha=alpha, reduction="sum").item(), np.sum(ref), rtol=1e-10)


def test_focal_gamma_zero_is_cross_entropy():
    x, t, _ = _data(seed=3)
    torch.testing.assert_close(LF.focal_loss(x, t, gamma=0.0), LF.cross_entropy(x, t), rtol=1e-12, atol=1e-12)


def test_focal_binary_case_is_sigmoid_focal():
    """Softmax over [0, s] is [1 - σ(s), σ(s)]: the binary sigmoid focal loss (torchvision's formula)."""
    g = torch.Generator().manual_seed(4)
    s = torch.randn(9, generator=g, dtype=F64) * 3
    y = torch.randint(0, 2, (9,), generator=g)
    a, gamma = 0.25, 2.0
    ref = []
    for si, yi in zip(s.tolist(), y.tolist()):
        p = 1 / (1 + math.exp(-si))
        p_t = p if yi == 1 else 1 - p
        a_t = a if yi == 1 else 1 - a
        ref.append(-a_t * (1 - p_t) ** gamma * math.log(p_t))
    ours = LF.focal_loss(torch.stack([torch.zeros_like(s), s], -1), y, gamma=gamma,
                         alpha=torch.tensor([1 - a, a], dtype=F64), reduction="none")
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10)


def test_focal_small_gamma_finite_gradient_at_certainty():
    x = torch.tensor([[1e4, 0.0]], requires_grad=True)
    LF.focal_loss(x, torch.tensor([0]), gamma=0.5).backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="gamma"):
        LF.focal_loss(x, torch.tensor([0]), gamma=-1.0)


# --------------------------------------------------------------------------- comp-sum family
def _p_y(x, t):
    return torch.softmax(x, -1).gather(-1, t.clamp_min(0).unsqueeze(-1)).squeeze(-1)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_comp_sum_identities(seed):
    x, t, _ = _data(seed=seed, ignore=False)
    p = _p_y(x, t)
    x_y = x.gather(-1, t.unsqueeze(-1))
    sum_exp = torch.where(torch.arange(5) == t.unsqueeze(-1), 0.0, torch.exp(x - x_y)).sum(-1)
    none = dict(reduction="none")
    torch.testing.assert_close(LF.comp_sum_loss(x, t, tau=0.0, **none), sum_exp, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(LF.comp_sum_loss(x, t, tau=1.0, **none), -p.log(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(LF.comp_sum_loss(x, t, tau=2.0, **none), 1 - p, rtol=1e-10, atol=1e-12)
    for q in (0.3, 0.7, 1.0):
        torch.testing.assert_close(LF.comp_sum_loss(x, t, tau=1 + q, **none), (1 - p**q) / q, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(LF.generalized_cross_entropy(x, t, q=q, **none), (1 - p**q) / q, rtol=1e-10, atol=1e-12)


def test_comp_sum_general_tau_loop_and_continuity_at_one():
    x, t, _ = _data(seed=5, ignore=False)
    for tau in (0.5, 1.3, 2.5):
        ref = []
        for row, y in zip(x.tolist(), t.tolist()):
            u = sum(math.exp(v - row[y]) for v in row)
            ref.append((u ** (1 - tau) - 1) / (1 - tau))
        np.testing.assert_allclose(LF.comp_sum_loss(x, t, tau=tau, reduction="none").numpy(), ref, rtol=1e-10)
    torch.testing.assert_close(LF.comp_sum_loss(x, t, tau=1 + 1e-9), LF.comp_sum_loss(x, t, tau=1.0), rtol=1e-7, atol=0)


def test_gce_bad_q_and_bounded():
    x, t, _ = _data(ignore=False)
    with pytest.raises(ValueError, match="q must be in"):
        LF.generalized_cross_entropy(x, t, q=0.0)
    assert (LF.generalized_cross_entropy(x * 1e3, t, q=0.5, reduction="none") <= 2.0 + 1e-12).all()


# --------------------------------------------------------------------------- spherical Z-loss
def test_spherical_z_loss_matches_loop():
    x, t, _ = _data(seed=6)
    ref = []
    for row, y in zip(x.tolist(), t.tolist()):
        if y == -100:
            continue
        mu = sum(row) / len(row)
        sd = math.sqrt(sum((v - mu) ** 2 for v in row) / len(row))
        z = (row[y] - mu) / sd
        ref.append(math.log1p(math.exp(1.5 * (2.5 - z))) / 1.5)
    np.testing.assert_allclose(LF.spherical_z_loss(x, t, a=1.5, b=2.5).item(), np.mean(ref), rtol=1e-10)


@settings(max_examples=25, deadline=None)
@given(st.floats(-50, 50), st.floats(0.01, 100))
def test_spherical_z_loss_shift_and_scale_invariant(shift, scale):
    x, t, _ = _data(seed=7)
    torch.testing.assert_close(LF.spherical_z_loss(x * scale + shift, t), LF.spherical_z_loss(x, t), rtol=1e-8, atol=1e-10)


def test_spherical_z_loss_equal_logits_finite():
    x = torch.zeros(3, 4, requires_grad=True)
    out = LF.spherical_z_loss(x, torch.tensor([0, 1, 2]))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(x.grad).all()
    np.testing.assert_allclose(out.item(), math.log1p(math.exp(2.0)), rtol=1e-6)  # z_y = 0, a=1, b=2


# --------------------------------------------------------------------------- LDR-KL / ALDR-KL
def _ldr_loop(x, t, lam, margin):
    out = []
    for row, y in zip(x.tolist(), t.tolist()):
        d = [(margin if k != y else 0.0) + row[k] - row[y] for k in range(len(row))]
        out.append(lam * math.log(sum(math.exp(v / lam) for v in d) / len(d)))
    return out


@pytest.mark.parametrize("lam,margin", [(1.0, 1.0), (0.3, 0.5), (10.0, 2.0)])
def test_ldr_kl_matches_loop(lam, margin):
    x, t, _ = _data(seed=8, ignore=False)
    np.testing.assert_allclose(LF.ldr_kl_loss(x, t, lam=lam, margin=margin, reduction="none").numpy(),
                               _ldr_loop(x, t, lam, margin), rtol=1e-10)


def test_ldr_kl_limits():
    x, t, _ = _data(seed=9, ignore=False)
    d = x - x.gather(-1, t.unsqueeze(-1)) + 1.0
    d = d.scatter(-1, t.unsqueeze(-1), 0.0)
    torch.testing.assert_close(LF.ldr_kl_loss(x, t, lam=1e-4, reduction="none"), d.max(-1).values, rtol=0, atol=1e-3)
    torch.testing.assert_close(LF.ldr_kl_loss(x, t, lam=1e6, reduction="none"), d.mean(-1), rtol=0, atol=1e-4)


def test_ldr_kl_logit_transform_is_reference_rescaling():
    x, t, _ = _data(seed=10, ignore=False)
    scaled = x / x.abs().mean(-1, keepdim=True)
    torch.testing.assert_close(LF.ldr_kl_loss(x, t, logit_transform="normalize"), LF.ldr_kl_loss(scaled, t))
    sp = TF.softplus(x)
    torch.testing.assert_close(LF.ldr_kl_loss(x, t, logit_transform="softplus_normalize"),
                               LF.ldr_kl_loss(sp / sp.abs().mean(-1, keepdim=True), t))
    with pytest.raises(ValueError, match="logit_transform"):
        LF.ldr_kl_loss(x, t, logit_transform="l2")


def _aldr_update_loop(x, lam, lam0, alpha):
    out = []
    for row, l in zip(x.tolist(), lam.tolist()):
        k = len(row)
        m = max(v / l for v in row)
        z = sum(math.exp(v / l - m) for v in row)
        p = [math.exp(v / l - m) / z for v in row]
        kl = sum(pi * math.log(k * pi) for pi in p if pi > 0)
        out.append(lam0 - lam0 * kl / (alpha * math.log(k)))
    return out


def test_aldr_update_and_loss_match_loop():
    x, t, g = _data(seed=11, ignore=False)
    lam = torch.rand(11, generator=g, dtype=F64) * 5 + 5
    new = LF.aldr_kl_update(x, lam, lam0=10.0, alpha=2.0)
    np.testing.assert_allclose(new.numpy(), _aldr_update_loop(x, lam, 10.0, 2.0), rtol=1e-10)
    ref = [v - (2 * math.log(5) / 20.0) * (l - 10.0) ** 2 for v, l in
           zip([_ldr_loop(x[i:i + 1], t[i:i + 1], new[i].item(), 0.1)[0] for i in range(11)], new.tolist())]
    np.testing.assert_allclose(LF.aldr_kl_loss(x, t, new, reduction="none").numpy(), ref, rtol=1e-10)
    assert ((new >= 5.0 - 1e-12) & (new <= 10.0 + 1e-12)).all()  # [λ0 (1 - 1/α), λ0]


def test_aldr_bad_alpha():
    x, t, _ = _data(ignore=False)
    with pytest.raises(ValueError, match="alpha"):
        LF.aldr_kl_loss(x, t, torch.ones(11, dtype=F64), alpha=1.0)


# --------------------------------------------------------------------------- logit adjustment
def test_logit_adjusted_is_ce_on_adjusted_logits():
    x, t, g = _data(seed=12)
    prior = torch.rand(5, generator=g, dtype=F64) + 0.05
    for tau in (0.0, 1.0, 2.0):
        torch.testing.assert_close(
            LF.logit_adjusted_cross_entropy(x, t, prior=prior, tau=tau),
            TF.cross_entropy(x + tau * prior.log(), t), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="positive"):
        LF.logit_adjusted_cross_entropy(x, t, prior=torch.zeros(5, dtype=F64))
    with pytest.raises(ValueError, match=r"prior must have shape \(5,\)"):
        LF.logit_adjusted_cross_entropy(x, t, prior=torch.ones(4, dtype=F64))


# --------------------------------------------------------------------------- AnyLoss
def test_anyloss_equals_exact_metrics_on_hard_predictions():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(13)
    y = torch.randint(0, 2, (40,), generator=g)
    pred = torch.randint(0, 2, (40,), generator=g)
    p = pred.double()
    yn, pn = y.numpy(), pred.numpy()
    tpr = metrics.recall_score(yn, pn)
    tnr = metrics.recall_score(1 - yn, 1 - pn)
    exact = {
        "accuracy": metrics.accuracy_score(yn, pn),
        "f1": metrics.f1_score(yn, pn),
        "fbeta": metrics.fbeta_score(yn, pn, beta=2.0),
        "balanced_accuracy": metrics.balanced_accuracy_score(yn, pn),
        "gmean": math.sqrt(tpr * tnr),
    }
    for name, value in exact.items():
        # A(0) = σ(−36.5) ≈ 1.4e-16 and 1 − A(1) alike: equal to ~1e-14.
        np.testing.assert_allclose(1 - LF.anyloss(p, y, metric=name, beta=2.0).item(), value, atol=1e-12)


def test_anyloss_multiclass_macro_f1():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(14)
    y = torch.randint(0, 4, (50,), generator=g)
    pred = torch.randint(0, 4, (50,), generator=g)
    probs = TF.one_hot(pred, 4).double()
    np.testing.assert_allclose(1 - LF.anyloss(probs, y, metric="f1").item(),
                               metrics.f1_score(y.numpy(), pred.numpy(), average="macro"), atol=1e-12)


def test_anyloss_keeps_gradient_where_float32_sigmoid_saturates():
    """sigmoid(73 (0.9 − 0.5)) is exactly 1 in float32 (zero gradient); computed in float64 it is not."""
    assert torch.sigmoid(torch.tensor(73 * 0.4, requires_grad=True)).item() == 1.0
    p = torch.tensor([0.9, 0.95, 0.1], dtype=torch.float32, requires_grad=True)
    out = LF.anyloss(p, torch.tensor([1, 0, 1]), metric="f1")
    assert out.dtype == torch.float32
    out.backward()
    assert (p.grad[:2].abs() > 0).all()


def test_anyloss_bad_input():
    with pytest.raises(ValueError, match="probabilities"):
        LF.anyloss(torch.tensor([1.5, 0.2]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="metric"):
        LF.anyloss(torch.tensor([0.5, 0.2]), torch.tensor([1, 0]), metric="auc")


# --------------------------------------------------------------------------- normalized softmax
def test_normalized_softmax_matches_pytorch_metric_learning():
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    g = torch.Generator().manual_seed(15)
    emb = torch.randn(16, 8, generator=g)
    labels = torch.randint(0, 4, (16,), generator=g)
    peer = pml.NormalizedSoftmaxLoss(num_classes=4, embedding_size=8, temperature=0.05)
    proxies = peer.W.detach().T.clone()  # PML stores W as (embedding_size, num_classes)
    torch.testing.assert_close(LF.normalized_softmax_loss(emb, labels, proxies, temperature=0.05),
                               peer(emb, labels), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- EnsLoss
@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.0, 0.5, -0.5]))
def test_ensloss_derivatives_convex_and_calibrated(seed, lam):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(64, generator=g, dtype=F64) * 3
    d = LF.ensloss_derivatives(s, boxcox_lambda=lam, generator=g)
    order = torch.argsort(s)
    assert (torch.diff(d[order]) >= 0).all(), "derivative must be non-decreasing in the margin (convex loss)"
    assert (d < 0).all() and (d >= -1 - 1e-6).all(), "derivative must be in [-1, 0): calibrated, clipped"


def test_ensloss_gradient_is_drawn_derivative_and_reproducible():
    x = torch.randn(12, dtype=F64, requires_grad=True)
    t = torch.randint(0, 2, (12,))
    LF.ensloss(x, t, seed=5, reduction="sum").backward()
    y = 2.0 * t.double() - 1
    expected = LF.ensloss_derivatives(x.detach() * y, generator=torch.Generator().manual_seed(5)) * y
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=0)
    torch.testing.assert_close(LF.ensloss(x, t, seed=5), LF.ensloss(x, t, seed=5), rtol=0, atol=0)
    with pytest.raises(ValueError, match="binary"):
        LF.ensloss(x, torch.full((12,), 2))
