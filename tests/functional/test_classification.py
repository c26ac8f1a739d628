"""Classification objectives against torch, explicit loops over the papers' formulas, and identities.

The last sections hold the family-wide rules: integer targets of any dtype, the error
messages for float class indices and torch's (N, C, L) layout, the non-finite-input rule,
hyperparameters checked when a Module is built, and the search tags. LDR-KL/ALDR-KL and
AnyLoss/EnsLoss/normalized softmax have their own files; stateful Modules are in
tests/nn/test_stateful_classification.py.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

import losslab
from losslab import functional as LF
from losslab import nn as LN

F64 = torch.float64
EXACT = dict(rtol=1e-12, atol=1e-12)  # float64 against float64: round-off only


def _data(n=11, c=5, seed=0, ignore=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=F64) * 2
    t = torch.randint(0, c, (n,), generator=g)
    if ignore:
        t[::4] = -100
    return x, t, g


def _softmax_row(row):
    m = max(row)
    z = sum(math.exp(v - m) for v in row)
    return [math.exp(v - m) / z for v in row]


# --------------------------------------------------------------------------- cross_entropy
@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.15, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_torch_class_indices(use_weight, smoothing, reduction):
    x, t, g = _data()
    w = torch.rand(5, generator=g, dtype=F64) + 0.1 if use_weight else None
    for ignore_index in (-100, 2):  # the default, and a real class index used as the ignored one
        tt = t.clamp_min(0) if ignore_index != -100 else t
        ours = LF.cross_entropy(x, tt, weight=w, label_smoothing=smoothing, ignore_index=ignore_index, reduction=reduction)
        ref = TF.cross_entropy(x, tt, weight=w, label_smoothing=smoothing, ignore_index=ignore_index, reduction=reduction)
        torch.testing.assert_close(ours, ref, **EXACT)


@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_matches_torch_probability_targets(use_weight, smoothing):
    x, _, g = _data()
    p = torch.softmax(torch.randn(11, 5, generator=g, dtype=F64), -1)
    w = torch.rand(5, generator=g, dtype=F64) + 0.1 if use_weight else None
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(
            LF.cross_entropy(x, p, weight=w, label_smoothing=smoothing, reduction=reduction),
            TF.cross_entropy(x, p, weight=w, label_smoothing=smoothing, reduction=reduction), **EXACT)
    # one-hot probability targets give the class-index loss (torch's "mean" for both: / N)
    t = torch.randint(0, 5, (11,), generator=g)
    torch.testing.assert_close(LF.cross_entropy(x, TF.one_hot(t, 5).double(), label_smoothing=smoothing),
                               LF.cross_entropy(x, t, label_smoothing=smoothing), **EXACT)


@pytest.mark.parametrize("target_kind", ["index", "probs"])
def test_cross_entropy_gradients_match_torch(target_kind):
    x, t, g = _data()
    w = torch.rand(5, generator=g, dtype=F64) + 0.1
    target = t if target_kind == "index" else torch.softmax(torch.randn(11, 5, generator=g, dtype=F64), -1)
    for reduction in ("mean", "sum", "none"):
        a = x.clone().requires_grad_(True)
        b = x.clone().requires_grad_(True)
        up = torch.randn(11, generator=g, dtype=F64) if reduction == "none" else torch.tensor(1.7, dtype=F64)
        LF.cross_entropy(a, target, weight=w, label_smoothing=0.1, reduction=reduction).backward(up)
        TF.cross_entropy(b, target, weight=w, label_smoothing=0.1, reduction=reduction).backward(up)
        torch.testing.assert_close(a.grad, b.grad, **EXACT)


@pytest.mark.parametrize("target_kind", ["index", "probs"])
def test_cross_entropy_class_dimension_last_for_leading_dims(target_kind):
    """(*, C) with the class dimension last equals torch's (N, C, d1, ...) after moving it."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 6, generator=g, dtype=F64)
    w = torch.rand(6, generator=g, dtype=F64) + 0.1
    if target_kind == "index":
        target = torch.randint(0, 6, (2, 3, 4), generator=g)
        target[0, 1] = -100
        torch_target = target
    else:
        target = torch.softmax(torch.randn(2, 3, 4, 6, generator=g, dtype=F64), -1)
        torch_target = target.movedim(-1, 1)
    for reduction in ("mean", "sum", "none"):
        ours = LF.cross_entropy(x, target, weight=w, label_smoothing=0.1, reduction=reduction)
        ref = TF.cross_entropy(x.movedim(-1, 1), torch_target, weight=w, label_smoothing=0.1, reduction=reduction)
        if reduction == "none":
            assert ours.shape == (2, 3, 4)
        torch.testing.assert_close(ours, ref, **EXACT)


def test_cross_entropy_unbatched_and_empty():
    x = torch.tensor([1.0, -0.5, 2.0], dtype=F64)
    torch.testing.assert_close(LF.cross_entropy(x, torch.tensor(2)), TF.cross_entropy(x, torch.tensor(2)), **EXACT)
    p = torch.tensor([0.2, 0.3, 0.5], dtype=F64)
    torch.testing.assert_close(LF.cross_entropy(x, p), TF.cross_entropy(x, p), **EXACT)
    # an empty batch: 0 for "mean" (torch gives NaN), an empty "none"
    empty = torch.zeros(0, 3, requires_grad=True)
    assert LF.cross_entropy(empty, torch.zeros(0, dtype=torch.long)).item() == 0.0
    assert LF.cross_entropy(empty, torch.zeros(0, dtype=torch.long), reduction="none").shape == (0,)


