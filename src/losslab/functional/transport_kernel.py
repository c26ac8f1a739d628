"""Kernel divergences between samples (MMD, Cauchy–Schwarz), closed forms between Gaussians, sliced Wasserstein."""
from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from .._checks import (
    check_choice,
    check_floating,
    check_positive,
    hyperparameter_checks,
    validation_enabled,
)
from .._numerics import compute_dtype, upcast
from .._reduction import Reduction, reduce
from ..registry import Example, Reference, register
from ._examples import randn
from .transport import pairwise_cost

__all__ = ["mmd", "cauchy_schwarz_divergence", "gaussian_wasserstein2", "gaussian_kl", "median_heuristic", "sliced_wasserstein"]

MMD_PAPER = Reference(
    title="A Kernel Two-Sample Test",
    authors="Arthur Gretton, Karsten M. Borgwardt, Malte J. Rasch, Bernhard Schölkopf, Alexander Smola",
    year=2012,
    url="https://jmlr.org/papers/v13/gretton12a.html",
)
CS_PAPER = Reference(
    title="Cauchy-Schwarz Divergence Information Bottleneck for Regression",
    authors="Shujian Yu, Xi Yu, Sigurd Løkse, Robert Jenssen, Jose C. Principe",
    year=2024,
    url="https://arxiv.org/abs/2404.17951",
)
GAUSS_W2_PAPER = Reference(
    title="Sliced Wasserstein Estimation with Control Variates",
    authors="Khai Nguyen, Nhat Ho",
    year=2024,
    url="https://arxiv.org/abs/2305.00402",
)
KERNELS = ("gaussian", "laplacian", "imq")
CONTROL_VARIATES = (None, "lower", "upper")


# --------------------------------------------------------------------------- shared checks
def _check_flag(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")


def _check_clouds(x: torch.Tensor, y: torch.Tensor) -> bool:
    """``x (n, d)``, ``y (m, d)`` or a batch ``(B, n, d)``, ``(B, m, d)``; returns whether batched.

    Shapes only: a NaN coordinate propagates to a NaN value (no pass over the clouds).
    """
    check_floating(x, "x")
    check_floating(y, "y")
    if x.dim() not in (2, 3) or y.dim() != x.dim():
        raise ValueError(f"x and y must both be (n, d) or (B, n, d) point clouds, got x {tuple(x.shape)} "
                         f"and y {tuple(y.shape)}")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"x and y must have the same feature dimension, got x {tuple(x.shape)} and y {tuple(y.shape)}")
    if x.dim() == 3 and x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same batch size, got x {tuple(x.shape)} and y {tuple(y.shape)}")
    return x.dim() == 3


def _median_pairwise_distance(z: torch.Tensor) -> torch.Tensor:
    """Median of the distances between distinct points of ``z (…, n, d)`` -> ``(…)``, no gradient.

    The strict upper triangle holds every off-diagonal distance once, so its (lower) median
    is torch's lower median of all off-diagonal entries; static indices keep it
    compile-friendly. NaN coordinates give a NaN median.
    """
    with torch.no_grad():
        n = z.shape[-2]
        d = pairwise_cost(z, z, "euclidean")
        if n < 2:
            return torch.ones(d.shape[:-2], dtype=d.dtype, device=d.device)
        i, j = torch.triu_indices(n, n, offset=1, device=z.device)
        return d[..., i, j].median(-1).values.clamp_min(torch.finfo(d.dtype).tiny)


