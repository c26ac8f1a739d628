"""Information measures: entropy of categorical distributions and representation diversity."""
from __future__ import annotations

import math

import torch

from .._checks import check_floating, check_ndim, check_positive, validation_enabled
from .._numerics import upcast
from .._reduction import reduce
from ..registry import Example, Reference, register
from ._examples import randn
from .divergences import _check_mask, _kl

__all__ = ["entropy", "vendi_score", "vendi_score_from_kernel", "conditional_mutual_information", "cs_quadratic_mutual_information"]

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
def vendi_score(features: torch.Tensor, *, q: float = 1.0) -> torch.Tensor:
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
    Differentiable where the eigenvalues are distinct and non-zero.

    Args:
        features: ``(n, d)`` embeddings (zero rows are not allowed).
        q: order :math:`q > 0` or ``math.inf`` (0.5, 1, 2 and inf are the paper's).

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
    k = upcast(kernel)
    if validation_enabled() and k.numel() > 0:
        err = float((torch.diagonal(k.detach()) - 1).abs().max())
        if err > 1e-3:
            raise ValueError(f"kernel must have a unit diagonal (K_ii = 1), found an entry off by {err:.3g}")
    k = 0.5 * (k + k.T)
    lam = torch.linalg.eigvalsh(k / k.shape[0])
    return _order_q_diversity(lam, q)


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
    are at least :math:`n` (unit diagonal), so no log-space is needed. ``sigma=None`` takes
    the median pairwise distance of that sample (the reference code's default width differs:
    pass it explicitly to reproduce).

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
