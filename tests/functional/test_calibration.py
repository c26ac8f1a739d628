"""Calibration objectives against independent references.

ECE: torchmetrics' MulticlassCalibrationError / BinaryCalibrationError (all norms) away from
confidence 1.0, a per-sample loop for the 1.0 case, sklearn's calibration_curve for the
quantile bins. Brier, CA and h-calibration: loops over the formulas. Temperature:
scipy.optimize on an NLL written in NumPy.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import losslab
from losslab.functional import (
    brier_score,
    correctness_aware_loss,
    expected_calibration_error,
    fit_temperature,
    h_calibration_loss,
)


def _probs(n=500, c=5, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    target = torch.randint(0, c, (n,), generator=g)
    logits[torch.arange(n), target] += 1.0  # better than chance, so bins are informative
    return torch.softmax(logits, -1), target


def _loop_ece(conf, acc, n_bins, norm):
    """Per-sample loop: bin k = [k/n, (k+1)/n), the top bin closed."""
    counts, cs, accs = [0] * n_bins, [0.0] * n_bins, [0.0] * n_bins
    for c, a in zip(conf.tolist(), acc.tolist()):
        k = n_bins - 1 if c >= 1.0 else int(np.floor(c * n_bins))
        counts[k] += 1
        cs[k] += c
        accs[k] += a
    n = sum(counts)
    gaps = [(abs(accs[k] / counts[k] - cs[k] / counts[k]), counts[k]) for k in range(n_bins) if counts[k]]
    if norm == "l1":
        return sum(g * m for g, m in gaps) / n
    if norm == "l2":
        return np.sqrt(sum(g * g * m for g, m in gaps) / n)
    return max(g for g, _ in gaps)


# --------------------------------------------------------------------------- ECE
@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
@pytest.mark.parametrize("n_bins", [15, 7])
def test_ece_matches_torchmetrics_multiclass(norm, n_bins):
    tm = pytest.importorskip("torchmetrics.classification")
    probs, target = _probs()
    assert probs.max() < 1.0
    ref = tm.MulticlassCalibrationError(num_classes=5, n_bins=n_bins, norm=norm)(probs.float(), target)
    out = expected_calibration_error(probs.float(), target, n_bins=n_bins, norm=norm)
    torch.testing.assert_close(out, ref.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_ece_matches_torchmetrics_binary(norm):
    tm = pytest.importorskip("torchmetrics.classification")
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 2, (400,), generator=g)
    p = torch.sigmoid(torch.randn(400, generator=g) + 1.5 * (target.float() - 0.5))
    ref = tm.BinaryCalibrationError(n_bins=10, norm=norm)(p, target)
    torch.testing.assert_close(expected_calibration_error(p, target, n_bins=10, norm=norm), ref, rtol=1e-5, atol=1e-6)


def _loop_ece_extra_bin(conf, acc, n_bins, norm):
    """torchmetrics' rule, written as a loop: confidence 1.0 alone in an (n+1)-th bin."""
    keep = conf < 1.0
    ones = ~keep
    parts = []
    for k in range(n_bins):
        m = keep & (conf >= k / n_bins) & (conf < (k + 1) / n_bins)
        if m.any():
            parts.append((abs(float(acc[m].mean() - conf[m].mean())), int(m.sum())))
    if ones.any():
        parts.append((abs(float(acc[ones].mean()) - 1.0), int(ones.sum())))
    n = len(conf)
    if norm == "l1":
        return sum(g * m for g, m in parts) / n
    if norm == "l2":
        return np.sqrt(sum(g * g * m for g, m in parts) / n)
    return max(g for g, _ in parts)


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_confidence_one_is_in_the_top_bin(norm):
    # Three samples at confidence exactly 1.0 (two of them wrong) share the top bin with a
    # correct 0.95: losslab pools them; torchmetrics gives 1.0 a bin of its own.
    probs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.95, 0.05], [0.7, 0.3], [0.6, 0.4]], dtype=torch.float64)
    target = torch.tensor([0, 1, 0, 0, 1, 0])
    conf, pred = probs.max(-1)
    acc = (pred == target).double()
    expected = _loop_ece(conf, acc, 10, norm)
    # by hand for l1: top bin |2 - 3.95| + |0 - 0.7| + |1 - 0.6| = 3.05, over 6 samples
    assert norm != "l1" or expected == pytest.approx(3.05 / 6)
    out = expected_calibration_error(probs, target, n_bins=10, norm=norm)
    assert float(out) == pytest.approx(expected, rel=1e-12)
    tm = pytest.importorskip("torchmetrics.classification")
    theirs = float(tm.MulticlassCalibrationError(num_classes=2, n_bins=10, norm=norm)(probs.float(), target))
    assert theirs == pytest.approx(_loop_ece_extra_bin(conf, acc, 10, norm), rel=1e-6)
    if norm != "max":  # (the max gap here is the 0.7 bin under both rules)
        assert abs(theirs - expected) > 1e-3


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_ece_loop_on_random_data_and_dtypes(norm):
    probs, target = _probs(n=300, c=4, seed=3)
    conf, pred = probs.max(-1)
    expected = _loop_ece(conf, (pred == target).double(), 12, norm)
    out64 = expected_calibration_error(probs, target, n_bins=12, norm=norm)
    assert out64.dtype == torch.float64 and float(out64) == pytest.approx(expected, rel=1e-12)
    out32 = expected_calibration_error(probs.float(), target, n_bins=12, norm=norm)
    assert out32.dtype == torch.float32


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_classwise_is_the_mean_of_one_vs_rest_binary_errors(norm):
    tm = pytest.importorskip("torchmetrics.classification")
    probs, target = _probs(n=400, c=3, seed=5)
    ref = np.mean([float(tm.BinaryCalibrationError(n_bins=10, norm=norm)(probs[:, c].float(), (target == c).long()))
                   for c in range(3)])
    out = expected_calibration_error(probs.float(), target, n_bins=10, norm=norm, classwise=True)
    assert float(out) == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_quantile_bins_match_sklearn_calibration_curve():
    calibration = pytest.importorskip("sklearn.calibration")
    probs, target = _probs(n=333, c=4, seed=7)
    conf, pred = probs.max(-1)
    acc = (pred == target).numpy().astype(float)
    c = conf.numpy()
    n_bins = 8
    prob_true, prob_pred = calibration.calibration_curve(acc, c, n_bins=n_bins, strategy="quantile")
    # The counts of sklearn's bins (edges = percentiles, inner edges searched from the left).
    edges = np.percentile(c, np.linspace(0, 100, n_bins + 1))
    ids = np.searchsorted(edges[1:-1], c)
    counts = np.bincount(ids, minlength=n_bins)
    counts = counts[counts > 0]
    expected = {"l1": np.sum(counts * np.abs(prob_true - prob_pred)) / len(c),
                "l2": np.sqrt(np.sum(counts * (prob_true - prob_pred) ** 2) / len(c)),
                "max": np.max(np.abs(prob_true - prob_pred))}
    for norm, value in expected.items():
        out = expected_calibration_error(probs, target, n_bins=n_bins, norm=norm, binning="quantile")
        assert float(out) == pytest.approx(value, rel=1e-10), norm
    assert counts.max() - counts.min() <= 1  # equal mass


