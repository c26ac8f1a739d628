"""Triplet margin loss and ``all_triplets`` against pytorch-metric-learning (PML) and an O(N^3) loop."""
from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from losslab.functional import all_triplets, pairwise_distance, triplet_margin_loss

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


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("margin", [0.05, 0.3])
def test_triplet_all_triplets_equals_pml(seed, margin):
    e, y = _batch(seed, n=20)
    ref, ref_g = _grad(lambda x: pml_losses.TripletMarginLoss(margin=margin)(x, y), e)
    out, out_g = _grad(lambda x: triplet_margin_loss(x, y, margin=margin), e)
    assert ref > 0
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out_g, ref_g, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("seed", range(2))
def test_triplet_cosine_equals_pml_cosine_similarity(seed):
    e, y = _batch(seed, n=16)
    theirs = pml_losses.TripletMarginLoss(margin=0.2, distance=pml_distances.CosineSimilarity())
    ref, ref_g = _grad(lambda x: theirs(x, y), e)
    out, out_g = _grad(lambda x: triplet_margin_loss(x, y, margin=0.2, distance="cosine"), e)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out_g, ref_g, rtol=1e-8, atol=1e-10)


def test_triplet_given_triplets_equal_pml_with_miner_output():
    e, y = _batch(5, n=20)
    triplets = pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")(e, y)
    assert triplets[0].numel() > 0
    ref = pml_losses.TripletMarginLoss(margin=0.1)(e, y, triplets)
    out = triplet_margin_loss(e, y, margin=0.1, triplets=triplets)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


def _brute_triplets(e, y, margin, distance="euclidean", normalize=True):
    """O(N^3) loop over (anchor, positive, negative) in lexicographic order: the per-triplet hinges."""
    x = torch.nn.functional.normalize(e, dim=-1) if normalize else e
    d = pairwise_distance(x, x, distance)
    n = len(y)
    out = []
    for a, p, q in itertools.product(range(n), repeat=3):
        if p != a and y[p] == y[a] and y[q] != y[a]:
            out.append(max(float(d[a, p] - d[a, q]) + margin, 0.0))
    return torch.tensor(out, dtype=torch.float64)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 9), classes=st.integers(1, 4), margin=st.floats(0.0, 1.5), seed=st.integers(0, 10_000),
       distance=st.sampled_from(["euclidean", "sqeuclidean", "cosine", "dot"]))
def test_triplet_prefix_sum_equals_brute_force_loop(n, classes, margin, seed, distance):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    hinge = _brute_triplets(e, y, margin, distance, normalize=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = dict(margin=margin, distance=distance, normalize=False)
        none = triplet_margin_loss(e, y, reduction="none", **kw)
        total = triplet_margin_loss(e, y, reduction="sum", **kw)
        mean_nz = triplet_margin_loss(e, y, **kw)
        mean_all = triplet_margin_loss(e, y, average="all", **kw)
    torch.testing.assert_close(none, hinge, rtol=1e-9, atol=1e-9)
    nz = int((hinge > 0).sum())
    assert float(total) == pytest.approx(float(hinge.sum()), rel=1e-9, abs=1e-12)
    assert float(mean_nz) == pytest.approx(float(hinge.sum()) / nz if nz else 0.0, rel=1e-9, abs=1e-12)
    assert float(mean_all) == pytest.approx(float(hinge.mean()) if hinge.numel() else 0.0, rel=1e-9, abs=1e-12)


def test_all_triplets_matches_loop_order():
    y = torch.tensor([2, 0, 2, 1, 0, 2, 7])
    ref = [(a, p, q) for a, p, q in itertools.product(range(7), repeat=3) if p != a and y[p] == y[a] and y[q] != y[a]]
    a, p, q = all_triplets(y)
    assert list(zip(a.tolist(), p.tolist(), q.tolist())) == ref
    assert all(t.dtype == torch.int64 for t in (a, p, q))
    empty = all_triplets(torch.arange(4))  # no positive pair
    assert all(t.numel() == 0 for t in empty)


def test_triplet_none_is_per_triplet_and_mean_is_the_documented_rule():
    # Regression (issue 8): "none" used to return per-anchor sums, from which the nonzero
    # average cannot be recomputed. Now "none" is per triplet and
    # mean == none.sum() / (none > 0).sum() (AvgNonZeroReducer) or none.mean() (average="all").
    e, y = _batch(3, n=14)
    none = triplet_margin_loss(e, y, margin=0.2, reduction="none")
    torch.testing.assert_close(none, _brute_triplets(e, y, 0.2), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(triplet_margin_loss(e, y, margin=0.2), none.sum() / (none > 0).sum())
    torch.testing.assert_close(triplet_margin_loss(e, y, margin=0.2, average="all"), none.mean())
    trip = all_triplets(y)
    mined = tuple(t[::3] for t in trip)
    torch.testing.assert_close(triplet_margin_loss(e, y, margin=0.2, triplets=mined, reduction="none"), none[::3])


def test_triplet_callable_distance_and_memory_is_quadratic():
    e, y = _batch(2, n=12)
    manhattan = lambda a, b: torch.cdist(a, b, p=1)  # noqa: E731
    hinge = _brute_triplets(e, y, 0.3, manhattan)
    out = triplet_margin_loss(e, y, margin=0.3, distance=manhattan)
    assert float(out) == pytest.approx(float(hinge.sum()) / int((hinge > 0).sum()), rel=1e-10)
    # A batch whose N^3 triplet tensor would need ~8 GB in float64 runs (N = 1000, O(N^2) work memory).
    big = torch.randn(1000, 16)
    triplet_margin_loss(big, torch.randint(0, 50, (1000,)))


def test_triplet_no_positive_warns_and_is_zero():
    e, _ = _batch(0, n=5)
    with pytest.warns(UserWarning, match="no positive"):
        assert triplet_margin_loss(e, torch.arange(5)) == 0
