"""Categorical divergences against SciPy, torch and loops over the definitions."""
import inspect
import math
import typing

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

import losslab
from losslab import functional as LF
from losslab import nn as LN

# The generator table is code under test (its f, f', f* are checked below); references use _f_ref.
from losslab.functional.divergences_f import F_DIVERGENCES
from losslab.functional.divergences_f import f_divergence_generator as generator

scipy_special = pytest.importorskip("scipy.special")
scipy_distance = pytest.importorskip("scipy.spatial.distance")
F64 = torch.float64
NAMES = ["kl", "reverse_kl", "js", "alpha", "total_variation", "hellinger", "chi2", "jeffreys"]


def _pq(seed=0, n=6, c=7, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=F64) * scale, torch.randn(n, c, generator=g, dtype=F64) * scale


def _probs(x):
    return torch.softmax(x, -1).numpy()


def _f_ref(name, alpha=0.3):
    """Generators f (D_f(P‖Q) = Σ q f(p/q), f(1) = 0) written from the definitions, in NumPy,
    independent of the module's table.

    Csiszár (1967) / Ali & Silvey (1966); Nowozin et al., "f-GAN" (2016), Table 1: kl u log u,
    reverse_kl −log u, Pearson χ² (u − 1)², Jeffreys (u − 1) log u, total variation ½|u − 1|;
    their "Jensen-Shannon" u log u − (u+1) log((u+1)/2) and squared Hellinger (√u − 1)² are
    halved here (JS as the mean of the two KLs, H² in [0, 1]); α: Cichocki & Amari,
    "Families of Alpha- Beta- and Gamma- Divergences" (2010), (u^α − α u − (1 − α)) / (α(α − 1)).
    ``xlogy`` (SciPy) gives 0 log 0 = 0 at u = 0.
    """
    xlogy = scipy_special.xlogy
    return {
        "kl": lambda u: xlogy(u, u),
        "reverse_kl": lambda u: -np.log(u),
        "js": lambda u: 0.5 * (xlogy(u, u) - (u + 1) * np.log((u + 1) / 2)),
        "alpha": lambda u: (u ** alpha - alpha * u - (1 - alpha)) / (alpha * (alpha - 1)),
        "total_variation": lambda u: 0.5 * np.abs(u - 1),
        "hellinger": lambda u: 0.5 * (np.sqrt(u) - 1) ** 2,
        "chi2": lambda u: (u - 1) ** 2,
        "jeffreys": lambda u: (u - 1) * np.log(u),
    }[name]


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
    """D_f(P‖Q) = Σ_k q_k f(p_k / q_k) with f written from the definition (_f_ref), NumPy float64."""
    a, b = _pq(3, scale=1.0)
    p, q = _probs(a), _probs(b)
    generic = (q * _f_ref(name, alpha=0.3)(p / q)).sum(-1)
    ours = LF.f_divergence(a, b, divergence=name, alpha=0.3, reduction="none")
    np.testing.assert_allclose(ours.numpy(), generic, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("alpha", [0.3, 2.0, -0.5])
def test_generator_table_matches_the_definitions(name, alpha):
    """The shared table's f (used by f-DPO and variational bounds) is the textbook generator."""
    u = np.array([0.05, 0.2, 0.7, 1.0, 1.5, 3.0, 20.0])
    ours = generator(name, alpha=alpha).f(torch.tensor(u, dtype=F64)).numpy()
    np.testing.assert_allclose(ours, _f_ref(name, alpha=alpha)(u), rtol=1e-12, atol=1e-15)


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


# --------------------------------------------------------------------------- zero classes, extremes, dtypes
FINITE_CASES = [("kl", 0.5), ("reverse_kl", 0.5), ("js", 0.5), ("total_variation", 0.5), ("hellinger", 0.5),
                ("chi2", 0.5), ("jeffreys", 0.5), ("alpha", 0.3), ("alpha", 2.0), ("alpha", -0.5)]


@pytest.mark.parametrize("name,alpha", FINITE_CASES)
def test_class_with_zero_probability_under_both_is_ignored(name, alpha):
    """A class with p = q = 0 contributes nothing: same value as without that class, finite gradients."""
    a, b = _pq(7, n=4, c=5)
    inf = torch.full((4, 1), -float("inf"), dtype=F64)
    pa = torch.cat([a, inf], -1).requires_grad_(True)
    pb = torch.cat([b, inf], -1).requires_grad_(True)
    out = LF.f_divergence(pa, pb, divergence=name, alpha=alpha, reduction="none")
    torch.testing.assert_close(out, LF.f_divergence(a, b, divergence=name, alpha=alpha, reduction="none"))
    out.sum().backward()
    assert torch.isfinite(pa.grad).all() and torch.isfinite(pb.grad).all()
    assert (pa.grad[:, -1] == 0).all() and (pb.grad[:, -1] == 0).all()


@pytest.mark.parametrize("name,alpha", FINITE_CASES)
def test_zero_class_in_one_distribution_matches_loop(name, alpha):
    """p_k = 0 < q_k (and the mirror case): the value of the definition's loop, +inf where it is infinite."""
    inf = float("inf")
    p = torch.tensor([[0.3, -inf, 1.0, 0.0]], dtype=F64)
    q = torch.tensor([[0.0, 0.5, -0.4, 0.2]], dtype=F64)
    for x, y in ((p, q), (q, p)):
        px, qy = torch.softmax(x, -1)[0].tolist(), torch.softmax(y, -1)[0].tolist()
        f = _f_ref(name, alpha=alpha)

        # f'(inf) = lim_{u->inf} f(u)/u, worked out by hand from each generator.
        slope = {"kl": inf, "reverse_kl": 0.0, "js": 0.5 * math.log(2), "total_variation": 0.5, "hellinger": 0.5,
                 "chi2": inf, "jeffreys": inf, "alpha": inf if alpha > 1 else 1 / (1 - alpha)}[name]

        def term(pk, qk):  # q f(p/q), with 0 f(p/0) = p f'(inf) and 0 f(0/0) = 0
            if qk > 0:
                return qk * float(f(np.float64(pk / qk)))
            return 0.0 if pk == 0 else pk * slope

        with np.errstate(divide="ignore"):  # f(0) = +inf for reverse_kl, jeffreys, alpha < 0
            ref = sum(term(pk, qk) for pk, qk in zip(px, qy))
        out = LF.f_divergence(x, y, divergence=name, alpha=alpha).item()
        if math.isinf(ref):
            assert out == inf
        else:
            assert out == pytest.approx(ref, rel=1e-6, abs=1e-9)


# chi^2 and alpha outside [0, 1] grow like exp(log-ratio): e^{1e4} is finite mathematically but
# overflows float32 (documented); the others are at most linear in the logit gap.
BOUNDED_BY_LOGIT_GAP = [("kl", 0.5), ("reverse_kl", 0.5), ("js", 0.5), ("total_variation", 0.5),
                        ("hellinger", 0.5), ("jeffreys", 0.5), ("alpha", 0.3), ("alpha", 0.9)]


@pytest.mark.parametrize("name,alpha", BOUNDED_BY_LOGIT_GAP)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_extreme_logits_finite_in_low_precision(name, alpha, dtype):
    a, b = _pq(8, n=5, c=9)
    scale = 6e4 if dtype == torch.float16 else 1e4  # fp16 tops out at 65504
    a = (a / a.abs().max() * scale).to(dtype).requires_grad_(True)
    b = (b / b.abs().max() * scale).to(dtype).requires_grad_(True)
    out = LF.f_divergence(a, b, divergence=name, alpha=alpha, reduction="none")
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    ref = LF.f_divergence(a.detach().float(), b.detach().float(), divergence=name, alpha=alpha, reduction="none")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_chi2_overflows_to_inf_not_nan_at_extreme_logits():
    a, b = _pq(9)
    out = LF.f_divergence((a * 1e4).float(), (b * 1e4).float(), divergence="chi2", reduction="none")
    assert not torch.isnan(out).any() and (out > 0).all()


# --------------------------------------------------------------------------- conventions
def test_named_divergences_equal_their_dedicated_functions():
    a, b = _pq(10)
    F = lambda name, **kw: LF.f_divergence(a, b, divergence=name, reduction="none", **kw)  # noqa: E731
    torch.testing.assert_close(F("kl"), LF.kl_divergence(a, b, reduction="none"), rtol=0, atol=0)
    torch.testing.assert_close(F("reverse_kl"), LF.kl_divergence(b, a, reduction="none"), rtol=0, atol=0)
    torch.testing.assert_close(F("js"), LF.js_divergence(a, b, reduction="none"), rtol=0, atol=0)
    torch.testing.assert_close(F("alpha", alpha=0.7), LF.alpha_divergence(a, b, alpha=0.7, reduction="none"))
    torch.testing.assert_close(F("total_variation"), LF.total_variation(a, b, reduction="none"))
    torch.testing.assert_close(F("hellinger"), LF.hellinger_distance(a, b, squared=True, reduction="none"))
    torch.testing.assert_close(F("hellinger"), LF.hellinger_distance(a, b, reduction="none") ** 2)
    torch.testing.assert_close(F("jeffreys"), F("kl") + F("reverse_kl"))
    # Amari alpha = 1/2 is 4 (1 - Bhattacharyya coefficient) = 4 H^2 (H^2 = 1 - BC).
    torch.testing.assert_close(F("alpha", alpha=0.5), 4 * F("hellinger"))


def test_mean_is_per_sample_mean_like_batchmean():
    """reduction='mean' averages per-sample KLs: F.kl_div(..., 'batchmean') for 2-D input, not 'mean'."""
    a, b = _pq(11, n=5, c=8)
    ref = TF.kl_div(torch.log_softmax(b, -1), torch.log_softmax(a, -1), log_target=True, reduction="batchmean")
    torch.testing.assert_close(LF.kl_divergence(a, b), ref)


def test_token_level_leading_dims_and_mask():
    g = torch.Generator().manual_seed(12)
    a, b = torch.randn(2, 3, 6, generator=g, dtype=F64), torch.randn(2, 3, 6, generator=g, dtype=F64)
    labels = torch.tensor([[1, 2, -100], [4, -100, -100]])
    mask = labels != -100
    none = LF.js_divergence(a, b, reduction="none")
    assert none.shape == (2, 3)
    torch.testing.assert_close(none, LF.js_divergence(a.reshape(6, 6), b.reshape(6, 6), reduction="none").reshape(2, 3))
    torch.testing.assert_close(LF.js_divergence(a, b, mask=mask), none[mask].mean())
    torch.testing.assert_close(LF.js_divergence(a, b, mask=mask, reduction="sum"), none[mask].sum())


def test_alpha_converges_to_kl_at_first_order():
    """D_alpha = KL + O(|alpha - 1|) (and KL(Q||P) + O(alpha) at 0): error shrinks 10x per decade of h."""
    a, b = _pq(13)
    kl_pq, kl_qp = LF.kl_divergence(a, b, reduction="none"), LF.kl_divergence(b, a, reduction="none")
    for target, at in ((kl_pq, lambda h: 1 - h), (kl_pq, lambda h: 1 + h), (kl_qp, lambda h: h), (kl_qp, lambda h: -h)):
        e3 = (LF.alpha_divergence(a, b, alpha=at(1e-3), reduction="none") - target).abs()
        e4 = (LF.alpha_divergence(a, b, alpha=at(1e-4), reduction="none") - target).abs()
        assert (e4 < 0.15 * e3).all() and (e4 < 1e-3 * target).all()


def test_alpha_generator_matches_trl_score_and_limits():
    """TRL >= 1.x alpha score (FORMULAS.md): (e^{(alpha-1) r} - 1)/(alpha - 1) = f'(e^r), same alpha."""
    r = torch.linspace(-3, 3, 13, dtype=F64)
    for alpha in (0.2, 0.5, 1.5):
        torch.testing.assert_close(generator("alpha", alpha=alpha).f_prime(r.exp()),
                                   torch.expm1((alpha - 1) * r) / (alpha - 1))
    assert generator("alpha", alpha=1.0) is F_DIVERGENCES["kl"]
    assert generator("alpha", alpha=0.0) is F_DIVERGENCES["reverse_kl"]
    # Near alpha = 1 the score tends to TRL's reverse-KL score r.
    torch.testing.assert_close(generator("alpha", alpha=1 + 1e-7).f_prime(r.exp()), r, rtol=1e-5, atol=1e-6)


def test_generalized_js_bounded_by_binary_entropy():
    a, b = _pq(14, scale=8.0)
    for beta in (0.1, 0.3, 0.9):
        h = -(beta * math.log(beta) + (1 - beta) * math.log(1 - beta))
        assert (LF.generalized_js_divergence(a, b, beta=beta, reduction="none") <= h + 1e-12).all()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(FINITE_CASES))