@pytest.mark.parametrize("target_kind", ["index", "probs"])
@pytest.mark.parametrize("use_weight", [False, True])
def test_z_loss_and_softcap_against_hand_written_terms(target_kind, use_weight):
    """CE + z * w_y * lse(x~)^2 per kept sample (probability targets: unweighted z-term), x~ = c tanh(x / c)."""
    x, t, g = _data(seed=3)
    w = torch.rand(5, generator=g, dtype=F64) + 0.1 if use_weight else None
    keep = t != -100
    target = t if target_kind == "index" else torch.softmax(torch.randn(11, 5, generator=g, dtype=F64), -1)
    for cap in (None, 3.0):
        xc = x if cap is None else cap * torch.tanh(x / cap)
        lse = torch.logsumexp(xc, -1)
        ce = TF.cross_entropy(xc, target, weight=w, label_smoothing=0.1, reduction="none")
        if target_kind == "index":
            w_y = torch.ones(11, dtype=F64) if w is None else w[t.clamp_min(0)]
            z = 1e-3 * lse.square() * w_y * keep
            denom = (w_y * keep).sum()
        else:
            z = 1e-3 * lse.square()
            denom = torch.tensor(11.0, dtype=F64)
        kw = dict(weight=w, label_smoothing=0.1, z_loss=1e-3, softcap=cap)
        torch.testing.assert_close(LF.cross_entropy(x, target, reduction="none", **kw), ce + z, **EXACT)
        torch.testing.assert_close(LF.cross_entropy(x, target, reduction="sum", **kw), (ce + z).sum(), **EXACT)
        torch.testing.assert_close(LF.cross_entropy(x, target, **kw), (ce + z).sum() / denom, **EXACT)
        # gradients of the fused z-term equal autograd through the hand-written term
        a = x.clone().requires_grad_(True)
        b = x.clone().requires_grad_(True)
        LF.cross_entropy(a, target, **kw).backward()
        bc = b if cap is None else cap * torch.tanh(b / cap)
        ref = (TF.cross_entropy(bc, target, weight=w, label_smoothing=0.1, reduction="none")
               + (z / lse.square()) * torch.logsumexp(bc, -1).square()).sum() / denom
        ref.backward()
        torch.testing.assert_close(a.grad, b.grad, **EXACT)


def test_z_loss_function_against_loop():
    x, t, _ = _data(seed=4)
    ref = []
    for row, y in zip(x.tolist(), t.tolist()):
        capped = [5.0 * math.tanh(v / 5.0) for v in row]
        m = max(capped)
        lse = m + math.log(sum(math.exp(v - m) for v in capped))
        ref.append(lse ** 2 if y != -100 else 0.0)
    np.testing.assert_allclose(LF.z_loss(x, t, softcap=5.0, reduction="none").numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(LF.z_loss(x, t, softcap=5.0).item(), sum(ref) / (t != -100).sum().item(), rtol=1e-12)
    np.testing.assert_allclose(LF.z_loss(x).item(), np.mean([v ** 2 for v in torch.logsumexp(x, -1).tolist()]), rtol=1e-12)


@pytest.mark.parametrize("kw", [dict(), dict(z_loss=1e-4), dict(weight=torch.tensor([1.0, 2.0, 3.0])),
                                dict(label_smoothing=0.2, z_loss=1e-3)])
def test_all_ignored_gives_zero_with_zero_gradient(kw):
    x = torch.randn(4, 3, requires_grad=True)
    t = torch.full((4,), -100)
    out = LF.cross_entropy(x, t, **kw)
    assert out.item() == 0.0  # torch: NaN for "mean"
    out.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert LF.cross_entropy(x, t, reduction="sum", **kw).item() == 0.0
    assert torch.equal(LF.cross_entropy(x, t, reduction="none", **kw), torch.zeros(4))


def test_cross_entropy_bad_input():
    x = torch.randn(4, 3)
    t = torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"class index 3 outside \[0, 3\)"):
        LF.cross_entropy(x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"class index -1 outside \[0, 3\) or ignore_index=-100"):
        LF.cross_entropy(x, torch.tensor([0, 1, 2, -1]))
    with pytest.raises(ValueError, match="target must have shape"):
        LF.cross_entropy(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="target and logits must have the same shape"):
        LF.cross_entropy(x, torch.full((4, 4), 0.25))
    with pytest.raises(ValueError, match="label_smoothing"):
        LF.cross_entropy(x, t, label_smoothing=1.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        LF.cross_entropy(x, t, label_smoothing=-0.1)
    with pytest.raises(ValueError, match="z_loss"):
        LF.cross_entropy(x, t, z_loss=-1.0)
    with pytest.raises(ValueError, match="softcap"):
        LF.cross_entropy(x, t, softcap=0.0)
    with pytest.raises(ValueError, match="weight must have shape"):
        LF.cross_entropy(x, t, weight=torch.ones(4))
    with pytest.raises(ValueError, match="weight must be non-negative"):
        LF.cross_entropy(x, t, weight=torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="sum to 1"):
        LF.cross_entropy(x, torch.rand(4, 3) + 1)
    with pytest.raises(ValueError, match="reduction"):
        LF.cross_entropy(x, t, reduction="batchmean")
    with pytest.raises(ValueError, match="logits must have"):
        LF.cross_entropy(torch.tensor(1.0), torch.tensor(0))
    with pytest.raises(TypeError, match="logits must be a floating-point tensor"):
        LF.cross_entropy(torch.ones(4, 3, dtype=torch.long), t)
    with pytest.raises(TypeError, match="target must be an integer tensor"):
        LF.cross_entropy(x, torch.tensor([True, False, True, False]))
    # NaN logits are not scanned for (a full pass costing more than the loss); they are not
    # hidden either: the loss is NaN.
    assert torch.isnan(LF.cross_entropy(torch.full((2, 3), float("nan")), torch.tensor([0, 1])))


def test_cross_entropy_validation_off_skips_value_checks_only():
    x = torch.randn(4, 3)
    t = torch.tensor([0, 1, 2, 0])
    with losslab.validation(False):
        torch.testing.assert_close(LF.cross_entropy(x, t, z_loss=1e-3), LF.cross_entropy(x, t, z_loss=1e-3))
        with pytest.raises(ValueError, match="target must have shape"):  # shape checks always run
            LF.cross_entropy(x, torch.tensor([0, 1]))


def test_cross_entropy_low_precision_reads_half_and_returns_float32():
    """bfloat16/float16 logits: float32 loss and grads equal to torch on the same values in float32."""
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 7, (9,), generator=g)
    for dtype in (torch.bfloat16, torch.float16):
        x = (torch.randn(9, 7, generator=g) * 3).to(dtype)
        a = x.clone().requires_grad_(True)
        out = LF.cross_entropy(a, t, label_smoothing=0.1, z_loss=1e-3)
        assert out.dtype == torch.float32
        ref = TF.cross_entropy(x.float(), t, label_smoothing=0.1) + 1e-3 * torch.logsumexp(x.float(), -1).square().mean()
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
        out.backward()
        assert a.grad.dtype == dtype and torch.isfinite(a.grad.float()).all()