def median_heuristic(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Median of the pairwise Euclidean distances of the pooled sample (diagonal excluded), no gradient.

    For ``(B, n, d)`` batches, one median per batch item, shape ``(B,)``. Of an even count of
    distances the lower middle one (torch's median).
    """
    return _median_pairwise_distance(torch.cat([x, y], dim=-2))


def _bandwidth(x, y, bandwidth):
    if bandwidth is None:
        return median_heuristic(x, y)
    check_positive(bandwidth, "bandwidth")
    return torch.tensor(float(bandwidth), dtype=x.dtype, device=x.device)


def _log_kernel(x, y, kernel, sigma):
    """log k(x_i, y_j) for the three kernels (log-space keeps far clouds finite)."""
    s = sigma.reshape(sigma.shape + (1, 1)) if sigma.dim() else sigma
    if kernel == "gaussian":
        return -pairwise_cost(x, y, "sqeuclidean") / (2 * s * s)
    if kernel == "laplacian":
        return -pairwise_cost(x, y, "euclidean") / s
    return -0.5 * torch.log1p(pairwise_cost(x, y, "sqeuclidean") / (s * s))  # inverse multiquadric


# --------------------------------------------------------------------------- MMD, Cauchy–Schwarz
def _cloud_example(**kw) -> Example:
    """Batched clouds: the suite checks the (B,) reduction contract (unbatched inputs: family tests)."""

    def make(gen):
        return (randn(gen, 2, 7, 3), randn(gen, 2, 6, 3) + 0.5), dict(kw)

    def mismatch(gen):
        return (randn(gen, 2, 7, 3), randn(gen, 2, 6, 2)), dict(kw)

    return Example(make=make, mismatch=mismatch, mismatch_match=r"x and y must have the same feature dimension",
                   extreme=None)


def _check_mmd(*, kernel="gaussian", bandwidth=None, unbiased=False, **_):
    check_choice(kernel, "kernel", KERNELS)
    if bandwidth is not None:
        check_positive(bandwidth, "bandwidth")
    _check_flag(unbiased, "unbiased")


@register("mmd", family="transport", reference=MMD_PAPER, example=_cloud_example(bandwidth=1.5),
          input_kind="point clouds", symmetric=True, tags=("two-sample test", "kernel", "distribution matching"))
@hyperparameter_checks(_check_mmd)
def mmd(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    kernel: str = "gaussian",
    bandwidth: float | None = None,
    unbiased: bool = False,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Squared maximum mean discrepancy MMD² between two samples, for a Gaussian, Laplacian or IMQ kernel.

    .. math::
        \mathrm{MMD}^2 = \frac{1}{n^2}\sum_{i,i'} k(x_i, x_{i'}) + \frac{1}{m^2}\sum_{j,j'} k(y_j, y_{j'})
                       - \frac{2}{nm}\sum_{i,j} k(x_i, y_j)

    (the biased V-statistic, ≥ 0); ``unbiased=True`` drops the diagonal terms of the first two
    sums (dividing by :math:`n(n-1)`, :math:`m(m-1)`), an unbiased estimate that can be
    negative. Kernels with bandwidth :math:`\sigma`: ``"gaussian"``
    :math:`e^{-\|x-y\|^2/(2\sigma^2)}`, ``"laplacian"`` :math:`e^{-\|x-y\|/\sigma}`, ``"imq"``
    :math:`(1 + \|x-y\|^2/\sigma^2)^{-1/2}`. ``bandwidth=None`` uses the median heuristic:
    :math:`\sigma` = the median pairwise Euclidean distance of the pooled sample (per batch
    item, no gradient through it).

    Batches: ``(B, n, d)`` and ``(B, m, d)`` inputs are B independent pairs of samples;
    ``reduction="none"`` returns the B values, ``"mean"``/``"sum"`` reduce them. Unbatched
    ``(n, d)``, ``(m, d)`` inputs are one pair without a batch dimension: every reduction
    returns that 0-dim value (as ``torch.nn.functional.cross_entropy`` does for an unbatched
    input).

    Args:
        x: ``(n, d)`` or ``(B, n, d)``.
        y: ``(m, d)`` or ``(B, m, d)``.
        kernel: ``"gaussian"``, ``"laplacian"`` or ``"imq"``.
        bandwidth: :math:`\sigma > 0`, or None for the median heuristic.
        unbiased: the U-statistic instead of the V-statistic.
        reduction: ``"mean"`` (over the batch), ``"sum"`` or ``"none"``.

    Shape:
        output ``(B,)`` for batched inputs and ``"none"``, else ``()``.

    Example:
        >>> import torch
        >>> from losslab.functional import mmd
        >>> x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
        >>> float(mmd(x, x)) == 0.0
        True
        >>> mmd(torch.stack([x, x]), torch.stack([x, x + 1]), bandwidth=1.0, reduction="none").shape
        torch.Size([2])

    References:
        Gretton et al., "A Kernel Two-Sample Test", JMLR 2012,
        https://jmlr.org/papers/v13/gretton12a.html.
    """
    _check_clouds(x, y)
    _check_mmd(kernel=kernel, bandwidth=bandwidth, unbiased=unbiased)
    dtype = compute_dtype(x, y)
    xc, yc = upcast(x, dtype), upcast(y, dtype)
    n, m = xc.shape[-2], yc.shape[-2]
    if unbiased and (n < 2 or m < 2):
        raise ValueError(f"unbiased MMD needs at least 2 points in each of x and y, got {n} and {m}")
    sigma = _bandwidth(xc, yc, bandwidth)
    kxx = _log_kernel(xc, xc, kernel, sigma).exp()
    kyy = _log_kernel(yc, yc, kernel, sigma).exp()
    kxy = _log_kernel(xc, yc, kernel, sigma).exp()
    if unbiased:
        sxx = (kxx.sum((-1, -2)) - torch.diagonal(kxx, dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))
        syy = (kyy.sum((-1, -2)) - torch.diagonal(kyy, dim1=-2, dim2=-1).sum(-1)) / (m * (m - 1))
    else:
        sxx, syy = kxx.mean((-1, -2)), kyy.mean((-1, -2))
    return reduce(sxx + syy - 2 * kxy.mean((-1, -2)), reduction)


def _check_cs(*, bandwidth=None, **_):
    if bandwidth is not None:
        check_positive(bandwidth, "bandwidth")


@register("cauchy_schwarz_divergence", family="transport", reference=CS_PAPER, seed=CS_PAPER.title,
          example=_cloud_example(bandwidth=1.5), input_kind="point clouds", symmetric=True,
          tags=("kernel", "information bottleneck", "distribution matching", "density estimation"))
@hyperparameter_checks(_check_cs)
def cauchy_schwarz_divergence(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    bandwidth: float | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Cauchy–Schwarz divergence between two samples, by Gaussian kernel density estimation.

    .. math::
        D_{CS}(p\,\|\,q) = \log\frac{1}{n^2}\sum_{i,i'}\kappa_{ii'}
                          + \log\frac{1}{m^2}\sum_{j,j'}\kappa_{jj'}
                          - 2\log\frac{1}{nm}\sum_{i,j}\kappa_{ij},
        \qquad \kappa = e^{-\|\cdot\|^2/(2\sigma^2)},

    the plug-in estimate of :math:`-\log\big(\int pq\big)^2 / (\int p^2 \int q^2)` (the kernel
    normalizations cancel); ≥ 0 by Cauchy–Schwarz and 0 iff the two estimated densities are
    equal. Each sum is a ``logsumexp`` of :math:`-d^2/(2\sigma^2)`, so far-apart clouds give a
    large finite value instead of ``log 0``. ``bandwidth=None`` uses the median pairwise
    distance of the pooled sample (the CS-IB reference code instead uses 10 × the median of
    the *squared* distances as its kernel width; pass ``bandwidth`` to reproduce it).

    Batches: ``(B, n, d)``, ``(B, m, d)`` inputs give B values (``reduction="none"``);
    unbatched inputs are one pair and every reduction returns the 0-dim value.

    Args:
        x: ``(n, d)`` or ``(B, n, d)``.
        y: ``(m, d)`` or ``(B, m, d)``.
        bandwidth: kernel width :math:`\sigma > 0`, or None for the median heuristic.
        reduction: ``"mean"`` (over the batch), ``"sum"`` or ``"none"``.

    Shape:
        output ``(B,)`` for batched inputs and ``"none"``, else ``()``.

    Example:
        >>> import torch
        >>> from losslab.functional import cauchy_schwarz_divergence
        >>> x = torch.randn(40, 2, generator=torch.Generator().manual_seed(0))
        >>> abs(float(cauchy_schwarz_divergence(x, x))) < 1e-6
        True

    References:
        Yu et al., "Cauchy-Schwarz Divergence Information Bottleneck for Regression", ICLR
        2024, https://arxiv.org/abs/2404.17951; Principe, "Information Theoretic Learning", 2010.
    """
    _check_clouds(x, y)
    _check_cs(bandwidth=bandwidth)
    dtype = compute_dtype(x, y)
    xc, yc = upcast(x, dtype), upcast(y, dtype)
    s = _bandwidth(xc, yc, bandwidth)

    def log_mean(a, b):
        lk = _log_kernel(a, b, "gaussian", s)
        return torch.logsumexp(lk.flatten(-2), dim=-1) - math.log(a.shape[-2] * b.shape[-2])

    return reduce(log_mean(xc, xc) + log_mean(yc, yc) - 2 * log_mean(xc, yc), reduction)


# --------------------------------------------------------------------------- Gaussians in closed form
def _sym(s: torch.Tensor) -> torch.Tensor:
    return 0.5 * (s + s.transpose(-1, -2))


def _nonfinite_matrices(*mats: torch.Tensor) -> torch.Tensor:
    """``(*)`` bool: the batch items where any of the ``(*, d, d)`` matrices has a NaN/inf entry.

    LAPACK's eigensolvers raise on non-finite input; the callers decompose the identity
    there instead and put NaN in the result, so a NaN propagates (one pass over small matrices).
    """
    bad = None
    for a in mats:
        b = ~torch.isfinite(a).all(-1).all(-1)
        bad = b if bad is None else bad | b
    return bad


class _PSDSqrt(torch.autograd.Function):
    """Square root of a symmetric PSD matrix, with the gradient of the Lyapunov equation.

    ``eigh``'s own backward divides by eigenvalue gaps, so differentiating ``V sqrt(Λ) Vᵀ``
    gives NaN for repeated eigenvalues (any isotropic covariance). The derivative of the
    square root is finite there: ``dX`` solves ``X dX + dX X = dA``, i.e. in the eigenbasis
    ``dX_ij = dA_ij / (s_i + s_j)``; the adjoint is the same division. Where
    ``s_i + s_j = 0`` (two zero eigenvalues, where the derivative is infinite) the gradient
    is 0.
    """

    @staticmethod
    def forward(a: torch.Tensor):  # type: ignore[override]
        lam, v = torch.linalg.eigh(a)
        s = lam.clamp_min(0).sqrt()
        return (v * s.unsqueeze(-2)) @ v.transpose(-1, -2), v, s

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, v, s = output
        ctx.save_for_backward(v, s)
        ctx.mark_non_differentiable(v, s)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, _grad_v, _grad_s):  # type: ignore[override]
        v, s = ctx.saved_tensors
        denom = s.unsqueeze(-1) + s.unsqueeze(-2)
        pos = denom > 0
        g = v.transpose(-1, -2) @ grad @ v
        y = torch.where(pos, g / torch.where(pos, denom, torch.ones_like(denom)), torch.zeros_like(g))
        return v @ y @ v.transpose(-1, -2)


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """Symmetric PSD square root by eigendecomposition (eigenvalues clamped at 0), finite gradient."""
    return _PSDSqrt.apply(a)[0]


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(x, 0))`` with gradient 0 (not inf) at 0 and below; NaN stays NaN."""
    pos = x > 0
    root = torch.sqrt(torch.where(pos, x, torch.ones_like(x)))
    # x.clamp_min(0) * 0 is 0 for x <= 0 and NaN for NaN (a comparison alone would drop it).
    return torch.where(pos, root, x.clamp_min(0) * 0)


def _check_gaussians(m1, s1, m2, s2):
    for t, nm in ((m1, "mean1"), (s1, "cov1"), (m2, "mean2"), (s2, "cov2")):
        check_floating(t, nm)
    if m1.dim() < 1:
        raise ValueError(f"mean1 must have shape (*, d), got {tuple(m1.shape)}")
    d = m1.shape[-1]
    if m2.shape != m1.shape:
        raise ValueError(f"mean1 and mean2 must have the same shape, got {tuple(m1.shape)} and {tuple(m2.shape)}")
    for s, nm in ((s1, "cov1"), (s2, "cov2")):
        if s.shape != m1.shape + (d,):
            raise ValueError(f"{nm} must have shape {tuple(m1.shape + (d,))} (the covariance of a mean of shape "
                             f"{tuple(m1.shape)}), got {tuple(s.shape)}")
        if validation_enabled() and s.numel() > 0:
            sd = s.detach()
            # A NaN entry makes the comparison False: it propagates to the result instead.
            if float((sd - sd.transpose(-1, -2)).abs().max()) > 1e-5 * max(1.0, float(sd.abs().max())):
                raise ValueError(f"{nm} must be symmetric")


def _gauss_example() -> Example:
    """Two batch items of d = 3 Gaussians (the (B,) contract), and a (2, 2) leading-dims variant."""

    def gaussians(gen, *lead):
        a, b = randn(gen, *lead, 3, 3), randn(gen, *lead, 3, 3)
        eye = torch.eye(3, dtype=a.dtype)
        return (randn(gen, *lead, 3), a @ a.transpose(-1, -2) + eye, randn(gen, *lead, 3),
                b @ b.transpose(-1, -2) + eye)

    def make(gen):
        return gaussians(gen, 2), {}

    def leading(gen):
        return gaussians(gen, 2, 2), {}

    def mismatch(gen):
        m1, s1, m2, s2 = gaussians(gen, 2)
        return (m1, torch.eye(4, dtype=torch.float64).expand(2, 4, 4), m2, s2), {}

    return Example(make=make, mismatch=mismatch, mismatch_match="cov1", extreme=None, variants=(leading,))


def _check_w2(*, squared=True, **_):
    _check_flag(squared, "squared")


@register("gaussian_wasserstein2", family="transport", reference=GAUSS_W2_PAPER,
          seed="Sliced Wasserstein Estimation with Control Variates", example=_gauss_example(),
          input_kind="gaussian parameters", symmetric=True, tags=("frechet distance", "fid", "closed form"))
@hyperparameter_checks(_check_w2)
def gaussian_wasserstein2(
    mean1: torch.Tensor,
    cov1: torch.Tensor,
    mean2: torch.Tensor,
    cov2: torch.Tensor,
    *,
    squared: bool = True,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""2-Wasserstein distance between Gaussians N(mean1, cov1) and N(mean2, cov2), in closed form (squared by default).

    .. math::
        W_2^2 = \|\mu_1 - \mu_2\|^2 + \operatorname{tr}\Big(\Sigma_1 + \Sigma_2
                - 2\big(\Sigma_2^{1/2} \Sigma_1 \Sigma_2^{1/2}\big)^{1/2}\Big)

    (the Fréchet distance of FID). Covariances are symmetrized first. :math:`\Sigma_2^{1/2}` by
    symmetric eigendecomposition (eigenvalues clamped at 0, so PSD inputs with round-off stay
    real) with the gradient of the Lyapunov equation, finite for repeated eigenvalues (e.g.
    isotropic covariances, where differentiating through ``eigh`` gives NaN); the outer trace
    is :math:`\sum_i \sqrt{\lambda_i}` over the eigenvalues of the middle matrix. At singular
    directions (zero eigenvalues), where the derivative of the square root is infinite, the
    gradient contribution is 0; so is the gradient of :math:`W_2` (``squared=False``) at 0.
    A NaN or inf entry gives a NaN value. The closed form behind the CV-SW control variates.

    Batches: the leading dimensions ``(*)`` are independent pairs of Gaussians;
    ``reduction="none"`` returns the ``(*)`` values, ``"mean"``/``"sum"`` reduce them. An
    unbatched pair (means ``(d,)``) gives a 0-dim value for every reduction.

    Args:
        mean1, mean2: means ``(*, d)``.
        cov1, cov2: covariances ``(*, d, d)`` (symmetric positive semi-definite).
        squared: return :math:`W_2^2` (default) or :math:`W_2`.
        reduction: ``"mean"`` (over the leading dimensions), ``"sum"`` or ``"none"``.

    Shape:
        output ``(*)`` for ``"none"``, else ``()``.

    Example:
        >>> import torch
        >>> from losslab.functional import gaussian_wasserstein2
        >>> I = torch.eye(2)
        >>> gaussian_wasserstein2(torch.zeros(2), I, torch.ones(2), 4 * I)  # 2 + 2 (2 - 1)^2
        tensor(4.0000)

    References:
        Dowson & Landau, "The Fréchet distance between multivariate normal distributions",
        1982; Nguyen & Ho, "Sliced Wasserstein Estimation with Control Variates", ICLR 2024,
        https://arxiv.org/abs/2305.00402.
    """
    _check_gaussians(mean1, cov1, mean2, cov2)
    _check_w2(squared=squared)
    dtype = compute_dtype(mean1, cov1, mean2, cov2)
    m1, m2 = upcast(mean1, dtype), upcast(mean2, dtype)
    a, b = _sym(upcast(cov1, dtype)), _sym(upcast(cov2, dtype))
    bad = _nonfinite_matrices(a, b)
    if bad.numel():
        eye = torch.eye(a.shape[-1], dtype=dtype, device=a.device)
        a = torch.where(bad[..., None, None], eye, a)
        b = torch.where(bad[..., None, None], eye, b)
    rb = _sqrtm_psd(b)
    cross = _safe_sqrt(torch.linalg.eigvalsh(_sym(rb @ a @ rb))).sum(-1)
    tr = torch.diagonal(a + b, dim1=-2, dim2=-1).sum(-1) - 2 * cross
    w2 = ((m1 - m2).square().sum(-1) + tr).clamp_min(0)  # clamp_min keeps NaN
    w2 = torch.where(bad, torch.full_like(w2, math.nan), w2)
    return reduce(w2 if squared else _safe_sqrt(w2), reduction)


@register("gaussian_kl", family="transport", reference=GAUSS_W2_PAPER, example=_gauss_example(),
          input_kind="gaussian parameters", tags=("kl divergence", "closed form", "vae"))
def gaussian_kl(
    mean1: torch.Tensor,
    cov1: torch.Tensor,
    mean2: torch.Tensor,
    cov2: torch.Tensor,
    *,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""KL(N(mean1, cov1) ‖ N(mean2, cov2)) between multivariate Gaussians, in closed form.

    .. math::
        \mathrm{KL} = \tfrac12\Big[\operatorname{tr}(\Sigma_2^{-1}\Sigma_1)
                      + (\mu_2-\mu_1)^\top \Sigma_2^{-1}(\mu_2-\mu_1)
                      - d + \log\det \Sigma_2 - \log\det \Sigma_1\Big]

    By Cholesky factorizations (triangular solves, log-determinants from the diagonals); the
    covariances must be positive definite (a failed factorization of a finite covariance
    raises ``ValueError`` while validation is on; a NaN entry gives a NaN value).

    Batches: the leading dimensions ``(*)`` are independent pairs; ``reduction="none"``
    returns the ``(*)`` values. An unbatched pair gives a 0-dim value for every reduction.

    Args:
        mean1, mean2: means ``(*, d)``.
        cov1, cov2: covariances ``(*, d, d)``, symmetric positive definite.
        reduction: ``"mean"`` (over the leading dimensions), ``"sum"`` or ``"none"``.

    Shape:
        output ``(*)`` for ``"none"``, else ``()``.

    Example:
        >>> import torch
        >>> from losslab.functional import gaussian_kl
        >>> gaussian_kl(torch.zeros(1), torch.eye(1), torch.ones(1), torch.eye(1))  # 1/2 |mean1 - mean2|^2
        tensor(0.5000)

    References:
        Kullback & Leibler, 1951; the closed form as in e.g. Duchi, "Derivations for Linear
        Algebra and Optimization", and ``torch.distributions.kl_divergence``.
    """
    _check_gaussians(mean1, cov1, mean2, cov2)
    dtype = compute_dtype(mean1, cov1, mean2, cov2)
    m1, m2 = upcast(mean1, dtype), upcast(mean2, dtype)
    a, b = _sym(upcast(cov1, dtype)), _sym(upcast(cov2, dtype))
    la, info_a = torch.linalg.cholesky_ex(a)
    lb, info_b = torch.linalg.cholesky_ex(b)
    if validation_enabled():
        for info, mat, nm in ((info_a, a, "cov1"), (info_b, b, "cov2")):
            failed = info != 0
            if bool(failed.any()) and bool((failed & torch.isfinite(mat).all(-1).all(-1)).any()):
                raise ValueError(f"{nm} must be positive definite (Cholesky factorization failed)")
    d = m1.shape[-1]
    # tr(S2^{-1} S1) = ||L_b^{-1} L_a||_F^2 ; Mahalanobis term = ||L_b^{-1} (m2 - m1)||^2
    t = torch.linalg.solve_triangular(lb, la, upper=False)
    u = torch.linalg.solve_triangular(lb, (m2 - m1).unsqueeze(-1), upper=False).squeeze(-1)
    logdet_a = 2 * torch.log(torch.diagonal(la, dim1=-2, dim2=-1)).sum(-1)
    logdet_b = 2 * torch.log(torch.diagonal(lb, dim1=-2, dim2=-1)).sum(-1)
    return reduce(0.5 * (t.square().sum((-1, -2)) + u.square().sum(-1) - d + logdet_b - logdet_a), reduction)


# --------------------------------------------------------------------------- sliced Wasserstein
def _sw_example() -> Example:
    def make(gen):
        theta = torch.nn.functional.normalize(randn(gen, 3, 5), dim=0)
        return (randn(gen, 8, 3), randn(gen, 8, 3) + 0.5), {"projections": theta}

    def with_cv(gen):
        theta = torch.nn.functional.normalize(randn(gen, 3, 6), dim=0)
        return (randn(gen, 8, 3), randn(gen, 8, 3) + 0.5), {"projections": theta, "control_variate": "upper"}

    def mismatch(gen):
        return (randn(gen, 8, 3), randn(gen, 8, 2)), {}

    return Example(make=make, mismatch=mismatch, mismatch_match=r"x and y must have the same feature dimension",
                   extreme=None, variants=(with_cv,))


def _check_sw(*, num_projections=50, p=2.0, control_variate=None, **_):
    if isinstance(num_projections, bool) or not isinstance(num_projections, int) or num_projections < 1:
        raise ValueError(f"num_projections must be an integer >= 1, got {num_projections!r}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (p >= 1 and math.isfinite(p)):
        raise ValueError(f"p must be a finite number >= 1, got {p!r}")
    check_choice(control_variate, "control_variate", CONTROL_VARIATES)
    if control_variate is not None and p != 2:
        raise ValueError(f"control_variate={control_variate!r} is defined for p = 2 (Gaussian W2 closed forms), "
                         f"got p={p!r}")


@register("sliced_wasserstein", family="transport", reference=GAUSS_W2_PAPER,
          seed="Sliced Wasserstein Estimation with Control Variates", example=_sw_example(),
          input_kind="point clouds", batch_level=True, symmetric=True, stochastic=True,
          tags=("optimal transport", "control variates", "variance reduction", "distribution matching"))
@hyperparameter_checks(_check_sw)
def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_projections: int = 50,
    p: float = 2.0,
    projections: torch.Tensor | None = None,
    control_variate: str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Sliced p-Wasserstein distance by Monte Carlo over directions, optionally with control variates.

    With directions :math:`\theta_1, \dots, \theta_L` uniform on the sphere and
    :math:`A_l = W_p^p(\theta_l^\top\mu, \theta_l^\top\nu) = \frac1n\sum_k |(X\theta_l)_{(k)} - (Y\theta_l)_{(k)}|^p`
    (sorted projections, equal sample sizes),

    .. math:: \widehat{SW}_p = \Big(\frac1L\sum_l A_l\Big)^{1/p}.

    ``control_variate`` (``p = 2`` only) subtracts a Gaussian-approximation control variate
    (Nguyen & Ho): ``"lower"`` :math:`G_l = (\theta_l^\top(m_1 - m_2))^2` with
    :math:`\mathbb E G = \|m_1 - m_2\|^2/d`; ``"upper"`` adds
    :math:`\theta_l^\top\hat\Sigma_1\theta_l + \theta_l^\top\hat\Sigma_2\theta_l` (biased
    covariances) with :math:`\mathbb E G = (\|m_1-m_2\|^2 + \operatorname{tr}\hat\Sigma_1 +
    \operatorname{tr}\hat\Sigma_2)/d`. The estimate is
    :math:`\bar A - \hat\gamma(\bar G - \mathbb E G)` with the sample-optimal
    :math:`\hat\gamma = \widehat{\mathrm{Cov}}(A, G)/\widehat{\mathrm{Var}}(G)` (detached),
    clamped at 0 before the :math:`1/p` root: the same expectation with a smaller variance
    (how much smaller depends on how Gaussian the clouds look along random directions:
    ``losslab run sliced-wasserstein-cv`` measures it on real data). The gradient of the
    :math:`1/p` root at a zero estimate is taken as 0 (like a norm's at 0).

    ``projections`` ``(d, L)`` as in POT: then the value equals
    ``ot.sliced_wasserstein_distance(x, y, projections=projections, p=p)``. ``projections``
    and ``generator`` change from batch to batch: the Module takes them in ``forward``. Under
    ``torch.compile`` pass ``projections`` drawn outside the compiled function, or leave
    ``generator=None`` (the global RNG): torch cannot trace a ``torch.Generator`` argument.

    Args:
        x, y: ``(n, d)`` point clouds with the same number of points (uniform weights).
        num_projections: :math:`L \ge 1` when ``projections`` is None.
        p: :math:`p \ge 1`.
        projections: optional ``(d, L)`` unit directions.
        control_variate: None, ``"lower"`` or ``"upper"``.
        generator: source of the random directions.

    Shape:
        output a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import sliced_wasserstein
        >>> x = torch.randn(100, 3, generator=torch.Generator().manual_seed(0))
        >>> float(sliced_wasserstein(x, x + torch.tensor([3.0, 0.0, 0.0]), num_projections=1000,
        ...       generator=torch.Generator().manual_seed(1))) ** 2 < 4.0  # E (theta_1 * 3)^2 = 3
        True

    References:
        Bonneel et al., "Sliced and Radon Wasserstein Barycenters of Measures", 2015;
        Nguyen & Ho, "Sliced Wasserstein Estimation with Control Variates", ICLR 2024,
        https://arxiv.org/abs/2305.00402.
    """
    if _check_clouds(x, y):
        raise ValueError(f"sliced_wasserstein takes (n, d) point clouds, got x {tuple(x.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of points for sorted 1-D transport, got {x.shape[0]} and {y.shape[0]}")
    _check_sw(num_projections=num_projections, p=p, control_variate=control_variate)
    dtype = compute_dtype(x, y)
    xc, yc = upcast(x, dtype), upcast(y, dtype)
    d = xc.shape[1]
    if projections is None:
        theta = torch.randn(d, num_projections, generator=generator, dtype=dtype, device=xc.device)
        theta = theta / theta.norm(dim=0, keepdim=True)
    else:
        check_floating(projections, "projections")
        if projections.dim() != 2 or projections.shape[0] != d:
            raise ValueError(f"projections must have shape ({d}, L), got {tuple(projections.shape)}")
        theta = upcast(projections, dtype)
    # torch.sort puts NaN last: a NaN coordinate still reaches |.|^p and the mean.
    A = (torch.sort(xc @ theta, dim=0).values - torch.sort(yc @ theta, dim=0).values).abs().pow(p).mean(0)
    est = A.mean()
    if control_variate is not None:
        with torch.no_grad():
            dm = xc.mean(0) - yc.mean(0)
            G = (dm @ theta).square()
            EG = dm.square().sum() / d
            if control_variate == "upper":
                cx = xc - xc.mean(0)
                cy = yc - yc.mean(0)
                G = G + (cx @ theta).square().mean(0) + (cy @ theta).square().mean(0)
                EG = EG + (cx.square().sum() + cy.square().sum()) / (xc.shape[0] * d)
            Gc, Ac = G - G.mean(), A.detach() - A.detach().mean()
            var = Gc.square().mean()
            # All G equal (e.g. one direction): no control variate. A NaN var leaves est NaN.
            gamma = torch.where(var > 0, (Ac * Gc).mean() / var.clamp_min(torch.finfo(dtype).tiny), torch.zeros_like(var))
            shift = gamma * (G.mean() - EG)
        est = est - shift
    if p == 1:
        return est.clamp_min(0)
    pos = est > 0
    root = torch.where(pos, est, torch.ones_like(est)).pow(1.0 / p)
    return torch.where(pos, root, est.clamp_min(0) * 0)  # 0 with gradient 0 at 0; NaN stays NaN
