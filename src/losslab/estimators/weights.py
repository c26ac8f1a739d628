r"""Instance weights computed from per-sample losses or variances.

The weights here are *data*: computed without gradient, normalized to sum to 1 over the
batch, meant to be multiplied into a per-sample loss (``(w * losses).sum()``). The one
differentiable objective is :func:`kl_dro_loss`, the robust loss whose gradient weights
the samples by :func:`kl_dro_weights`.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .._checks import (
    check_choice,
    check_floating,
    check_in_range,
    check_ndim,
    check_nonnegative,
    check_nonnegative_tensor,
    check_positive,
    hyperparameter_checks,
)
from .._numerics import upcast
from ..distributed import is_distributed
from ..registry import Example, Reference, register

__all__ = ["kl_dro_weights", "kl_dro_loss", "loss_reweighting", "inverse_variance_weights"]

DONE = Reference(
    title="Doubly Robust Instance-Reweighted Adversarial Training",
    authors="Daouda Sow, Sen Lin, Zhangyang Wang, Yingbin Liang",
    year=2024,
    url="https://openreview.net/forum?id=OF5x1dzWSS",
)
SOW2025 = Reference(
    title="Dynamic Loss-Based Sample Reweighting for Improved Large Language Model Pretraining",
    authors="Daouda Sow, Herbert Woisetschläger, Saikiran Bulusu, Shiqiang Wang, Hans-Arno Jacobsen, Yingbin Liang",
    year=2025,
    url="https://arxiv.org/abs/2502.06733",
)
BIV = Reference(
    title="Batch Inverse-Variance Weighting: Deep Heteroscedastic Regression",
    authors="Vincent Mai, Waleed Khamies, Liam Paull",
    year=2021,
    url="https://arxiv.org/abs/2107.04497",
)
GGD_TD = "Generalized Gaussian Temporal Difference Error for Uncertainty-aware Reinforcement Learning"

STRATEGIES = ("linupper", "quadratic", "extremes")


def _check_losses(losses: torch.Tensor, name: str = "losses") -> torch.Tensor:
    check_floating(losses, name)
    check_ndim(losses, name, 1)
    if losses.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one sample, got shape {tuple(losses.shape)}")
    return upcast(losses)


def _check_temperature(*, temperature=None, **_):
    if temperature is None:
        raise TypeError("temperature is required (the KL-regularization strength, > 0)")
    check_positive(temperature, "temperature")


def _losses_example(**kwargs) -> Example:
    """``losses (9,)`` in [0, 3); the mismatch passes a 2-D tensor."""
    def make(g: torch.Generator):
        return (torch.rand(9, generator=g, dtype=torch.float64) * 3.0,), dict(kwargs)

    def mismatch(g: torch.Generator):
        return (torch.rand(3, 4, generator=g, dtype=torch.float64),), dict(kwargs)

    return Example(make=make, mismatch=mismatch, mismatch_match="losses")


# --------------------------------------------------------------------------- KL-DRO
@register(
    "kl_dro_weights",
    family="estimators",
    reference=DONE,
    seed=DONE.title,
    example=_losses_example(temperature=0.7),
    tags=("instance reweighting", "distributionally robust", "DRO", "sample weights"),
    module_required=False,
    differentiable=False,
)
@hyperparameter_checks(_check_temperature)
def kl_dro_weights(losses: torch.Tensor, *, temperature: float) -> torch.Tensor:
    r"""Instance weights softmax(ℓ/λ) of the KL-regularized distributionally robust objective.

    .. math:: w_i = \frac{\exp(\ell_i/\lambda)}{\sum_{j=1}^N \exp(\ell_j/\lambda)},

    the maximizer over the simplex of :math:`\sum_i w_i\ell_i - \lambda\,\mathrm{KL}(w\,\Vert\,u)`
    (:math:`u` uniform), used by DONE (Sow et al., 2024) to reweight adversarial examples.
    A small temperature :math:`\lambda` concentrates the weight on the hardest samples,
    :math:`\lambda \to \infty` gives uniform weights. Computed without gradient with a
    stable softmax (no overflow for any finite loss); the weights sum to 1. The matching
    objective is :func:`kl_dro_loss`, whose gradient with respect to ``losses`` is these weights.

    Args:
        losses: ``(N,)`` per-sample losses.
        temperature: :math:`\lambda > 0`.

    Shape:
        losses ``(N,)``; output ``(N,)``.

    Returns:
        the weights (float32 for half-precision input, else the input dtype), no gradient.

    Example:
        >>> import torch
        >>> from losslab.estimators import kl_dro_weights
        >>> kl_dro_weights(torch.tensor([0.0, 0.0, 2.0]), temperature=1.0)
        tensor([0.1065, 0.1065, 0.7870])

    References:
        Sow, Lin, Wang, Liang, "Doubly Robust Instance-Reweighted Adversarial Training",
        ICLR 2024, https://openreview.net/forum?id=OF5x1dzWSS.
    """
    x = _check_losses(losses)
    _check_temperature(temperature=temperature)
    with torch.no_grad():
        return torch.softmax(x.detach() / temperature, dim=0)


@register(
    "kl_dro_loss",
    family="estimators",
    reference=DONE,
    seed=DONE.title,
    example=_losses_example(temperature=0.7),
    tags=("distributionally robust", "DRO", "log-sum-exp", "robust loss"),
    module_required=False,
    batch_level=True,
)
@hyperparameter_checks(_check_temperature)
def kl_dro_loss(losses: torch.Tensor, *, temperature: float) -> torch.Tensor:
    r"""The KL-regularized DRO objective λ log mean exp(ℓ/λ) of a batch of losses.

    .. math::
        L_\lambda(\ell) = \lambda \log \frac1N \sum_{i=1}^N e^{\ell_i/\lambda}
        = \max_{w \in \Delta_N} \sum_i w_i \ell_i - \lambda\,\mathrm{KL}(w \,\Vert\, u),

    the worst case over reweightings of the batch penalized by their KL divergence from the
    uniform weights :math:`u`. It lies between the mean loss (:math:`\lambda \to \infty`)
    and the max loss (:math:`\lambda \to 0`); :math:`\partial L/\partial\ell_i` is
    :func:`kl_dro_weights`. One number of the batch (no ``reduction``), computed with
    ``logsumexp`` (finite for any finite losses) and differentiable.

    Args:
        losses: ``(N,)`` per-sample losses (with gradient).
        temperature: :math:`\lambda > 0`.

    Shape:
        losses ``(N,)``; output a 0-dim tensor.

    Example:
        >>> import torch
        >>> from losslab.estimators import kl_dro_loss
        >>> ell = torch.tensor([1.0, 2.0, 3.0])
        >>> kl_dro_loss(ell, temperature=1e3)     # ~ the mean
        tensor(2.0003)
        >>> kl_dro_loss(ell, temperature=1e-3)    # ~ the max minus temperature * log 3
        tensor(2.9989)

    References:
        Sow, Lin, Wang, Liang, "Doubly Robust Instance-Reweighted Adversarial Training",
        ICLR 2024, https://openreview.net/forum?id=OF5x1dzWSS.
    """
    x = _check_losses(losses)
    _check_temperature(temperature=temperature)
    n = x.shape[0]
    return temperature * (torch.logsumexp(x / temperature, dim=0) - math.log(n))


# --------------------------------------------------------------------------- loss-based reweighting
def _check_reweighting(*, strategy="linupper", delta=1.0, temperature=1.0, **_):
    check_choice(strategy, "strategy", STRATEGIES)
    check_positive(delta, "delta")
    check_positive(temperature, "temperature")


def _all_reduce(x: torch.Tensor, op, group) -> torch.Tensor:
    x = x.detach().clone()
    dist.all_reduce(x, op=op, group=group)
    return x


@register(
    "loss_reweighting",
    family="estimators",
    reference=SOW2025,
    seed=SOW2025.title,
    example=_losses_example(strategy="quadratic", delta=1.0, temperature=0.5),
    tags=("instance reweighting", "sample weights", "LLM pretraining", "data reweighting"),
    module_required=False,
    differentiable=False,
)
@hyperparameter_checks(_check_reweighting)
def loss_reweighting(
    losses: torch.Tensor,
    *,
    strategy: str = "linupper",
    delta: float = 1.0,
    temperature: float = 1.0,
    group=None,
) -> torch.Tensor:
    r"""Loss-based instance weights of Sow et al. (2025): LinUpper, Quadratic or Extremes.

    The losses are first mapped linearly onto :math:`[-\delta, \delta]` with the batch
    minimum and maximum,

    .. math::
        h_i = \frac{2\delta(\ell_i - \ell_{\min})}{\ell_{\max} - \ell_{\min}} - \delta,

    then scored by a strategy :math:`f` and turned into weights by a softmax with
    temperature :math:`r`:

    .. math::
        w_i = \frac{e^{f(h_i)/r}}{\sum_j e^{f(h_j)/r}}, \qquad
        f(h) = \begin{cases}
        \min(h + \delta, \delta) & \texttt{"linupper"} \text{ (low losses down-weighted, the rest equal)}\\
        1 - h^2/\delta^2 & \texttt{"quadratic"} \text{ (medium losses up-weighted)}\\
        |h| & \texttt{"extremes"} \text{ (lowest and highest losses up-weighted)}
        \end{cases}

    What was verified: the paper's abstract and summaries describe LinUpper as down-weighting
    low-loss samples while bounding the maximum weight, which the form above does; the exact
    normalization and the Quadratic/Extremes forms come from a summary of the paper's method
    section that could not be re-checked against its equations here. When every loss is
    equal (:math:`\ell_{\max} = \ell_{\min}`) the weights are uniform. The weights sum to 1
    over the (global) batch and carry no gradient: use ``(w * losses).sum()``.

    **Distributed.** With ``group`` (or whenever ``torch.distributed`` is initialized with more
    than one rank, ``group=None`` meaning the world), :math:`\ell_{\min}`, :math:`\ell_{\max}`
    and the softmax normalizer run over the **global** batch (three small all-reduces), so
    each rank gets its own rows of the single-process weights of the concatenated batch;
    they sum to 1 over all ranks, not on one rank. Every rank must call it.

    Args:
        losses: ``(N,)`` per-sample losses of the local batch.
        strategy: ``"linupper"`` (the paper's recommended default), ``"quadratic"`` or ``"extremes"``.
        delta: :math:`\delta > 0`, the half-width of the normalized range.
        temperature: :math:`r > 0`; larger is closer to uniform weights.
        group: process group for the global batch (default: the world, when distributed).

    Shape:
        losses ``(N,)``; output ``(N,)``.

    Returns:
        the weights (float32 for half-precision input, else the input dtype), no gradient.

    Example:
        >>> import torch
        >>> from losslab.estimators import loss_reweighting
        >>> w = loss_reweighting(torch.tensor([0.0, 1.0, 2.0, 4.0]), strategy="linupper", temperature=1.0)
        >>> w    # h = [-1, -0.5, 0, 1]: f = [0, 0.5, 1, 1]
        tensor([0.1237, 0.2039, 0.3362, 0.3362])
        >>> torch.allclose(w, torch.softmax(torch.tensor([0.0, 0.5, 1.0, 1.0]), 0))
        True

    References:
        Sow, Woisetschläger, Bulusu, Wang, Jacobsen, Liang, "Dynamic Loss-Based Sample
        Reweighting for Improved Large Language Model Pretraining", ICLR 2025,
        https://arxiv.org/abs/2502.06733.
    """
    x = _check_losses(losses)
    _check_reweighting(strategy=strategy, delta=delta, temperature=temperature)
    distributed = is_distributed(group)
    with torch.no_grad():
        x = x.detach()
        lo, hi = x.min(), x.max()  # min/max propagate NaN
        if distributed:
            lo = _all_reduce(lo, dist.ReduceOp.MIN, group)
            hi = _all_reduce(hi, dist.ReduceOp.MAX, group)
        span = hi - lo
        # Equal losses: any constant h gives uniform weights; avoid 0/0.
        safe = torch.where(span > 0, span, torch.ones_like(span))
        h = 2.0 * delta * (x - lo) / safe - delta
        if strategy == "linupper":
            f = torch.clamp(h + delta, max=delta)
        elif strategy == "quadratic":
            f = 1.0 - (h / delta) ** 2
        else:
            f = h.abs()
        z = f / temperature
        if not distributed:
            return torch.softmax(z, dim=0)
        # Global softmax: the global max keeps exp() from overflowing, then the global sum.
        m = _all_reduce(z.max(), dist.ReduceOp.MAX, group)
        e = torch.exp(z - m)
        return e / _all_reduce(e.sum(), dist.ReduceOp.SUM, group)


# --------------------------------------------------------------------------- inverse-variance weights
_BISECTION_STEPS = 64  # halves the bracket to 2^-64 of its width: float64 resolution


def _check_inverse_variance(*, xi=None, min_effective_fraction=None, **_):
    if xi is not None:
        check_nonnegative(xi, "xi")
    if min_effective_fraction is not None:
        check_in_range(min_effective_fraction, "min_effective_fraction", 0.0, 1.0, low_inclusive=False)
    if xi is not None and min_effective_fraction is not None:
        raise ValueError("give xi or min_effective_fraction, not both (min_effective_fraction searches xi)")


def _relative_weights(s: torch.Tensor, s_min: torch.Tensor, xi) -> torch.Tensor:
    """``(s_min + xi) / (s + xi)`` in [0, 1], with the limit 1 where ``s == s_min`` (also 0/0 at xi = 0)."""
    return torch.where(s == s_min, torch.ones_like(s), (s_min + xi) / (s + xi))


def _ess_fraction(r: torch.Tensor) -> torch.Tensor:
    return r.sum() ** 2 / (r.shape[0] * r.pow(2).sum())


def _variances_example(**kwargs) -> Example:
    def make(g: torch.Generator):
        return (torch.rand(10, generator=g, dtype=torch.float64) ** 3 * 4.0 + 0.01,), dict(kwargs)

    def mismatch(g: torch.Generator):
        return (torch.rand(2, 5, generator=g, dtype=torch.float64),), dict(kwargs)

    return Example(make=make, mismatch=mismatch, mismatch_match="variances")


@register(
    "inverse_variance_weights",
    family="estimators",
    reference=BIV,
    seed=GGD_TD,
    example=_variances_example(min_effective_fraction=0.8),
    tags=("inverse variance", "heteroscedastic", "sample weights", "BIV", "BIEV", "effective sample size"),
    module_required=False,
    differentiable=False,
)
@hyperparameter_checks(_check_inverse_variance)
def inverse_variance_weights(
    variances: torch.Tensor,
    *,
    xi: float | None = None,
    min_effective_fraction: float | None = None,
) -> torch.Tensor:
    r"""Batch inverse-variance weights 1/(σ² + ξ), normalized; ξ may be searched for a target effective size.

    .. math::
        w_i = \frac{1/(\sigma_i^2 + \xi)}{\sum_j 1/(\sigma_j^2 + \xi)}, \qquad
        N_{\text{eff}}(\xi) = \frac{\big(\sum_i w_i\big)^2}{\sum_i w_i^2}.

    Weighting a regression or TD loss by the inverse of each sample's (predicted or
    estimated) noise variance is the minimum-variance linear combination; ξ ≥ 0 keeps
    near-zero variances from taking the whole batch (BIV, Mai et al. 2021; its
    error-variance form BIEV in GGD-TD). With ``min_effective_fraction`` :math:`f`, ξ is the
    **smallest** value with :math:`N_{\text{eff}}(\xi) \ge fN`, found by bisection (64 halvings
    of a bracket, no data-dependent stopping). :math:`N_{\text{eff}}` is non-decreasing in ξ:
    with :math:`w_i = 1/(\sigma_i^2+\xi)`,
    :math:`\tfrac{d}{d\xi}\log N_{\text{eff}} = 2\big(\sum w^3/\sum w^2 - \sum w^2/\sum w\big) \ge 0`
    by Cauchy–Schwarz, so the bisection finds the smallest ξ. The bracket's upper end comes
    from :math:`N_{\text{eff}}/N \ge 4a/(1+a)^2` for weights within a ratio :math:`a` of each
    other. :math:`f = 1` is reached only as ξ → ∞ (unless all variances are equal): the
    weights are then uniform. Without both arguments ξ = 0; a zero variance at ξ = 0 gets
    all the weight (shared equally among the zero variances: the limit ξ → 0).

    Args:
        variances: ``(N,)`` non-negative per-sample variances :math:`\sigma_i^2`.
        xi: fixed :math:`\xi \ge 0` (default 0).
        min_effective_fraction: :math:`f \in (0, 1]`: search ξ instead (exclusive with ``xi``).

    Shape:
        variances ``(N,)``; output ``(N,)``.

    Returns:
        the weights, summing to 1, no gradient.

    Example:
        >>> import torch
        >>> from losslab.estimators import inverse_variance_weights
        >>> inverse_variance_weights(torch.tensor([1.0, 1.0, 2.0]))
        tensor([0.4000, 0.4000, 0.2000])
        >>> w = inverse_variance_weights(torch.tensor([0.01, 1.0, 1.0, 1.0]), min_effective_fraction=0.9)
        >>> round(float(w.sum() ** 2 / w.pow(2).sum() / 4), 4)   # N_eff / N reaches 0.9
        0.9

    References:
        Mai, Khamies, Paull, "Batch Inverse-Variance Weighting: Deep Heteroscedastic
        Regression", 2021, https://arxiv.org/abs/2107.04497.
    """
    check_floating(variances, "variances")
    check_ndim(variances, "variances", 1)
    if variances.shape[0] == 0:
        raise ValueError("variances must hold at least one sample")
    _check_inverse_variance(xi=xi, min_effective_fraction=min_effective_fraction)
    check_nonnegative_tensor(variances, "variances")
    s = upcast(variances).detach()
    out_dtype = s.dtype
    with torch.no_grad():
        s = s.double()
        s_min, s_max = s.min(), s.max()
        if min_effective_fraction is None:
            r = _relative_weights(s, s_min, 0.0 if xi is None else float(xi))
        elif min_effective_fraction == 1.0:
            # N_eff = N only for uniform weights (xi -> infinity); NaN still propagates.
            r = torch.ones_like(s) + 0.0 * s
        else:
            f = float(min_effective_fraction)
            a = (2.0 - f - 2.0 * math.sqrt(1.0 - f)) / f  # 4a / (1 + a)^2 = f, a in (0, 1)
            hi = ((a * s_max - s_min) / (1.0 - a)).clamp_min(0.0)
            lo = torch.zeros_like(hi)
            for _ in range(_BISECTION_STEPS):
                mid = 0.5 * (lo + hi)
                ok = _ess_fraction(_relative_weights(s, s_min, mid)) >= f
                hi = torch.where(ok, mid, hi)
                lo = torch.where(ok, lo, mid)
            ok0 = _ess_fraction(_relative_weights(s, s_min, torch.zeros_like(hi))) >= f
            r = _relative_weights(s, s_min, torch.where(ok0, torch.zeros_like(hi), hi))
        return (r / r.sum()).to(out_dtype)