# --------------------------------------------------------------------------- focal
def _focal_loop(x, t, gamma, alpha=None):
    out = []
    for row, y in zip(x.tolist(), t.tolist()):
        if y == -100:
            continue
        p = _softmax_row(row)[y]
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
    none = LF.focal_loss(x, t, gamma=gamma, alpha=alpha, reduction="none")
    np.testing.assert_allclose(none[t != -100].numpy(), ref, rtol=1e-10)
    assert (none[t == -100] == 0).all()


def test_focal_class_weight_follows_torch_mean_rule():
    x, t, g = _data(seed=3)
    w = torch.rand(5, generator=g, dtype=F64) + 0.1
    torch.testing.assert_close(LF.focal_loss(x, t, gamma=0.0), LF.cross_entropy(x, t), **EXACT)
    torch.testing.assert_close(LF.focal_loss(x, t, gamma=0.0, weight=w), TF.cross_entropy(x, t, weight=w), **EXACT)
    ref = _focal_loop(x, t, 2.0, w.tolist())  # w_y * focal term; "mean" divides by sum of w_y
    kept_w = w[t[t != -100]]
    np.testing.assert_allclose(LF.focal_loss(x, t, gamma=2.0, weight=w).item(), np.sum(ref) / kept_w.sum().item(), rtol=1e-10)
    # alpha and weight combine multiplicatively; alpha leaves the denominator alone
    alpha = torch.rand(5, generator=g, dtype=F64) + 0.1
    ref2 = _focal_loop(x, t, 2.0, (alpha * w).tolist())
    np.testing.assert_allclose(LF.focal_loss(x, t, gamma=2.0, alpha=alpha, weight=w).item(),
                               np.sum(ref2) / kept_w.sum().item(), rtol=1e-10)


def test_focal_binary_case_is_torchvision_sigmoid_focal():
    """torchvision.ops.sigmoid_focal_loss's formula as a loop (torchvision is not a dependency).

    p = σ(s); ce = BCE-with-logits(s, y) = log(1 + e^{-|s|}) + max(s, 0) - s y;
    p_t = p y + (1 - p)(1 - y); loss = α_t ce (1 - p_t)^γ, α_t = α y + (1 - α)(1 - y).
    Softmax over [0, s] is [1 - σ(s), σ(s)], so focal_loss with alpha=[1 - α, α] is the same.
    """
    g = torch.Generator().manual_seed(4)
    s = torch.cat([torch.randn(9, generator=g, dtype=F64) * 3, torch.tensor([30.0, -30.0], dtype=F64)])
    y = torch.cat([torch.randint(0, 2, (9,), generator=g), torch.tensor([0, 1])])
    for a, gamma in ((0.25, 2.0), (0.5, 0.0), (0.75, 1.5)):
        ref = []
        for si, yi in zip(s.tolist(), y.tolist()):
            p = 1 / (1 + math.exp(-si))
            ce = math.log1p(math.exp(-abs(si))) + max(si, 0.0) - si * yi
            p_t = p * yi + (1 - p) * (1 - yi)
            a_t = a * yi + (1 - a) * (1 - yi)
            ref.append(a_t * ce * (1 - p_t) ** gamma)
        ours = LF.focal_loss(torch.stack([torch.zeros_like(s), s], -1), y, gamma=gamma,
                             alpha=torch.tensor([1 - a, a], dtype=F64), reduction="none")
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-9)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.1, 5.0))
def test_focal_bounded_by_cross_entropy_and_decreasing_in_gamma(seed, gamma):
    """(1 - p_y)^γ <= 1: focal <= CE per sample, and larger γ down-weights more (Lin et al.)."""
    x, t, _ = _data(seed=seed, ignore=False)
    ce = LF.cross_entropy(x, t, reduction="none")
    f1 = LF.focal_loss(x, t, gamma=gamma, reduction="none")
    f2 = LF.focal_loss(x, t, gamma=gamma + 1.0, reduction="none")
    assert (f1 >= 0).all() and (f1 <= ce * (1 + 1e-12)).all() and (f2 <= f1 * (1 + 1e-12)).all()


