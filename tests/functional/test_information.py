"""Information measures against SciPy and NumPy eigendecompositions."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from losslab import functional as LF

scipy_stats = pytest.importorskip("scipy.stats")
F64 = torch.float64


def test_entropy_matches_scipy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=g, dtype=F64) * 2
    ref = scipy_stats.entropy(torch.softmax(x, -1).numpy(), axis=-1)
    np.testing.assert_allclose(LF.entropy(x, reduction="none").numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(LF.entropy(x, temperature=3.0).item(),
                               scipy_stats.entropy(torch.softmax(x / 3, -1).numpy(), axis=-1).mean(), rtol=1e-12)


def test_entropy_zero_probability_class_finite_gradient():
    x = torch.tensor([[0.0, float("-inf"), 1.0]], requires_grad=True)
    h = LF.entropy(x)
    h.backward()
    assert torch.isfinite(h) and torch.isfinite(x.grad).all()


def _vendi_numpy(x, q):
    """Primal reference: eigenvalues of the n x n cosine kernel / n, with NumPy."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    lam = np.linalg.eigvalsh(x @ x.T / x.shape[0])
    # Rank-revealing threshold: eigenvalues below n * eps * max are round-off of exact zeros
    # (they matter for q < 1, where sqrt(1e-17) ~ 3e-9 would count as mass).
    lam = np.where(lam > len(lam) * np.finfo(lam.dtype).eps * lam.max(), lam, 0.0)
    lam = lam / lam.sum()
    if q == 1:
        nz = lam[lam > 0]
        return math.exp(-(nz * np.log(nz)).sum())
    if q == math.inf:
        return 1 / lam.max()
    return math.exp(math.log((lam**q).sum()) / (1 - q))


@pytest.mark.parametrize("q", [0.5, 1.0, 2.0, math.inf])
@pytest.mark.parametrize("n,d", [(40, 6), (5, 12)])  # dual (n > d) and primal paths
def test_vendi_matches_primal_numpy(q, n, d):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=g, dtype=F64)
    np.testing.assert_allclose(LF.vendi_score(x, q=q).item(), _vendi_numpy(x.numpy(), q), rtol=1e-9)


@pytest.mark.parametrize("q", [0.5, 1.0, 2.0, math.inf])
def test_vendi_identical_and_orthogonal(q):
    assert LF.vendi_score(torch.ones(7, 3, dtype=F64) * 2.5, q=q).item() == pytest.approx(1.0, abs=1e-9)
    assert LF.vendi_score(torch.eye(6, dtype=F64) * 3, q=q).item() == pytest.approx(6.0, rel=1e-9)


def test_vendi_from_kernel_equals_features_version():
    g = torch.Generator().manual_seed(2)
    x = torch.nn.functional.normalize(torch.randn(30, 5, generator=g, dtype=F64), dim=-1)
    for q in (0.5, 1.0, 2.0, math.inf):
        torch.testing.assert_close(LF.vendi_score_from_kernel(x @ x.T, q=q), LF.vendi_score(x, q=q))


def test_vendi_bad_input():
    with pytest.raises(ValueError, match="q must be"):
        LF.vendi_score(torch.randn(4, 3), q=0.0)
    with pytest.raises(ValueError, match="embeddings has an all-zero row"):
        LF.vendi_score(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="unit diagonal"):
        LF.vendi_score_from_kernel(torch.eye(3) * 2)
    with pytest.raises(ValueError, match="square"):
        LF.vendi_score_from_kernel(torch.ones(3, 4))


