"""AnyLoss (vs sklearn metrics and a loop), EnsLoss (properties of the drawn derivatives, vs a loop over
the paper's construction) and the normalized softmax loss (vs pytorch-metric-learning)."""
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


# --------------------------------------------------------------------------- AnyLoss
def _sk_metrics(yn, pn, beta):
    metrics = pytest.importorskip("sklearn.metrics")
    tpr = metrics.recall_score(yn, pn, zero_division=0)
    tnr = metrics.recall_score(1 - yn, 1 - pn, zero_division=0)
    return {
        "accuracy": metrics.accuracy_score(yn, pn),
        "f1": metrics.f1_score(yn, pn, zero_division=0),
        "fbeta": metrics.fbeta_score(yn, pn, beta=beta, zero_division=0),
        "balanced_accuracy": metrics.balanced_accuracy_score(yn, pn),
        "gmean": math.sqrt(tpr * tnr),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_anyloss_equals_exact_metrics_on_hard_predictions(seed):
    """With 0/1 predictions A(p) is 0/1 up to sigmoid(-36.5) ~ 1.4e-16, so 1 - loss is the exact metric."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (40,), generator=g)
    pred = torch.randint(0, 2, (40,), generator=g)
    for name, value in _sk_metrics(y.numpy(), pred.numpy(), 2.0).items():
        got = 1 - LF.anyloss(pred.double(), y, metric=name, beta=2.0).item()
        np.testing.assert_allclose(got, value, atol=1e-12, err_msg=name)


def test_anyloss_multiclass_is_one_vs_rest_macro_average():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(14)
    y = torch.randint(0, 4, (50,), generator=g)
    pred = torch.randint(0, 4, (50,), generator=g)
    probs = TF.one_hot(pred, 4).double()
    np.testing.assert_allclose(1 - LF.anyloss(probs, y, metric="f1").item(),
                               metrics.f1_score(y.numpy(), pred.numpy(), average="macro"), atol=1e-12)
    for name in ("accuracy", "fbeta", "balanced_accuracy", "gmean"):
        per_class = [_sk_metrics((y == c).long().numpy(), (pred == c).long().numpy(), 0.5)[name] for c in range(4)]
        np.testing.assert_allclose(1 - LF.anyloss(probs, y, metric=name, beta=0.5).item(), np.mean(per_class),
                                   atol=1e-12, err_msg=name)


ANYLOSS_METRIC_NAMES = ("accuracy", "f1", "fbeta", "balanced_accuracy", "gmean")


def _anyloss_loop(p, y, metric, beta, amp=73.0):
    a = [1.0 / (1.0 + math.exp(-amp * (pi - 0.5))) for pi in p]
    tp = sum(yi * ai for yi, ai in zip(y, a))
    fn = sum(yi * (1 - ai) for yi, ai in zip(y, a))
    fp = sum((1 - yi) * ai for yi, ai in zip(y, a))
    tn = sum((1 - yi) * (1 - ai) for yi, ai in zip(y, a))
    b2 = beta * beta
    value = {
        "accuracy": (tp + tn) / (tp + tn + fp + fn),
        "f1": 2 * tp / (2 * tp + fn + fp),
        "fbeta": (1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp),
        "balanced_accuracy": 0.5 * (tp / (tp + fn) + tn / (tn + fp)),
        "gmean": math.sqrt(tp / (tp + fn) * tn / (tn + fp)),
    }[metric]
    return 1 - value


@pytest.mark.parametrize("metric", ["accuracy", "f1", "fbeta", "balanced_accuracy", "gmean"])
def test_anyloss_soft_predictions_match_loop(metric):
    g = torch.Generator().manual_seed(3)
    p = torch.rand(30, generator=g, dtype=F64) * 0.2 + 0.4  # near 0.5, where A is not saturated
    y = torch.randint(0, 2, (30,), generator=g)
    np.testing.assert_allclose(LF.anyloss(p, y, metric=metric, beta=1.5).item(),
                               _anyloss_loop(p.tolist(), y.tolist(), metric, 1.5), rtol=1e-12)
    np.testing.assert_allclose(LF.anyloss(p, y, metric=metric, beta=1.5, amplifier=10.0).item(),
                               _anyloss_loop(p.tolist(), y.tolist(), metric, 1.5, amp=10.0), rtol=1e-12)


def test_anyloss_default_amplifier_is_largest_integer_with_a_of_one_below_one():
    """The paper's L = 73: sigmoid(L / 2) < 1 in float64 for L = 73, == 1 for L = 74."""
    assert 1.0 / (1.0 + math.exp(-73 / 2)) < 1.0
    assert 1.0 / (1.0 + math.exp(-74 / 2)) == 1.0


def test_anyloss_keeps_gradient_where_float32_sigmoid_saturates():
    """sigmoid(73 (0.9 - 0.5)) is exactly 1 in float32 (zero gradient); AnyLoss computes in float64."""
    x = torch.tensor(73 * 0.4, requires_grad=True)
    torch.sigmoid(x).backward()
    assert torch.sigmoid(x).item() == 1.0 and x.grad.item() == 0.0
    p = torch.tensor([0.9, 0.95, 0.8, 0.1], dtype=torch.float32, requires_grad=True)
    t = torch.tensor([1, 0, 1, 1])
    out = LF.anyloss(p, t, metric="f1")
    assert out.dtype == torch.float32
    out.backward()
    assert (p.grad[:3].abs() > 0).all()
    # ... and equals the float64 gradient (rounded to float32).
    p64 = p.detach().double().requires_grad_(True)
    LF.anyloss(p64, t, metric="f1").backward()
    torch.testing.assert_close(p.grad, p64.grad.float(), rtol=1e-6, atol=0)


def test_anyloss_gradcheck_on_soft_predictions():
    g = torch.Generator().manual_seed(4)
    p = (torch.rand(12, generator=g, dtype=F64) * 0.1 + 0.45).requires_grad_(True)
    y = torch.randint(0, 2, (12,), generator=g)
    for metric in ("f1", "gmean", "balanced_accuracy"):
        assert torch.autograd.gradcheck(lambda q: LF.anyloss(q, y, metric=metric), (p,))


def test_anyloss_is_batch_level_without_reduction():
    info = losslab.info("anyloss")
    assert not info.supports_reduction and info.properties["batch_level"]
    with pytest.raises(TypeError):
        LF.anyloss(torch.tensor([0.5, 0.2]), torch.tensor([1, 0]), reduction="none")


def test_anyloss_saturated_probabilities_keep_finite_values_and_gradients():
    """The conformance suite does not scale probabilities by 1e4 (they would be invalid); the extremes of a
    probability are 0 and 1, and there A(p) = sigmoid(+-36.5) keeps values and gradients finite."""
    for dtype in (torch.float32, F64):
        p = torch.tensor([0.0, 1.0, 1.0, 0.0, 1e-30, 1 - 1e-7], dtype=dtype, requires_grad=True)
        t = torch.tensor([0, 1, 0, 1, 0, 1])
        for metric in ANYLOSS_METRIC_NAMES:
            out = LF.anyloss(p, t, metric=metric)
            (grad,) = torch.autograd.grad(out, p)
            assert torch.isfinite(out) and torch.isfinite(grad).all(), metric


def test_anyloss_class_without_samples_has_zero_gradient_not_nan():
    """Regression: a class absent from the batch has TP + FN = 0; the division by a clamped tiny gave a
    gradient of 1/tiny = inf and inf * 0 = NaN. Its metric counts as 0 (zero_division=0) with zero gradient."""
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], dtype=F64, requires_grad=True)
    for metric in ANYLOSS_METRIC_NAMES:
        out = LF.anyloss(probs, torch.tensor([0, 1]), metric=metric)  # class 2 has no sample
        (grad,) = torch.autograd.grad(out, probs)
        assert torch.isfinite(out) and torch.isfinite(grad).all(), metric
    # The absent class's recall term is exactly 0 (sklearn's zero_division=0): balanced accuracy of
    # class 2 = (0 + TNR) / 2, as the loop computes it with TPR := 0.
    a = [[1 / (1 + math.exp(-73 * (v - 0.5))) for v in row] for row in probs.tolist()]
    tnr2 = ((1 - a[0][2]) + (1 - a[1][2])) / 2
    per_class = []
    for k, y in ((0, [1, 0]), (1, [0, 1])):
        col = [a[0][k], a[1][k]]
        tp = sum(yi * ai for yi, ai in zip(y, col))
        fn = sum(yi * (1 - ai) for yi, ai in zip(y, col))
        fp = sum((1 - yi) * ai for yi, ai in zip(y, col))
        tn = sum((1 - yi) * (1 - ai) for yi, ai in zip(y, col))
        per_class.append(0.5 * (tp / (tp + fn) + tn / (tn + fp)))
    per_class.append(0.5 * tnr2)
    np.testing.assert_allclose(LF.anyloss(probs, torch.tensor([0, 1]), metric="balanced_accuracy").item(),
                               1 - np.mean(per_class), rtol=1e-12)