def test_focal_leading_dims_and_small_gamma_finite_gradient_at_certainty():
    x, t, _ = _data(n=12, seed=6)
    torch.testing.assert_close(LF.focal_loss(x.reshape(3, 4, 5), t.reshape(3, 4), reduction="none"),
                               LF.focal_loss(x, t, reduction="none").reshape(3, 4), **EXACT)
    for dtype in (torch.float32, F64):
        z = torch.tensor([[1e4, 0.0], [0.0, 1e4]], dtype=dtype, requires_grad=True)
        out = LF.focal_loss(z, torch.tensor([0, 0]), gamma=0.5)
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(z.grad).all()


def test_focal_bad_input():
    x = torch.randn(3, 4)
    t = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="gamma"):
        LF.focal_loss(x, t, gamma=-1.0)
    with pytest.raises(ValueError, match=r"alpha must have shape \(4,\)"):
        LF.focal_loss(x, t, alpha=torch.ones(3))
    with pytest.raises(ValueError, match=r"weight must have shape \(4,\)"):
        LF.focal_loss(x, t, weight=torch.ones(5))
    with pytest.raises(ValueError, match="class index 4"):
        LF.focal_loss(x, torch.tensor([0, 1, 4]))


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
    for tau in (0.5, 1.3, 2.5, 4.0):
        ref = []
        for row, y in zip(x.tolist(), t.tolist()):
            u = sum(math.exp(v - row[y]) for v in row)  # 1 + sum_{k != y} exp(h_k - h_y)
            ref.append((u ** (1 - tau) - 1) / (1 - tau))
        np.testing.assert_allclose(LF.comp_sum_loss(x, t, tau=tau, reduction="none").numpy(), ref, rtol=1e-10)
    # expm1 keeps Φ_τ continuous at τ = 1: |Φ_τ - log u| = O(|1 - τ| log² u)
    for eps in (1e-6, 1e-9, 1e-12):
        torch.testing.assert_close(LF.comp_sum_loss(x, t, tau=1 + eps), LF.comp_sum_loss(x, t, tau=1.0), rtol=10 * eps, atol=0)


def test_comp_sum_and_gce_weight_and_ignore_index():
    x, t, g = _data(seed=7)
    w = torch.rand(5, generator=g, dtype=F64) + 0.1
    torch.testing.assert_close(LF.comp_sum_loss(x, t, tau=1.0, weight=w), TF.cross_entropy(x, t, weight=w), **EXACT)
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(LF.generalized_cross_entropy(x, t, q=0.7, weight=w, reduction=reduction),
                                   LF.comp_sum_loss(x, t, tau=1.7, weight=w, reduction=reduction), rtol=1e-10, atol=1e-12)
    keep = t != -100
    p = _p_y(x, t)
    w_y = w[t.clamp_min(0)]
    expected = ((1 - p) * w_y)[keep].sum() / w_y[keep].sum()  # MAE, torch's weighted-mean rule
    torch.testing.assert_close(LF.comp_sum_loss(x, t, tau=2.0, weight=w), expected, rtol=1e-10, atol=1e-12)


def test_gce_bounded_and_gradients_finite_for_extreme_logits():
    x, t, _ = _data(ignore=False)
    with pytest.raises(ValueError, match="q must be in"):
        LF.generalized_cross_entropy(x, t, q=0.0)
    with pytest.raises(ValueError, match="q must be in"):
        LF.generalized_cross_entropy(x, t, q=1.5)
    with pytest.raises(ValueError, match="tau"):
        LF.comp_sum_loss(x, t, tau=-0.5)
    big = (x * 1e4).float().requires_grad_(True)
    out = LF.generalized_cross_entropy(big, t, q=0.5, reduction="none")
    assert (out <= 2.0).all() and (out >= 0).all()  # bounded by 1/q
    out.sum().backward()
    assert torch.isfinite(big.grad).all()



# --------------------------------------------------------------------------- spherical Z-loss
def _zloss_loop(x, t, a, b):
    out = []
    for row, y in zip(x.tolist(), t.tolist()):
        if y == -100:
            continue
        mu = sum(row) / len(row)
        sd = math.sqrt(sum((v - mu) ** 2 for v in row) / len(row))  # population std
        z = (row[y] - mu) / sd
        out.append(math.log1p(math.exp(a * (b - z))) / a)
    return out


@pytest.mark.parametrize("a,b", [(1.0, 2.0), (1.5, 2.5), (4.0, 0.5)])
def test_spherical_z_loss_matches_loop(a, b):
    x, t, g = _data(seed=6)
    ref = _zloss_loop(x, t, a, b)
    np.testing.assert_allclose(LF.spherical_z_loss(x, t, a=a, b=b).item(), np.mean(ref), rtol=1e-10)
    w = torch.rand(5, generator=g, dtype=F64) + 0.1
    w_y = w[t[t != -100]].numpy()
    np.testing.assert_allclose(LF.spherical_z_loss(x, t, a=a, b=b, weight=w).item(),
                               np.sum(np.array(ref) * w_y) / w_y.sum(), rtol=1e-10)
    torch.testing.assert_close(LF.spherical_z_loss(x.reshape(1, 11, 5), t.reshape(1, 11), a=a, b=b, reduction="none"),
                               LF.spherical_z_loss(x, t, a=a, b=b, reduction="none").reshape(1, 11), **EXACT)