def test_f_divergences_strictly_positive_when_distributions_differ(seed, case):
    name, alpha = case
    a, b = _pq(seed)
    assert (LF.f_divergence(a, b, divergence=name, alpha=alpha, reduction="none") > 0).all()


# Every divergence as f(p, q, **kw) -> per-sample values, for the NaN / +inf / mask tests.
ALL_DIVERGENCES = [
    (LF.kl_divergence, {}), (LF.js_divergence, {}), (LF.generalized_js_divergence, {"beta": 0.3}),
    (LF.alpha_divergence, {"alpha": 0.3}), (LF.total_variation, {}), (LF.hellinger_distance, {}),
    (LF.hellinger_distance, {"squared": True}),
    *[(LF.f_divergence, {"divergence": n, "alpha": al}) for n, al in FINITE_CASES],
]
IDS = [f"{fn.__name__}{'-' + '-'.join(map(str, kw.values())) if kw else ''}" for fn, kw in ALL_DIVERGENCES]


@pytest.mark.parametrize("fn,kw", ALL_DIVERGENCES, ids=IDS)
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")], ids=["nan", "posinf"])
@pytest.mark.parametrize("log_probs", [False, True], ids=["logits", "log_probs"])
def test_nan_or_posinf_input_gives_nan_for_its_sample_only(fn, kw, bad_value, log_probs):
    """Regression (issue 8): kl_divergence raised on NaN after a full isnan pass over the logits
    (check_finite) while the other objectives returned NaN. Now one rule: with validation on
    (the default), a NaN or +inf in a kept sample gives NaN for that sample, never a finite
    value; the other samples are untouched; a masked-out sample holding it is left out."""
    a, b = _pq(20, n=3, c=4)
    if log_probs:
        a, b = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    bad = a.clone()
    bad[1, 2] = bad_value
    assert losslab._checks.validation_enabled()
    for x, y in ((bad, b), (b, bad)):
        out = fn(x, y, log_probs=log_probs, reduction="none", **kw)
        assert torch.isnan(out[1]), f"{bad_value} input gave {out[1]} instead of NaN"
        assert torch.isfinite(out[[0, 2]]).all()
        assert torch.isnan(fn(x, y, log_probs=log_probs, **kw))
        keep = torch.tensor([True, False, True])
        torch.testing.assert_close(fn(x, y, log_probs=log_probs, mask=keep, **kw), out[keep].mean())


