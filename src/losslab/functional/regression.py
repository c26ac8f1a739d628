"""Regression with uncertainty: Gaussian and generalized-Gaussian likelihoods, right-censored
regression with Kaplan–Meier weights, and learning from aggregate (bag-level) responses.

Arguments follow the regression row of the house vocabulary: ``pred``, ``target`` and the
likelihood's ``var``, ``scale``, ``shape``; censored data are ``times`` (observed
durations ``min(Y, C)``) and ``events`` (1 = the duration was observed, 0 = censored).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .._checks import (
    check_choice,
    check_floating,
    check_integer,
    check_nonnegative,
    check_nonnegative_tensor,
    check_positive,
    check_same_shape,
    check_sample_weight,
    hyperparameter_checks,
    validation_enabled,
)
from .._numerics import compute_dtype, upcast
from .._reduction import reduce
from ..registry import Example, Reference, register
from ._examples import F64, randn

__all__ = [
    "gaussian_nll",
    "generalized_gaussian_nll",
    "kaplan_meier_weights",
    "censored_regression_loss",
    "aggregate_response_loss",
]

NIX_WEIGEND = Reference(
    title="Estimating the mean and variance of the target probability distribution",
    authors="David A. Nix, Andreas S. Weigend",
    year=1994,
    url="https://doi.org/10.1109/ICNN.1994.374138",
)
BETA_NLL = Reference(
    title="On the Pitfalls of Heteroscedastic Uncertainty Estimation with Probabilistic Neural Networks",
    authors="Maximilian Seitzer, Arash Tavakoli, Dimitrije Antic, Georg Martius",
    year=2022,
    url="https://arxiv.org/abs/2203.09168",
)
ICL_UQ_SEED = "Towards Better Understanding of In-Context Learning Ability from In-Context Uncertainty Quantification"
GGD_PAPER = Reference(
    title="Generalized Gaussian Temporal Difference Error for Uncertainty-aware Reinforcement Learning",
    authors="Seyeon Kim, Joonhun Lee, Namhoon Cho, Sungjun Han, Wooseop Hwang",
    year=2024,
    url="https://arxiv.org/abs/2408.02295",
)
CENSORED_PAPER = Reference(
    title="Empirical Risk Minimization under Random Censorship: Theory and Practice",
    authors="Guillaume Ausset, Stephan Clémençon, François Portier",
    year=2019,
    url="https://arxiv.org/abs/1906.01908",
)
AGGREGATE_PAPER = Reference(
    title="Learning from Aggregate responses: Instance Level versus Bag Level Loss Functions",
    authors="Adel Javanmard, Lin Chen, Vahab Mirrokni, Ashwinkumar Badanidiyuru, Gang Fu",
    year=2024,
    url="https://arxiv.org/abs/2401.11081",
)

LOG_2PI = math.log(2 * math.pi)


def _check_pred_target(pred: torch.Tensor, target: torch.Tensor) -> None:
    check_floating(pred, "pred")
    check_floating(target, "target")
    check_same_shape(pred, target, ("pred", "target"))


def _check_broadcast(x: torch.Tensor, name: str, shape: torch.Size) -> None:
    check_floating(x, name)
    try:
        ok = torch.broadcast_shapes(x.shape, shape) == shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must broadcast to the shape of pred {tuple(shape)}, got {tuple(x.shape)}")


def _check_positive_tensor(x: torch.Tensor, name: str) -> None:
    if validation_enabled() and x.numel() > 0:
        lo = float(x.detach().min())
        if not lo > 0:  # also NaN
            raise ValueError(f"{name} must be positive, found {lo:.4g}")


# --------------------------------------------------------------------------- Gaussian NLL
def _gaussian_example() -> Example:
    def make(gen, **kw):
        pred, target = randn(gen, 6, 3), randn(gen, 6, 3)
        var = torch.rand(6, 3, generator=gen, dtype=F64) + 0.2
        return (pred, target, var), kw

    def per_sample_var(gen):  # torch's (N, D) input with an (N,) variance
        return (randn(gen, 6, 3), randn(gen, 6, 3), torch.rand(6, generator=gen, dtype=F64) + 0.2), {"full": True}

    def beta_nll(gen):  # (the detached var ** beta factor is not the value's gradient: no gradcheck)
        return make(gen, beta=0.5)

    def mismatch(gen):
        return (randn(gen, 6, 3), randn(gen, 6, 2), torch.rand(6, 3, generator=gen, dtype=F64) + 0.2), {}

    return Example(make=make, mismatch=mismatch, mismatch_match="target", extreme=(0, 1),
                   variants=(per_sample_var, beta_nll))


def _check_gaussian(*, beta=0.0, full=False, eps=1e-6, **_) -> None:
    check_nonnegative(beta, "beta")
    check_positive(eps, "eps")
    if not isinstance(full, bool):
        raise TypeError(f"full must be a bool, got {full!r}")


@register(
    "gaussian_nll",
    family="regression",
    reference=BETA_NLL,
    seed=ICL_UQ_SEED,
    example=_gaussian_example(),
    tags=("regression", "uncertainty", "heteroscedastic", "likelihood", "beta-NLL", "variance"),
    input_kind="regression",
)
@hyperparameter_checks(_check_gaussian)
def gaussian_nll(
    pred: torch.Tensor,
    target: torch.Tensor,
    var: torch.Tensor,
    *,
    beta: float = 0.0,
    full: bool = False,
    eps: float = 1e-6,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Heteroscedastic Gaussian negative log-likelihood, with β-NLL weighting.

    .. math:: \ell = \lfloor\sigma^2\rfloor^{\beta}\cdot\frac12\Big(\log\max(\sigma^2, \epsilon)
        + \frac{(y - \mu)^2}{\max(\sigma^2, \epsilon)}\Big) \;\big[+\tfrac12\log 2\pi\big],

    where :math:`\lfloor\cdot\rfloor` stops the gradient. At ``beta=0`` this is
    ``torch.nn.functional.gaussian_nll_loss(pred, target, var, full=full, eps=eps)`` in value
    and gradient (the variance is clamped at ``eps`` with the gradient passed through, as
    torch does). ``beta > 0`` is β-NLL (Seitzer et al.): each element's loss is multiplied by
    the detached ``max(var, eps) ** beta``, which keeps badly fitted, high-variance points
    from being ignored; ``beta=1`` gives the mean's gradient of the squared error.

    ``var`` has the shape of ``pred``, or ``pred``'s shape without its last dimension (one
    variance per sample, torch's rule), or any shape that broadcasts to ``pred``.

    Args:
        pred: predicted means ``(*)``.
        target: observations ``(*)``.
        var: predicted variances, non-negative (a negative value is a ``ValueError`` when
            validation is on).
        beta: β-NLL exponent ``>= 0`` (0: plain NLL; 0.5 is the paper's recommendation).
        full: add the constant :math:`\frac12\log 2\pi`.
        eps: lower clamp of the variance, ``> 0``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        pred, target ``(*)``; var ``(*)``, ``(*[:-1])`` or broadcastable; output ``(*)`` for
        ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from losslab.functional import gaussian_nll
        >>> mu, y, var = torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.0]), torch.tensor([1.0, 2.0])
        >>> torch.allclose(gaussian_nll(mu, y, var), F.gaussian_nll_loss(mu, y, var))
        True

    References:
        Nix & Weigend, "Estimating the mean and variance of the target probability
        distribution", ICNN 1994, https://doi.org/10.1109/ICNN.1994.374138;
        Seitzer, Tavakoli, Antic, Martius, "On the Pitfalls of Heteroscedastic Uncertainty
        Estimation with Probabilistic Neural Networks", ICLR 2022, https://arxiv.org/abs/2203.09168.
    """
    _check_gaussian(beta=beta, full=full, eps=eps)
    _check_pred_target(pred, target)
    check_floating(var, "var")
    if var.shape != pred.shape and pred.dim() >= 1 and tuple(var.shape) == tuple(pred.shape[:-1]):
        var = var.unsqueeze(-1)
    _check_broadcast(var, "var", pred.shape)
    check_nonnegative_tensor(var, "var")
    dtype = compute_dtype(pred, target, var)
    mu, y, v = upcast(pred, dtype), upcast(target, dtype), upcast(var, dtype)
    # Clamp with the gradient passed through (torch clamps a clone under no_grad).
    v = v + (v.clamp_min(eps) - v).detach()
    loss = 0.5 * (torch.log(v) + (y - mu) ** 2 / v)
    if full:
        loss = loss + 0.5 * LOG_2PI
    if beta > 0:
        loss = loss * v.detach() ** beta
    return reduce(loss.expand(pred.shape) if loss.shape != pred.shape else loss, reduction)