@settings(max_examples=25, deadline=None)
@given(st.floats(-50, 50), st.floats(0.01, 100))
def test_spherical_z_loss_shift_and_scale_invariant(shift, scale):
    x, t, _ = _data(seed=7)
    torch.testing.assert_close(LF.spherical_z_loss(x * scale + shift, t), LF.spherical_z_loss(x, t), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_spherical_z_loss_equal_logits_finite(dtype):
    for fill in (0.0, 7.0):
        x = torch.full((3, 4), fill, dtype=dtype, requires_grad=True)
        out = LF.spherical_z_loss(x, torch.tensor([0, 1, 2]))
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(x.grad).all()
        np.testing.assert_allclose(out.item(), math.log1p(math.exp(2.0)), rtol=1e-6)  # z_y = 0, a=1, b=2


def test_spherical_z_loss_bad_input():
    x, t, _ = _data(ignore=False)
    with pytest.raises(ValueError, match="a must be"):
        LF.spherical_z_loss(x, t, a=0.0)
    with pytest.raises(TypeError, match="b must be a number"):
        LF.spherical_z_loss(x, t, b=torch.tensor(1.0))
    with pytest.raises(ValueError, match="at least 2 classes"):
        LF.spherical_z_loss(torch.randn(3, 1), torch.zeros(3, dtype=torch.long))


# --------------------------------------------------------------------------- logit adjustment
def test_logit_adjusted_is_ce_on_adjusted_logits():
    x, t, g = _data(seed=12)
    prior = torch.rand(5, generator=g, dtype=F64) + 0.05
    w = torch.rand(5, generator=g, dtype=F64) + 0.1
    for tau in (0.0, 1.0, 2.0):
        for reduction in ("mean", "sum", "none"):
            torch.testing.assert_close(
                LF.logit_adjusted_cross_entropy(x, t, prior=prior, tau=tau, weight=w, reduction=reduction),
                TF.cross_entropy(x + tau * prior.log(), t, weight=w, reduction=reduction), **EXACT)
    # the normalization of the prior cancels
    torch.testing.assert_close(LF.logit_adjusted_cross_entropy(x, t, prior=prior),
                               LF.logit_adjusted_cross_entropy(x, t, prior=prior / prior.sum()), **EXACT)
    with pytest.raises(ValueError, match="positive"):
        LF.logit_adjusted_cross_entropy(x, t, prior=torch.zeros(5, dtype=F64))
    with pytest.raises(ValueError, match=r"prior must have shape \(5,\)"):
        LF.logit_adjusted_cross_entropy(x, t, prior=torch.ones(4, dtype=F64))
    with pytest.raises(ValueError, match="tau"):
        LF.logit_adjusted_cross_entropy(x, t, prior=prior, tau=-1.0)


# --------------------------------------------------------------------------- family-wide: integer targets
PRIOR = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05], dtype=F64)

#: Every classification objective on (logits (N, C), class indices (N,)) with ignore_index,
#: called with hyperparameters that exercise its options.
LOGIT_OBJECTIVES = {
    "cross_entropy": lambda x, t, **kw: LF.cross_entropy(x, t, label_smoothing=0.1, z_loss=1e-3, **kw),
    "z_loss": lambda x, t, **kw: LF.z_loss(x, t, **kw),
    "focal_loss": lambda x, t, **kw: LF.focal_loss(x, t, gamma=2.0, **kw),
    "spherical_z_loss": lambda x, t, **kw: LF.spherical_z_loss(x, t, **kw),
    "logit_adjusted_cross_entropy": lambda x, t, **kw: LF.logit_adjusted_cross_entropy(
        x, t, prior=PRIOR[: x.shape[-1]].to(x.dtype), **kw),
    "comp_sum_loss": lambda x, t, **kw: LF.comp_sum_loss(x, t, tau=1.5, **kw),
    "generalized_cross_entropy": lambda x, t, **kw: LF.generalized_cross_entropy(x, t, **kw),
    "ldr_kl_loss": lambda x, t, **kw: LF.ldr_kl_loss(x, t, **kw),
    "aldr_kl_loss": lambda x, t, **kw: LF.aldr_kl_loss(x, t, torch.full(x.shape[:-1], 5.0, dtype=x.dtype), **kw),
}
#: The other classification objectives, each with its own target convention.
OTHER_OBJECTIVES = {
    # labels index the rows of the proxies (C = 5 of them).
    "normalized_softmax_loss": lambda x, t, **kw: LF.normalized_softmax_loss(
        x, t, torch.linspace(-1, 1, 5 * x.shape[-1], dtype=x.dtype).reshape(5, -1).sin(), **kw),
    "anyloss": lambda x, t, **kw: LF.anyloss(torch.softmax(x, -1), t, metric="f1", **kw),  # multi-class
    "ensloss": lambda x, t, **kw: LF.ensloss(x[:, 0], t.clamp_max(1), seed=0, **kw),  # binary 0/1
}
INT_DTYPES = [torch.int32, torch.int16, torch.uint8, torch.int8]


def test_every_classification_objective_is_covered_by_the_family_wide_tests():
    assert set(LOGIT_OBJECTIVES) | set(OTHER_OBJECTIVES) == set(losslab.list_losses(family="classification"))


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("name", [*LOGIT_OBJECTIVES, *OTHER_OBJECTIVES])
def test_integer_target_of_any_dtype_gives_the_int64_result(name, dtype):
    """Regression: cross_entropy and logit_adjusted_cross_entropy crashed on int32 targets with a raw aten
    error (nll_loss), the gather-based losses on uint8/int16. Every objective now converts once."""
    fn = {**LOGIT_OBJECTIVES, **OTHER_OBJECTIVES}[name]
    x, t, _ = _data(n=8, c=5, seed=21, ignore=False)
    for reduction in ("mean", "none") if name != "anyloss" else ((),):
        kw = {} if name == "anyloss" else {"reduction": reduction}
        ref = fn(x, t, **kw)
        torch.testing.assert_close(fn(x, t.to(dtype), **kw), ref, rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in LOGIT_OBJECTIVES if n != "z_loss"])