def test_neg_inf_logits_stay_zero_probability_classes():
    """-inf is a class with probability 0 (not a non-finite input): same value as dropping it."""
    a, b = _pq(21, n=3, c=4)
    ninf = torch.full((3, 1), -float("inf"), dtype=F64)
    for fn, kw in ALL_DIVERGENCES:
        if kw.get("divergence") in ("reverse_kl", "jeffreys") or kw.get("alpha", 0.5) < 0:
            continue  # p = 0 < q there: +inf, tested in test_zero_class_in_one_distribution_matches_loop
        out = fn(torch.cat([a, ninf], -1), torch.cat([b, b[:, :1]], -1), reduction="none", **kw)
        assert torch.isfinite(out).all(), (fn.__name__, kw)


def test_no_value_pass_over_the_logits(monkeypatch):
    """Regression: no objective of this family calls torch.isnan on its (vocabulary-sized) inputs."""
    calls = []
    real = torch.isnan
    monkeypatch.setattr(torch, "isnan", lambda x: calls.append(x.shape) or real(x))
    a, b = _pq(22)
    for fn, kw in ALL_DIVERGENCES:
        fn(a, b, **kw)
    LF.jsd_contrastive_logits(a, b)
    assert not calls, f"isnan called on inputs of shape {calls}"