def test_conditional_mutual_information_matches_loop():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(12, 4, generator=g, dtype=F64) * 2
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 3, 3, 0, 1])
    p = torch.softmax(z / 1.5, -1).numpy()
    per = []
    for i in range(12):
        q = p[(y == y[i]).numpy()].mean(0)
        per.append(float((p[i] * np.log(p[i] / q)).sum()))
    out = LF.conditional_mutual_information(z, y, temperature=1.5, reduction="none")
    np.testing.assert_allclose(out.numpy(), per, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(LF.conditional_mutual_information(z, y, temperature=1.5).item(), np.mean(per), rtol=1e-10)


def test_cs_qmi_matches_loop_and_is_nonnegative():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(10, 2, generator=g, dtype=F64)
    t = x[:, :1] + 0.5 * torch.randn(10, 1, generator=g, dtype=F64)
    kx = np.exp(-((x.numpy()[:, None] - x.numpy()[None]) ** 2).sum(-1) / (2 * 1.2**2))
    kt = np.exp(-((t.numpy()[:, None] - t.numpy()[None]) ** 2).sum(-1) / (2 * 0.7**2))
    n = 10
    ref = (math.log((kx * kt).sum() / n**2) + math.log(kx.sum() * kt.sum() / n**4)
           - 2 * math.log((kx.sum(1) * kt.sum(1)).sum() / n**3))
    np.testing.assert_allclose(LF.cs_quadratic_mutual_information(x, t, bandwidth=1.2, target_bandwidth=0.7).item(), ref, rtol=1e-10)
    for seed in range(10):
        gg = torch.Generator().manual_seed(seed)
        a, b = torch.randn(15, 3, generator=gg, dtype=F64), torch.randn(15, generator=gg, dtype=F64)
        assert LF.cs_quadratic_mutual_information(a, b).item() >= -1e-12
    with pytest.raises(ValueError, match="embeddings and target must have the same number of samples"):
        LF.cs_quadratic_mutual_information(x, t[:5])
    with pytest.raises(ValueError, match="target_bandwidth"):
        LF.cs_quadratic_mutual_information(x, t, target_bandwidth=0.0)


# --------------------------------------------------------------------------- Vendi properties
@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12), st.integers(0, 10_000), st.sampled_from([0.5, 1.0, 2.0, math.inf]))
def test_vendi_identical_is_one_orthogonal_is_n(n, seed, q):
    """Vendi paper, properties: n identical samples score 1; n mutually orthogonal samples score n."""
    g = torch.Generator().manual_seed(seed)
    d = n + 3
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))  # random orthonormal columns
    scales = torch.rand(n, 1, generator=g, dtype=F64) + 0.5  # norms do not matter (cosine kernel)
    ortho = basis[:, :n].T * scales
    assert LF.vendi_score(ortho, q=q).item() == pytest.approx(n, rel=1e-9)
    same = torch.randn(1, d, generator=g, dtype=F64).expand(n, d) * scales
    assert LF.vendi_score(same, q=q).item() == pytest.approx(1.0, rel=1e-9)


def test_vendi_dual_equals_primal_and_callable_kernel():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(50, 4, generator=g, dtype=F64)  # n > d: the d x d dual is used
    xn = x / x.norm(dim=-1, keepdim=True)
    lam = np.linalg.eigvalsh((xn @ xn.T).numpy() / 50)  # primal n x n spectrum, NumPy
    lam = np.clip(lam, 0, None)
    lam = lam[lam > 50 * np.finfo(float).eps * lam.max()]
    lam = lam / lam.sum()
    np.testing.assert_allclose(LF.vendi_score(x).item(), math.exp(-(lam * np.log(lam)).sum()), rtol=1e-10)
    rbf = lambda z: torch.exp(-torch.cdist(z, z) ** 2)  # noqa: E731  unit diagonal
    torch.testing.assert_close(LF.vendi_score(x, q=2.0, kernel=rbf), LF.vendi_score_from_kernel(rbf(x), q=2.0))
    with pytest.raises(ValueError, match="kernel"):
        LF.vendi_score(x, kernel="rbf")


@pytest.mark.parametrize("q", [0.0, -1.0, float("nan"), "2"])
def test_vendi_rejects_bad_order(q):
    with pytest.raises(ValueError, match="q must be"):
        LF.vendi_score(torch.randn(4, 3), q=q)
    with pytest.raises(ValueError, match="q must be"):
        LF.vendi_score_from_kernel(torch.eye(3), q=q)


