"""icnn_loss / icnn_score against an explicit loop over the formula, hand-computed cases and the authors' values."""
from __future__ import annotations

import math

import pytest
import torch

from losslab.functional.metric_fewshot import icnn_loss, icnn_score


# ----------------------------------------------------------------------------- reference
def _euclid(a, b):
    return ((a - b) ** 2).sum().sqrt()


def _ref_score(x, y, k=4, neighbours=None, dist=_euclid):
    """The ICNN score written out anchor by anchor (torch scalars, so autograd gives the gradient)."""
    n = x.shape[0]
    labels = [int(v) for v in y]
    clamped = k + 2 >= n
    if clamped:
        k = n - 2
    m = k + 1 if neighbours is None else neighbours
    d = [[dist(x[i], x[j]) for j in range(n)] for i in range(n)]
    neigh = [sorted((j for j in range(n) if j != i), key=lambda j, i=i: float(d[i][j].detach()))[:m] for i in range(n)]
    other_first_k = [d[i][j] for i in range(n) for j in neigh[i][:k] if labels[j] != labels[i]]
    dmax = max(other_first_k, key=lambda v: float(v.detach())) if other_first_k else None
    intra, inter, gamma = [], [], []
    for i in range(n):
        ds = [d[i][j] for j in neigh[i]]
        same = [labels[j] == labels[i] for j in neigh[i]]
        others = [v for v, s in zip(ds, same) if not s]
        delta = min(others, key=lambda v: float(v.detach())) if others else None  # None: no other class among the m
        denom = ds[k - 1] if delta is None or float(ds[k - 1].detach()) >= float(delta.detach()) else delta
        same_k = [ds[j] for j in range(k) if same[j]]
        if same_k:
            intra.append(sum(v / denom if delta is not None else v * 0 for v in same_k) / len(same_k))
        other_k = [ds[j] for j in range(k) if not same[j]]
        if other_k:
            inter.append(sum(v / dmax for v in other_k) / len(other_k))
        gamma.append(len(same_k) / k)
    lam_intra = 1 - sum(intra) / len(intra) if intra else 1.0
    lam_inter = sum(inter) / len(inter) if inter else 1.0
    g = 1.0 if clamped else sum(gamma) / n
    return ((lam_intra + lam_inter) / 2 + g) / 2