def test_more_bad_input():
    a = torch.randn(3, 4)
    with pytest.raises(ValueError, match="temperature"):
        LF.js_divergence(a, a, temperature=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        LF.alpha_divergence(a, a, alpha=float("inf"))
    with pytest.raises(ValueError, match="alpha"):
        generator("alpha", alpha=float("nan"))
    with pytest.raises(ValueError, match="beta"):
        LF.generalized_js_divergence(a, a, beta=0.0)
    with pytest.raises(ValueError, match="offset"):
        LF.jsd_contrastive_logits(a, a, offset=float("nan"))
    with pytest.raises(ValueError, match="context_logits and no_context_logits must have the same shape"):
        LF.jsd_contrastive_logits(a, torch.randn(3, 5))


def test_jsd_contrastive_logits_banned_tokens_and_no_conflict():
    inf = float("inf")
    ctx = torch.tensor([[1.0, -inf, 0.5, 2.0]])
    noctx = torch.tensor([[0.0, -inf, 1.5, 2.0]])
    out, alpha = LF.jsd_contrastive_logits(ctx, noctx, return_alpha=True)
    assert out[0, 1] == -inf and torch.isfinite(out[0, [0, 2, 3]]).all()
    ref = (1 + alpha) * ctx[0, [0, 2, 3]] - alpha * noctx[0, [0, 2, 3]]
    torch.testing.assert_close(out[0, [0, 2, 3]], ref)
    # A half-precision input gives float32 logits.
    assert LF.jsd_contrastive_logits(ctx.bfloat16(), noctx.bfloat16()).dtype == torch.float32


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "js", "jeffreys", "hellinger", "chi2"])
def test_float32_accurate_for_nearby_distributions(name):
    """Nearly equal P and Q (divergence ~1e-6): float32 stays within 1e-3 of float64.

    The bound is the conditioning of the inputs: float32 log_softmax rounds log p to
    ~6e-7 absolute, against log-ratios of ~1e-3 here. A plain sum_k p log(p/q) in float32 is
    off by ~40% on these inputs (first-order terms cancel)."""
    a, b = _pq(15, n=20, c=50)
    c = a + 1e-3 * b
    r64 = LF.f_divergence(a, c, divergence=name, reduction="none")
    r32 = LF.f_divergence(a.float(), c.float(), divergence=name, reduction="none").double()
    torch.testing.assert_close(r32, r64, rtol=1e-3, atol=0)