# --------------------------------------------------------------------------- DSE / DSMI
def _dse_numpy(x, sigma, t, drop_trivial=True):
    """The paper's definition with NumPy: Gaussian kernel (with its 1/(sigma sqrt(2 pi))), the
    symmetric diffusion matrix, eigenvalues sorted descending, |.|^t, Shannon entropy in bits."""
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    g = np.exp(-d2 / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    deg = g.sum(1)
    k = g / np.sqrt(np.outer(deg, deg))
    lam = np.sort(np.linalg.eigvalsh(k))[::-1]
    if drop_trivial:
        lam = lam[1:]
    a = np.abs(lam) ** t
    p = a / a.sum()
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


@pytest.mark.parametrize("t", [1, 2, 3.5])
@pytest.mark.parametrize("drop_trivial", [True, False])
def test_dse_matches_numpy_definition(t, drop_trivial):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(25, 4, generator=g, dtype=F64)
    ref = _dse_numpy(x.numpy(), 1.3, t, drop_trivial)
    out = LF.diffusion_spectral_entropy(x, bandwidth=1.3, t=t, drop_trivial=drop_trivial)
    assert out.item() == pytest.approx(ref, rel=1e-10)


def test_dse_median_heuristic_and_low_precision():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(20, 3, generator=g, dtype=F64)
    d = np.sqrt(((x.numpy()[:, None] - x.numpy()[None]) ** 2).sum(-1))
    # bandwidth=None: the median of the 380 off-diagonal distances; torch's median of an even
    # count is the lower middle value (NumPy's np.median would average the two middle ones).
    lower = float(np.sort(d[~np.eye(20, dtype=bool)])[(380 - 1) // 2])
    ref = _dse_numpy(x.numpy(), lower, 1)
    assert LF.diffusion_spectral_entropy(x, bandwidth=None).item() == pytest.approx(ref, rel=1e-10)
    out = LF.diffusion_spectral_entropy(x.bfloat16(), bandwidth=1.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, LF.diffusion_spectral_entropy(x.bfloat16().float(), bandwidth=1.0))


def test_dse_orders_intrinsic_dimension():
    """Paper's claim: DSE tracks intrinsic dimension (a line < a plane < a 3-D cloud)."""
    g = torch.Generator().manual_seed(8)
    z = torch.randn(90, 3, generator=g, dtype=F64)
    line = z[:, :1] * torch.ones(1, 3, dtype=F64)
    plane = torch.cat([z[:, :2], torch.zeros(90, 1, dtype=F64)], 1)
    vals = [LF.diffusion_spectral_entropy(v, bandwidth=0.7).item() for v in (line, plane, z)]
    assert vals[0] < vals[1] < vals[2]


def test_dsmi_plain_form_matches_loop():
    g = torch.Generator().manual_seed(9)
    y = torch.tensor([0] * 10 + [1] * 7 + [2] * 5)
    x = torch.randn(22, 3, generator=g, dtype=F64) + 1.5 * y.to(F64)[:, None]
    xn = x.numpy()
    ref = _dse_numpy(xn, 1.2, 2) - sum((y == c).sum().item() / 22 * _dse_numpy(xn[(y == c).numpy()], 1.2, 2)
                                       for c in range(3))
    out = LF.diffusion_spectral_mutual_information(x, y, bandwidth=1.2, t=2, num_repetitions=0)
    assert out.item() == pytest.approx(ref, rel=1e-10)


def test_dsmi_size_matched_properties():
    g = torch.Generator().manual_seed(10)
    y = torch.arange(3).repeat_interleave(30)
    x = torch.randn(90, 2, generator=g, dtype=F64) + 5.0 * torch.stack([y == 1, y == 2], 1).to(F64)
    kw = dict(bandwidth=1.0, num_repetitions=3)
    informative = LF.diffusion_spectral_mutual_information(x, y, **kw)
    # Labels independent of the features: DSMI is 0 in expectation (size-matched estimator).
    shuffled = [LF.diffusion_spectral_mutual_information(x, y[torch.randperm(90, generator=g)], **kw).item()
                for _ in range(5)]
    assert informative.item() > 10 * abs(sum(shuffled) / 5)
    # Deterministic for a seed; one class: the "subset" is the whole set, DSMI = 0.
    torch.testing.assert_close(LF.diffusion_spectral_mutual_information(x, y, **kw), informative, rtol=0, atol=0)
    one = LF.diffusion_spectral_mutual_information(x, torch.zeros(90, dtype=torch.long), **kw)
    assert abs(one.item()) < 1e-9
    # Gradients flow to the features.
    xr = x.clone().requires_grad_(True)
    LF.diffusion_spectral_mutual_information(xr, y, **kw).backward()
    assert torch.isfinite(xr.grad).all() and xr.grad.abs().sum() > 0


def test_dse_dsmi_bad_input():
    x = torch.randn(10, 3)
    y = torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="bandwidth"):
        LF.diffusion_spectral_entropy(x, bandwidth=0.0)
    with pytest.raises(ValueError, match="t must"):
        LF.diffusion_spectral_entropy(x, t=-1)
    with pytest.raises(ValueError, match="labels"):
        LF.diffusion_spectral_mutual_information(x, y[:4])
    with pytest.raises(TypeError, match="labels"):
        LF.diffusion_spectral_mutual_information(x, y.float())
    with pytest.raises(ValueError, match="num_repetitions"):
        LF.diffusion_spectral_mutual_information(x, y, num_repetitions=-1)




# --------------------------------------------------------------------------- gradients at mode collapse
def _duplicated(n_distinct, copies, d, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n_distinct, d, generator=g, dtype=F64)
    return base.repeat(copies, 1), torch.arange(n_distinct).repeat(copies)


COLLAPSED = {
    "primal, 3 distinct x 2 in 8-D": lambda: _duplicated(3, 2, 8, 11),  # n = 6 <= d: the n x n kernel
    "dual, 3 distinct x 3 in 4-D": lambda: _duplicated(3, 3, 4, 12),  # n = 9 > d: the d x d dual, rank 3 < 4
    "full collapse, 5 identical": lambda: _duplicated(1, 5, 3, 13),
}


@pytest.mark.parametrize("case", list(COLLAPSED))
@pytest.mark.parametrize("q", [0.5, 1.0, 2.0, math.inf])
def test_vendi_gradients_finite_at_mode_collapse(case, q):
    """Regression: duplicated samples give exact zero eigenvalues, where xlogy (q = 1) and pow (q = 0.5)
    had NaN gradients. Now finite; exact where the score is differentiable (q = 2 everywhere, q = inf
    with a simple top eigenvalue: finite differences), and for q <= 1 exact along every direction that
    keeps the duplicates together (central differences)."""
    x, group = COLLAPSED[case]()
    xr = x.clone().requires_grad_(True)
    score = LF.vendi_score(xr, q=q)
    (grad,) = torch.autograd.grad(score, xr)
    assert torch.isfinite(score) and torch.isfinite(grad).all(), grad
    assert score.item() == pytest.approx(_vendi_numpy(x.numpy(), q), rel=1e-9)
    if q in (2.0, math.inf):
        assert torch.autograd.gradcheck(lambda z: LF.vendi_score(z, q=q), (xr,), eps=1e-6, atol=1e-6, rtol=1e-5)
    g = torch.Generator().manual_seed(7)
    direction = torch.randn(int(group.max()) + 1, x.shape[1], generator=g, dtype=F64)[group]  # same move per copy
    h = 1e-6
    fd = (LF.vendi_score(x + h * direction, q=q) - LF.vendi_score(x - h * direction, q=q)).item() / (2 * h)
    assert (grad * direction).sum().item() == pytest.approx(fd, rel=1e-5, abs=1e-8)
    # The kernel form agrees (its gradient too, through the cosine kernel).
    kr = x.clone().requires_grad_(True)
    xn = torch.nn.functional.normalize(kr, dim=-1)
    (gk,) = torch.autograd.grad(LF.vendi_score_from_kernel(xn @ xn.T, q=q), kr)
    assert torch.isfinite(gk).all()
    torch.testing.assert_close(gk, grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("t", [0.5, 1, 2])
def test_dse_gradients_finite_with_duplicated_points(t):
    """Duplicated points make the diffusion operator singular (zero eigenvalues): finite gradients,
    exact along directions that move the copies together."""
    x, group = _duplicated(6, 2, 3, 14)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(LF.diffusion_spectral_entropy(xr, bandwidth=1.0, t=t), xr)
    assert torch.isfinite(grad).all()
    direction = torch.randn(6, 3, generator=torch.Generator().manual_seed(8), dtype=F64)[group]
    h = 1e-6
    f = lambda z: LF.diffusion_spectral_entropy(z, bandwidth=1.0, t=t).item()  # noqa: E731
    fd = (f(x + h * direction) - f(x - h * direction)) / (2 * h)
    assert (grad * direction).sum().item() == pytest.approx(fd, rel=1e-5, abs=1e-8)
    y = torch.tensor([0, 1, 0, 1, 0, 1] * 2)
    xr2 = x.clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(LF.diffusion_spectral_mutual_information(xr2, y, bandwidth=1.0, t=t), xr2)
    assert torch.isfinite(g2).all()


# --------------------------------------------------------------------------- entropy / CMI details
def test_entropy_mask_mean_over_kept_and_empty_batch():
    g = torch.Generator().manual_seed(15)
    x = torch.randn(2, 3, 5, generator=g, dtype=F64)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    per = torch.tensor(scipy_stats.entropy(torch.softmax(x, -1).numpy(), axis=-1))
    torch.testing.assert_close(LF.entropy(x, mask=mask), per[mask].mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(LF.entropy(x, mask=mask, reduction="none"), torch.where(mask, per, 0.0), rtol=1e-12, atol=0)
    xr = x.clone().requires_grad_(True)
    out = LF.entropy(xr, mask=torch.zeros(2, 3, dtype=torch.bool))
    out.backward()
    assert out.item() == 0.0 and bool((xr.grad == 0).all())


def test_cmi_zero_probability_classes_and_integer_targets():
    """A class with logit -inf in every sample has probability 0: it drops out of the KL and of the
    centroids, with finite gradients (the loop over the other classes is the reference)."""
    g = torch.Generator().manual_seed(16)
    z = torch.randn(9, 5, generator=g, dtype=F64)
    z[:, 3] = float("-inf")
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 4, 4], dtype=torch.int32)
    p = torch.softmax(z, -1).numpy()
    per = []
    for i in range(9):
        q = p[(y == y[i]).numpy()].mean(0)
        keep = p[i] > 0
        per.append(float((p[i][keep] * np.log(p[i][keep] / q[keep])).sum()))
    zr = z.clone().requires_grad_(True)
    out = LF.conditional_mutual_information(zr, y, reduction="none")
    np.testing.assert_allclose(out.detach().numpy(), per, rtol=1e-10, atol=1e-14)
    out.sum().backward()
    assert torch.isfinite(zr.grad).all()
    assert LF.conditional_mutual_information(z[:0], y[:0]).item() == 0.0  # empty batch: mean 0


# --------------------------------------------------------------------------- non-finite inputs
@pytest.mark.parametrize("validate", [True, False])
def test_nan_inputs_give_nan(validate):
    """A NaN in an input that counts gives a NaN value; eigensolvers see no NaN (LAPACK would raise)."""
    import losslab

    g = torch.Generator().manual_seed(17)
    x = torch.randn(8, 3, generator=g, dtype=F64)
    x[2, 1] = float("nan")
    labels = torch.tensor([0, 0, 1, 1, 0, 1, 0, 1])
    xn = torch.nn.functional.normalize(torch.randn(6, 4, generator=g, dtype=F64), dim=-1)
    k = xn @ xn.T
    k[0, 3] = k[3, 0] = float("nan")
    with losslab.validation(validate):
        outs = [LF.entropy(x), LF.vendi_score(x), LF.vendi_score(x.T.contiguous()), LF.vendi_score(x, q=math.inf),
                LF.vendi_score(x, q=0.5), LF.vendi_score_from_kernel(k), LF.diffusion_spectral_entropy(x),
                LF.diffusion_spectral_entropy(x, bandwidth=None),
                LF.diffusion_spectral_mutual_information(x, labels, bandwidth=1.0),
                LF.conditional_mutual_information(x, labels), LF.cs_quadratic_mutual_information(x, torch.randn(8)),
                LF.cs_quadratic_mutual_information(torch.randn(8, dtype=F64), x, target_bandwidth=1.0)]
        for i, out in enumerate(outs):
            assert torch.isnan(out), i
        per = LF.entropy(x, reduction="none")
        assert torch.isnan(per[2]) and torch.isfinite(per[[0, 1, 3]]).all()


# --------------------------------------------------------------------------- modules
def test_modules_check_hyperparameters_at_construction_and_take_mask_in_forward():
    import losslab

    x = torch.randn(4, 6, dtype=F64)
    mask = torch.tensor([True, False, True, True])
    torch.testing.assert_close(losslab.nn.Entropy(temperature=2.0)(x, mask=mask), LF.entropy(x, temperature=2.0, mask=mask),
                               rtol=0, atol=0)
    with pytest.raises(TypeError, match="forward"):
        losslab.nn.Entropy(mask=mask)
    for make, msg in [(lambda: losslab.nn.VendiScore(q=0.0), "q must be"),
                      (lambda: losslab.nn.VendiScore(kernel="rbf"), "kernel"),
                      (lambda: losslab.nn.VendiScoreFromKernel(q=-1.0), "q must be"),
                      (lambda: losslab.nn.DiffusionSpectralEntropy(t=0), "t must"),
                      (lambda: losslab.nn.DiffusionSpectralEntropy(bandwidth=-2.0), "bandwidth"),
                      (lambda: losslab.nn.DiffusionSpectralMutualInformation(num_repetitions=-1), "num_repetitions"),
                      (lambda: losslab.nn.CSQuadraticMutualInformation(target_bandwidth=0.0), "target_bandwidth"),
                      (lambda: losslab.nn.Entropy(temperature=0.0), "temperature"),
                      (lambda: losslab.nn.ConditionalMutualInformation(reduction="avg"), "reduction")]:
        with pytest.raises(ValueError, match=msg):
            make()
    with pytest.raises(TypeError, match="drop_trivial"):
        losslab.nn.DiffusionSpectralEntropy(drop_trivial="yes")
