"""LDR-KL and ALDR-KL against explicit loops over the formulas of Zhu, Ying & Yang (ICML 2023)."""
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


def _data(n=11, c=5, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=F64) * scale
    t = torch.randint(0, c, (n,), generator=g)
    return x, t, g


# --------------------------------------------------------------------------- loops (the paper's formulas)
def _margins_loop(row, y, margin):
    return [(margin if k != y else 0.0) + row[k] - row[y] for k in range(len(row))]


def _ldr_row(d, lam):
    """lam * log((1/K) sum exp(d/lam)), shifted by max for the loop's own safety."""
    m = max(d)
    return m + lam * math.log(sum(math.exp((v - m) / lam) for v in d) / len(d))


def _ldr_loop(x, t, lam, margin):
    return [_ldr_row(_margins_loop(row, y, margin), lam) for row, y in zip(x.tolist(), t.tolist())]


def _kl_uniform(row, lam):
    k = len(row)
    m = max(v / lam for v in row)
    z = sum(math.exp(v / lam - m) for v in row)
    p = [math.exp(v / lam - m) / z for v in row]
    return sum(pi * math.log(k * pi) for pi in p if pi > 0)


def _update_loop(x, lam, lam0, alpha):
    k = x.shape[-1]
    return [lam0 - lam0 * _kl_uniform(row, l) / (alpha * math.log(k)) for row, l in zip(x.tolist(), lam.tolist())]


def _aldr_objective(row, y, lam, lam0, alpha, margin):
    k = len(row)
    return _ldr_row(_margins_loop(row, y, margin), lam) - alpha * math.log(k) / (2 * lam0) * (lam - lam0) ** 2


# --------------------------------------------------------------------------- LDR-KL
@pytest.mark.parametrize("lam,margin", [(1.0, 1.0), (0.3, 0.5), (10.0, 0.1), (2.0, 0.0)])
def test_ldr_kl_matches_loop(lam, margin):
    x, t, _ = _data(seed=8)
    out = LF.ldr_kl_loss(x, t, lam=lam, margin=margin, reduction="none")
    np.testing.assert_allclose(out.numpy(), _ldr_loop(x, t, lam, margin), rtol=1e-12, atol=1e-12)


def test_ldr_kl_leading_dims_and_ignore_index():
    x, t, _ = _data(n=12, seed=1)
    t[[2, 7]] = -100
    out = LF.ldr_kl_loss(x.reshape(3, 4, 5), t.reshape(3, 4), reduction="none")
    assert out.shape == (3, 4)
    keep = t != -100
    ref = _ldr_loop(x[keep], t[keep], 1.0, 1.0)
    np.testing.assert_allclose(out.reshape(-1)[keep].numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(LF.ldr_kl_loss(x, t).item(), np.mean(ref), rtol=1e-12)


def test_ldr_kl_without_margin_at_unit_lambda_is_cross_entropy_minus_log_k():
    x, t, _ = _data(seed=2)
    torch.testing.assert_close(LF.ldr_kl_loss(x, t, lam=1.0, margin=0.0, reduction="none"),
                               TF.cross_entropy(x, t, reduction="none") - math.log(5), rtol=1e-12, atol=1e-12)


def test_ldr_kl_limits():
    """lam -> 0: the top-1 margin hinge max_k d_k; lam -> inf: the mean of d_k (the paper's Sec. 3 special cases)."""
    x, t, _ = _data(seed=9)
    d = x - x.gather(-1, t.unsqueeze(-1)) + 1.0
    d = d.scatter(-1, t.unsqueeze(-1), 0.0)
    # |loss - max d| <= lam log K at lam = 1e-4: ~1.6e-4.
    torch.testing.assert_close(LF.ldr_kl_loss(x, t, lam=1e-4, reduction="none"), d.max(-1).values, rtol=0, atol=2e-4)
    # lam log mean exp(d/lam) = mean d + var(d)/(2 lam) + O(lam^-2): at lam = 1e6 the gap is < 1e-4.
    torch.testing.assert_close(LF.ldr_kl_loss(x, t, lam=1e6, reduction="none"), d.mean(-1), rtol=0, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 20.0))
def test_ldr_kl_between_mean_and_max_and_monotone_in_lambda(seed, lam):
    """The KL-regularized max lies between the uniform-weight value (mean d) and the worst case (max d)."""
    x, t, _ = _data(seed=seed)
    d = (x - x.gather(-1, t.unsqueeze(-1)) + 1.0).scatter(-1, t.unsqueeze(-1), 0.0)
    v = LF.ldr_kl_loss(x, t, lam=lam, reduction="none")
    assert (v >= d.mean(-1) - 1e-12).all() and (v <= d.max(-1).values + 1e-12).all()
    assert (LF.ldr_kl_loss(x, t, lam=lam * 1.5, reduction="none") <= v + 1e-12).all()


