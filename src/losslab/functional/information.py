"""Information measures: entropy of categorical distributions and representation diversity."""
from __future__ import annotations

import math
from typing import Callable

import torch

from .._checks import check_finite, check_floating, check_integer, check_ndim, check_positive, validation_enabled
from .._numerics import upcast
from .._reduction import reduce
from ..registry import Example, Reference, register
from ._examples import F64, randn
from .divergences import _check_mask, _kl

__all__ = [
    "entropy",
    "vendi_score",
    "vendi_score_from_kernel",
    "diffusion_spectral_entropy",
    "diffusion_spectral_mutual_information",
    "conditional_mutual_information",
    "cs_quadratic_mutual_information",
]

VENDI_PAPER = Reference(
    title="The Vendi Score: A Diversity Evaluation Metric for Machine Learning",
    authors="Dan Friedman, Adji Bousso Dieng",
    year=2023,
    url="https://arxiv.org/abs/2210.02410",
)
SHANNON = Reference(
    title="A Mathematical Theory of Communication",
    authors="Claude E. Shannon",
    year=1948,
    url="https://doi.org/10.1002/j.1538-7305.1948.tb01338.x",
)


def _entropy_example() -> Example:
    def make(gen):
        return (randn(gen, 6, 5),), {}

    def mismatch(gen):
        return (randn(gen, 6, 5),), {"mask": torch.ones(5, dtype=torch.bool)}

    return Example(make=make, mismatch=mismatch, logits=(0,))


@register("entropy", family="information", reference=SHANNON, example=_entropy_example(), input_kind="logits",
          bounded=True)
