"""Categorical divergences against SciPy, torch and loops over the definitions."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

from losslab import functional as LF
from losslab.functional.divergences import F_DIVERGENCES, f_divergence_generator as generator

scipy_special = pytest.importorskip("scipy.special")
scipy_distance = pytest.importorskip("scipy.spatial.distance")
F64 = torch.float64
NAMES = ["kl", "reverse_kl", "js", "alpha", "total_variation", "hellinger", "chi2", "jeffreys"]


def _pq(seed=0, n=6, c=7, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=F64) * scale, torch.randn(n, c, generator=g, dtype=F64) * scale


def _probs(x):
    return torch.softmax(x, -1).numpy()


def test_kl_matches_scipy_and_torch():
    a, b = _pq()
    p, q = _probs(a), _probs(b)
    ref = scipy_special.rel_entr(p, q).sum(-1)
    np.testing.assert_allclose(LF.kl_divergence(a, b, reduction="none").numpy(), ref, rtol=1e-12)
    torch_ref = TF.kl_div(torch.log_softmax(b, -1), torch.log_softmax(a, -1), log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(LF.kl_divergence(a, b, reduction="none"), torch_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(LF.kl_divergence(a, b).item(), ref.mean(), rtol=1e-12)


def test_js_matches_scipy_jensenshannon_squared():
    a, b = _pq(1)
    ref = scipy_distance.jensenshannon(_probs(a), _probs(b), axis=-1) ** 2
    np.testing.assert_allclose(LF.js_divergence(a, b, reduction="none").numpy(), ref, rtol=1e-10)


def _loop(fn_pair, a, b):
    return [fn_pair(p, q) for p, q in zip(_probs(a).tolist(), _probs(b).tolist())]


def test_generalized_js_alpha_tv_hellinger_chi2_match_loops():
    a, b = _pq(2)
    kl = lambda p, q: sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)
    for beta in (0.1, 0.5, 0.8):
        def gjs(p, q, beta=beta):
            m = [beta * pi + (1 - beta) * qi for pi, qi in zip(p, q)]
            return beta * kl(p, m) + (1 - beta) * kl(q, m)
        np.testing.assert_allclose(LF.generalized_js_divergence(a, b, beta=beta, reduction="none").numpy(),
                                   _loop(gjs, a, b), rtol=1e-10)
    for alpha in (-0.5, 0.3, 0.5, 2.0):
        amari = lambda p, q, al=alpha: (1 - sum(pi**al * qi ** (1 - al) for pi, qi in zip(p, q))) / (al * (1 - al))
        np.testing.assert_allclose(LF.alpha_divergence(a, b, alpha=alpha, reduction="none").numpy(),
                                   _loop(amari, a, b), rtol=1e-10)
    tv = lambda p, q: 0.5 * sum(abs(pi - qi) for pi, qi in zip(p, q))
    np.testing.assert_allclose(LF.total_variation(a, b, reduction="none").numpy(), _loop(tv, a, b), rtol=1e-10)
    h = lambda p, q: math.sqrt(0.5 * sum((math.sqrt(pi) - math.sqrt(qi)) ** 2 for pi, qi in zip(p, q)))
    np.testing.assert_allclose(LF.hellinger_distance(a, b, reduction="none").numpy(), _loop(h, a, b), rtol=1e-10)
    chi2 = lambda p, q: sum((pi - qi) ** 2 / qi for pi, qi in zip(p, q))
    np.testing.assert_allclose(LF.f_divergence(a, b, divergence="chi2", reduction="none").numpy(),
                               _loop(chi2, a, b), rtol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_f_divergence_equals_generic_sum_over_its_generator(name):
    """D_f(P‖Q) = Σ_k q_k f(p_k / q_k) with the table's generator, in float64."""
    a, b = _pq(3, scale=1.0)
    p, q = torch.softmax(a, -1), torch.softmax(b, -1)
    gen = generator(name, alpha=0.3)
    generic = (q * gen.f(p / q)).sum(-1)
    ours = LF.f_divergence(a, b, divergence=name, alpha=0.3, reduction="none")
    torch.testing.assert_close(ours, generic, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_generator_derivative_and_conjugate(name):
    """f′ matches a finite difference; Fenchel–Young equality f*(f′(u)) = u f′(u) − f(u)."""
    gen = generator(name, alpha=0.3)
    u = torch.tensor([0.2, 0.7, 1.5, 3.0], dtype=F64)
    h = 1e-6
    fd = (gen.f(u + h) - gen.f(u - h)) / (2 * h)
    torch.testing.assert_close(gen.f_prime(u), fd, rtol=1e-6, atol=1e-8)
    assert torch.allclose(gen.f(torch.ones((), dtype=F64)), torch.zeros((), dtype=F64), atol=1e-15)
    if gen.conjugate is None:
        return
    t = gen.f_prime(u)
    inside = (t > gen.conjugate_domain[0]) & (t < gen.conjugate_domain[1])
    if name == "total_variation":
        inside &= (u - 1).abs() > 0  # f′ is a sign: the equality holds at the kinks' values
    torch.testing.assert_close(gen.conjugate(t)[inside], (u * t - gen.f(u))[inside], rtol=1e-9, atol=1e-12)


def test_trl_fdpo_scores_up_to_constants():
    """TRL's f-DPO scores with u = e^r: reverse_kl → r; forward_kl → 1 − e^{−r} (FORMULAS.md)."""
    r = torch.linspace(-3, 3, 13, dtype=F64)
    u = r.exp()
    torch.testing.assert_close(F_DIVERGENCES["kl"].f_prime(u) - 1, r)
    torch.testing.assert_close(F_DIVERGENCES["reverse_kl"].f_prime(u) + 1, 1 - torch.exp(-r))
    # js: f′ = ½ log(2u/(u+1)), so 2 f′(u) = log 2 + logsigmoid(r), TRL's js score.
    torch.testing.assert_close(2 * F_DIVERGENCES["js"].f_prime(u), math.log(2) + TF.logsigmoid(r),
                               rtol=1e-12, atol=1e-12)


def test_alpha_limits_and_generalized_js_limits():
    a, b = _pq(4)
    kl_pq, kl_qp = LF.kl_divergence(a, b), LF.kl_divergence(b, a)
    torch.testing.assert_close(LF.alpha_divergence(a, b, alpha=1 - 1e-6), kl_pq, rtol=1e-4, atol=0)
    torch.testing.assert_close(LF.alpha_divergence(a, b, alpha=1 + 1e-6), kl_pq, rtol=1e-4, atol=0)
    torch.testing.assert_close(LF.alpha_divergence(a, b, alpha=1e-6), kl_qp, rtol=1e-4, atol=0)
    torch.testing.assert_close(LF.alpha_divergence(a, b, alpha=1.0), kl_pq)
    torch.testing.assert_close(LF.alpha_divergence(a, b, alpha=0.0), kl_qp)
    torch.testing.assert_close(LF.generalized_js_divergence(a, b, beta=1e-7) / 1e-7, kl_pq, rtol=1e-4, atol=0)
    torch.testing.assert_close(LF.generalized_js_divergence(a, b, beta=1 - 1e-7) / 1e-7, kl_qp, rtol=1e-4, atol=0)


def test_zero_probability_classes():
    inf = float("inf")
    p = torch.tensor([[0.0, -inf, 1.0]], dtype=F64, requires_grad=True)
    q = torch.tensor([[0.5, 0.0, 0.0]], dtype=F64, requires_grad=True)
    out = LF.kl_divergence(p, q)  # p has a zero class: finite
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(p.grad).all() and torch.isfinite(q.grad).all()
    assert LF.kl_divergence(q, p).item() == inf  # q_k > 0 = p_k: KL(Q‖P) is truly infinite
    for fn in (LF.js_divergence, LF.total_variation, LF.hellinger_distance):
        assert torch.isfinite(fn(p, q)) and torch.isfinite(fn(q, p))


def test_mask_temperature_log_probs():
    a, b = _pq(5)
    mask = torch.tensor([True, False, True, True, False, True])
    none = LF.kl_divergence(a, b, reduction="none")
    torch.testing.assert_close(LF.kl_divergence(a, b, mask=mask), none[mask].mean())
    torch.testing.assert_close(LF.kl_divergence(a, b, temperature=2.0), LF.kl_divergence(a / 2, b / 2))
    torch.testing.assert_close(LF.kl_divergence(torch.log_softmax(a, -1), torch.log_softmax(b, -1), log_probs=True),
                               LF.kl_divergence(a, b))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(NAMES))