def test_ldr_kl_logit_transform_is_reference_rescaling():
    x, t, _ = _data(seed=10)
    scaled = x / x.abs().mean(-1, keepdim=True)
    torch.testing.assert_close(LF.ldr_kl_loss(x, t, logit_transform="normalize"), LF.ldr_kl_loss(scaled, t))
    sp = TF.softplus(x)
    torch.testing.assert_close(LF.ldr_kl_loss(x, t, logit_transform="softplus_normalize"),
                               LF.ldr_kl_loss(sp / sp.mean(-1, keepdim=True), t))
    # "normalize" makes the loss invariant to a positive rescaling of the logits.
    torch.testing.assert_close(LF.ldr_kl_loss(x * 37.0, t, logit_transform="normalize"),
                               LF.ldr_kl_loss(x, t, logit_transform="normalize"))
    zero = LF.ldr_kl_loss(torch.zeros(2, 3, requires_grad=True), torch.tensor([0, 1]), logit_transform="normalize")
    assert torch.isfinite(zero)


def test_ldr_kl_bad_input():
    x, t, _ = _data()
    with pytest.raises(ValueError, match="logit_transform"):
        LF.ldr_kl_loss(x, t, logit_transform="l2")
    with pytest.raises(ValueError, match="lam"):
        LF.ldr_kl_loss(x, t, lam=0.0)
    with pytest.raises(ValueError, match="margin"):
        LF.ldr_kl_loss(x, t, margin=-1.0)
    with pytest.raises(ValueError, match="class index 5"):
        LF.ldr_kl_loss(x, torch.full((11,), 5))
    with pytest.raises(ValueError, match="target"):
        LF.ldr_kl_loss(x, t[:-1])


# --------------------------------------------------------------------------- ALDR-KL
@pytest.mark.parametrize("lam0,alpha", [(10.0, 2.0), (1.0, 1.5), (3.0, 5.0)])
def test_aldr_update_matches_loop_and_stays_in_range(lam0, alpha):
    x, t, g = _data(seed=11, scale=4.0)
    lam = torch.rand(11, generator=g, dtype=F64) * lam0 + 0.5
    new = LF.aldr_kl_update(x, lam, lam0=lam0, alpha=alpha)
    np.testing.assert_allclose(new.numpy(), _update_loop(x, lam, lam0, alpha), rtol=1e-12)
    assert ((new >= lam0 * (1 - 1 / alpha)) & (new <= lam0)).all()


def test_aldr_update_extremes():
    """Uniform prediction: KL = 0, lambda = lam0. A one-hot prediction: KL = log K, lambda = lam0 (1 - 1/alpha)."""
    x = torch.tensor([[3.0, 3.0, 3.0, 3.0], [1e4, -1e4, -1e4, -1e4], [0.0, -math.inf, -math.inf, -math.inf]])
    new = LF.aldr_kl_update(x, torch.full((3,), 10.0), lam0=10.0, alpha=2.0)
    torch.testing.assert_close(new, torch.tensor([10.0, 5.0, 5.0]), rtol=0, atol=1e-6)


def test_aldr_loss_is_objective_at_updated_lambda():
    x, t, g = _data(seed=12)
    lam = torch.rand(11, generator=g, dtype=F64) * 5 + 5
    new = _update_loop(x, lam, 10.0, 2.0)
    ref = [_aldr_objective(row, y, l, 10.0, 2.0, 0.1) for row, y, l in zip(x.tolist(), t.tolist(), new)]
    out = LF.aldr_kl_loss(x, t, lam, lam0=10.0, alpha=2.0, margin=0.1, reduction="none")
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-12)
    # No gradient flows into lam, and lam is not modified.
    lam_leaf = lam.clone().requires_grad_(True)
    LF.aldr_kl_loss(x.clone().requires_grad_(True), t, lam_leaf).backward()
    assert lam_leaf.grad is None
    torch.testing.assert_close(lam_leaf.detach(), lam, rtol=0, atol=0)