def entropy(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    log_probs: bool = False,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Shannon entropy (nats) of categorical distributions given by logits, per sample.

    .. math:: H(p) = -\sum_k p_k \log p_k, \qquad p = \operatorname{softmax}(x / T),

    with :math:`0 \log 0 = 0` (classes with logit ``-inf`` contribute nothing, also to the
    gradient). In :math:`[0, \log C]`.

    Args:
        logits: ``(*, C)``.
        temperature: :math:`T > 0`.
        log_probs: the input is log-probabilities (used as is when ``temperature == 1``).
        mask: optional bool ``(*)``; False samples are left out.
        reduction: ``"mean"`` over samples, ``"sum"`` or ``"none"``.

    Shape:
        logits ``(*, C)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import entropy
        >>> entropy(torch.zeros(1, 4))   # log 4
        tensor(1.3863)

    References:
        Shannon, "A Mathematical Theory of Communication", 1948.
    """
    check_floating(logits, "logits")
    check_ndim(logits, "logits", tuple(range(1, 9)))
    check_positive(temperature, "temperature")
    check_finite(logits, "logits")
    x = upcast(logits)
    logp = x if (log_probs and temperature == 1.0) else torch.log_softmax(x / temperature, dim=-1)
    p = logp.exp()
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    h = -(p * torch.where(p > 0, logp, zero)).sum(-1)
    return reduce(h, reduction, mask=_check_mask(mask, logp))


def _check_q(q: float) -> float:
    if not (isinstance(q, (int, float)) and (q > 0 or q == math.inf)) or math.isnan(q):
        raise ValueError(f"q must be > 0 (or math.inf), got {q!r}")
    return float(q)


def _order_q_diversity(lam: torch.Tensor, q: float) -> torch.Tensor:
    """exp of the order-q (Rényi) entropy of the eigenvalue distribution ``lam`` (last dim)."""
    # Eigenvalues below n * eps * max are round-off of exact zeros (rank-revealing
    # threshold); for q < 1 they would otherwise count as sqrt(1e-17) ~ 3e-9 each.
    tol = lam.shape[-1] * torch.finfo(lam.dtype).eps * lam.max(-1, keepdim=True).values
    lam = torch.where(lam > tol, lam, torch.zeros((), dtype=lam.dtype, device=lam.device))
    lam = lam / lam.sum(-1, keepdim=True)
    if q == 1.0:
        return torch.exp(-torch.xlogy(lam, lam).sum(-1))
    if q == math.inf:
        return 1.0 / lam.max(-1).values
    return torch.exp(torch.log(lam.pow(q).sum(-1)) / (1.0 - q))


def _vendi_example() -> Example:
    def make(gen):
        return (randn(gen, 9, 4),), {"q": 1.0}

    def mismatch(gen):
        return (randn(gen, 9),), {"q": 1.0}

    return Example(make=make, mismatch=mismatch, logits=(0,))


@register("vendi_score", family="information", reference=VENDI_PAPER, seed=VENDI_PAPER.title,
          example=_vendi_example(), input_kind="features", batch_level=True)
def vendi_score(features: torch.Tensor, *, q: float = 1.0, kernel: str | Callable = "cosine") -> torch.Tensor:
    r"""Vendi score: the effective number of distinct samples, from the cosine-similarity kernel.

    With rows :math:`x_i` normalized to unit length, :math:`K = XX^\top` and
    :math:`\lambda` the eigenvalues of :math:`K/n` (they sum to 1),

    .. math::
        \mathrm{VS}_q = \exp\Big(\frac{1}{1-q}\log\sum_i \lambda_i^{q}\Big),\quad
        \mathrm{VS}_1 = \exp\Big(-\sum_i \lambda_i\log\lambda_i\Big),\quad
        \mathrm{VS}_\infty = 1/\max_i \lambda_i .

    :math:`n` identical samples score 1; :math:`n` mutually orthogonal ones score :math:`n`.
    When :math:`n > d` the :math:`d \times d` matrix :math:`X^\top X / n`, which has the
    same non-zero eigenvalues, is decomposed instead of the :math:`n \times n` one:
    :math:`O(nd^2 + d^3)` rather than :math:`O(n^3)`. (The ``vendi_score`` package's
    ``score_X`` uses this dual but ignores ``q``; here every order is honoured.)
    Eigenvalues below :math:`n\,\varepsilon\max\lambda` (round-off of exact zeros, also
    the tiny negative ones) count as 0. Differentiable where the eigenvalues are distinct
    and non-zero (``eigvalsh``'s gradient divides by eigenvalue gaps: do not backpropagate
    through exactly repeated samples).

    Args:
        features: ``(n, d)`` embeddings (zero rows are not allowed with ``"cosine"``).
        q: order :math:`q > 0` or ``math.inf`` (0.5, 1, 2 and inf are the paper's).
        kernel: ``"cosine"`` (the paper's default for embeddings; uses the dual when
            :math:`n > d`) or a callable ``k(features) -> (n, n)`` similarity matrix with
            unit diagonal, passed to :func:`vendi_score_from_kernel`.

    Shape:
        features ``(n, d)``; output a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import vendi_score
        >>> vendi_score(torch.eye(4))              # 4 orthogonal samples
        tensor(4.0000)
        >>> vendi_score(torch.ones(5, 3))          # 5 identical samples
        tensor(1.0000)

    References:
        Friedman & Dieng, "The Vendi Score: A Diversity Evaluation Metric for Machine
        Learning", TMLR 2023, https://arxiv.org/abs/2210.02410.
    """
    check_floating(features, "features")
    check_ndim(features, "features", 2)
    q = _check_q(q)
    if callable(kernel):
        return vendi_score_from_kernel(kernel(features), q=q)
    if kernel != "cosine":
        raise ValueError(f"kernel must be 'cosine' or a callable returning an (n, n) kernel, got {kernel!r}")
    check_finite(features, "features")
    x = upcast(features)
    norms = x.norm(dim=-1, keepdim=True)
    if validation_enabled() and bool((norms == 0).any()):
        raise ValueError("features has an all-zero row: the cosine kernel is undefined there")
    x = x / norms
    n, d = x.shape
    gram = (x.T @ x) if n > d else (x @ x.T)
    lam = torch.linalg.eigvalsh(gram / n)
    return _order_q_diversity(lam, q)


def _kernel_example() -> Example:
    def make(gen):
        x = torch.nn.functional.normalize(randn(gen, 6, 8), dim=-1)
        return (x @ x.T,), {"q": 2.0}

    def mismatch(gen):
        return (randn(gen, 6, 5),), {"q": 2.0}

    return Example(make=make, mismatch=mismatch, logits=())


@register("vendi_score_from_kernel", family="information", reference=VENDI_PAPER, seed=VENDI_PAPER.title,
          example=_kernel_example(), input_kind="kernel", batch_level=True)
def vendi_score_from_kernel(kernel: torch.Tensor, *, q: float = 1.0) -> torch.Tensor:
    r"""Vendi score from a precomputed similarity matrix with unit diagonal.

    The exponential of the order-:math:`q` entropy of the eigenvalues of :math:`K/n`
    (see :func:`vendi_score`). ``kernel`` must be symmetric positive semi-definite with
    :math:`K_{ii} = 1` (checked when validation is on). It is symmetrized as
    :math:`(K + K^\top)/2` first, so the gradient is symmetric and every entry counts
    (``eigvalsh`` alone would read one triangle only).

    Args:
        kernel: ``(n, n)`` similarity matrix.
        q: order :math:`q > 0` or ``math.inf``.

    Shape:
        kernel ``(n, n)``; output a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import vendi_score_from_kernel
        >>> vendi_score_from_kernel(torch.eye(3), q=2.0)
        tensor(3.0000)

    References:
        Friedman & Dieng, TMLR 2023, https://arxiv.org/abs/2210.02410.
    """
    check_floating(kernel, "kernel")
    check_ndim(kernel, "kernel", 2)
    if kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"kernel must be square, got shape {tuple(kernel.shape)}")
    q = _check_q(q)
    check_finite(kernel, "kernel")
    k = upcast(kernel)
    if validation_enabled() and k.numel() > 0:
        err = float((torch.diagonal(k.detach()) - 1).abs().max())
        if err > 1e-3:
            raise ValueError(f"kernel must have a unit diagonal (K_ii = 1), found an entry off by {err:.3g}")
    k = 0.5 * (k + k.T)
    lam = torch.linalg.eigvalsh(k / k.shape[0])
    return _order_q_diversity(lam, q)


DSE_PAPER = Reference(
    title="Assessing Neural Network Representations During Training Using Noise-Resilient Diffusion Spectral Entropy",
    authors="Danqi Liao, Chen Liu, Benjamin W. Christensen, Alexander Tong, Guillaume Huguet, Guy Wolf, "
    "Maximilian Nickel, Ian Adelstein, Smita Krishnaswamy",
    year=2023,
    url="https://arxiv.org/abs/2312.04823",
)


def _check_dse_args(sigma, t):
    if sigma is not None:
        check_positive(sigma, "sigma")
    check_positive(t, "t")


def _dse(x: torch.Tensor, sigma: float | None, t: float, drop_trivial: bool) -> torch.Tensor:
    """DSE in bits of point sets ``x (..., n, d)`` -> ``(...)`` (the batch dims are independent sets)."""
    from .transport import pairwise_cost

    n = x.shape[-2]
    if n - int(drop_trivial) < 1:
        # One point (or none): a single eigenvalue, or none left once the trivial one is dropped.
        return x.sum((-2, -1)) * 0.0
    d2 = pairwise_cost(x, x, "sqeuclidean")
    if sigma is None:
        with torch.no_grad():  # median pairwise distance per set, diagonal excluded
            off = ~torch.eye(n, dtype=torch.bool, device=x.device)
            s2 = d2[..., off].median(-1).values.clamp_min(torch.finfo(d2.dtype).tiny)[..., None, None]
    else:
        s2 = float(sigma) ** 2
    # Gaussian affinities; the 1/(sigma sqrt(2 pi)) factor of the paper cancels in the
    # symmetric normalization below, so it is left out.
    g = torch.exp(-d2 / (2 * s2))
    # K = D^{-1/2} G D^{-1/2}: symmetric, with the eigenvalues of the diffusion operator
    # P = D^{-1} G (in [-1, 1], the top one is 1 with eigenvector D^{1/2} 1). Degrees are
    # >= 1 (unit diagonal), so the rsqrt is safe.
    r = torch.rsqrt(g.sum(-1))
    k = g * r.unsqueeze(-1) * r.unsqueeze(-2)
    k = 0.5 * (k + k.transpose(-1, -2))  # exact symmetry: eigvalsh reads one triangle
    lam = torch.linalg.eigvalsh(k)  # ascending
    if drop_trivial:
        lam = lam[..., :-1]  # the largest eigenvalue, 1, carries no information
    a = lam.abs().pow(t)
    p = a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    return -torch.xlogy(p, p).sum(-1) / math.log(2.0)


def _dse_example() -> Example:
    def make(gen):
        return (randn(gen, 8, 3),), {"sigma": 1.5, "t": 2}

    def mismatch(gen):
        return (randn(gen, 8),), {"sigma": 1.5}

    return Example(make=make, mismatch=mismatch, logits=())


@register("diffusion_spectral_entropy", family="information", reference=DSE_PAPER, seed=DSE_PAPER.title,
          example=_dse_example(), input_kind="features", batch_level=True)
def diffusion_spectral_entropy(
    features: torch.Tensor,
    *,
    sigma: float | None = 10.0,
    t: float = 1,
    drop_trivial: bool = True,
) -> torch.Tensor:
    r"""Diffusion spectral entropy (DSE, in bits) of a set of representations: entropy of the diffusion operator's spectrum.

    With Gaussian affinities :math:`G_{ij} = e^{-\|x_i - x_j\|^2/(2\sigma^2)}`, degrees
    :math:`D = \operatorname{diag}(G\mathbf 1)` and the diffusion operator
    :math:`P = D^{-1}G` (whose eigenvalues :math:`\lambda_i \in [-1, 1]` are those of the
    symmetric :math:`D^{-1/2} G D^{-1/2}`, which is what is decomposed),

    .. math::
        \mathrm{DSE}(X, t) = -\sum_i lpha_i \log_2 lpha_i, \qquad
        lpha_i = rac{|\lambda_i|^t}{\sum_j |\lambda_j|^t} .

    :math:`t` (diffusion time) suppresses the small, noise-driven eigenvalues. Conventions
    (the two reference versions differ): ``drop_trivial=True`` leaves out the top
    eigenvalue :math:`\lambda = 1` of the stationary distribution, as the authors'
    repository does (the ``dse_dsmi`` pip package keeps it; pass ``drop_trivial=False`` to
    match it); :math:`0 \log 0 = 0` where the reference code adds machine epsilon to every
    :math:`lpha_i` (a difference below :math:`n \cdot 10^{-14}` bits). Bits (log base 2), as
    the reference code. ``sigma=None`` uses the median pairwise distance of the set (no
    gradient through it); the default 10 is the authors' and assumes unnormalized
    features of large norm — with unit-norm embeddings choose a smaller ``sigma``.

    A batch-level measure (no reduction), :math:`O(n^2 d + n^3)`. Differentiable where the
    eigenvalues are distinct and non-zero (``eigvalsh``'s gradient divides by eigenvalue
    gaps: repeated points or a disconnected graph make it ill-defined).

    Args:
        features: ``(n, d)`` representations of ``n`` samples.
        sigma: Gaussian kernel width (> 0), or None for the median heuristic.
        t: diffusion time :math:`t > 0` (the eigenvalue power).
        drop_trivial: leave out the top eigenvalue (1).

    Shape:
        features ``(n, d)``; output a scalar (bits).

    Example:
        >>> import torch
        >>> from losslab.functional import diffusion_spectral_entropy
        >>> g = torch.Generator().manual_seed(0)
        >>> line = torch.randn(100, 1, generator=g) * torch.tensor([[1.0, 1.0, 1.0]])
        >>> cloud = torch.randn(100, 3, generator=g)
        >>> bool(diffusion_spectral_entropy(line, sigma=0.5) < diffusion_spectral_entropy(cloud, sigma=0.5))
        True

    References:
        Liao, Liu, et al., "Assessing Neural Network Representations During Training Using
        Noise-Resilient Diffusion Spectral Entropy", 2023, https://arxiv.org/abs/2312.04823.
    """
    check_floating(features, "features")
    check_ndim(features, "features", 2)
    _check_dse_args(sigma, t)
    check_finite(features, "features")
    return _dse(upcast(features), sigma, t, drop_trivial)


def _dsmi_example() -> Example:
    def make(gen):
        labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
        x = randn(gen, 12, 3) + 2.0 * labels.to(F64).unsqueeze(-1)
        return (x, labels), {"sigma": 2.0, "num_repetitions": 2}

    def mismatch(gen):
        return (randn(gen, 12, 3), torch.tensor([0, 1, 0, 1])), {"sigma": 2.0}

    return Example(make=make, mismatch=mismatch, logits=(), grad=(0,))



@register("diffusion_spectral_mutual_information", family="information", reference=DSE_PAPER, seed=DSE_PAPER.title,
          example=_dsmi_example(), input_kind="features", batch_level=True)
def diffusion_spectral_mutual_information(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    sigma: float | None = 10.0,
    t: float = 1,
    drop_trivial: bool = True,
    num_repetitions: int = 5,
    seed: int = 0,
) -> torch.Tensor:
    r"""Diffusion spectral mutual information (DSMI, in bits) between representations and discrete labels.

    .. math::
        \mathrm{DSMI}(X; Y) = \mathrm{DSE}(X) - \sum_y p(y)\, \mathrm{DSE}(X \mid Y = y),

    with :math:`\mathrm{DSE}` from :func:`diffusion_spectral_entropy` and
    :math:`p(y) = n_y / n`. DSE grows with the number of points, so by default (as the
    authors' code does) the unconditional term of class :math:`y` is estimated at the
    class's own size: the mean DSE of ``num_repetitions`` random subsets of :math:`n_y`
    samples drawn without replacement from the whole set,

    .. math::
        \mathrm{DSMI} = \sum_y p(y)\Big[\overline{\mathrm{DSE}}(X^{*}_{n_y}) -
        \mathrm{DSE}(X \mid Y = y)\Big].

    ``num_repetitions=0`` uses the full-set :math:`\mathrm{DSE}(X)` instead (the formula as
    written, biased upward when classes are small). The subsets are drawn from a private
    generator seeded with ``seed``: the value is a deterministic function of the inputs
    (and differentiable like :func:`diffusion_spectral_entropy`). For a continuous ``Y``
    (e.g. input images) discretize it first (the authors bin scalars and spectrally
    cluster vectors) and pass the cluster ids. Classes with one sample contribute 0. A
    batch-level measure with one host synchronization (the class sizes); one Python
    iteration per class.

    Args:
        features: ``(n, d)`` representations.
        labels: ``(n,)`` integer class (or cluster) ids.
        sigma, t, drop_trivial: as in :func:`diffusion_spectral_entropy`.
        num_repetitions: random subsets per class for the unconditional term (>= 0).
        seed: seed of the subset draws.

    Shape:
        features ``(n, d)``, labels ``(n,)``; output a scalar (bits).

    Example:
        >>> import torch
        >>> from losslab.functional import diffusion_spectral_mutual_information as dsmi
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(4).repeat_interleave(50)
        >>> x = torch.randn(200, 2, generator=g) + 6.0 * torch.stack([y % 2, y // 2], 1)
        >>> bool(dsmi(x, y, sigma=1.0) > 5 * dsmi(x, y[torch.randperm(200, generator=g)], sigma=1.0).abs())
        True

    References:
        Liao, Liu, et al., "Assessing Neural Network Representations During Training Using
        Noise-Resilient Diffusion Spectral Entropy", 2023, https://arxiv.org/abs/2312.04823.
    """
    check_floating(features, "features")
    check_ndim(features, "features", 2)
    check_integer(labels, "labels")
    if labels.shape != features.shape[:1]:
        raise ValueError(f"labels must have shape ({features.shape[0]},) (one id per row of features), "
                         f"got {tuple(labels.shape)}")
    _check_dse_args(sigma, t)
    if not (isinstance(num_repetitions, int) and num_repetitions >= 0):
        raise ValueError(f"num_repetitions must be an int >= 0, got {num_repetitions!r}")
    check_finite(features, "features")
    x = upcast(features)
    n = x.shape[0]
    classes, counts = torch.unique(labels, return_counts=True)
    gen = torch.Generator().manual_seed(int(seed))
    total = x.new_zeros(())
    full = _dse(x, sigma, t, drop_trivial) if num_repetitions == 0 else None
    for c, n_c in zip(classes.tolist(), counts.tolist()):
        conditional = _dse(x[labels == c], sigma, t, drop_trivial)
        if full is None:
            # num_repetitions random subsets of size n_c, one batched eigendecomposition.
            idx = torch.rand(num_repetitions, n, generator=gen).argsort(-1)[:, :n_c].to(x.device)
            marginal = _dse(x[idx], sigma, t, drop_trivial).mean()
        else:
            marginal = full
        total = total + (n_c / n) * (marginal - conditional)
    return total


CMI_PAPER = Reference(
    title="Bayes Conditional Distribution Estimation for Knowledge Distillation Based on Conditional Mutual Information",
    authors="Linfeng Ye, Shayan Mohajer Hamidi, Renhao Tan, En-Hui Yang",
    year=2024,
    url="https://arxiv.org/abs/2401.08732",
)
CSQMI_PAPER = Reference(
    title="Cauchy-Schwarz Divergence Information Bottleneck for Regression",
    authors="Shujian Yu, Xi Yu, Sigurd Løkse, Robert Jenssen, Jose C. Principe",
    year=2024,
    url="https://arxiv.org/abs/2404.17951",
)


def _cmi_example() -> Example:
    def make(gen):
        target = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
        return (randn(gen, 8, 4), target), {}

    def mismatch(gen):
        return (randn(gen, 8, 4), torch.tensor([0, 1, 2])), {}

    return Example(make=make, mismatch=mismatch, logits=(0,))


@register("conditional_mutual_information", family="information", reference=CMI_PAPER, seed=CMI_PAPER.title,
          example=_cmi_example(), input_kind="logits", batch_level=True)
def conditional_mutual_information(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Conditional mutual information I(X; Ŷ | Y) of a classifier, by the class-centroid KL estimate.

    With :math:`P_i = \operatorname{softmax}(z_i / T)` and, for every class :math:`c` present
    in the batch, the centroid :math:`Q_c = \frac{1}{|\{i: y_i = c\}|}\sum_{i: y_i = c} P_i`,

    .. math:: \mathrm{CMI} = \frac1N\sum_i \mathrm{KL}\big(P_i \,\|\, Q_{y_i}\big).

    It measures how much the predictions of one class spread around their class mean — the
    "contextual" information the MCMI paper asks the teacher to keep: the teacher is trained
    with :math:`\mathrm{CE} - \lambda\,\mathrm{CMI}` (:math:`\lambda \approx 0.25`). The centroids
    come from the batch itself (in log-space, a ``logsumexp`` over the class's samples) and
    gradients flow through them. ``reduction="none"`` returns the per-sample KL to the own
    class's centroid.

    Args:
        logits: ``(N, C)``.
        target: ``(N,)`` class indices.
        temperature: :math:`T > 0`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        logits ``(N, C)``, target ``(N,)``; output ``(N,)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import conditional_mutual_information
        >>> z = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
        >>> conditional_mutual_information(z, torch.tensor([0, 0, 1]))  # each class is tight
        tensor(0.)

    References:
        Ye, Hamidi, Tan, Yang, "Bayes Conditional Distribution Estimation for Knowledge
        Distillation Based on Conditional Mutual Information", ICLR 2024,
        https://arxiv.org/abs/2401.08732.
    """
    from .._checks import check_class_target

    check_floating(logits, "logits")
    check_ndim(logits, "logits", 2)
    check_positive(temperature, "temperature")
    check_class_target(target, logits)
    check_finite(logits, "logits")
    logp = torch.log_softmax(upcast(logits) / temperature, dim=-1)
    n, c = logp.shape
    member = torch.nn.functional.one_hot(target, c).T.to(torch.bool)  # (classes, N)
    neg_inf = torch.tensor(float("-inf"), dtype=logp.dtype, device=logp.device)
    # log Q_c = logsumexp over the class's samples of log P_i, minus log(count)
    masked = torch.where(member.unsqueeze(-1), logp.unsqueeze(0), neg_inf)  # (classes, N, C)
    counts = member.sum(1).clamp_min(1).to(logp.dtype)
    log_q = torch.logsumexp(masked, dim=1) - torch.log(counts).unsqueeze(-1)
    kl = _kl(logp, log_q[target])
    return reduce(kl, reduction)


def _csqmi_example() -> Example:
    def make(gen):
        x = randn(gen, 9, 3)
        return (x, x[:, :1] * 2 + 0.3 * randn(gen, 9, 1)), {"sigma_x": 1.5, "sigma_t": 1.0}

    def mismatch(gen):
        return (randn(gen, 9, 3), randn(gen, 7, 1)), {}

    return Example(make=make, mismatch=mismatch, logits=())


@register("cs_quadratic_mutual_information", family="information", reference=CSQMI_PAPER, seed=CSQMI_PAPER.title,
          example=_csqmi_example(), input_kind="features", batch_level=True, symmetric=True)
def cs_quadratic_mutual_information(
    x: torch.Tensor,
    t: torch.Tensor,
    *,
    sigma_x: float | None = None,
    sigma_t: float | None = None,
) -> torch.Tensor:
    r"""Cauchy–Schwarz quadratic mutual information between paired samples, from Gaussian Gram matrices.

    With Gram matrices :math:`K^x_{ij} = e^{-\|x_i-x_j\|^2/(2\sigma_x^2)}` and :math:`K^t`,

    .. math::
        I_{CS}(x; t) = \log\frac{1}{n^2}\sum_{ij}K^x_{ij}K^t_{ij}
                     + \log\frac{1}{n^4}\sum_{ij}K^x_{ij}\sum_{ij}K^t_{ij}
                     - 2\log\frac{1}{n^3}\sum_i\Big(\sum_j K^x_{ij}\Big)\Big(\sum_k K^t_{ik}\Big),

    the CS divergence between the joint density and the product of marginals (≥ 0 by
    Cauchy–Schwarz); the CS-IB compression term :math:`I_{CS}(x; t)`. Sums of kernel values
    are at least :math:`n` (unit diagonal), so no log-space is needed. Bandwidth heuristic:
    ``sigma=None`` takes the median pairwise Euclidean distance within that sample (diagonal
    excluded, lower middle value for an even count, no gradient through it). The CS-IB
    reference code is reported to default to a width derived from 10 × the median pairwise
    *squared* distance (our notes; not checked against its current version): pass
    ``sigma_x``/``sigma_t`` explicitly to reproduce a given setting. Which argument is which:
    in CS-IB, ``x`` is the input and ``t`` the learned representation (the measure is
    symmetric).

    Args:
        x: ``(n, d_x)`` or ``(n,)``.
        t: ``(n, d_t)`` or ``(n,)``, paired with ``x`` row by row.
        sigma_x, sigma_t: kernel widths (> 0), or None for the median heuristic.

    Shape:
        output a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import cs_quadratic_mutual_information
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(200, 2, generator=g)
        >>> dep = cs_quadratic_mutual_information(x, x[:, :1])
        >>> ind = cs_quadratic_mutual_information(x, torch.randn(200, 1, generator=g))
        >>> bool(dep > 5 * ind)
        True

    References:
        Yu et al., "Cauchy-Schwarz Divergence Information Bottleneck for Regression", ICLR
        2024, https://arxiv.org/abs/2404.17951; Principe, "Information Theoretic Learning", 2010.
    """
    from .transport import pairwise_cost
    from .transport_kernel import median_heuristic

    check_floating(x, "x")
    check_floating(t, "t")
    xs = x.unsqueeze(-1) if x.dim() == 1 else x
    ts = t.unsqueeze(-1) if t.dim() == 1 else t
    check_ndim(xs, "x", 2)
    check_ndim(ts, "t", 2)
    if xs.shape[0] != ts.shape[0]:
        raise ValueError(f"x and t must have the same number of samples, got {xs.shape[0]} and {ts.shape[0]}")
    check_finite(x, "x")
    check_finite(t, "t")
    dtype = torch.float64 if torch.float64 in (x.dtype, t.dtype) else torch.float32
    xs, ts = upcast(xs, dtype), upcast(ts, dtype)

    def gram(z, sigma, name):
        if sigma is None:
            s = median_heuristic(z, z[:0])  # median pairwise distance within this sample
        else:
            check_positive(sigma, name)
            s = torch.tensor(float(sigma), dtype=dtype)
        return torch.exp(-pairwise_cost(z, z, "sqeuclidean") / (2 * s * s))

    kx, kt = gram(xs, sigma_x, "sigma_x"), gram(ts, sigma_t, "sigma_t")
    n = xs.shape[0]
    v_joint = (kx * kt).sum() / n**2
    v_marg = kx.sum() * kt.sum() / n**4
    v_cross = (kx.sum(1) * kt.sum(1)).sum() / n**3
    return torch.log(v_joint) + torch.log(v_marg) - 2 * torch.log(v_cross)