def test_f_divergences_nonnegative_and_zero_iff_equal(seed, name):
    a, b = _pq(seed)
    assert (LF.f_divergence(a, b, divergence=name, reduction="none") >= -1e-12).all()
    self_div = LF.f_divergence(a, a + 3.0, divergence=name, reduction="none")  # same P after softmax
    torch.testing.assert_close(self_div, torch.zeros_like(self_div), rtol=0, atol=1e-12)
    assert (LF.js_divergence(a, b * 5, reduction="none") <= math.log(2) + 1e-12).all()


def test_bad_input():
    a = torch.randn(3, 4)
    with pytest.raises(ValueError, match="same shape"):
        LF.kl_divergence(a, torch.randn(3, 5))
    with pytest.raises(ValueError, match="temperature"):
        LF.kl_divergence(a, a, temperature=0.0)
    with pytest.raises(ValueError, match="beta"):
        LF.generalized_js_divergence(a, a, beta=1.0)
    with pytest.raises(ValueError, match="alpha"):
        LF.alpha_divergence(a, a, alpha=float("nan"))
    with pytest.raises(ValueError, match="divergence"):
        LF.f_divergence(a, a, divergence="wasserstein")
    with pytest.raises(ValueError, match="mask"):
        LF.kl_divergence(a, a, mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="floating"):
        LF.kl_divergence(a, torch.ones(3, 4, dtype=torch.long))


def test_jsd_contrastive_logits_matches_adacad_rule():
    a, b = _pq(6)
    out, alpha = LF.jsd_contrastive_logits(a, b, offset=0.1, return_alpha=True)
    js = scipy_distance.jensenshannon(_probs(a), _probs(b), axis=-1) ** 2  # nats
    np.testing.assert_allclose(alpha.numpy(), js + 0.1, rtol=1e-10)
    ref = (1 + alpha.unsqueeze(-1)) * a - alpha.unsqueeze(-1) * b
    torch.testing.assert_close(out, ref)
    assert (LF.jsd_contrastive_logits(a, b, return_alpha=True)[1] <= math.log(2)).all()