# --------------------------------------------------------------------------- generalized Gaussian NLL
def _ggd_example() -> Example:
    def make(gen):
        pred, target = randn(gen, 5, 2), randn(gen, 5, 2)
        scale = torch.rand(5, 2, generator=gen, dtype=F64) + 0.5
        shape = torch.rand(5, 2, generator=gen, dtype=F64) * 1.5 + 1.0
        return (pred, target, scale, shape), {}

    def broadcast(gen):
        return (randn(gen, 4, 3), randn(gen, 4, 3), torch.tensor(0.8, dtype=F64),
                torch.rand(3, generator=gen, dtype=F64) + 1.2), {}

    def mismatch(gen):
        (p, t, s, b), kw = make(gen)
        return (p, t[:-1], s, b), kw

    return Example(make=make, mismatch=mismatch, mismatch_match="target", extreme=(0, 1), variants=(broadcast,))


@register(
    "generalized_gaussian_nll",
    family="regression",
    reference=GGD_PAPER,
    seed=GGD_PAPER.title,
    example=_ggd_example(),
    tags=("regression", "uncertainty", "likelihood", "heavy tails", "generalized Gaussian", "kurtosis"),
    input_kind="regression",
)
def generalized_gaussian_nll(
    pred: torch.Tensor,
    target: torch.Tensor,
    scale: torch.Tensor,
    shape: torch.Tensor,
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Negative log-likelihood of the generalized Gaussian with scale α and shape β.

    .. math:: \ell = \Big(\frac{|y - \mu|}{\alpha}\Big)^{\beta} - \log\beta + \log(2\alpha)
        + \log\Gamma(1/\beta),

    i.e. ``-scipy.stats.gennorm.logpdf(target, shape, loc=pred, scale=scale)``: β = 2 is a
    Gaussian with variance :math:`\alpha^2/2`, β = 1 a Laplace, β → ∞ a uniform on
    :math:`[\mu - \alpha, \mu + \alpha]`. Differentiable in ``pred``, ``scale`` and ``shape``.
    This follows the density; the GGD-TD authors' code uses :math:`|\delta|\cdot\beta` in
    place of :math:`(|\delta|/\alpha)^\beta`. The power is ``exp(β log(|y-μ|/α))``, which is
    finite in float64 for β in [0.1, 20] and residuals up to 1e3 over any scale ≥ 1e-3
    (the loss itself exceeds float32's range when :math:`(|y-\mu|/\alpha)^\beta > 3\cdot10^{38}`).
    At a zero residual the gradient in ``pred`` is 0 for β > 1 (the density is not
    differentiable there for β ≤ 1).

    Args:
        pred: location :math:`\mu` ``(*)``.
        target: observations ``(*)``.
        scale: :math:`\alpha > 0`, broadcastable to ``pred``.
        shape: :math:`\beta > 0`, broadcastable to ``pred``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        pred, target ``(*)``; scale, shape broadcastable to ``(*)``; output ``(*)`` for
        ``"none"``, else a scalar.

    Example:
        >>> import math, torch
        >>> from losslab.functional import generalized_gaussian_nll
        >>> mu, y = torch.tensor([0.0]), torch.tensor([1.0])
        >>> laplace = math.log(2.0) + 1.0  # -log(exp(-|1|) / 2)
        >>> torch.allclose(generalized_gaussian_nll(mu, y, torch.tensor(1.0), torch.tensor(1.0)),
        ...                torch.tensor(laplace))
        True

    References:
        Kim, Lee, Cho, Han, Hwang, "Generalized Gaussian Temporal Difference Error for
        Uncertainty-aware Reinforcement Learning", 2024, https://arxiv.org/abs/2408.02295.
    """
    _check_pred_target(pred, target)
    _check_broadcast(scale, "scale", pred.shape)
    _check_broadcast(shape, "shape", pred.shape)
    _check_positive_tensor(scale, "scale")
    _check_positive_tensor(shape, "shape")
    dtype = compute_dtype(pred, target, scale, shape)
    mu, y, a, b = (upcast(t, dtype) for t in (pred, target, scale, shape))
    r = (y - mu).abs() / a
    # r ** b with the gradient in b defined at r = 0 (torch's pow gives 0 * log 0 = NaN there
    # only through our own log; pow's own backward masks it).
    power = torch.pow(r, b)
    loss = power - torch.log(b) + torch.log(2 * a) + torch.lgamma(1 / b)
    return reduce(loss.expand(pred.shape) if loss.shape != pred.shape else loss, reduction)


# --------------------------------------------------------------------------- Kaplan–Meier weights
def _check_survival(times: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
    check_floating(times, "times")
    if times.dim() != 1:
        raise ValueError(f"times must have shape (N,), got {tuple(times.shape)}")
    if not isinstance(events, torch.Tensor):
        raise TypeError(f"events must be a torch.Tensor, got {type(events).__name__}")
    if events.shape != times.shape:
        raise ValueError(f"events must have the shape of times {tuple(times.shape)}, got {tuple(events.shape)}")
    if validation_enabled() and times.numel() > 0:
        lo = float(times.min())
        if not lo >= 0:
            raise ValueError(f"times must be non-negative durations, found {lo:.4g}")
        bad = (events != 0) & (events != 1)
        if bool(bad.any()):
            raise ValueError(f"events must be 0 (censored) or 1 (observed), found {float(events[bad][0]):.4g}")
    return events.to(torch.float64)


def _km_unconditional(t: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """W_i = δ_i S(Y_i−) / n(Y_i), the KM jump at Y_i split among its tied events (float64)."""
    n = t.numel()
    uniq, inverse, counts = torch.unique(t, sorted=True, return_inverse=True, return_counts=True)
    deaths = torch.zeros(uniq.numel(), dtype=torch.float64, device=t.device).index_add(0, inverse, d)
    at_risk = n - (torch.cumsum(counts, 0) - counts).to(torch.float64)  # #{j: Y_j >= u}
    factor = 1.0 - deaths / at_risk
    surv_before = torch.cumprod(torch.cat([factor.new_ones(1), factor[:-1]]), 0)  # S(u−)
    return d * (surv_before / at_risk)[inverse]


def _km_conditional(t: torch.Tensor, d: torch.Tensor, x: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """W_i = δ_i / (n Ŝ_C(Y_i− | X_i)) with Beran's product-limit of the censoring (float64)."""
    n = t.numel()
    # Nadaraya–Watson weights B_j(x_i) with a Gaussian kernel (row i: the query X_i).
    sq = torch.cdist(x, x).pow(2)
    logk = -0.5 * sq / bandwidth ** 2
    b = torch.softmax(logk, dim=1)  # (n, n), rows sum to 1
    # For a censoring at time s the risk set is {j: Y_j > s} plus the censorings at s
    # (events at s come first). Product over distinct censoring times s < Y_i.
    later = (t.unsqueeze(0) > t.unsqueeze(1)).to(torch.float64)  # [s_idx k, j]: Y_j > Y_k
    same_cens = ((t.unsqueeze(0) == t.unsqueeze(1)) & (d.unsqueeze(0) == 0)).to(torch.float64)
    risk = b @ (later + same_cens).T  # risk[i, k] = sum_j B_j(x_i) 1[j at risk for a censoring at Y_k]
    cens_mass = b @ (same_cens.T * (1 - d).unsqueeze(1))  # sum of B_j(x_i) over censorings tied with Y_k
    # One factor per distinct censoring time: take it at the first censored k of each time.
    cens = d == 0
    first = torch.zeros(n, dtype=torch.bool, device=t.device)
    if bool(cens.any()):
        idx = torch.nonzero(cens).squeeze(1)
        _, inv = torch.unique(t[idx], return_inverse=True)
        first_pos = torch.full((int(inv.max()) + 1,), n, dtype=torch.long, device=t.device)
        first_pos = first_pos.scatter_reduce(0, inv, idx, reduce="amin")
        first[first_pos] = True
    ratio = torch.where(risk > 0, cens_mass / torch.where(risk > 0, risk, torch.ones_like(risk)), torch.zeros_like(risk))
    log_factor = torch.log1p(-ratio.clamp(max=1.0))  # (i, k); -inf when the whole risk set is censored
    use = first.unsqueeze(0) & (t.unsqueeze(0) < t.unsqueeze(1))  # censoring time Y_k < Y_i
    log_surv = torch.where(use, log_factor, torch.zeros_like(log_factor)).sum(1)
    surv = torch.exp(log_surv)
    return torch.where(d > 0, d / (n * surv), torch.zeros_like(d))


def _km_example() -> Example:
    def make(gen):
        times = torch.rand(10, generator=gen, dtype=F64) * 3 + 0.1
        return (times, torch.tensor([1, 0, 1, 1, 0, 1, 1, 0, 1, 1])), {}

    def mismatch(gen):
        (t, e), kw = make(gen)
        return (t, e[:-1]), kw

    return Example(make=make, mismatch=mismatch, mismatch_match="events|times", extreme=(0,))


@register(
    "kaplan_meier_weights",
    family="regression",
    reference=CENSORED_PAPER,
    example=_km_example(),
    tags=("survival", "censoring", "inverse probability of censoring weights", "instance weights"),
    input_kind="durations",
    returns="weights",
    differentiable=False,
    module_required=False,
)
def kaplan_meier_weights(
    times: torch.Tensor,
    events: torch.Tensor,
    *,
    covariates: torch.Tensor | None = None,
    bandwidth: float | None = None,
) -> torch.Tensor:
    r"""Inverse-probability-of-censoring weights from the Kaplan–Meier estimator.

    .. math:: W_i = \frac{\delta_i}{n\,\hat S_C(\tilde Y_i-)},

    with :math:`\hat S_C` the Kaplan–Meier estimate of the censoring survival function and
    :math:`\tilde Y_i` the observed time. Ties: at a time with both events and censorings,
    the events come first (the censorings are still at risk after them), so :math:`W_i` equals
    the Kaplan–Meier jump of the event distribution at :math:`\tilde Y_i`, split equally among
    the events tied there: :math:`W_i = \delta_i \hat S(\tilde Y_i-)/n(\tilde Y_i)` with
    :math:`n(t) = \#\{j: \tilde Y_j \ge t\}`. The weights are not renormalized: they sum to
    :math:`1 - \hat S(\max \tilde Y)`, which is 1 when the last observation is an event and
    less when it is censored (the mass beyond it is unknown). Censored samples weigh 0.

    With ``covariates``, :math:`\hat S_C(\cdot \mid X_i)` is Beran's conditional product-limit
    estimator with Nadaraya–Watson weights
    :math:`B_j(x) \propto \exp(-\lVert x - X_j\rVert^2 / (2h^2))`, :math:`h` = ``bandwidth``
    (needs O(n²) memory). With a very large bandwidth it is the unconditional estimator.
    The weights carry no gradient (they are step functions of the times).

    Args:
        times: observed durations :math:`\tilde Y_i = \min(Y_i, C_i) \ge 0`, ``(N,)``.
        events: :math:`\delta_i = 1[Y_i \le C_i]` in {0, 1}, ``(N,)`` (any dtype).
        covariates: optional ``(N, D)`` features for the conditional (Beran) version.
        bandwidth: the Nadaraya–Watson bandwidth :math:`h > 0`; required with ``covariates``.

    Shape:
        times, events ``(N,)``; covariates ``(N, D)``; output ``(N,)``.

    Returns:
        ``(N,)`` weights (float32 for float32/half times, float64 for float64).

    Example:
        >>> import torch
        >>> from losslab.functional import kaplan_meier_weights
        >>> times = torch.tensor([1.0, 2.0, 3.0, 4.0])
        >>> kaplan_meier_weights(times, torch.tensor([1, 0, 1, 1]))  # 1/4, then 3/8 each
        tensor([0.2500, 0.0000, 0.3750, 0.3750])

    References:
        Ausset, Clémençon, Portier, "Empirical Risk Minimization under Random Censorship:
        Theory and Practice", 2019, https://arxiv.org/abs/1906.01908; Beran, "Nonparametric
        regression with randomly censored survival data", 1981.
    """
    d = _check_survival(times, events)
    out_dtype = upcast(times).dtype
    t = times.detach().to(torch.float64)
    if covariates is None:
        if bandwidth is not None:
            raise ValueError("bandwidth is only used with covariates")
        return _km_unconditional(t, d).to(out_dtype)
    check_floating(covariates, "covariates")
    if covariates.dim() != 2 or covariates.shape[0] != times.shape[0]:
        raise ValueError(f"covariates must have shape ({times.shape[0]}, D), got {tuple(covariates.shape)}")
    if bandwidth is None:
        raise ValueError("bandwidth is required with covariates (the Nadaraya–Watson kernel width)")
    check_positive(bandwidth, "bandwidth")
    return _km_conditional(t, d, covariates.detach().to(torch.float64), float(bandwidth)).to(out_dtype)


# --------------------------------------------------------------------------- censored regression
def _censored_example() -> Example:
    def make(gen):
        n = 10
        times = torch.rand(n, generator=gen, dtype=F64) * 3 + 0.1
        events = torch.tensor([1, 0, 1, 1, 0, 1, 1, 0, 1, 1])
        return (randn(gen, n), times, events), {}

    def absolute(gen):
        (p, t, e), _ = make(gen)
        return (p, t, e), {"loss": "absolute", "sample_weight": torch.rand(10, generator=gen, dtype=F64)}

    def mismatch(gen):
        (p, t, e), kw = make(gen)
        return (p[:-1], t, e), kw

    def mean_rule(none, args, kwargs):
        w = kwargs.get("sample_weight")
        if w is None:
            w = kaplan_meier_weights(args[1], args[2])
        return none.sum() / w.to(none.dtype).sum()

    return Example(make=make, mismatch=mismatch, mismatch_match="pred", extreme=(0, 1), grad=(0,),
                   variants=(absolute,), mean_rule=mean_rule)


LOSSES = ("squared", "absolute")
#: A per-sample loss ``loss(pred, target) -> tensor of pred's shape``.
PointwiseLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_censored(*, loss="squared", **_) -> None:
    if not callable(loss):
        check_choice(loss, "loss", LOSSES)


@register(
    "censored_regression_loss",
    family="regression",
    reference=CENSORED_PAPER,
    seed=CENSORED_PAPER.title,
    example=_censored_example(),
    tags=("regression", "survival", "censoring", "Kaplan-Meier", "IPCW", "time to event"),
    input_kind="regression",
)
@hyperparameter_checks(_check_censored)
def censored_regression_loss(
    pred: torch.Tensor,
    times: torch.Tensor,
    events: torch.Tensor,
    *,
    loss: str | PointwiseLoss = "squared",
    sample_weight: torch.Tensor | None = None,
    reduction: str = "sum",
) -> torch.Tensor:
    r"""Kaplan–Meier-weighted empirical risk for right-censored regression targets.

    .. math:: \hat R(f) = \sum_i W_i\, \ell(f(X_i), \tilde Y_i), \qquad
        W_i = \frac{\delta_i}{n\,\hat S_C(\tilde Y_i-)},

    the inverse-probability-of-censoring weights of :func:`kaplan_meier_weights` (computed
    here unless ``sample_weight`` gives them, e.g. the conditional Beran weights). Only
    observed durations contribute, up-weighted by how likely they were to be censored; this
    removes the downward bias of treating censored times as observed.

    Reductions: ``"none"`` returns :math:`W_i \ell_i`; ``"sum"`` (the default: the
    weights already normalize the risk, as the paper's estimator) is :math:`\hat R(f)`, the
    paper's Kaplan–Meier risk; ``"mean"`` (torch's weighted-mean rule) is
    :math:`\sum_i W_i\ell_i / \sum_i W_i`, with the same minimizer (equal to the sum when the
    largest time is an event, where :math:`\sum_i W_i = 1`). All-zero weights (every time censored) are a ``ValueError``.

    Args:
        pred: predicted durations ``(N,)``.
        times: observed durations :math:`\tilde Y_i \ge 0`, ``(N,)``.
        events: 1 if observed, 0 if censored, ``(N,)``.
        loss: ``"squared"`` :math:`(f - y)^2`, ``"absolute"`` :math:`|f - y|`, or a callable
            ``loss(pred, target)`` returning per-sample values.
        sample_weight: precomputed non-negative weights ``(N,)`` used instead of the
            Kaplan–Meier weights.
        reduction: ``"sum"`` (the default: the paper's risk), ``"mean"`` or ``"none"``.

    Shape:
        pred, times, events ``(N,)``; output ``(N,)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import censored_regression_loss, kaplan_meier_weights
        >>> times, events = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1, 0, 1, 1])
        >>> pred = torch.full((4,), 2.5)
        >>> w = kaplan_meier_weights(times, events)
        >>> torch.allclose(censored_regression_loss(pred, times, events, reduction="sum"),
        ...                (w * (pred - times) ** 2).sum())
        True

    References:
        Ausset, Clémençon, Portier, "Empirical Risk Minimization under Random Censorship:
        Theory and Practice", 2019, https://arxiv.org/abs/1906.01908.
    """
    _check_censored(loss=loss)
    check_floating(pred, "pred")
    d = _check_survival(times, events)
    if pred.shape != times.shape:
        raise ValueError(f"pred must have the shape of times {tuple(times.shape)}, got {tuple(pred.shape)}")
    dtype = compute_dtype(pred, times)
    p, t = upcast(pred, dtype), upcast(times, dtype)
    if sample_weight is None:
        w = _km_unconditional(times.detach().to(torch.float64), d).to(dtype)
        name = "events"
    else:
        check_sample_weight(sample_weight, pred.shape)
        w = upcast(sample_weight, dtype)
        name = "sample_weight"
    if validation_enabled() and w.numel() > 0 and not bool((w != 0).any()):
        raise ValueError(f"{name}: every weight is 0 (e.g. every time is censored): the risk is undefined")
    if loss == "squared":
        terms = (p - t) ** 2
    elif loss == "absolute":
        terms = (p - t).abs()
    else:
        terms = loss(p, t)
        if not isinstance(terms, torch.Tensor) or terms.shape != p.shape:
            raise ValueError(f"loss must return per-sample values of shape {tuple(p.shape)}, "
                             f"got {getattr(terms, 'shape', type(terms).__name__)}")
    return reduce(terms, reduction, weight=w)


# --------------------------------------------------------------------------- aggregate responses
def _aggregate_example() -> Example:
    def make(gen, **kw):
        bag_index = torch.tensor([0, 0, 1, 2, 2, 2, 1, 3, 3])
        return (randn(gen, 9), randn(gen, 4), bag_index), {"rho": 0.3, **kw}

    def bag_level(gen):
        return make(gen, rho=0.0)

    def instance_level(gen):
        return make(gen, rho=1.0)

    def mismatch(gen):
        (p, r, b), kw = make(gen)
        return (p, r, b[:-1]), kw

    return Example(make=make, mismatch=mismatch, mismatch_match="bag_index", extreme=(0, 1),
                   variants=(bag_level, instance_level))


def _check_aggregate(*, rho=0.0, **_) -> None:
    if not (isinstance(rho, (int, float)) and 0.0 <= rho <= 1.0):
        raise ValueError(f"rho must be in [0, 1], got {rho!r}")


@register(
    "aggregate_response_loss",
    family="regression",
    reference=AGGREGATE_PAPER,
    seed=AGGREGATE_PAPER.title,
    example=_aggregate_example(),
    tags=("regression", "aggregate responses", "learning from label proportions", "bags", "privacy"),
    input_kind="regression",
)
@hyperparameter_checks(_check_aggregate)
def aggregate_response_loss(
    pred: torch.Tensor,
    bag_response: torch.Tensor,
    bag_index: torch.Tensor,
    *,
    rho: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Squared loss against bag-level (aggregate) responses: bag-level, instance-level or between.

    For bag :math:`a` with members :math:`i \in a` (:math:`k_a` of them), response
    :math:`\bar y_a` and mean prediction :math:`\bar f_a = \frac{1}{k_a}\sum_{i\in a} f_i`,

    .. math:: \ell_a = (1 - \rho)\,(\bar y_a - \bar f_a)^2
        + \rho\,\frac{1}{k_a}\sum_{i \in a}(\bar y_a - f_i)^2
        = (\bar y_a - \bar f_a)^2 + \rho\,\frac{1}{k_a}\sum_{i\in a}(f_i - \bar f_a)^2 .

    ρ = 0 is the bag-level loss, ρ = 1 the instance-level loss, and the identity on the right
    is the paper's observation that the instance-level loss is the bag-level loss plus a
    within-bag variance regularizer, which ρ interpolates. Normalization (decided here, the
    paper's display leaves it open): within a bag the instance term is averaged over its
    :math:`k_a` members, so the identity holds exactly, and ``"mean"`` averages over bags.
    A bag with no member carries no information about the predictions: its term is 0 and
    ``"mean"`` averages over the bags that have members.

    Args:
        pred: instance predictions ``(N,)``.
        bag_response: one aggregate response per bag ``(B,)``.
        bag_index: ``(N,)`` integer bag of each instance, in ``[0, B)``.
        rho: interpolation weight in [0, 1].
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per bag).

    Shape:
        pred ``(N,)``, bag_response ``(B,)``, bag_index ``(N,)``; output ``(B,)`` for
        ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import aggregate_response_loss
        >>> pred, bags = torch.tensor([1.0, 3.0, 2.0]), torch.tensor([0, 0, 1])
        >>> aggregate_response_loss(pred, torch.tensor([2.0, 2.0]), bags, reduction="none")  # bag means match
        tensor([0., 0.])
        >>> aggregate_response_loss(pred, torch.tensor([2.0, 2.0]), bags, rho=1.0, reduction="none")
        tensor([1., 0.])

    References:
        Javanmard, Chen, Mirrokni, Badanidiyuru, Fu, "Learning from Aggregate responses:
        Instance Level versus Bag Level Loss Functions", ICLR 2024, https://arxiv.org/abs/2401.11081.
    """
    _check_aggregate(rho=rho)
    check_floating(pred, "pred")
    check_floating(bag_response, "bag_response")
    check_integer(bag_index, "bag_index")
    if pred.dim() != 1:
        raise ValueError(f"pred must have shape (N,), got {tuple(pred.shape)}")
    if bag_response.dim() != 1:
        raise ValueError(f"bag_response must have shape (B,), got {tuple(bag_response.shape)}")
    if bag_index.shape != pred.shape:
        raise ValueError(f"bag_index must have the shape of pred {tuple(pred.shape)}, got {tuple(bag_index.shape)}")
    n_bags = bag_response.shape[0]
    if validation_enabled() and bag_index.numel() > 0:
        lo, hi = int(bag_index.min()), int(bag_index.max())
        if lo < 0 or hi >= n_bags:
            raise ValueError(f"bag_index has bag {lo if lo < 0 else hi} outside [0, {n_bags}) (one per bag_response)")
    dtype = compute_dtype(pred, bag_response)
    f, ybar = upcast(pred, dtype), upcast(bag_response, dtype)
    idx = bag_index.long()
    zeros = torch.zeros(n_bags, dtype=dtype, device=f.device)
    count = zeros.index_add(0, idx, torch.ones_like(f))
    has = count > 0
    k = torch.where(has, count, torch.ones_like(count))
    fbar = zeros.index_add(0, idx, f) / k
    bag_term = (ybar - fbar) ** 2
    if rho > 0:
        inst = zeros.index_add(0, idx, (ybar[idx] - f) ** 2) / k
        loss = (1 - rho) * bag_term + rho * inst
    else:
        loss = bag_term
    return reduce(loss, reduction, mask=has)