@pytest.mark.parametrize("alpha", [1e-4, 1 - 1e-4, 1 + 1e-4])
def test_alpha_float32_accurate_near_the_kl_limits(alpha):
    """No 1 - (1 - O(alpha)) cancellation: float32 within 1e-5 of float64 next to alpha = 0, 1."""
    a, b = _pq(16, n=20, c=50)
    r64 = LF.alpha_divergence(a, b, alpha=alpha, reduction="none")
    r32 = LF.alpha_divergence(a.float(), b.float(), alpha=alpha, reduction="none").double()
    torch.testing.assert_close(r32, r64, rtol=1e-5, atol=0)


# --------------------------------------------------------------------------- modules and hyperparameters
MODULES = [(LN.KLDivergence, LF.kl_divergence, {}), (LN.JSDivergence, LF.js_divergence, {}),
           (LN.GeneralizedJSDivergence, LF.generalized_js_divergence, {"beta": 0.2}),
           (LN.AlphaDivergence, LF.alpha_divergence, {"alpha": 1.5}), (LN.TotalVariation, LF.total_variation, {}),
           (LN.HellingerDistance, LF.hellinger_distance, {"squared": True}),
           (LN.FDivergence, LF.f_divergence, {"divergence": "chi2"})]


@pytest.mark.parametrize("module_cls,fn,kw", MODULES, ids=[m.__name__ for m, _, _ in MODULES])
def test_module_takes_mask_in_forward(module_cls, fn, kw):
    """Regression (issue 8): KLDivergence()(p, q, mask=m) raised TypeError and KLDivergence(mask=m)
    fixed the batch shape at construction. The mask is per batch: a forward argument."""
    g = torch.Generator().manual_seed(30)
    loss_fn = module_cls(temperature=2.0, **kw)
    for shape in ((5,), (2, 3)):  # batches of different shapes through one module
        a, b = torch.randn(*shape, 6, generator=g, dtype=F64), torch.randn(*shape, 6, generator=g, dtype=F64)
        mask = torch.rand(shape, generator=g) > 0.3
        mask.view(-1)[0] = True
        torch.testing.assert_close(loss_fn(a, b, mask=mask), fn(a, b, mask=mask, temperature=2.0, **kw), rtol=0, atol=0)
        torch.testing.assert_close(loss_fn(a, b), fn(a, b, temperature=2.0, **kw), rtol=0, atol=0)
    assert "mask" in inspect.signature(module_cls.forward).parameters
    assert "mask" not in inspect.signature(module_cls.__init__).parameters
    with pytest.raises(TypeError, match="mask"):
        module_cls(mask=torch.ones(5, dtype=torch.bool), **kw)