def test_ece_bad_inputs_name_the_argument():
    probs, target = _probs(n=10, c=3)
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(probs, target, n_bins=0)
    with pytest.raises(ValueError, match="norm"):
        expected_calibration_error(probs, target, norm="l3")
    with pytest.raises(ValueError, match="probs"):
        expected_calibration_error(probs * 1.1, target)
    with pytest.raises(ValueError, match="target"):
        expected_calibration_error(probs[:, 0], torch.full((10,), 2))
    with pytest.raises(ValueError, match="probs"):
        expected_calibration_error(torch.full((10,), 1.5), torch.ones(10, dtype=torch.long))
    with losslab.validation(False):  # off the simplex is not checked: a value comes out
        assert torch.isfinite(expected_calibration_error(probs * 1.1, target))


def test_ece_nan_propagates_without_validation():
    probs, target = _probs(n=20, c=3)
    probs[3, 0] = float("nan")
    with losslab.validation(False):
        for norm in ("l1", "l2", "max"):
            assert torch.isnan(expected_calibration_error(probs, target, norm=norm))


# --------------------------------------------------------------------------- Brier
def test_brier_matches_loop_and_soft_targets():
    probs, target = _probs(n=30, c=4, seed=2)
    loop = [sum((probs[i, c].item() - float(c == target[i].item())) ** 2 for c in range(4)) for i in range(30)]
    torch.testing.assert_close(brier_score(probs, target, reduction="none"), torch.tensor(loop, dtype=torch.float64))
    onehot = torch.nn.functional.one_hot(target, 4).double()
    torch.testing.assert_close(brier_score(probs, onehot), brier_score(probs, target))
    with pytest.raises(ValueError, match="probs"):
        brier_score(probs * 2, target)


# --------------------------------------------------------------------------- temperature
def _nll_numpy(z, y, t):
    s = z / t
    m = s.max(1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(s - m).sum(1)))
    return float(np.mean(lse - s[np.arange(len(y)), y]))


@pytest.mark.parametrize("scale", [0.5, 3.0, 20.0])
def test_fit_temperature_matches_scipy(scale):
    optimize = pytest.importorskip("scipy.optimize")
    probs, target = _probs(n=400, c=6, seed=11)
    logits = torch.log(probs) * scale
    z, y = logits.numpy(), target.numpy()
    res = optimize.minimize_scalar(lambda lt: _nll_numpy(z, y, np.exp(lt)), bounds=(-10, 10), method="bounded",
                                   options={"xatol": 1e-12})
    t = fit_temperature(logits, target)
    assert isinstance(t, float)  # a fitting procedure returns a Python float
    assert float(t) == pytest.approx(np.exp(res.x), rel=1e-6)
    assert _nll_numpy(z, y, float(t)) <= res.fun + 1e-12  # at least as good as scipy's optimum
    again = fit_temperature(logits, target)
    assert float(again) == float(t)  # deterministic
    t32 = fit_temperature(logits.float(), target)
    assert isinstance(t32, float) and t32 == pytest.approx(t, rel=1e-5)


