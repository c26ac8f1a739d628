"""Ranking objectives against explicit loops over the pairs and scikit-learn's AUC."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from losslab.functional import mann_whitney_auc, mw_loss, pairwise_auc_loss, pairwise_ranking_loss

SURROGATES_LOOP = {
    # LibAUC's surrogate definitions (libauc/losses/surrogate.py docstrings), margin m, scale s.
    "squared": lambda d, m, s: (m - d) ** 2,
    "squared_hinge": lambda d, m, s: max(m - d, 0.0) ** 2,
    "hinge": lambda d, m, s: max(m - d, 0.0),
    "logistic": lambda d, m, s: math.log1p(math.exp(-s * d)),
}


def _loop_pairwise(scores, labels, phi):
    """Per query: mean over (positive i, negative j) of phi(s_i - s_j); None without pairs."""
    out = []
    for s_row, y_row in zip(scores.tolist(), labels.tolist()):
        vals = [phi(si - sj) for si, yi in zip(s_row, y_row) if yi for sj, yj in zip(s_row, y_row) if not yj]
        out.append(sum(vals) / len(vals) if vals else None)
    return out


def _data(seed=0, q=5, n=9):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(q, n, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, 2, (q, n), generator=g)
    labels[:, 0], labels[:, 1] = 1, 0
    labels[-1] = 0  # a query without positives
    return scores, labels


def test_mw_loss_matches_loop_and_reductions():
    scores, labels = _data()
    ref = _loop_pairwise(scores, labels, lambda d: math.log1p(math.exp(-d)))
    none = mw_loss(scores, labels, reduction="none")
    kept = [r for r in ref if r is not None]
    assert none[-1].item() == 0.0
    np.testing.assert_allclose(none[:-1].numpy(), kept, rtol=1e-12)
    np.testing.assert_allclose(mw_loss(scores, labels).item(), np.mean(kept), rtol=1e-12)
    np.testing.assert_allclose(mw_loss(scores, labels, reduction="sum").item(), np.sum(kept), rtol=1e-12)


@pytest.mark.parametrize("surrogate", ["squared", "squared_hinge", "hinge", "logistic"])
@pytest.mark.parametrize("margin,scale", [(1.0, 1.0), (0.5, 3.0)])
def test_pairwise_auc_surrogates_match_loop(surrogate, margin, scale):
    scores, labels = _data(seed=1)
    ref = _loop_pairwise(scores, labels, lambda d: SURROGATES_LOOP[surrogate](d, margin, scale))
    out = pairwise_auc_loss(scores, labels, surrogate=surrogate, margin=margin, scale=scale, reduction="none")
    np.testing.assert_allclose(out[:-1].numpy(), [r for r in ref if r is not None], rtol=1e-12)


def test_mw_is_logistic_pairwise_auc():
    scores, labels = _data(seed=2)
    torch.testing.assert_close(mw_loss(scores, labels), pairwise_auc_loss(scores, labels, surrogate="logistic"))


def test_mann_whitney_auc_equals_sklearn_with_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 5, (4, 30), generator=g).double()  # many ties
    labels = torch.randint(0, 2, (4, 30), generator=g)
    labels[:, 0], labels[:, 1] = 1, 0
    ours = mann_whitney_auc(scores, labels, reduction="none")
    ref = [metrics.roc_auc_score(y, s) for s, y in zip(scores.numpy(), labels.numpy())]
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-12)
    assert not ours.requires_grad
    np.testing.assert_allclose(mann_whitney_auc(scores, labels).item(), np.mean(ref), rtol=1e-12)
    np.testing.assert_allclose(mann_whitney_auc(scores[0], labels[0]).item(), ref[0], rtol=1e-12)


def test_mann_whitney_auc_query_without_both_classes():
    metrics = pytest.importorskip("sklearn.metrics")
    scores, labels = _data(seed=5)  # the last query has no positive: its AUC is undefined
    none = mann_whitney_auc(scores, labels, reduction="none")
    assert none[-1].item() == 0.0
    ref = [metrics.roc_auc_score(y, s) for s, y in zip(scores[:-1].numpy(), labels[:-1].numpy())]
    np.testing.assert_allclose(none[:-1].numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(mann_whitney_auc(scores, labels).item(), np.mean(ref), rtol=1e-12)
    assert mann_whitney_auc(scores[-1], labels[-1]).item() == 0.0  # nothing defined: "mean" is 0


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_mw_loss_upper_bounds_area_over_curve(seed):
    """-log σ(d) ≥ log 2 · (1[d < 0] + ½ 1[d = 0]) pairwise, so MW ≥ log 2 · (1 − AUC) per query."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(3, 8, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 2, (3, 8), generator=g)
    labels[:, 0], labels[:, 1] = 1, 0
    bound = math.log(2) * (1 - mann_whitney_auc(scores, labels, reduction="none"))
    assert (mw_loss(scores, labels, reduction="none") >= bound - 1e-12).all()