def test_all_masked_batch_gives_zero_mean_and_zero_gradients():
    a, b = (x.requires_grad_(True) for x in _pq(31))
    for fn, kw in ALL_DIVERGENCES:
        out = fn(a, b, mask=torch.zeros(6, dtype=torch.bool), **kw)
        ga, gb = torch.autograd.grad(out, (a, b))
        assert out.item() == 0.0 and not ga.any() and not gb.any()


@pytest.mark.parametrize("module_cls,kw,error,match", [
    (LN.KLDivergence, {"temperature": 0.0}, ValueError, "temperature"),
    (LN.JSDivergence, {"temperature": float("inf")}, ValueError, "temperature"),
    (LN.KLDivergence, {"reduction": "batchmean"}, ValueError, "reduction"),
    (LN.TotalVariation, {"log_probs": 1}, TypeError, "log_probs"),
    (LN.GeneralizedJSDivergence, {"beta": 0.0}, ValueError, "beta"),
    (LN.GeneralizedJSDivergence, {"beta": 1.0}, ValueError, "beta"),
    (LN.AlphaDivergence, {"alpha": float("nan")}, ValueError, "alpha"),
    (LN.AlphaDivergence, {"alpha": True}, ValueError, "alpha"),
    (LN.HellingerDistance, {"squared": "yes"}, TypeError, "squared"),
    (LN.FDivergence, {"divergence": "wasserstein"}, ValueError, "divergence must be one of"),
    (LN.FDivergence, {"divergence": "alpha", "alpha": float("inf")}, ValueError, "alpha"),
])
def test_modules_check_hyperparameters_at_construction(module_cls, kw, error, match):
    with pytest.raises(error, match=match):
        module_cls(**kw)


@pytest.mark.parametrize("fn,kw,error,match", [
    (LF.kl_divergence, {"log_probs": "yes"}, TypeError, "log_probs"),
    (LF.hellinger_distance, {"squared": 1}, TypeError, "squared"),
    (LF.generalized_js_divergence, {"beta": -0.1}, ValueError, "beta"),
    (LF.f_divergence, {"alpha": float("nan")}, ValueError, "alpha"),
    (LF.jsd_contrastive_logits, {"return_alpha": 1}, TypeError, "return_alpha"),
    (LF.jsd_contrastive_logits, {"offset": float("inf")}, ValueError, "offset"),
])
def test_functions_check_the_same_hyperparameters_at_call_time(fn, kw, error, match):
    a = torch.randn(3, 4)
    with pytest.raises(error, match=match):
        fn(a, a, **kw)


@pytest.mark.parametrize("wrong,suggested", [
    ("hellnger", "'hellinger'"), ("Jeffreys", "'jeffreys'"), ("chi_2", "'chi2'"),
    ("jsd", "'js'"), ("tv", "'total_variation'"), ("forward_kl", "'reverse_kl'"),
])
def test_divergence_name_did_you_mean(wrong, suggested):
    for call in (lambda: LF.f_divergence(torch.zeros(2, 3), torch.zeros(2, 3), divergence=wrong),
                 lambda: LN.FDivergence(divergence=wrong), lambda: generator(wrong)):
        with pytest.raises(ValueError, match="did you mean") as err:
            call()
        assert suggested in str(err.value) and repr(wrong) in str(err.value)


# --------------------------------------------------------------------------- jsd_contrastive_logits return type
def test_jsd_contrastive_logits_returns_a_named_tuple():
    """Regression (issue 8): return_alpha=True returned a bare tuple; now a NamedTuple whose first
    field is the main output, with typing.overload annotations for both flag values."""
    a, b = _pq(40)
    plain = LF.jsd_contrastive_logits(a, b, offset=0.2)
    res = LF.jsd_contrastive_logits(a, b, offset=0.2, return_alpha=True)
    assert isinstance(plain, torch.Tensor) and isinstance(res, LF.ContrastiveDecodingOutput)
    assert res._fields == ("logits", "alpha") and res[0] is res.logits
    torch.testing.assert_close(res.logits, plain, rtol=0, atol=0)
    assert res.alpha.shape == (6,)
    np.testing.assert_allclose(res.alpha.numpy(), scipy_distance.jensenshannon(_probs(a), _probs(b), axis=-1) ** 2 + 0.2,
                               rtol=1e-10)
    overloads = typing.get_overloads(LF.jsd_contrastive_logits)
    returns = {str(inspect.signature(o).parameters["return_alpha"].annotation): inspect.signature(o).return_annotation
               for o in overloads}
    assert returns == {"Literal[False]": "torch.Tensor", "Literal[True]": "ContrastiveDecodingOutput"}


