"""Classification objectives against torch, explicit loops over the papers' formulas, and identities."""
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
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


def _status_loop(status, probs, target, floor):
    c = len(status)
    new = []
    for k in range(c):
        vals = [probs[i][k] for i in range(len(target)) if target[i] == k]
        new.append(sum(vals) / len(vals) if vals else status[k])
    m = max(new)
    return [max(v / m, floor) for v in new]


def test_adaptive_logit_adjusted_update_rule_against_loop():
    crit = LN.AdaptiveLogitAdjustedLoss(4, class_counts=torch.tensor([80, 40, 20, 10]))
    torch.testing.assert_close(crit.status, torch.tensor([1.0, 0.5, 0.25, 0.125]))
    g = torch.Generator().manual_seed(13)
    status = crit.status.tolist()
    for epoch in range(3):
        probs = torch.softmax(torch.randn(12, 4, generator=g) * 2, -1)
        target = torch.randint(0, 3, (12,), generator=g)  # class 3 never appears: keeps its value
        crit.update(probs, target)
        status = _status_loop(status, probs.double().tolist(), target.tolist(), 1e-4)
        np.testing.assert_allclose(crit.status.numpy(), status, rtol=1e-6)
        assert crit.status.max().item() == 1.0
    x, t = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 3, -100, 1])
    torch.testing.assert_close(crit(x, t), LF.logit_adjusted_cross_entropy(x, t, prior=crit.status))
    none = LN.AdaptiveLogitAdjustedLoss(4, tau=0.5, reduction="none")
    torch.testing.assert_close(none(x, t), LF.cross_entropy(x, t, reduction="none"))  # all-ones status: plain CE
    # floor: a class predicted with probability 0 keeps log b finite
    crit.update(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]), torch.tensor([0, 1]))
    assert crit.status[1].item() == pytest.approx(1e-4)
    assert torch.isfinite(crit(x, t))


def test_adaptive_logit_adjusted_state_dict_round_trip_continues_identically():
    g = torch.Generator().manual_seed(14)
    a = LN.AdaptiveLogitAdjustedLoss(3, class_counts=torch.tensor([5.0, 3.0, 1.0]), tau=1.5)
    a.update(torch.softmax(torch.randn(9, 3, generator=g), -1), torch.randint(0, 3, (9,), generator=g))
    b = LN.AdaptiveLogitAdjustedLoss(3, tau=1.5)
    b.load_state_dict(a.state_dict())
    assert "status" in a.state_dict()
    for _ in range(2):
        x, t = torch.randn(5, 3, generator=g), torch.randint(0, 3, (5,), generator=g)
        assert torch.equal(a(x, t), b(x, t))
        probs, vt = torch.softmax(torch.randn(9, 3, generator=g), -1), torch.randint(0, 3, (9,), generator=g)
        a.update(probs, vt)
        b.update(probs, vt)
        assert torch.equal(a.status, b.status)
    b.set_class_counts(torch.tensor([2.0, 4.0, 1.0]))
    torch.testing.assert_close(b.status, torch.tensor([0.5, 1.0, 0.25]))


def test_adaptive_logit_adjusted_bad_input():
    with pytest.raises(ValueError, match="num_classes"):
        LN.AdaptiveLogitAdjustedLoss(1)
    with pytest.raises(ValueError, match="class_counts"):
        LN.AdaptiveLogitAdjustedLoss(3, class_counts=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="class_counts"):
        LN.AdaptiveLogitAdjustedLoss(3, class_counts=torch.tensor([1.0, -2.0, 1.0]))
    with pytest.raises(ValueError, match="reduction"):
        LN.AdaptiveLogitAdjustedLoss(3, reduction="avg")
    crit = LN.AdaptiveLogitAdjustedLoss(3)
    with pytest.raises(ValueError, match=r"probs must have shape \(N, 3\)"):
        crit.update(torch.rand(4, 2), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="class index 3"):
        crit.update(torch.full((2, 3), 1 / 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="target must have shape"):
        crit.update(torch.full((2, 3), 1 / 3), torch.tensor([0]))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _adaptive_rank(rank, world, port, probs, target, sizes, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        crit = LN.AdaptiveLogitAdjustedLoss(3, class_counts=torch.tensor([3.0, 2.0, 1.0]))
        lo = sum(sizes[:rank])
        crit.update(probs[lo:lo + sizes[rank]], target[lo:lo + sizes[rank]])
        out[rank] = crit.status.clone()
    finally:
        dist.destroy_process_group()


def test_adaptive_logit_adjusted_update_identical_across_ranks():
    """2 gloo ranks with uneven validation shards (5 + 2) end with the single-process status."""
    g = torch.Generator().manual_seed(15)
    probs = torch.softmax(torch.randn(7, 3, generator=g), -1)
    target = torch.tensor([0, 0, 1, 0, 1, 1, 0])  # class 2 absent everywhere, class 1 split over ranks
    single = LN.AdaptiveLogitAdjustedLoss(3, class_counts=torch.tensor([3.0, 2.0, 1.0]))
    single.update(probs, target)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_adaptive_rank, args=(2, _free_port(), probs, target, [5, 2], out), nprocs=2, join=True,
                           start_method="spawn")
        states = [out[0], out[1]]
    assert torch.equal(states[0], states[1])
    torch.testing.assert_close(states[0], single.status, rtol=0, atol=1e-7)


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


def test_aldr_bad_alpha():
    x, t, _ = _data(ignore=False)
    with pytest.raises(ValueError, match="alpha"):
        LF.aldr_kl_loss(x, t, torch.ones(11, dtype=F64), alpha=1.0)


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
