"""Metric-learning objectives against pytorch-metric-learning (PML) and explicit loops over the formulas."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import losslab
from losslab.functional import (
    all_triplets,
    contrastive_pair_loss,
    multi_similarity_loss,
    multi_similarity_mine,
    proto_triplet_loss,
    threshold_consistent_margin_loss,
    triplet_margin_loss,
)

pml = pytest.importorskip("pytorch_metric_learning")
from pytorch_metric_learning import distances as pml_distances  # noqa: E402
from pytorch_metric_learning import losses as pml_losses  # noqa: E402
from pytorch_metric_learning import miners as pml_miners  # noqa: E402


def _batch(seed, n=24, d=8, classes=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    return e, y


def _grad(fn, e):
    e = e.detach().clone().requires_grad_(True)
    out = fn(e)
    (g,) = torch.autograd.grad(out, e)
    return out.detach(), g


# ----------------------------------------------------------------------------- multi-similarity
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("params", [dict(alpha=2.0, beta=50.0, base=0.5, epsilon=0.1),
                                    dict(alpha=1.0, beta=10.0, base=0.2, epsilon=0.3)])
def test_multi_similarity_with_miner_equals_pml(seed, params):
    e, y = _batch(seed)
    miner = pml_miners.MultiSimilarityMiner(epsilon=params["epsilon"])
    loss = pml_losses.MultiSimilarityLoss(alpha=params["alpha"], beta=params["beta"], base=params["base"])

    def theirs(x):
        return loss(x, y, miner(x, y))

    ref, ref_g = _grad(theirs, e)
    out, out_g = _grad(lambda x: multi_similarity_loss(x, y, **params), e)
    assert ref > 0
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out_g, ref_g, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("seed", range(3))
def test_multi_similarity_without_mining_equals_pml(seed):
    e, y = _batch(seed)
    ref, ref_g = _grad(lambda x: pml_losses.MultiSimilarityLoss()(x, y), e)
    out, out_g = _grad(lambda x: multi_similarity_loss(x, y, mining=False), e)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out_g, ref_g, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("seed", range(3))
def test_multi_similarity_miner_keeps_the_pml_pairs(seed):
    e, y = _batch(seed, n=30)
    a1, p, a2, n = pml_miners.MultiSimilarityMiner(epsilon=0.1)(e, y)
    ref_pos = torch.zeros(30, 30, dtype=torch.bool)
    ref_neg = torch.zeros(30, 30, dtype=torch.bool)
    ref_pos[a1, p] = True
    ref_neg[a2, n] = True
    en = torch.nn.functional.normalize(e, dim=-1)
    pos, neg = multi_similarity_mine(en @ en.T, y, epsilon=0.1)
    assert torch.equal(pos, ref_pos) and torch.equal(neg, ref_neg)
    assert 0 < int(pos.sum()) < int(((y[:, None] == y) & ~torch.eye(30, dtype=torch.bool)).sum())


def test_multi_similarity_loop_and_anchor_without_positive():
    # Explicit loop over the paper's per-anchor formula; anchor 4 has a unique label (no positive).
    e, _ = _batch(7, n=6, d=3)
    y = torch.tensor([0, 0, 1, 1, 2, 0])
    out = multi_similarity_loss(e, y, mining=False, reduction="none")
    en = torch.nn.functional.normalize(e, dim=-1)
    s = en @ en.T
    alpha, beta, lam = 2.0, 50.0, 0.5
    for i in range(6):
        P = [j for j in range(6) if j != i and y[j] == y[i]]
        N = [j for j in range(6) if y[j] != y[i]]
        ref = math.log(1 + sum(math.exp(-alpha * (float(s[i, j]) - lam)) for j in P)) / alpha
        ref += math.log(1 + sum(math.exp(beta * (float(s[i, j]) - lam)) for j in N)) / beta
        if not P:
            assert ref == pytest.approx(math.log(1 + sum(math.exp(beta * (float(s[i, j]) - lam)) for j in N)) / beta)
        assert float(out[i]) == pytest.approx(ref, rel=1e-12)


def test_multi_similarity_mined_anchor_without_positive_contributes_zero():
    e, _ = _batch(3, n=6, d=3)
    y = torch.tensor([0, 0, 1, 1, 2, 0])
    out = multi_similarity_loss(e, y, reduction="none")
    assert out[4] == 0  # the miner keeps no negative for an anchor without positives


def test_multi_similarity_no_positive_warns_and_is_zero():
    e, _ = _batch(0, n=5)
    y = torch.arange(5)
    with pytest.warns(UserWarning, match="no positive"):
        out = multi_similarity_loss(e, y)
    assert out == 0
    with pytest.warns(UserWarning, match="no positive"):
        out = multi_similarity_loss(e, y, mining=False)  # negatives only: > 0 but warned
    assert out > 0


def test_multi_similarity_large_scales_stay_finite():
    e, y = _batch(1, dtype=torch.float32)
    e = e.requires_grad_(True)
    out = multi_similarity_loss(e * 1e4, y, alpha=200.0, beta=5000.0, mining=False)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(e.grad).all()


# ----------------------------------------------------------------------------- contrastive pairs
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("margins", [(0.0, 1.0), (0.2, 0.8)])
def test_contrastive_pair_equals_pml(seed, margins):
    e, y = _batch(seed, n=20)
    theirs = pml_losses.ContrastiveLoss(pos_margin=margins[0], neg_margin=margins[1])
    ref, ref_g = _grad(lambda x: theirs(x, y), e)
    out, out_g = _grad(lambda x: contrastive_pair_loss(x, y, pos_margin=margins[0], neg_margin=margins[1]), e)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out_g, ref_g, rtol=1e-8, atol=1e-10)


def test_contrastive_pair_cosine_margins_map_to_pml_similarity_margins():
    e, y = _batch(4, n=16)
    # PML's CosineSimilarity margins: positives should have s >= 0.8, negatives s <= 0.3.
    theirs = pml_losses.ContrastiveLoss(pos_margin=0.8, neg_margin=0.3, distance=pml_distances.CosineSimilarity())
    out = contrastive_pair_loss(e, y, pos_margin=1 - 0.8, neg_margin=1 - 0.3, distance="cosine")
    torch.testing.assert_close(out, theirs(e, y), rtol=1e-10, atol=1e-12)


def _pair_loop(e, y, pos_margin, neg_margin):
    """(N, N) pair losses written out pair by pair (euclidean distance of normalized embeddings)."""
    x = torch.nn.functional.normalize(e, dim=-1)
    n = len(y)
    out = torch.zeros(n, n, dtype=torch.float64)
    for i, j in itertools.product(range(n), repeat=2):
        dij = float((x[i] - x[j]).norm())
        if i != j and y[i] == y[j]:
            out[i, j] = max(dij - pos_margin, 0.0)
        elif y[i] != y[j]:
            out[i, j] = max(neg_margin - dij, 0.0)
    return out


def test_contrastive_pair_none_is_the_pair_matrix_and_mean_is_the_documented_rule():
    # Regression (issue 8 reported "mean" 1.61 against "none".mean() 2.72): "none" returned
    # per-anchor sums, from which the mean could not be recomputed. Now "none" is the (N, N)
    # pair-loss matrix and
    # mean == mean over positive pairs with a loss > 0 + mean over negative pairs with a loss > 0.
    e, y = _batch(6, n=12)
    none = contrastive_pair_loss(e, y, pos_margin=0.1, neg_margin=1.1, reduction="none")
    ref = _pair_loop(e, y, 0.1, 1.1)
    torch.testing.assert_close(none, ref, rtol=1e-10, atol=1e-12)
    pos = (y[:, None] == y[None, :]) & ~torch.eye(12, dtype=torch.bool)
    neg = y[:, None] != y[None, :]
    rule = ref[pos].sum() / (ref[pos] > 0).sum() + ref[neg].sum() / (ref[neg] > 0).sum()
    torch.testing.assert_close(contrastive_pair_loss(e, y, pos_margin=0.1, neg_margin=1.1), rule)
    torch.testing.assert_close(contrastive_pair_loss(e, y, pos_margin=0.1, neg_margin=1.1, reduction="sum"), ref.sum())


def test_contrastive_pair_average_all_loop():
    e, y = _batch(8, n=10)
    x = torch.nn.functional.normalize(e, dim=-1)
    d = torch.cdist(x, x)
    P = [(i, j) for i in range(10) for j in range(10) if i != j and y[i] == y[j]]
    N = [(i, j) for i in range(10) for j in range(10) if y[i] != y[j]]
    ref = sum(max(float(d[i, j]) - 0.1, 0) for i, j in P) / len(P) + sum(max(1.1 - float(d[i, j]), 0) for i, j in N) / len(N)
    out = contrastive_pair_loss(e, y, pos_margin=0.1, neg_margin=1.1, average="all")
    assert float(out) == pytest.approx(ref, rel=1e-12)


# ----------------------------------------------------------------------------- TCM
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("params", [dict(), dict(lambda_plus=0.5, lambda_minus=2.0, margin_plus=0.3, margin_minus=-0.1)])
def test_threshold_consistent_margin_equals_pml(seed, params):
    e, y = _batch(seed, n=20)
    ref, ref_g = _grad(lambda x: pml_losses.ThresholdConsistentMarginLoss(**params)(x, y), e)
    out, out_g = _grad(lambda x: threshold_consistent_margin_loss(x, y, **params), e)
    assert ref > 0
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out_g, ref_g, rtol=1e-8, atol=1e-10)


def test_threshold_consistent_margin_none_matrix_and_mean_rule():
    e, y = _batch(9, n=10)
    mp, mm = 0.3, -0.1
    none = threshold_consistent_margin_loss(e, y, margin_plus=mp, margin_minus=mm, lambda_plus=0.5, reduction="none")
    x = torch.nn.functional.normalize(e, dim=-1)
    ref = torch.zeros(10, 10, dtype=torch.float64)
    hard_p, hard_n = [], []
    for i, j in itertools.product(range(10), repeat=2):
        sij = float(x[i] @ x[j])
        if i != j and y[i] == y[j] and sij <= mp:
            ref[i, j] = 0.5 * (mp - sij)
            hard_p.append(float(ref[i, j]))
        elif y[i] != y[j] and sij >= mm:
            ref[i, j] = sij - mm
            hard_n.append(float(ref[i, j]))
    torch.testing.assert_close(none, ref, rtol=1e-10, atol=1e-12)
    assert hard_p and hard_n
    mean = threshold_consistent_margin_loss(e, y, margin_plus=mp, margin_minus=mm, lambda_plus=0.5)
    assert float(mean) == pytest.approx(sum(hard_p) / len(hard_p) + sum(hard_n) / len(hard_n), rel=1e-12)


def test_threshold_consistent_margin_is_zero_when_no_pair_is_hard():
    e = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
    assert threshold_consistent_margin_loss(e, torch.tensor([0, 0, 1, 1])) == 0


# ----------------------------------------------------------------------------- proto-triplet
def test_proto_triplet_loop():
    g = torch.Generator().manual_seed(0)
    support = torch.randn(15, 6, generator=g, dtype=torch.float64)
    s_lab = torch.arange(5).repeat_interleave(3)
    query = torch.randn(10, 6, generator=g, dtype=torch.float64)
    q_lab = torch.randint(0, 5, (10,), generator=g)
    protos = [support[s_lab == k].mean(0) for k in range(5)]
    ref = []
    for q, y in zip(query, q_lab):
        dpos = float((q - protos[int(y)]).norm())
        dneg = min(float((q - protos[k]).norm()) for k in range(5) if k != int(y))
        ref.append(max(dpos - dneg + 0.5, 0.0))
    out = proto_triplet_loss(support, s_lab, query, q_lab, reduction="none")
    torch.testing.assert_close(out, torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert float(proto_triplet_loss(support, s_lab, query, q_lab)) == pytest.approx(sum(ref) / 10, rel=1e-12)


def test_proto_triplet_unsorted_labels():
    g = torch.Generator().manual_seed(1)
    support = torch.randn(4, 3, generator=g, dtype=torch.float64)
    query = torch.randn(3, 3, generator=g, dtype=torch.float64)
    a = proto_triplet_loss(support, torch.tensor([7, 2, 7, 2]), query, torch.tensor([2, 7, 7]), reduction="none")
    b = proto_triplet_loss(support, torch.tensor([1, 0, 1, 0]), query, torch.tensor([0, 1, 1]), reduction="none")
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_value_error():
    e, y = _batch(0, n=6)
    with pytest.raises(ValueError, match="labels"):
        multi_similarity_loss(e, y[:4])
    with pytest.raises(ValueError, match="alpha"):
        multi_similarity_loss(e, y, alpha=0.0)
    with pytest.raises(ValueError, match="epsilon"):
        multi_similarity_loss(e, y, epsilon=-1.0)
    with pytest.raises(ValueError, match="margin"):
        triplet_margin_loss(e, y, margin=-0.1)
    with pytest.raises(ValueError, match="distance"):
        triplet_margin_loss(e, y, distance="manhattan")
    with pytest.raises(ValueError, match="distance"):
        contrastive_pair_loss(e, y, distance="squared_euclidean")  # SciPy's name is "sqeuclidean"
    with pytest.raises(ValueError, match="distance callable"):
        triplet_margin_loss(e, y, distance=lambda a, b: a)
    with pytest.raises(ValueError, match="average"):
        triplet_margin_loss(e, y, average="positive")
    with pytest.raises(ValueError, match="outside"):
        triplet_margin_loss(e, y, triplets=(torch.tensor([0]), torch.tensor([1]), torch.tensor([6])))
    with pytest.raises(ValueError, match="triplets index tensors must have equal lengths"):
        triplet_margin_loss(e, y, triplets=(torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([2])))
    with pytest.raises(ValueError, match="neg_margin"):
        contrastive_pair_loss(e, y, pos_margin=0.5, neg_margin=0.2)
    with pytest.raises(ValueError, match="margin_plus"):
        threshold_consistent_margin_loss(e, y, margin_plus=1.5)
    with pytest.raises(ValueError, match="dimensions"):
        triplet_margin_loss(e[0], y)
    with pytest.raises(ValueError, match="no support"):
        proto_triplet_loss(e, torch.tensor([0, 0, 1, 1, 2, 2]), e[:2], torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="at least 2"):
        proto_triplet_loss(e, torch.zeros(6, dtype=torch.long), e[:2], torch.tensor([0, 0]))
    with pytest.raises(TypeError):
        triplet_margin_loss(e, y.double())


def test_modules_match_functions():
    e, y = _batch(2, n=10)
    m = losslab.nn.MultiSimilarityLoss(alpha=3.0)
    assert torch.equal(m(e, y), multi_similarity_loss(e, y, alpha=3.0))
    assert torch.equal(losslab.nn.TripletMarginLoss(margin=0.2)(e, y), triplet_margin_loss(e, y, margin=0.2))


def test_modules_take_mined_triplets_in_forward_and_check_hyperparameters():
    e, y = _batch(4, n=12)
    trip = tuple(t[::2] for t in all_triplets(y))
    m = losslab.nn.TripletMarginLoss(margin=0.2, reduction="none")
    assert torch.equal(m(e, y, triplets=trip), triplet_margin_loss(e, y, margin=0.2, triplets=trip, reduction="none"))
    with pytest.raises(TypeError, match="forward"):
        losslab.nn.TripletMarginLoss(triplets=trip)
    for cls, bad, match in [
        (losslab.nn.TripletMarginLoss, dict(margin=-1.0), "margin"),
        (losslab.nn.TripletMarginLoss, dict(distance="squared_euclidean"), "distance"),
        (losslab.nn.TripletMarginLoss, dict(average="positive"), "average"),
        (losslab.nn.ContrastivePairLoss, dict(pos_margin=0.5, neg_margin=0.2), "neg_margin"),
        (losslab.nn.MultiSimilarityLoss, dict(beta=0.0), "beta"),
        (losslab.nn.ThresholdConsistentMarginLoss, dict(margin_minus=-2.0), "margin_minus"),
        (losslab.nn.ProtoTripletLoss, dict(margin=-0.5), "margin"),
        (losslab.nn.MultiSimilarityLoss, dict(reduction="avg"), "reduction"),
    ]:
        with pytest.raises(ValueError, match=match):
            cls(**bad)


def test_multi_similarity_epsilon_zero_is_a_valid_mining_margin():
    e, y = _batch(5, n=16)
    miner = pml_miners.MultiSimilarityMiner(epsilon=0.0)
    ref = pml_losses.MultiSimilarityLoss()(e, y, miner(e, y))
    torch.testing.assert_close(multi_similarity_loss(e, y, epsilon=0.0), ref, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- non-finite inputs
def _nan_batch(row):
    e, _ = _batch(0, n=10, d=4)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 3])  # row 9 has a unique label: a negative only
    e[row, 0] = float("nan")
    return e, y


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("row", [0, 9])
def test_nan_embedding_gives_nan_loss(validate, row):
    # Regression: mining and hard-pair selection compared similarities with NaN (always False)
    # and silently dropped the pairs, so a NaN embedding gave a finite loss: multi-similarity
    # with mining 0.3025 (row 0), TCM 1.2920 (row 0), all-triplets 0.4237 (row 9: a NaN that is
    # only ever a negative sorted past every searchsorted position).
    e, y = _nan_batch(row)
    import warnings

    with losslab.validation(validate), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outs = {
            "ms": multi_similarity_loss(e, y),
            "ms_no_mining": multi_similarity_loss(e, y, mining=False),
            "tcm": threshold_consistent_margin_loss(e, y),
            "triplet": triplet_margin_loss(e, y),
            "triplet_sum": triplet_margin_loss(e, y, reduction="sum"),
            "triplet_all_sqeuclidean": triplet_margin_loss(e, y, average="all", distance="sqeuclidean"),
            "contrastive": contrastive_pair_loss(e, y),
        }
    for name, out in outs.items():
        assert torch.isnan(out), name


def test_nan_mining_keeps_the_pair():
    e, y = _nan_batch(0)
    en = torch.nn.functional.normalize(e, dim=-1)
    pos, neg = multi_similarity_mine(en @ en.T, y)
    assert pos[0][y == 0].sum() == 2 and neg[0].sum() == int((y != 0).sum())  # row 0 keeps every pair


def test_nan_in_a_triplet_that_is_not_scored_stays_finite():
    e, y = _nan_batch(9)
    trip = tuple(t for t in all_triplets(y))
    keep = (trip[0] != 9) & (trip[1] != 9) & (trip[2] != 9)
    out = triplet_margin_loss(e, y, triplets=tuple(t[keep] for t in trip))
    assert torch.isfinite(out)


def test_proto_triplet_nan_and_compile_without_graph_break():
    g = torch.Generator().manual_seed(3)
    support = torch.randn(6, 4, generator=g, dtype=torch.float64)
    query = torch.randn(4, 4, generator=g, dtype=torch.float64)
    s_lab, q_lab = torch.tensor([4, 1, 4, 1, 7, 7]), torch.tensor([7, 1, 4, 4])
    bad = support.clone()
    bad[5, 2] = float("nan")  # a support row of class 7: its prototype is NaN
    assert torch.isnan(proto_triplet_loss(bad, s_lab, query, q_lab))
    # Regression: torch.unique (a data-dependent shape) broke torch.compile(fullgraph=True).
    with losslab.validation(False):
        compiled = torch.compile(proto_triplet_loss, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(support, s_lab, query, q_lab, reduction="none"),
                                   proto_triplet_loss(support, s_lab, query, q_lab, reduction="none"))