def _episode(seed, way, per_class, dim=5, shuffle=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(way * per_class, dim, generator=g, dtype=torch.float64)
    y = torch.arange(way).repeat_interleave(per_class)
    if shuffle:
        y = y[torch.randperm(y.numel(), generator=g)]
    return x, y


CASES = [  # (way, per_class, k, neighbours)
    (5, 1, 4, None),   # 5-way 1-shot support: no same-class neighbour, k clamped to 3, gamma = 1
    (5, 5, 4, None),   # 5-way 5-shot support, the authors' default k = 4, m = 5
    (3, 6, 4, 6),      # full episode (shot + query = 6 per class) with neighbours = shot + query
    (4, 3, 2, 2),      # m = k
    (2, 4, 1, 7),      # m = N - 1
    (6, 2, 3, None),
]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("way,per_class,k,neighbours", CASES)
def test_icnn_matches_loop_value_and_gradient(seed, way, per_class, k, neighbours):
    x, y = _episode(seed, way, per_class)
    xr = x.clone().requires_grad_(True)
    ref = -torch.log(torch.as_tensor(_ref_score(xr, y, k, neighbours), dtype=torch.float64))
    # A score made only of constant branches (e.g. 1-shot support, gamma = 1) has no gradient.
    ref_g = torch.autograd.grad(ref, xr)[0] if ref.requires_grad else torch.zeros_like(x)
    xo = x.clone().requires_grad_(True)
    out = icnn_loss(xo, y, k=k, neighbours=neighbours)
    (out_g,) = torch.autograd.grad(out, xo)
    torch.testing.assert_close(out, ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out_g, ref_g, rtol=1e-10, atol=1e-12)
    s = icnn_score(x, y, k=k, neighbours=neighbours)
    assert 0 < float(s) <= 1
    torch.testing.assert_close(s, torch.exp(-out.detach()), rtol=1e-12, atol=0)


def test_icnn_unbalanced_unsorted_labels_match_loop():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(11, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([9, 2, 2, 9, 5, 2, 9, 9, 5, 2, 2])
    for k, m in ((3, None), (2, 6), (4, 8)):
        ref = _ref_score(x, y, k, m)
        assert float(icnn_score(x, y, k=k, neighbours=m)) == pytest.approx(float(ref), rel=1e-12)


@pytest.mark.parametrize("distance", ["sqeuclidean", "cosine"])
def test_icnn_other_distances_match_loop(distance):
    x, y = _episode(3, 4, 4)
    if distance == "sqeuclidean":
        def dist(a, b):
            return ((a - b) ** 2).sum()
    else:
        def dist(a, b):
            return 1 - (a * b).sum() / (a.norm() * b.norm())
    ref = _ref_score(x, y, 3, 5, dist=dist)
    assert float(icnn_score(x, y, k=3, neighbours=5, distance=distance)) == pytest.approx(float(ref), rel=1e-10)


# ----------------------------------------------------------------------------- hand-computed
X4 = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
Y4 = torch.tensor([0, 0, 1, 1])


def test_icnn_hand_computed_k1():
    # Points 0, 1 (class 0) and 3, 7 (class 1); k = 1, m = 2; neighbours (distance, same?):
    #   0: (1 s), (3 o)  delta 3  rho = 1 / max(3, 1) = 1/3
    #   1: (1 s), (2 o)  delta 2  rho = 1/2
    #   3: (2 o), (3 o)  no same-class neighbour in the first k -> not in A; other-class d = 2
    #   7: (4 s), (6 o)  delta 6  rho = 4/6
    # lambda_intra = 1 - (1/3 + 1/2 + 2/3) / 3 = 1/2; lambda_inter = (2 / 2) / 1 = 1 (d_max = 2);
    # gamma = (1 + 1 + 0 + 1) / 4 = 3/4; S = ((1/2 + 1) / 2 + 3/4) / 2 = 3/4.
    assert float(icnn_score(X4, Y4, k=1)) == pytest.approx(0.75, rel=1e-15)
    assert float(icnn_loss(X4, Y4, k=1)) == pytest.approx(-math.log(0.75), rel=1e-15)


def test_icnn_hand_computed_small_set_rule():
    # Same points, default k = 4: k + 2 >= N = 4, so k = 2, gamma = 1, m = 3 (all other points).
    #   0: (1 s), (3 o)  delta 3, d_ik = 3: rho = 1/3      other-class first-k: 3
    #   1: (1 s), (2 o)  delta 2, d_ik = 2: rho = 1/2      other: 2
    #   3: (2 o), (3 o)  not in A                           other: 2, 3
    #   7: (4 s), (6 o)  delta 6: rho = 4/6                 other: 6
    # lambda_intra = 1/2; d_max = 6: lambda_inter = (3/6 + 2/6 + (2/6 + 3/6)/2 + 6/6) / 4 = 27/48;
    # S = ((1/2 + 27/48) / 2 + 1) / 2 = 0.765625.
    assert float(icnn_score(X4, Y4)) == pytest.approx(0.765625, rel=1e-15)


def test_icnn_values_from_the_authors_code():
    # Scores computed once with modified_score(x, y, k=k, ipc=m) of github.com/maumruiz/FSL-Loss
    # (algorithms/icnn_loss.py, commit 249405f) on this input; that code uses sqrt(d^2 + 1e-6)
    # distances and +1e-7 in denominators, hence rel=1e-6.
    x = torch.tensor([[0.0, 0.0], [0.5, 0.2], [2.0, 1.0], [2.5, 0.5], [0.2, 2.0], [1.0, 2.5], [3.0, 3.0]],
                     dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 1])
    for (k, m), theirs in {(4, None): 0.47675384785186237, (2, None): 0.6062249318486329,
                           (2, 4): 0.6062249318486329, (1, 6): 0.8289644023221318}.items():
        assert float(icnn_score(x, y, k=k, neighbours=m)) == pytest.approx(theirs, rel=1e-6)


def test_icnn_authors_distance_as_callable():
    x, y = _episode(4, 5, 5)

    def theirs(a, b):  # the authors' distance, sqrt(||a - b||^2 + 1e-6)
        return ((a[:, None] - b[None]) ** 2).sum(-1).add(1e-6).sqrt()

    a = icnn_loss(x, y, distance=theirs)
    b = icnn_loss(x, y)
    assert float(a) != float(b)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- properties and edge cases
def test_icnn_single_class_and_separated_clusters():
    x, _ = _episode(0, 3, 3)
    assert float(icnn_loss(x, torch.zeros(9, dtype=torch.long))) == 0.0  # every term is 1
    # Three tight, far-apart clusters. With m = k every searched neighbour is of the same class:
    # delta = inf -> rho = 0, B empty -> lambda_inter = 1, gamma = 1 -> S = 1 exactly. With the
    # default m = k + 1 the 4th neighbour is another cluster (delta ~ 100): rho ~ 1e-4.
    centres = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    pts = centres.repeat_interleave(4, 0) + 0.01 * torch.randn(12, 2, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat_interleave(4)
    assert float(icnn_loss(pts, y, k=3, neighbours=3)) == 0.0
    assert 0 < float(icnn_loss(pts, y, k=3)) < 1e-3
    assert float(icnn_loss(pts, y, k=3)) < float(icnn_loss(pts, y[torch.randperm(12, generator=g)], k=3))


def test_icnn_scale_and_permutation_invariant():
    x, y = _episode(5, 4, 3)
    base = icnn_loss(x, y, k=3)
    torch.testing.assert_close(icnn_loss(37.5 * x, y, k=3), base, rtol=1e-12, atol=0)
    p = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(icnn_loss(x[p], y[p], k=3), base, rtol=1e-12, atol=0)


def test_icnn_coincident_points_stay_finite():
    # Points of different classes on top of each other: delta = 0 and d_max may be 0.
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]], dtype=torch.float64,
                     requires_grad=True)
    y = torch.tensor([0, 1, 0, 1, 2])
    out = icnn_loss(x, y, k=2)
    (g,) = torch.autograd.grad(out, x)
    assert torch.isfinite(out) and torch.isfinite(g).all()