def test_anyloss_nan_probability_is_rejected_or_propagates():
    p = torch.tensor([0.2, float("nan"), 0.9])
    with pytest.raises(ValueError, match="probabilities in"):
        LF.anyloss(p, torch.tensor([0, 1, 1]))
    with losslab.validation(False):
        assert torch.isnan(LF.anyloss(p, torch.tensor([0, 1, 1])))


def test_anyloss_bad_input():
    with pytest.raises(ValueError, match="probabilities"):
        LF.anyloss(torch.tensor([1.5, 0.2]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="metric"):
        LF.anyloss(torch.tensor([0.5, 0.2]), torch.tensor([1, 0]), metric="auc")
    with pytest.raises(ValueError, match="target"):
        LF.anyloss(torch.tensor([0.5, 0.2]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="target"):
        LF.anyloss(torch.rand(4, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="beta"):
        LF.anyloss(torch.tensor([0.5, 0.2]), torch.tensor([1, 0]), metric="fbeta", beta=0.0)
    with pytest.raises(ValueError, match=r"target must have the shape of probs \(2,\)"):
        LF.anyloss(torch.tensor([0.5, 0.2]), torch.tensor([1, 0, 1]))


# --------------------------------------------------------------------------- EnsLoss
def _ensloss_loop(s, z, boxcox_lambda):
    """The construction of Dai (2024), Alg. 1 / the authors' losses.py, one margin at a time."""
    def inverse_boxcox(v):
        if boxcox_lambda == 0:
            return math.exp(v)
        base = 1 + boxcox_lambda * v
        if base <= 0:  # max(base, 0) ** (1 / lambda): 0 for lambda > 0, +inf for lambda < 0
            return 0.0 if boxcox_lambda > 0 else math.inf
        return base ** (1 / boxcox_lambda)

    g = [-inverse_boxcox(v) for v in z]
    g = sorted(max(v, -1.0) for v in g)
    order = sorted(range(len(s)), key=lambda i: s[i])
    out = [0.0] * len(s)
    for rank, i in enumerate(order):
        out[i] = g[rank] / s[i] if s[i] > 1 else g[rank]
    return [v - 1e-6 for v in out]


@pytest.mark.parametrize("boxcox_lambda", [0.0, 0.5, -0.5])
def test_ensloss_derivatives_match_loop(boxcox_lambda):
    g = torch.Generator().manual_seed(21)
    s = torch.randn(40, generator=g, dtype=F64) * 3
    z = torch.randn(40, generator=torch.Generator().manual_seed(5), dtype=F64)  # the draw the function makes
    out = LF.ensloss_derivatives(s, boxcox_lambda=boxcox_lambda, generator=torch.Generator().manual_seed(5))
    np.testing.assert_allclose(out.numpy(), _ensloss_loop(s.tolist(), z.tolist(), boxcox_lambda), rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.0, 0.5, 1.0, -0.5]), st.integers(1, 64))
def test_ensloss_derivatives_convex_and_calibrated(seed, boxcox_lambda, n):
    """Every drawn derivative is non-decreasing in the margin (a convex loss) and negative, so l'(0) < 0
    (calibrated, Bartlett et al. 2006); clipped at -1."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, generator=g, dtype=F64) * 3
    s[: n // 4] = s[0]  # ties
    d = LF.ensloss_derivatives(s, boxcox_lambda=boxcox_lambda, generator=g)
    order = torch.argsort(s, stable=True)
    assert (torch.diff(d[order]) >= 0).all(), "derivative must be non-decreasing in the margin"
    assert (d < 0).all() and (d >= -1 - 1e-6).all()


@pytest.mark.parametrize("boxcox_lambda", [0.0, 0.5])
def test_ensloss_gradient_is_the_papers_drawn_derivative_and_reductions(boxcox_lambda):
    """The reference is the loop over Dai (2024)'s construction above, fed the same N(0, 1) draw (z drawn in
    float64 from the seeded generator, as documented), not ensloss_derivatives: dl/df_i = g_i y_i."""
    g = torch.Generator().manual_seed(31)
    x = (torch.randn(12, generator=g, dtype=F64) * 2).requires_grad_(True)
    t = torch.randint(0, 2, (12,), generator=g)
    y = 2.0 * t.double() - 1
    s = (x.detach() * y).tolist()
    z = torch.randn(12, generator=torch.Generator().manual_seed(5), dtype=F64).tolist()
    g_ref = torch.tensor(_ensloss_loop(s, z, boxcox_lambda), dtype=F64)
    kw = {"seed": 5, "boxcox_lambda": boxcox_lambda}
    LF.ensloss(x, t, reduction="sum", **kw).backward()
    torch.testing.assert_close(x.grad, g_ref * y, rtol=1e-12, atol=1e-15)
    x.grad = None
    LF.ensloss(x, t, **kw).backward()  # "mean": the paper's 1/B
    torch.testing.assert_close(x.grad, g_ref * y / 12, rtol=1e-12, atol=1e-15)
    none = LF.ensloss(x, t, reduction="none", **kw)  # the value sg(g_i) * s_i
    torch.testing.assert_close(none, g_ref * torch.tensor(s, dtype=F64), rtol=1e-12, atol=1e-15)
    # integer labels of any dtype give the same draw and value
    torch.testing.assert_close(LF.ensloss(x, t.to(torch.uint8), reduction="none", **kw), none, rtol=0, atol=0)


def test_ensloss_randomness_seed_generator_and_global():
    x, t = torch.randn(10, dtype=F64), torch.randint(0, 2, (10,))
    kw = {"reduction": "none"}
    # seed: the same draw every call.
    assert torch.equal(LF.ensloss(x, t, seed=1, **kw), LF.ensloss(x, t, seed=1, **kw))
    # generator: a stream, consumed by every call, reproducible by re-seeding.
    gen = torch.Generator().manual_seed(1)
    a, b = LF.ensloss(x, t, generator=gen, **kw), LF.ensloss(x, t, generator=gen, **kw)
    assert torch.equal(a, LF.ensloss(x, t, seed=1, **kw)) and not torch.equal(a, b)
    # neither: torch's global generator.
    torch.manual_seed(1)
    assert torch.equal(LF.ensloss(x, t, **kw), a)
    with pytest.raises(ValueError, match="either generator or seed"):
        LF.ensloss(x, t, seed=1, generator=gen)


def test_ensloss_finite_for_extreme_logits_and_low_precision():
    x = torch.tensor([1e4, -1e4, 0.0, 3.0], requires_grad=True)
    out = LF.ensloss(x, torch.tensor([1, 1, 0, 0]), seed=0)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(x.grad).all()
    assert LF.ensloss(x.detach().bfloat16(), torch.tensor([1, 1, 0, 0]), seed=0).dtype == torch.float32


def test_ensloss_bad_input():
    x = torch.randn(6)
    ones = torch.ones(6, dtype=torch.long)
    with pytest.raises(ValueError, match="binary labels 0/1, found 2"):
        LF.ensloss(x, torch.full((6,), 2))
    with pytest.raises(ValueError, match=r"target must have the shape of logits \(6,\)"):
        LF.ensloss(x, torch.ones(5, dtype=torch.long))
    with pytest.raises(TypeError, match="binary labels must be integers"):
        LF.ensloss(x, torch.ones(6))
    with pytest.raises(TypeError, match="seed"):
        LF.ensloss(x, ones, seed=1.0)
    with pytest.raises(ValueError, match="boxcox_lambda"):
        LF.ensloss(x, ones, boxcox_lambda=math.nan)
    with pytest.raises(ValueError, match="either generator or seed"):
        LF.ensloss(x, ones, seed=1, generator=torch.Generator())


def test_ensloss_nan_logit_gives_nan():
    x = torch.tensor([0.5, float("nan"), -1.0, 2.0])
    none = LF.ensloss(x, torch.tensor([1, 0, 1, 0]), seed=0, reduction="none")
    assert torch.isnan(none[1]) and torch.isfinite(none[[0, 2, 3]]).all()
    assert torch.isnan(LF.ensloss(x, torch.tensor([1, 0, 1, 0]), seed=0))


# --------------------------------------------------------------------------- normalized softmax
def test_normalized_softmax_matches_pytorch_metric_learning():
    pml = pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.losses import NormalizedSoftmaxLoss
    from pytorch_metric_learning.reducers import DoNothingReducer

    g = torch.Generator().manual_seed(15)
    emb = torch.randn(16, 8, generator=g, dtype=F64)
    labels = torch.randint(0, 4, (16,), generator=g)
    torch.manual_seed(0)
    peer = NormalizedSoftmaxLoss(num_classes=4, embedding_size=8).double()  # default temperature 0.05
    assert peer.temperature == 0.05 and peer.W.shape == (8, 4)  # PML stores W as (embedding_size, num_classes)
    proxies = peer.W.detach().T.clone().requires_grad_(True)
    e1, e2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    ours = LF.normalized_softmax_loss(e1, labels, proxies)
    theirs = peer(e2, labels)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(proxies.grad, peer.W.grad.T, rtol=1e-10, atol=1e-12)
    per_sample = NormalizedSoftmaxLoss(num_classes=4, embedding_size=8, temperature=0.3,
                                       reducer=DoNothingReducer()).double()
    per_sample.W.data.copy_(peer.W.data)
    torch.testing.assert_close(
        LF.normalized_softmax_loss(emb, labels, proxies.detach(), temperature=0.3, reduction="none"),
        per_sample(emb, labels)["loss"]["losses"], rtol=1e-12, atol=1e-12)
    assert pml.__version__


def test_normalized_softmax_is_scale_invariant_and_bounded():
    g = torch.Generator().manual_seed(16)
    emb, proxies = torch.randn(6, 3, generator=g, dtype=F64), torch.randn(4, 3, generator=g, dtype=F64)
    labels = torch.randint(0, 4, (6,), generator=g)
    base = LF.normalized_softmax_loss(emb, labels, proxies, temperature=0.5, reduction="none")
    torch.testing.assert_close(LF.normalized_softmax_loss(emb * 7, labels, proxies * 0.1, temperature=0.5,
                                                          reduction="none"), base)
    # cosines in [-1, 1]: the loss is at most log(1 + (C - 1) e^{2/T}).
    assert (base <= math.log(1 + 3 * math.exp(2 / 0.5))).all()


def test_normalized_softmax_bad_input():
    emb, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="proxies"):
        LF.normalized_softmax_loss(emb, labels, torch.randn(3, 5))
    with pytest.raises(ValueError, match="temperature"):
        LF.normalized_softmax_loss(emb, labels, torch.randn(3, 3), temperature=0.0)
    with pytest.raises(ValueError, match="class index 3"):
        LF.normalized_softmax_loss(emb, torch.tensor([0, 1, 3, 0]), torch.randn(3, 3))