def test_fit_temperature_without_finite_optimum_raises():
    logits = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    with pytest.raises(ValueError, match="temperature goes to 0"):
        fit_temperature(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="infinity"):
        fit_temperature(logits, torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="max_iter"):
        fit_temperature(logits, torch.tensor([0, 0]), max_iter=0)


def test_fit_temperature_with_minus_inf_class_and_nan():
    probs, target = _probs(n=200, c=4, seed=4)
    logits = torch.log(probs) * 3
    dead = logits.clone()
    dead[:, 3] = float("-inf")
    target3 = torch.where(target == 3, torch.zeros_like(target), target)
    ref = fit_temperature(logits[:, :3], target3)  # a -inf class is absent
    assert fit_temperature(dead, target3) == pytest.approx(ref, rel=1e-12)
    dead[0, 0] = float("nan")
    assert math.isnan(fit_temperature(dead, target3))


# --------------------------------------------------------------------------- CA loss
@pytest.mark.parametrize("reweight", [False, True])
def test_correctness_aware_loss_matches_loop(reweight):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(40, 5, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 5, (40,), generator=g)
    t = 1.7
    terms, weights = [], []
    correct = [int(torch.argmax(z[i])) == int(y[i]) for i in range(40)]
    acc = sum(correct) / 40
    for i in range(40):
        e = np.exp(z[i].numpy() / t)
        conf = e.max() / e.sum()
        terms.append((conf - float(correct[i])) ** 2)
        weights.append((1 - acc) if correct[i] else acc)
    terms, weights = np.array(terms), np.array(weights)
    out = correctness_aware_loss(z, y, temperature=t, reweight=reweight)
    expected = (terms * weights).sum() / weights.sum() if reweight else terms.mean()
    assert float(out) == pytest.approx(expected, rel=1e-12)
    none = correctness_aware_loss(z, y, temperature=t, reweight=reweight, reduction="none")
    np.testing.assert_allclose(none.numpy(), terms * weights if reweight else terms, rtol=1e-12)


def test_correctness_aware_loss_gradient_moves_confidence_towards_correctness():
    z = torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]], requires_grad=True)
    correctness_aware_loss(z, torch.tensor([0, 1])).backward()
    # correct sample: raise the top logit; wrong sample: lower it
    assert z.grad[0, 0] < 0 and z.grad[1, 0] > 0


# --------------------------------------------------------------------------- h-calibration
def _h_loop(probs, target, window, eps):
    n, c = probs.shape
    h = window // 2
    out = np.zeros((n, c))
    for k in range(c):
        p = probs[:, k].tolist()
        yk = [float(t == k) for t in target.tolist()]
        order = sorted(range(n), key=lambda i: p[i])
        d = [p[i] - yk[i] for i in order]
        for j, i in enumerate(order):
            s = sum(d[m] for m in range(j - h, j + h + 1) if 0 <= m < n)
            out[i, k] = max(abs(s / (2 * h + 1)) - eps, 0.0)
    return out


@pytest.mark.parametrize("window,eps", [(0, 0.0), (6, 0.0), (10, 0.02), (200, 0.0)])
def test_h_calibration_matches_loop(window, eps):
    probs, target = _probs(n=60, c=3, seed=9)
    expected = _h_loop(probs, target, window, eps)
    none = h_calibration_loss(probs, target, window=window, epsilon=eps, reduction="none")
    np.testing.assert_allclose(none.numpy(), expected, rtol=1e-10, atol=1e-14)
    assert float(h_calibration_loss(probs, target, window=window, epsilon=eps)) == pytest.approx(expected.mean())


def test_h_calibration_is_zero_for_perfectly_calibrated_windows_and_has_gradients():
    probs = torch.tensor([[0.5, 0.5]] * 4, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 1, 0, 1])
    loss = h_calibration_loss(probs, target, window=4, epsilon=0.2)
    assert float(loss) == 0.0
    probs2, target2 = _probs(n=50, c=3)
    probs2.requires_grad_(True)
    h_calibration_loss(probs2, target2, window=8).backward()
    assert torch.isfinite(probs2.grad).all() and probs2.grad.abs().sum() > 0


def test_modules_wrap_the_functions():
    probs, target = _probs(n=20, c=3)
    assert losslab.nn.BrierScoreLoss()(probs, target) == brier_score(probs, target)
    assert losslab.nn.HCalibrationLoss(window=4)(probs, target) == h_calibration_loss(probs, target, window=4)
    z = torch.log(probs)
    assert losslab.nn.CorrectnessAwareLoss(reweight=True)(z, target) == correctness_aware_loss(z, target, reweight=True)
    with pytest.raises(ValueError, match="temperature"):
        losslab.nn.CorrectnessAwareLoss(temperature=0.0)
    with pytest.raises(ValueError, match="window"):
        losslab.nn.HCalibrationLoss(window=-1)