def test_pairwise_ranking_loss_matches_reference_formulation():
    """The reference code's form: BCE over ordered pairs in both directions, / number of ordered pairs."""
    g = torch.Generator().manual_seed(4)
    pred = torch.randn(3, 7, generator=g, dtype=torch.float64)
    target = torch.randint(0, 4, (3, 7), generator=g).double()  # ties give no pair
    total, count = 0.0, 0
    per_sample = []
    for p_row, t_row in zip(pred.tolist(), target.tolist()):
        s_sum, s_cnt = 0.0, 0
        for i in range(7):
            for j in range(7):
                sig = 1 / (1 + math.exp(-(p_row[j] - p_row[i])))
                if t_row[j] > t_row[i]:
                    s_sum += -math.log(sig)
                    s_cnt += 1
                elif t_row[j] < t_row[i]:
                    s_sum += -math.log(1 - sig)
                    s_cnt += 1
        per_sample.append(s_sum / 2)  # each unordered pair counted twice above
        total += s_sum
        count += s_cnt
    np.testing.assert_allclose(pairwise_ranking_loss(pred, target).item(), total / count, rtol=1e-12)
    np.testing.assert_allclose(pairwise_ranking_loss(pred, target, reduction="none").numpy(), per_sample, rtol=1e-12)


def test_pairwise_ranking_mask_and_no_gradient_to_target():
    pred = torch.tensor([[0.0, 1.0, 2.0, 5.0]], requires_grad=True)
    target = torch.tensor([[0.1, 0.5, 0.9, -3.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True, False]])
    out = pairwise_ranking_loss(pred, target, mask=mask)
    torch.testing.assert_close(out, pairwise_ranking_loss(pred[:, :3], target[:, :3]))
    out.backward()
    assert target.grad is None and pred.grad[0, 3].item() == 0.0


def test_all_constant_target_gives_zero_not_nan():
    out = pairwise_ranking_loss(torch.randn(2, 5, requires_grad=True), torch.ones(2, 5))
    assert out.item() == 0.0


def test_bad_input():
    s = torch.randn(2, 4)
    with pytest.raises(ValueError, match="binary"):
        mw_loss(s, torch.full((2, 4), 2))
    with pytest.raises(ValueError, match="same shape"):
        mw_loss(s, torch.ones(2, 3))
    with pytest.raises(ValueError, match="surrogate"):
        pairwise_auc_loss(s, torch.ones(2, 4), surrogate="exp")
    with pytest.raises(ValueError, match="scale"):
        pairwise_auc_loss(s, torch.ones(2, 4), surrogate="logistic", scale=0.0)
    with pytest.raises(TypeError, match="floating"):
        mw_loss(torch.ones(2, 4, dtype=torch.long), torch.ones(2, 4))
    with pytest.raises(TypeError, match="bool"):
        pairwise_ranking_loss(s, s, mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="target"):
        pairwise_ranking_loss(s, s[:, :3])
    with pytest.raises(ValueError, match="mask"):
        pairwise_ranking_loss(s, s, mask=torch.ones(2, 3, dtype=torch.bool))


@pytest.mark.parametrize("validate", [True, False])
def test_nan_score_gives_nan(validate):
    # Regression: mann_whitney_auc counted a pair with a NaN score as "not ranked correctly"
    # (d > 0 and d == 0 are both False) and returned a finite AUC, 0.5 here; the losses raised
    # ValueError only while validation was on.
    import losslab

    scores = torch.tensor([[0.1, float("nan"), 0.3, 0.8], [0.2, 0.1, 0.3, float("nan")]])
    labels = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]])  # the second query has no pair: its NaN does not count
    with losslab.validation(validate):
        for fn in (mann_whitney_auc, mw_loss, pairwise_auc_loss):
            none = fn(scores, labels, reduction="none")
            assert torch.isnan(none[0]) and none[1].item() == 0.0, fn.__name__
            assert torch.isnan(fn(scores, labels)), fn.__name__
        assert torch.isnan(mann_whitney_auc(scores[0], labels[0]))


@pytest.mark.parametrize("validate", [True, False])
def test_pairwise_ranking_nan_target_gives_nan(validate):
    # Regression: a NaN target fails every comparison, so its item formed no pair and the
    # loss stayed finite (sample 0 here: 12.6587 before the fix).
    import losslab

    scores = torch.randn(2, 5, dtype=torch.float64)
    target = torch.tensor([[0.1, float("nan"), 0.3, 0.2, 0.5], [0.4, 0.1, 0.3, 0.2, 0.5]], dtype=torch.float64)
    with losslab.validation(validate):
        none = pairwise_ranking_loss(scores, target, reduction="none")
        assert torch.isnan(none[0]) and torch.isfinite(none[1])
        mask = torch.ones(2, 5, dtype=torch.bool)
        mask[0, 1] = False  # a masked-out item does not count
        assert torch.isfinite(pairwise_ranking_loss(scores, target, mask=mask))


def test_pairwise_ranking_module_takes_mask_in_forward():
    import losslab

    scores, target = torch.randn(2, 6), torch.randn(2, 6)
    mask = torch.rand(2, 6) > 0.3
    m = losslab.nn.PairwiseRankingLoss(reduction="sum")
    assert torch.equal(m(scores, target, mask=mask), pairwise_ranking_loss(scores, target, mask=mask, reduction="sum"))
    with pytest.raises(TypeError, match="forward"):
        losslab.nn.PairwiseRankingLoss(mask=mask)
    with pytest.raises(ValueError, match="surrogate"):
        losslab.nn.PairwiseAUCLoss(surrogate="exp")


def test_pairwise_ranking_mean_is_pair_weighted():
    g = torch.Generator().manual_seed(8)
    scores = torch.randn(3, 6, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (3, 6), generator=g).double()  # ties: different pair counts per sample
    none = pairwise_ranking_loss(scores, target, reduction="none")
    n_pairs = sum(int(t[i] > t[j]) for t in target for i in range(6) for j in range(6))
    torch.testing.assert_close(pairwise_ranking_loss(scores, target), none.sum() / n_pairs)