def test_int32_target_with_ignore_index_and_gradients(name):
    fn = LOGIT_OBJECTIVES[name]
    x, t, _ = _data(n=9, c=5, seed=22)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    fn(a, t).backward()
    fn(b, t.to(torch.int32)).backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0)


def test_out_of_range_index_in_a_small_integer_dtype_is_reported():
    x = torch.randn(3, 5)
    with pytest.raises(ValueError, match=r"class index 200 outside \[0, 5\)"):
        LF.focal_loss(x, torch.tensor([0, 200, 1], dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"class index 7 outside \[0, 5\) or ignore_index=-100"):
        LF.cross_entropy(x, torch.tensor([0, 7, -100], dtype=torch.int16))
    with pytest.raises(TypeError, match="target must be an integer tensor"):
        LF.generalized_cross_entropy(x, torch.tensor([True, False, True]))


# --------------------------------------------------------------------------- family-wide: error messages
FLOAT_INDEX_MESSAGE = r"class indices must be integers \(got dtype torch.float\d+\); probability targets have the"


@pytest.mark.parametrize("name", list(LOGIT_OBJECTIVES))
def test_float_class_indices_get_the_integer_message(name):
    x, t, _ = _data(n=6, c=5, seed=23, ignore=False)
    with pytest.raises(TypeError, match=FLOAT_INDEX_MESSAGE + r" logits' shape \(6, 5\)"):
        LOGIT_OBJECTIVES[name](x, t.double())


def test_float_labels_of_the_other_objectives_get_the_integer_message():
    x, t, _ = _data(n=6, c=5, seed=24, ignore=False)
    with pytest.raises(TypeError, match=r"labels: class indices must be integers .*embeddings @ proxies.T"):
        OTHER_OBJECTIVES["normalized_softmax_loss"](x, t.double())
    with pytest.raises(TypeError, match=FLOAT_INDEX_MESSAGE + r" probs' shape \(6, 5\)"):
        LF.anyloss(torch.softmax(x, -1), t.double())
    with pytest.raises(TypeError, match=r"target: binary labels must be integers 0/1 \(got dtype torch.float64\)"):
        LF.anyloss(torch.sigmoid(x[:, 0]), (t % 2).double())
    with pytest.raises(TypeError, match=r"target: binary labels must be integers 0/1 \(got dtype torch.float32\)"):
        LF.ensloss(x[:, 0], torch.ones(6))


@pytest.mark.parametrize("name", [n for n in LOGIT_OBJECTIVES if n != "aldr_kl_loss"])
def test_torch_class_second_layout_gets_the_class_last_hint(name):
    """logits (N, C, L) with target (N, L), as torch's F.cross_entropy takes them: the message says what to do."""
    g = torch.Generator().manual_seed(25)
    x = torch.randn(2, 5, 7, generator=g, dtype=F64)
    t = torch.randint(0, 5, (2, 7), generator=g)
    with pytest.raises(ValueError, match=r"target must have shape \(2, 5\) .* got \(2, 7\); losslab puts the class "
                                         r"dimension last .*logits.movedim\(1, -1\)"):
        LOGIT_OBJECTIVES[name](x, t)
    # ... and doing what it says gives the per-position loss.
    out = LOGIT_OBJECTIVES[name](x.movedim(1, -1), t, reduction="none")
    assert out.shape == (2, 7)


def test_aldr_rejects_torch_layout_with_the_logits_dimension_message():
    with pytest.raises(ValueError, match="logits must have 2 dimensions"):
        LF.aldr_kl_loss(torch.randn(2, 5, 7), torch.zeros(2, 7, dtype=torch.long), torch.ones(2))


# --------------------------------------------------------------------------- family-wide: non-finite inputs
#: +inf in a counted logit: NaN from the log-softmax (or the z-normalization); z_loss gives the
#: exact +inf, LDR-KL +inf for a non-target class (the margin d_k = +inf) -- non-finite either way.
NAN_FOR_INF = {"cross_entropy", "focal_loss", "spherical_z_loss", "logit_adjusted_cross_entropy", "comp_sum_loss",
               "generalized_cross_entropy"}


@pytest.mark.parametrize("name", list(LOGIT_OBJECTIVES))
def test_nan_logit_of_a_kept_sample_gives_nan_and_an_ignored_one_does_not_count(name):
    fn = LOGIT_OBJECTIVES[name]
    x, t, _ = _data(n=6, c=5, seed=26, ignore=False)
    t[1] = -100
    bad = x.clone()
    bad[0, (int(t[0]) + 1) % 5] = math.nan  # a non-target class of a kept sample
    none = fn(bad, t, reduction="none")
    assert torch.isnan(none[0]) and torch.isfinite(none[1:]).all()
    assert torch.isnan(fn(bad, t)) and torch.isnan(fn(bad, t, reduction="sum"))
    bad = x.clone()
    bad[0, int(t[0])] = math.nan  # the target class
    assert torch.isnan(fn(bad, t))
    ignored = x.clone()
    ignored[1] = math.nan  # the ignored sample's row: not part of the loss
    torch.testing.assert_close(fn(ignored, t), fn(x, t), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(LOGIT_OBJECTIVES))
def test_plus_inf_logit_never_gives_a_finite_loss(name):
    fn = LOGIT_OBJECTIVES[name]
    x, t, _ = _data(n=6, c=5, seed=27, ignore=False)
    for k in (int(t[0]), (int(t[0]) + 1) % 5):  # the target class, another class
        bad = x.clone()
        bad[0, k] = math.inf
        none = fn(bad, t, reduction="none")
        assert not torch.isfinite(none[0]) and torch.isfinite(none[1:]).all()
        if name in NAN_FOR_INF:
            assert torch.isnan(none[0])


@pytest.mark.parametrize("name", [n for n in LOGIT_OBJECTIVES if n != "spherical_z_loss"])
def test_minus_inf_logits_are_zero_probability_classes(name):
    """-inf in non-target classes: finite loss and gradient, equal to the loss without those classes where
    the objective depends only on the softmax (CE, focal, GCE, comp-sum, logit adjustment)."""
    fn = LOGIT_OBJECTIVES[name]
    x, t, _ = _data(n=6, c=5, seed=28, ignore=False)
    x = x.clone()
    for i in range(6):
        x[i, (int(t[i]) + 2) % 5] = -math.inf
    xl = x.clone().requires_grad_(True)
    kw = {"label_smoothing": 0.0} if name == "cross_entropy" else {}
    out = (LF.cross_entropy(xl, t, z_loss=1e-3) if name == "cross_entropy" else fn(xl, t, **kw))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(xl.grad).all()
    if name in ("focal_loss", "comp_sum_loss", "generalized_cross_entropy"):
        p_y = torch.softmax(x, -1).gather(-1, t.unsqueeze(-1)).squeeze(-1)
        ref = {"focal_loss": -(1 - p_y) ** 2 * p_y.log(), "comp_sum_loss": ((1 / p_y) ** -0.5 - 1) / -0.5,
               "generalized_cross_entropy": (1 - p_y ** 0.7) / 0.7}[name]
        torch.testing.assert_close(fn(x, t, reduction="none"), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", [n for n in LOGIT_OBJECTIVES if n != "spherical_z_loss"])
def test_ignored_sample_with_minus_inf_logit_has_no_nan_gradient(name):
    """Regression (found by the property suite): an ignored sample is computed at a placeholder class 0 and
    masked; when class 0 has a -inf logit, focal_loss (and LDR-KL with a -inf placeholder) produced a NaN
    gradient (0 * inf in the backward pass) although the sample does not count."""
    x, t, _ = _data(n=4, c=3, seed=32, ignore=False)
    t[2] = -100
    x[2, 0] = -math.inf
    xl = x.clone().requires_grad_(True)
    out = LOGIT_OBJECTIVES[name](xl, t)
    out.backward()
    assert torch.isfinite(out) and not xl.grad.isnan().any()
    assert (xl.grad[2] == 0).all()


def test_spherical_z_loss_needs_finite_logits():
    """Documented: the z-normalization of a row holding -inf is NaN (the mean is -inf)."""
    x, t, _ = _data(n=3, c=4, seed=29, ignore=False)
    x[0, (int(t[0]) + 1) % 4] = -math.inf
    assert torch.isnan(LF.spherical_z_loss(x, t, reduction="none")[0])


# --------------------------------------------------------------------------- family-wide: hyperparameters at construction
BAD_MODULES = [
    (lambda: LN.CrossEntropyLoss(label_smoothing=1.5), ValueError, "label_smoothing"),
    (lambda: LN.CrossEntropyLoss(reduction="avg"), ValueError, "reduction"),
    (lambda: LN.CrossEntropyLoss(z_loss=-1.0), ValueError, "z_loss"),
    (lambda: LN.CrossEntropyLoss(softcap=0.0), ValueError, "softcap"),
    (lambda: LN.CrossEntropyLoss(weight=torch.ones(2, 3)), ValueError, "weight must be a 1-D tensor"),
    (lambda: LN.CrossEntropyLoss(weight=torch.tensor([1.0, -1.0])), ValueError, "weight must be non-negative"),
    (lambda: LN.CrossEntropyLoss(ignore_index=1.5), ValueError, "ignore_index"),
    (lambda: LN.ZLoss(softcap=-1.0), ValueError, "softcap"),
    (lambda: LN.ZLoss(reduction="batchmean"), ValueError, "reduction"),
    (lambda: LN.FocalLoss(gamma=-1.0), ValueError, "gamma"),
    (lambda: LN.FocalLoss(alpha=torch.ones(2, 2)), ValueError, "alpha must be a 1-D tensor"),
    (lambda: LN.FocalLoss(alpha=torch.tensor([1, 2])), TypeError, "alpha must be a floating-point tensor"),
    (lambda: LN.SphericalZLoss(a=0.0), ValueError, "a must be"),
    (lambda: LN.SphericalZLoss(b="2"), TypeError, "b must be a number"),
    (lambda: LN.SphericalZLoss(b=math.inf), ValueError, "b must be a finite number"),
    (lambda: LN.LogitAdjustedLoss(), TypeError, "needs prior"),
    (lambda: LN.LogitAdjustedLoss(prior=torch.tensor([0.5, 0.0])), ValueError, "prior must be positive"),
    (lambda: LN.LogitAdjustedLoss(prior=torch.tensor([0.5, math.nan])), ValueError, "prior must be positive"),
    (lambda: LN.LogitAdjustedLoss(prior=torch.ones(3), tau=-1.0), ValueError, "tau"),
    (lambda: LN.AdaptiveLogitAdjustedLoss(3, tau=-1.0), ValueError, "tau"),
    (lambda: LN.AdaptiveLogitAdjustedLoss(3, reduction="avg"), ValueError, "reduction"),
    (lambda: LN.CompSumLoss(), TypeError, "needs tau"),
    (lambda: LN.CompSumLoss(tau=-0.5), ValueError, "tau"),
    (lambda: LN.GeneralizedCrossEntropyLoss(q=0.0), ValueError, "q must be in"),
    (lambda: LN.GeneralizedCrossEntropyLoss(q=1.5), ValueError, "q must be in"),
    (lambda: LN.LDRKLLoss(lam=0.0), ValueError, "lam"),
    (lambda: LN.LDRKLLoss(margin=-1.0), ValueError, "margin"),
    (lambda: LN.LDRKLLoss(logit_transform="l2"), ValueError, "logit_transform"),
    (lambda: LN.AdaptiveLDRKLLoss(num_samples=5, margin=-0.1), ValueError, "margin"),
    (lambda: LN.AdaptiveLDRKLLoss(num_samples=5, alpha=1.0), ValueError, "alpha"),
    (lambda: LN.AdaptiveLDRKLLoss(num_samples=5, lam0=0.0), ValueError, "lam0"),
    (lambda: LN.AdaptiveLDRKLLoss(num_samples=5, logit_transform="l2"), ValueError, "logit_transform"),
    (lambda: LN.AdaptiveLDRKLLoss(num_samples=5, reduction="avg"), ValueError, "reduction"),
    (lambda: LN.AnyLoss(metric="auc"), ValueError, "metric"),
    (lambda: LN.AnyLoss(beta=0.0), ValueError, "beta"),
    (lambda: LN.AnyLoss(amplifier=-73.0), ValueError, "amplifier"),
    (lambda: LN.EnsLoss(boxcox_lambda=math.nan), ValueError, "boxcox_lambda"),
    (lambda: LN.EnsLoss(seed=1.5), TypeError, "seed"),
    (lambda: LN.EnsLoss(reduction="avg"), ValueError, "reduction"),
    (lambda: LN.NormalizedSoftmaxLoss(4, 8, temperature=0.0), ValueError, "temperature"),
    (lambda: LN.NormalizedSoftmaxLoss(4, 8, reduction="avg"), ValueError, "reduction"),
    (lambda: LN.NormalizedSoftmaxLoss(0, 8), ValueError, "num_classes"),
]


@pytest.mark.parametrize("build,exc,match", BAD_MODULES)
def test_bad_hyperparameters_fail_when_the_module_is_built(build, exc, match):
    """Regression: nn.CrossEntropyLoss(label_smoothing=1.5) and reduction="avg" were accepted and failed at
    the first batch."""
    with pytest.raises(exc, match=match):
        build()


def test_functions_run_the_same_hyperparameter_checks_at_call_time():
    x, t, _ = _data(n=4, c=3, ignore=False)
    for call, match in [
        (lambda: LF.focal_loss(x, t, alpha=torch.ones(1, 3, dtype=F64)), "alpha must be a 1-D tensor"),
        (lambda: LF.comp_sum_loss(x, t, tau=math.nan), "tau"),
        (lambda: LF.ldr_kl_loss(x, t, margin=math.inf), "margin must be a finite number"),
        (lambda: LF.aldr_kl_loss(x, t, torch.ones(4, dtype=F64), margin=-1.0), "margin"),
        (lambda: LF.spherical_z_loss(x, t, b=math.nan), "b must be a finite number"),
        (lambda: LF.ensloss(x[:, 0], t.clamp_max(1), boxcox_lambda=math.inf), "boxcox_lambda"),
    ]:
        with pytest.raises(ValueError, match=match):
            call()


def test_modules_take_per_class_constants_as_buffers_and_match_the_functions():
    x, t, g = _data(n=7, c=5, seed=30)
    w = torch.rand(5, generator=g, dtype=F64) + 0.1
    alpha = torch.rand(5, generator=g, dtype=F64) + 0.1
    focal = LN.FocalLoss(gamma=1.5, alpha=alpha, weight=w)
    assert {"alpha", "weight"} <= set(focal.state_dict())
    torch.testing.assert_close(focal(x, t), LF.focal_loss(x, t, gamma=1.5, alpha=alpha, weight=w), rtol=0, atol=0)
    la = LN.LogitAdjustedLoss(prior=PRIOR, tau=0.5, weight=w)
    assert "prior" in la.state_dict()
    torch.testing.assert_close(la(x, t), LF.logit_adjusted_cross_entropy(x, t, prior=PRIOR, tau=0.5, weight=w),
                               rtol=0, atol=0)


# --------------------------------------------------------------------------- family-wide: registry tags
def test_search_words_find_the_right_objectives():
    """list_losses("*noisy*") finds the noise-robust losses (comp-sum included: MAE is the best row of the
    README's noisy-labels table), "*long*" the long-tail ones; properties agree with the tags."""
    noisy = set(losslab.list_losses("*noisy*", family="classification"))
    assert {"generalized_cross_entropy", "comp_sum_loss", "ldr_kl_loss", "aldr_kl_loss"} <= noisy
    assert not {"cross_entropy", "focal_loss", "spherical_z_loss"} & noisy
    long_tail = set(losslab.list_losses("*long*tail*", family="classification"))
    assert {"logit_adjusted_cross_entropy", "focal_loss"} <= long_tail
    assert "anyloss" in losslab.list_losses("*imbalance*", family="classification")
    for name in losslab.list_losses(family="classification"):
        info = losslab.info(name)
        assert info.tags, f"{name} has no search tags"
        assert bool(info.properties.get("noise_robust")) == ("noisy labels" in info.tags), name