def test_aldr_gradient_is_ldr_gradient_at_fixed_updated_lambda():
    """The defined gradient holds lambda at its updated value (stop-gradient); checked by central differences."""
    x, t, g = _data(n=4, seed=13)
    lam = torch.rand(4, generator=g, dtype=F64) * 5 + 5
    new = _update_loop(x, lam, 10.0, 2.0)
    xl = x.clone().requires_grad_(True)
    LF.aldr_kl_loss(xl, t, lam, reduction="sum").backward()
    h = 1e-6
    fd = torch.zeros_like(x)
    for i in range(4):
        for k in range(5):
            xp, xm = x[i].tolist(), x[i].tolist()
            xp[k] += h
            xm[k] -= h
            fd[i, k] = (_aldr_objective(xp, int(t[i]), new[i], 10.0, 2.0, 0.1)
                        - _aldr_objective(xm, int(t[i]), new[i], 10.0, 2.0, 0.1)) / (2 * h)
    torch.testing.assert_close(xl.grad, fd, rtol=1e-6, atol=1e-8)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(1.1, 5.0))
def test_aldr_fixed_point_of_update_maximizes_lambda_objective(seed, alpha):
    """Without margin, iterating the closed-form step converges to the maximizer over lambda of the
    penalized objective (d/dlam [lam log mean exp(d/lam)] = -KL): the penalty weight alpha log K / (2 lam0)
    and the update rule belong together."""
    x, t, _ = _data(n=3, seed=seed, scale=3.0)
    lam = torch.full((3,), 10.0, dtype=F64)
    with losslab.validation(False):
        for _ in range(500):
            prev, lam = lam, LF.aldr_kl_update(x, lam, lam0=10.0, alpha=alpha)
            if float((lam - prev).abs().max()) < 1e-14:
                break
    for i in range(3):
        row, y, l = x[i].tolist(), int(t[i]), float(lam[i])
        best = _aldr_objective(row, y, l, 10.0, alpha, 0.0)
        for step in (-1e-3, 1e-3, -0.1, 0.1):
            assert best >= _aldr_objective(row, y, l + step, 10.0, alpha, 0.0) - 1e-12


def test_aldr_logit_transform_and_ignore_index():
    x, t, g = _data(seed=14)
    lam = torch.rand(11, generator=g, dtype=F64) * 5 + 5
    scaled = x / x.abs().mean(-1, keepdim=True)
    torch.testing.assert_close(LF.aldr_kl_loss(x, t, lam, logit_transform="normalize", reduction="none"),
                               LF.aldr_kl_loss(scaled, t, lam, reduction="none"))
    torch.testing.assert_close(LF.aldr_kl_update(x, lam, logit_transform="normalize"), LF.aldr_kl_update(scaled, lam))
    t2 = t.clone()
    t2[[0, 3]] = -100
    keep = t2 != -100
    full = LF.aldr_kl_loss(x, t, lam, reduction="none")
    out = LF.aldr_kl_loss(x, t2, lam, reduction="none")
    torch.testing.assert_close(out[keep], full[keep])
    torch.testing.assert_close(LF.aldr_kl_loss(x, t2, lam), full[keep].mean())


def test_aldr_bad_input():
    x, t, _ = _data()
    lam = torch.full((11,), 5.0, dtype=F64)
    with pytest.raises(ValueError, match="alpha"):
        LF.aldr_kl_loss(x, t, lam, alpha=1.0)
    with pytest.raises(ValueError, match="lam0"):
        LF.aldr_kl_loss(x, t, lam, lam0=0.0)
    with pytest.raises(ValueError, match="positive"):
        LF.aldr_kl_loss(x, t, torch.zeros(11, dtype=F64))
    with pytest.raises(ValueError, match=r"lam must have shape \(11,\)"):
        LF.aldr_kl_loss(x, t, lam[:5])
    with pytest.raises(ValueError, match="2 classes"):
        LF.aldr_kl_loss(x[:, :1], torch.zeros(11, dtype=torch.long), lam)
    with pytest.raises(ValueError, match="logits"):
        LF.aldr_kl_loss(x.reshape(11, 5, 1), t, lam)
    with pytest.raises(TypeError):
        LF.aldr_kl_loss(x, t, torch.ones(11, dtype=torch.long))
    with losslab.validation(False):  # the value check on lam is switchable
        LF.aldr_kl_loss(x, t, torch.ones(11, dtype=F64))


def test_registry_contract_for_the_noisy_label_experiment():
    """The experiment builds ``info("aldr_kl_loss").module(num_samples=N, **kw)`` and calls ``module(x, t, index)``."""
    info = losslab.info("aldr_kl_loss")
    assert info.properties["stateful_module"] is True and info.properties["needs_index"] is False
    crit = info.module(num_samples=20, lam0=10.0)
    x, t, _ = _data(n=4)
    loss = crit(x, t, torch.tensor([0, 5, 6, 19]))
    assert loss.dim() == 0 and torch.isfinite(loss)
