"""Information measures against SciPy and NumPy eigendecompositions."""
import math

import numpy as np
import pytest
import torch

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
    with pytest.raises(ValueError, match="all-zero row"):
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
    np.testing.assert_allclose(LF.cs_quadratic_mutual_information(x, t, sigma_x=1.2, sigma_t=0.7).item(), ref, rtol=1e-10)
    for seed in range(10):
        gg = torch.Generator().manual_seed(seed)
        a, b = torch.randn(15, 3, generator=gg, dtype=F64), torch.randn(15, generator=gg, dtype=F64)
        assert LF.cs_quadratic_mutual_information(a, b).item() >= -1e-12
    with pytest.raises(ValueError, match="same number of samples"):
        LF.cs_quadratic_mutual_information(x, t[:5])