def test_log_probs_path_and_mask_compile_without_graph_break():
    """The conformance suite compiles the default (logits) path; this is the log_probs path with a mask."""
    a, b = (torch.log_softmax(x, -1) for x in _pq(41))
    mask = torch.tensor([True, False, True, True, True, False])
    fn = lambda x, y, m: LF.alpha_divergence(x, y, alpha=2.0, log_probs=True, mask=m)  # noqa: E731
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(a, b, mask), fn(a, b, mask), rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- the KL kernel (issue 9)
def _kl_torch(x, y, temperature=1.0, log_probs=False):
    """Reference per-row KL(P‖Q) in float64 by torch's own ``F.kl_div`` (differentiable by autograd)."""
    x, y = x.double(), y.double()
    if not (log_probs and temperature == 1.0):
        x, y = torch.log_softmax(x / temperature, -1), torch.log_softmax(y / temperature, -1)
    return TF.kl_div(y, x, log_target=True, reduction="none").sum(-1)


@pytest.mark.parametrize("block_elems", [1 << 16, 20], ids=["one-block", "uneven-blocks"])
@pytest.mark.parametrize("temperature,log_probs", [(1.0, False), (2.0, False), (1.0, True), (0.5, True)])
def test_kl_values_and_gradients_match_torch_kl_div_by_blocks(monkeypatch, block_elems, temperature, log_probs):
    """kl_divergence's value and both gradients (closed forms, computed a block of rows at a
    time) equal autograd through ``F.kl_div``; 20 elements per block gives row blocks 2, 2, 1
    of 7 classes."""
    monkeypatch.setattr(losslab.functional.divergences, "_KL_BLOCK_ELEMS", block_elems)
    a, b = _pq(50, n=5, c=7)
    if log_probs:
        a, b = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    w = torch.rand(5, generator=torch.Generator().manual_seed(51), dtype=F64)  # per-row upstream gradients
    x, y = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    out = LF.kl_divergence(x, y, temperature=temperature, log_probs=log_probs, reduction="none")
    gx, gy = torch.autograd.grad((out * w).sum(), (x, y))
    x, y = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    ref = _kl_torch(x, y, temperature, log_probs)
    rx, ry = torch.autograd.grad((ref * w).sum(), (x, y))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-14)
    if log_probs and temperature == 1.0:
        # Log-probabilities taken as given: the careful form's gradient differs from the plain
        # sum's by terms along (p, q) that vanish on the simplex, i.e. after a log_softmax.
        jx = torch.autograd.functional.vjp(lambda z: torch.log_softmax(z, -1), a, gx)[1]
        jrx = torch.autograd.functional.vjp(lambda z: torch.log_softmax(z, -1), a, rx)[1]
        torch.testing.assert_close(jx, jrx, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(gy, (b.exp() - a.exp()) * w[:, None], rtol=1e-12, atol=1e-14)
    else:
        torch.testing.assert_close(gx, rx, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(gy, ry, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("block_elems", [1 << 16, 12], ids=["one-block", "row-blocks"])
def test_kl_zero_classes_by_blocks(monkeypatch, block_elems):
    """-inf classes in rows of different blocks: p = q = 0 adds nothing (value and other
    gradients as without the class, its own gradients exactly 0); p = 0 < q is finite with
    finite gradients; q = 0 < p gives +inf."""
    monkeypatch.setattr(losslab.functional.divergences, "_KL_BLOCK_ELEMS", block_elems)
    a, b = _pq(52, n=4, c=5)
    ninf = torch.full((4, 1), -math.inf, dtype=F64)
    x, y = torch.cat([a, ninf], -1).requires_grad_(True), torch.cat([b, ninf], -1).requires_grad_(True)
    out = LF.kl_divergence(x, y, temperature=2.0, reduction="none")
    gx, gy = torch.autograd.grad(out.sum(), (x, y))
    x0, y0 = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    out0 = LF.kl_divergence(x0, y0, temperature=2.0, reduction="none")
    g0 = torch.autograd.grad(out0.sum(), (x0, y0))
    torch.testing.assert_close(out, out0, rtol=1e-14, atol=0)
    assert (gx[:, -1] == 0).all() and (gy[:, -1] == 0).all()
    torch.testing.assert_close(gx[:, :-1], g0[0], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(gy[:, :-1], g0[1], rtol=1e-12, atol=1e-15)
    # p = 0 < q in one class of every row: finite, and the loop over p log(p/q) skipping p = 0.
    x = torch.cat([a, ninf], -1).requires_grad_(True)
    y = torch.cat([b, b[:, :1]], -1).requires_grad_(True)
    out = LF.kl_divergence(x, y, reduction="none")
    gx, gy = torch.autograd.grad(out.sum(), (x, y))
    assert torch.isfinite(gx).all() and torch.isfinite(gy).all() and (gx[:, -1] == 0).all()
    for i in range(4):
        p, q = torch.softmax(x[i].detach(), -1).tolist(), torch.softmax(y[i].detach(), -1).tolist()
        ref = sum(pk * math.log(pk / qk) for pk, qk in zip(p, q) if pk > 0)
        assert out[i].item() == pytest.approx(ref, rel=1e-12)
    assert (LF.kl_divergence(y.detach(), x.detach(), reduction="none") == math.inf).all()


@pytest.mark.parametrize("fn,kw", [(LF.kl_divergence, {"temperature": 2.0}), (LF.kl_divergence, {"log_probs": True}),
                                   (LF.js_divergence, {}), (LF.f_divergence, {"divergence": "jeffreys"})],
                         ids=["kl-logits", "kl-log_probs", "js", "jeffreys"])
def test_kl_is_twice_differentiable(fn, kw):
    """The closed-form backward holds no graph: create_graph=True differentiates the autograd
    form instead, so Hessian-vector products (e.g. a natural-gradient / TRPO step on a KL) are right."""
    a, b = _pq(53, n=3, c=4)
    if kw.get("log_probs"):
        a, b = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    x, y = a.requires_grad_(True), b.requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda u, v: fn(u, v, reduction="none", **kw), (x, y))


def test_kl_keeps_no_vocabulary_sized_tensor_for_backward():
    """Regression (issue 9): the autograd form kept ~10 (N, C) temporaries for backward; the
    KL kernel keeps the two inputs (no copy) and its (N,) values, and recomputes the rest."""
    a, b = _pq(54, n=6, c=9)
    x = a.requires_grad_(True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = LF.kd_loss(x, b, temperature=2.0)
    big = [t for t in saved if t.numel() >= a.numel()]
    ptrs = {a.untyped_storage().data_ptr(), b.untyped_storage().data_ptr()}
    assert len(big) == 2 and all(t.untyped_storage().data_ptr() in ptrs for t in big), [t.shape for t in saved]
    out.backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kl_half_inputs_upcast_by_blocks(monkeypatch, dtype):
    """Half-precision logits are upcast a block at a time: float32 value, gradients in the
    input's dtype equal to the float32 computation's up to one rounding to that dtype."""
    monkeypatch.setattr(losslab.functional.divergences, "_KL_BLOCK_ELEMS", 16)
    a, b = _pq(55, n=5, c=6)
    x, y = a.to(dtype).requires_grad_(True), b.to(dtype).requires_grad_(True)
    out = LF.kl_divergence(x, y, temperature=2.0, reduction="none")
    gx, gy = torch.autograd.grad(out.sum(), (x, y))
    x32, y32 = x.detach().float().requires_grad_(True), y.detach().float().requires_grad_(True)
    ref = _kl_torch(x32, y32, 2.0).float()
    r = torch.autograd.grad(ref.sum(), (x32, y32))
    assert out.dtype == torch.float32 and gx.dtype == dtype and gy.dtype == dtype
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    ulp = torch.finfo(dtype).eps
    torch.testing.assert_close(gx.float(), r[0], rtol=ulp, atol=1e-7)
    torch.testing.assert_close(gy.float(), r[1], rtol=ulp, atol=1e-7)