def test_icnn_gradcheck_float64():
    x, y = _episode(2, 4, 3, dim=3)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: icnn_loss(t, y, k=3, neighbours=5), (x,), eps=1e-6, atol=1e-6, rtol=1e-5)
    assert torch.autograd.gradcheck(lambda t: icnn_loss(t, y, k=2, distance="cosine"), (x,), eps=1e-6, atol=1e-6,
                                    rtol=1e-5)


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_icnn_half_input_returns_float32(low):
    x, y = _episode(6, 5, 4)
    xl = x.to(low)
    out = icnn_loss(xl, y)
    assert out.dtype == torch.float32 and out.dim() == 0 and torch.isfinite(out)
    torch.testing.assert_close(out, icnn_loss(xl.float(), y), rtol=1e-6, atol=1e-7)
    assert icnn_loss(x.float(), y).dtype == torch.float32


def test_icnn_is_one_value_per_episode():
    x, y = _episode(0, 3, 4)
    assert icnn_loss(x, y).shape == ()
    with pytest.raises(TypeError):
        icnn_loss(x, y, reduction="none")  # no per-sample decomposition: no reduction argument


def test_icnn_module_matches_function():
    from losslab.nn.metric_fewshot import ICNNLoss

    x, y = _episode(1, 4, 4)
    assert torch.equal(ICNNLoss(k=3, neighbours=4)(x, y), icnn_loss(x, y, k=3, neighbours=4))


def test_icnn_module_checks_hyperparameters_at_construction():
    from losslab.nn.metric_fewshot import ICNNLoss

    with pytest.raises(ValueError, match="k must"):
        ICNNLoss(k=0)
    with pytest.raises(ValueError, match="neighbours"):
        ICNNLoss(neighbours=0)
    with pytest.raises(ValueError, match="distance"):
        ICNNLoss(distance="squared_euclidean")  # the SciPy name is "sqeuclidean"


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("row", [0, 1, 4])
def test_icnn_nan_embedding_gives_nan(validate, row):
    # Regression: topk ranks NaN distances last, so a NaN point was dropped from the other
    # anchors' neighbour lists and its own terms were masked out: the loss stayed finite
    # (row 0 here, k=1: score 0.5253 without the fix).
    import losslab

    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.arange(2).repeat_interleave(3)
    x[row, 0] = float("nan")
    with losslab.validation(validate):
        for distance in ("euclidean", "sqeuclidean", "cosine"):
            for k in (1, 2):
                assert torch.isnan(icnn_loss(x, y, k=k, distance=distance)), (distance, k)
