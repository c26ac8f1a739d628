r"""Entropic optimal transport between weighted point clouds.

Conventions (and how to map peers):

- ``cost="sqeuclidean"``: :math:`C_{ij} = \|x_i - y_j\|^2`, with ``epsilon`` = POT's ``reg``
  (``ot.sinkhorn2(a, b, C, reg=epsilon, method="sinkhorn_log")`` returns our
  ``transport_cost``).
- ``cost="half_sqeuclidean"``: :math:`C_{ij} = \tfrac12\|x_i - y_j\|^2`, geomloss's cost for
  ``p=2``; geomloss's ``blur`` is :math:`\varepsilon^{1/2}`, i.e. ``epsilon = blur**2``.
- ``value`` is the entropic OT value :math:`\mathrm{OT}_\varepsilon = \langle a, f\rangle +
  \langle b, g\rangle` (the dual objective at the optimum, = linear cost + ε·KL(P‖a⊗b));
  ``transport_cost`` is the linear cost :math:`\langle P, C\rangle`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .._checks import check_floating, check_nonnegative_tensor, check_positive, validation_enabled
from .._numerics import compute_dtype, upcast
from ..registry import Example, Reference, register
from ._examples import randn

__all__ = ["sinkhorn", "sinkhorn_divergence", "monge_gap", "SinkhornResult", "pairwise_cost"]

SINKHORN_PAPER = Reference(
    title="Sinkhorn Distances: Lightspeed Computation of Optimal Transport",
    authors="Marco Cuturi",
    year=2013,
    url="https://arxiv.org/abs/1306.0895",
)
DEBIASED_PAPER = Reference(
    title="Interpolating between Optimal Transport and MMD using Sinkhorn Divergences",
    authors="Jean Feydy, Thibault Séjourné, François-Xavier Vialard, Shun-ichi Amari, Alain Trouvé, Gabriel Peyré",
    year=2019,
    url="https://arxiv.org/abs/1810.08278",
)
SINKD_SEED = "Sinkhorn Distance Minimization for Knowledge Distillation"
COSTS = ("sqeuclidean", "half_sqeuclidean", "euclidean")


def pairwise_cost(x: torch.Tensor, y: torch.Tensor, cost: str | Callable = "sqeuclidean") -> torch.Tensor:
    """Cost matrix ``(…, n, m)`` between ``x (…, n, d)`` and ``y (…, m, d)``."""
    if callable(cost):
        return cost(x, y)
    # ||x||^2 + ||y||^2 - 2 x.y is one matmul; clamp the round-off negatives of nearby points.
    d2 = (x.square().sum(-1, keepdim=True) + y.square().sum(-1).unsqueeze(-2) - 2 * x @ y.transpose(-1, -2)).clamp_min(0)
    if cost == "sqeuclidean":
        return d2
    if cost == "half_sqeuclidean":
        return 0.5 * d2
    if cost == "euclidean":
        return torch.sqrt(d2.clamp_min(torch.finfo(d2.dtype).tiny))
    raise ValueError(f"cost must be one of {COSTS} or a callable, got {cost!r}")


def paired_cost(x: torch.Tensor, y: torch.Tensor, cost: str | Callable = "sqeuclidean") -> torch.Tensor:
    """Cost ``c(x_i, y_i)`` between matched rows ``(…, n, d)`` -> ``(…, n)`` (the diagonal of :func:`pairwise_cost`)."""
    if callable(cost):
        return torch.diagonal(cost(x, y), dim1=-2, dim2=-1)
    d2 = (x - y).square().sum(-1)
    if cost == "sqeuclidean":
        return d2
    if cost == "half_sqeuclidean":
        return 0.5 * d2
    if cost == "euclidean":
        return torch.sqrt(d2.clamp_min(torch.finfo(d2.dtype).tiny))
    raise ValueError(f"cost must be one of {COSTS} or a callable, got {cost!r}")


@dataclass
class SinkhornResult:
    """Output of :func:`sinkhorn`; tensors have the batch shape ``(B,)`` or ``()``."""

    value: torch.Tensor
    transport_cost: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    plan: torch.Tensor | None
    n_iter: int
    marginal_error: float


def _weights(w: torch.Tensor | None, shape: torch.Size, name: str, dtype, device) -> torch.Tensor:
    if w is None:
        return torch.full(shape, 1.0 / shape[-1], dtype=dtype, device=device)
    check_floating(w, name)
    if w.shape != shape:
        raise ValueError(f"{name} must have shape {tuple(shape)} (one weight per point), got {tuple(w.shape)}")
    w = upcast(w, dtype)
    if validation_enabled():
        check_nonnegative_tensor(w, name)
        err = float((w.detach().sum(-1) - 1).abs().max())
        if err > 1e-5 * max(1.0, math.sqrt(shape[-1])) and w.dtype == torch.float64 or err > 1e-4:
            raise ValueError(f"{name} must sum to 1 (probability weights), found a sum off by {err:.3g}")
    return w


def _check_points(x, y):
    check_floating(x, "x")
    check_floating(y, "y")
    if x.dim() not in (2, 3) or y.dim() != x.dim():
        raise ValueError(f"x and y must both be (n, d) or (B, n, d), got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"x and y must have the same feature dimension, got {x.shape[-1]} and {y.shape[-1]}")
    if x.dim() == 3 and x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same batch size, got {x.shape[0]} and {y.shape[0]}")
    if validation_enabled() and (bool(torch.isnan(x).any()) or bool(torch.isnan(y).any())):
        raise ValueError("x or y contains NaN")


def _softmin(eps: float, cost: torch.Tensor, logw_plus_pot: torch.Tensor) -> torch.Tensor:
    """-eps * logsumexp_j(h_j - C_ij / eps): the c-transform in log-domain (rows of ``cost``)."""
    return -eps * torch.logsumexp(logw_plus_pot.unsqueeze(-2) - cost / eps, dim=-1)


def _eps_schedule(epsilon: float, scaling: float | None, diameter: float) -> list[float]:
    if scaling is None:
        return [epsilon]
    eps_list, e = [], max(diameter, epsilon)
    while e > epsilon:
        eps_list.append(e)
        e *= scaling
    return eps_list + [epsilon]


def _sinkhorn_potentials(C, loga, logb, epsilon, scaling, max_iter, tol, check_every):
    """Log-domain Sinkhorn iterations (no autograd); returns converged f, g, iterations, error."""
    diameter = float(C.detach().max()) if C.numel() else 1.0
    schedule = _eps_schedule(epsilon, scaling, diameter)
    Ct = C.transpose(-1, -2)
    f = torch.zeros(C.shape[:-1], dtype=C.dtype, device=C.device)
    g = torch.zeros(Ct.shape[:-1], dtype=C.dtype, device=C.device)
    err, it = math.inf, 0
    for eps in schedule[:-1]:  # annealing: one update per epsilon
        f = _softmin(eps, C, logb + g / eps)
        g = _softmin(eps, Ct, loga + f / eps)
        it += 1
    eps = schedule[-1]
    averaged, prev = False, math.inf
    while it < max_iter:
        if averaged:
            # Damped simultaneous updates (Feydy et al.): same fixed point, no oscillation.
            f_new = _softmin(eps, C, logb + g / eps)
            g = 0.5 * (g + _softmin(eps, Ct, loga + f / eps))
            f = 0.5 * (f + f_new)
        else:
            f = _softmin(eps, C, logb + g / eps)
            g = _softmin(eps, Ct, loga + f / eps)
        it += 1
        if it % check_every == 0 or it == max_iter:
            logP = (f.unsqueeze(-1) + g.unsqueeze(-2) - C) / eps + loga.unsqueeze(-1) + logb.unsqueeze(-2)
            P = logP.exp()
            err = float(((P.sum(-1) - loga.exp()).abs().sum(-1) + (P.sum(-2) - logb.exp()).abs().sum(-1)).max())
            if err < tol:
                break
            # Alternating updates can stall (e.g. identical clouds, where they crawl for
            # thousands of iterations); past the first checks, switch for good when an
            # interval cut the marginal error by less than 10 %.
            if not averaged and err > 0.9 * prev:
                averaged = True
            prev = err
    return f, g, it, err


def _self_potential(C, loga, epsilon, scaling, max_iter, tol, check_every):
    """Symmetric Sinkhorn for OT(α, α): f ← ½(f + T(f)) (averaged updates converge fast
    where alternating updates oscillate; Feydy et al. 2019). No autograd."""
    diameter = float(C.detach().max()) if C.numel() else 1.0
    schedule = _eps_schedule(epsilon, scaling, diameter)
    f = torch.zeros(C.shape[:-1], dtype=C.dtype, device=C.device)
    err, it = math.inf, 0
    for eps in schedule[:-1]:
        f = 0.5 * (f + _softmin(eps, C, loga + f / eps))
        it += 1
    eps = schedule[-1]
    while it < max_iter:
        f_new = 0.5 * (f + _softmin(eps, C, loga + f / eps))
        it += 1
        if it % check_every == 0 or it == max_iter:
            # Fixed-point residual in units of epsilon ~ log of the marginal ratio.
            err = float(((f_new - f).abs() / eps).max())
            f = f_new
            if err < tol:
                break
        else:
            f = f_new
    return f, it, err


def _self_ot_value(x, a, epsilon, cost, max_iter, tol, scaling, check_every=10):
    """OT_eps(α, α) = 2 <a, f> with the symmetric potential; envelope gradient through one step."""
    dtype = compute_dtype(x)
    xc = upcast(x, dtype)
    a_ = _weights(a, xc.shape[:-1], "a", dtype, xc.device)
    loga = torch.log(a_)
    C = pairwise_cost(xc, xc, cost)
    eps = float(epsilon)
    with torch.no_grad():
        f0, it, err = _self_potential(C.detach(), loga.detach(), eps, scaling, max_iter, tol, check_every)
    if err > tol:
        warnings.warn(f"sinkhorn (self term) did not converge in {max_iter} iterations: residual {err:.3g} > tol {tol:.3g}",
                      RuntimeWarning, stacklevel=3)
    f = _softmin(eps, C, loga + f0 / eps)  # differentiable half-step: d value / d C = P
    zero = torch.zeros((), dtype=dtype, device=xc.device)
    return (a_ * torch.where(a_ > 0, f, zero)).sum(-1) + (a_ * torch.where(a_ > 0, f0, zero)).sum(-1)


def _sinkhorn_example() -> Example:
    def make(gen):
        return (randn(gen, 7, 2), randn(gen, 6, 2) + 0.5), {"epsilon": 0.5, "tol": 1e-13, "max_iter": 5000}

    def mismatch(gen):
        return (randn(gen, 7, 2), randn(gen, 6, 3)), {"epsilon": 0.5}

    return Example(make=make, mismatch=mismatch, logits=(), output=lambda r: r.value)


@register("sinkhorn", family="transport", reference=SINKHORN_PAPER, seed="The Monge Gap: A Regularizer to Learn All Transport Maps",
          example=_sinkhorn_example(), input_kind="point clouds", module_required=False, batch_level=True)
def sinkhorn(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    epsilon: float = 0.05,
    cost: str | Callable = "sqeuclidean",
    max_iter: int = 1000,
    tol: float = 1e-6,
    scaling: float | None = None,
    check_every: int = 10,
    return_plan: bool = False,
    unrolled: bool = False,
) -> SinkhornResult:
    r"""Entropic optimal transport between weighted point clouds by log-domain Sinkhorn iterations.

    Solves :math:`\mathrm{OT}_\varepsilon(\alpha, \beta) = \min_{P \in \Pi(a, b)}
    \langle P, C\rangle + \varepsilon\,\mathrm{KL}(P\,\|\,a\otimes b)` through its dual,

    .. math::
        f_i = -\varepsilon \log\sum_j b_j e^{(g_j - C_{ij})/\varepsilon}, \qquad
        g_j = -\varepsilon \log\sum_i a_i e^{(f_i - C_{ij})/\varepsilon},

    iterated in log-space (stable for any :math:`C/\varepsilon`) — alternating updates,
    switched to damped averaged updates :math:`f \leftarrow \tfrac12(f + T(g))` when they
    stall (identical clouds are the classic case) — optionally after an ε-scaling warm start (``scaling`` in (0, 1): ε goes geometrically from the cost diameter
    down to ``epsilon``, one update per level). Stops when the marginal error
    :math:`\|P\mathbf 1 - a\|_1 + \|P^\top\mathbf 1 - b\|_1` is below ``tol`` (checked every ``check_every`` iterations,
    one host sync each) and **warns** with the reached error if ``max_iter`` comes first.
    Points with zero weight are handled exactly (no NaN, unlike ``log(0)`` in POT).

    Gradients (default): by the envelope theorem — the loop runs without autograd and a
    last differentiable half-step :math:`f(C; g^\star)` gives
    :math:`\partial\,\mathrm{value}/\partial C = P`, the exact gradient of
    :math:`\mathrm{OT}_\varepsilon` at convergence, at the memory cost of one iteration.
    ``unrolled=True`` differentiates through every iteration instead.

    Args:
        x: ``(n, d)`` or ``(B, n, d)`` source points.
        y: ``(m, d)`` or ``(B, m, d)`` target points.
        a, b: weights ``(n,)``/``(m,)`` (or batched), non-negative, summing to 1;
            default uniform.
        epsilon: :math:`\varepsilon > 0`, in the units of the cost (see the module notes).
        cost: ``"sqeuclidean"``, ``"half_sqeuclidean"``, ``"euclidean"`` or a callable
            ``cost(x, y) -> (…, n, m)``.
        max_iter: iteration cap (ε-scaling steps included).
        tol: tolerance on the L1 marginal error (both marginals).
        scaling: ε-scaling factor in (0, 1), or None for none.
        check_every: iterations between convergence checks.
        return_plan: also return the plan :math:`P` (``(…, n, m)``).
        unrolled: backpropagate through the iterations.

    Shape:
        ``value``, ``transport_cost``: ``()`` or ``(B,)``; ``f``: ``(…, n)``; ``g``: ``(…, m)``.

    Returns:
        :class:`SinkhornResult` with ``value``, ``transport_cost``, ``f``, ``g``, ``plan``,
        ``n_iter``, ``marginal_error``.

    Example:
        >>> import torch
        >>> from losslab.functional import sinkhorn
        >>> x = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
        >>> res = sinkhorn(x, x + torch.tensor([0.0, 2.0]), epsilon=0.1)
        >>> round(res.transport_cost.item(), 4)   # every point moves by 2: cost 4
        4.0

    References:
        Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", NeurIPS
        2013, https://arxiv.org/abs/1306.0895; Peyré & Cuturi, "Computational Optimal
        Transport", 2019, https://arxiv.org/abs/1803.00567.
    """
    _check_points(x, y)
    check_positive(epsilon, "epsilon")
    if scaling is not None and not (0.0 < scaling < 1.0):
        raise ValueError(f"scaling must be in (0, 1) or None, got {scaling!r}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    check_positive(tol, "tol")
    if not callable(cost) and cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS} or a callable, got {cost!r}")
    dtype = compute_dtype(x, y)
    xc, yc = upcast(x, dtype), upcast(y, dtype)
    a_ = _weights(a, xc.shape[:-1], "a", dtype, xc.device)
    b_ = _weights(b, yc.shape[:-1], "b", dtype, yc.device)
    loga, logb = torch.log(a_), torch.log(b_)  # log 0 = -inf: those points drop out of the sums
    C = pairwise_cost(xc, yc, cost)
    eps = float(epsilon)
    if unrolled:
        with torch.enable_grad():
            f, g, it, err = _sinkhorn_potentials(C, loga, logb, eps, scaling, max_iter, tol, check_every)
        value = (a_ * f).sum(-1) + (b_ * g).sum(-1)
    else:
        with torch.no_grad():
            f0, g0, it, err = _sinkhorn_potentials(C.detach(), loga.detach(), logb.detach(), eps, scaling,
                                                   max_iter, tol, check_every)
        # One differentiable half-step: d value / d C = P at the fixed point (envelope theorem).
        f = _softmin(eps, C, logb + g0 / eps)
        g = g0
        value = (a_ * torch.where(a_ > 0, f, torch.zeros((), dtype=dtype))).sum(-1) + (b_ * g).sum(-1)
    if err > tol:
        warnings.warn(f"sinkhorn did not converge in {max_iter} iterations: marginal error {err:.3g} > tol {tol:.3g}; "
                      "increase max_iter or epsilon, or use scaling", RuntimeWarning, stacklevel=2)
    logP = (f.unsqueeze(-1) + g.unsqueeze(-2) - C) / eps + loga.unsqueeze(-1) + logb.unsqueeze(-2)
    P = logP.exp()
    transport_cost = (P * C).sum((-1, -2))
    return SinkhornResult(value=value, transport_cost=transport_cost, f=f, g=g, plan=P if return_plan else None,
                          n_iter=it, marginal_error=err)


def _divergence_example() -> Example:
    def make(gen):
        return (randn(gen, 6, 2), randn(gen, 5, 2) + 0.3), {"epsilon": 0.5, "tol": 1e-13, "max_iter": 5000}

    def mismatch(gen):
        return (randn(gen, 6, 2), randn(gen, 5, 4)), {"epsilon": 0.5}

    return Example(make=make, mismatch=mismatch, logits=())


@register("sinkhorn_divergence", family="transport", reference=DEBIASED_PAPER, example=_divergence_example(),
          input_kind="point clouds", batch_level=True, symmetric=True)
def sinkhorn_divergence(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    epsilon: float = 0.05,
    cost: str | Callable = "sqeuclidean",
    max_iter: int = 1000,
    tol: float = 1e-6,
    scaling: float | None = None,
) -> torch.Tensor:
    r"""Debiased Sinkhorn divergence, ≥ 0 and 0 for identical inputs.

    .. math::
        S_\varepsilon(\alpha, \beta) = \mathrm{OT}_\varepsilon(\alpha, \beta)
            - \tfrac12\mathrm{OT}_\varepsilon(\alpha, \alpha) - \tfrac12\mathrm{OT}_\varepsilon(\beta, \beta),

    from the entropic values of :func:`sinkhorn` (gradients by the envelope theorem); the
    self terms use one potential and symmetric averaged updates
    :math:`f \leftarrow \tfrac12(f + T(f))`, which converge where alternating updates
    oscillate. It
    interpolates between OT (:math:`\varepsilon \to 0`) and a kernel MMD
    (:math:`\varepsilon \to \infty`). With ``cost="half_sqeuclidean"`` and
    ``epsilon = blur**2`` it is geomloss's ``SamplesLoss("sinkhorn", p=2, blur=blur,
    debias=True)`` (which anneals ε and stops early; compare at ``scaling`` ≥ 0.9 there).

    Args:
        x, y, a, b, epsilon, cost, max_iter, tol, scaling: as in :func:`sinkhorn`.

    Shape:
        x ``(n, d)`` / y ``(m, d)`` (or batched with ``B``); output ``()`` or ``(B,)``.

    Example:
        >>> import torch
        >>> from losslab.functional import sinkhorn_divergence
        >>> x = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
        >>> abs(sinkhorn_divergence(x, x, epsilon=0.1).item()) < 1e-5
        True

    References:
        Feydy et al., "Interpolating between Optimal Transport and MMD using Sinkhorn
        Divergences", AISTATS 2019, https://arxiv.org/abs/1810.08278; Genevay, Peyré,
        Cuturi, "Learning Generative Models with Sinkhorn Divergences", AISTATS 2018,
        https://arxiv.org/abs/1706.00292.
    """
    kw = dict(epsilon=epsilon, cost=cost, max_iter=max_iter, tol=tol, scaling=scaling)
    # Self terms by symmetric (averaged) updates: one potential, fast convergence.
    xx = _self_ot_value(x, a, **kw)
    if x is y and a is b:
        # The very same measure: the cross term is a self term (alternating Sinkhorn would
        # crawl on this symmetric problem when the points are weakly coupled).
        return xx - xx
    xy = sinkhorn(x, y, a=a, b=b, **kw).value
    yy = _self_ot_value(y, b, **kw)
    return xy - 0.5 * (xx + yy)


MONGE_GAP_PAPER = Reference(
    title="The Monge Gap: A Regularizer to Learn All Transport Maps",
    authors="Théo Uscidda, Marco Cuturi",
    year=2023,
    url="https://arxiv.org/abs/2302.04953",
)


def _monge_example() -> Example:
    def make(gen):
        x = randn(gen, 7, 2)
        return (x, x @ torch.tensor([[0.0, 1.0], [1.0, 0.3]], dtype=x.dtype) + 0.2), {"epsilon": 0.3, "tol": 1e-13, "max_iter": 5000}

    def mismatch(gen):
        return (randn(gen, 7, 2), randn(gen, 6, 2)), {"epsilon": 0.3}

    return Example(make=make, mismatch=mismatch, logits=())


@register("monge_gap", family="transport", reference=MONGE_GAP_PAPER, seed=MONGE_GAP_PAPER.title,
          example=_monge_example(), input_kind="point clouds", batch_level=True)
def monge_gap(
    x: torch.Tensor,
    mapped: torch.Tensor,
    *,
    a: torch.Tensor | None = None,
    epsilon: float = 0.05,
    cost: str | Callable = "sqeuclidean",
    max_iter: int = 1000,
    tol: float = 1e-6,
    scaling: float | None = None,
) -> torch.Tensor:
    r"""Monge gap of a map T on samples: its displacement cost minus the (entropic) OT cost to its image.

    With :math:`T(x_i)` given as ``mapped[i]`` and weights :math:`a`,

    .. math::
        \mathcal M_\varepsilon(T) = \sum_i a_i\, c\big(x_i, T(x_i)\big)
                                   - \mathrm{OT}_\varepsilon\big(\textstyle\sum_i a_i\delta_{x_i},
                                                                 \sum_i a_i\delta_{T(x_i)}\big).

    A regularizer that vanishes (as :math:`\varepsilon \to 0`) exactly for maps that are
    optimal for the cost :math:`c` between a measure and its push-forward: add it to any
    fitting loss to learn c-optimal transport maps. :math:`\mathrm{OT}_\varepsilon` is
    :func:`sinkhorn`'s entropic ``value`` (:math:`\langle P, C\rangle + \varepsilon\,
    \mathrm{KL}(P\|a\otimes a)`), so :math:`\mathcal M_\varepsilon \ge -\varepsilon H(a)`
    (:math:`H(a) = \log n` for uniform weights) and :math:`\mathcal M_\varepsilon \to
    \mathcal M_0 \ge 0`; gradients flow to both ``x`` and ``mapped`` (envelope theorem in the
    OT term).

    Args:
        x: ``(n, d)`` source samples.
        mapped: ``(n, d)`` their images :math:`T(x_i)`.
        a: optional weights ``(n,)`` (default uniform).
        epsilon, cost, max_iter, tol, scaling: as in :func:`sinkhorn`.

    Shape:
        x, mapped ``(n, d)`` (or batched ``(B, n, d)``); output ``()`` or ``(B,)``.

    Example:
        >>> import torch
        >>> from losslab.functional import monge_gap
        >>> x = torch.randn(30, 2, generator=torch.Generator().manual_seed(0))
        >>> shift = monge_gap(x, x + 1.0, epsilon=0.5)          # a translation is optimal
        >>> swap = monge_gap(x, x.flip(0) + 1.0, epsilon=0.5)   # same image, scrambled pairing
        >>> bool(shift < 0 < 1 < swap)   # shift >= -eps log n = -1.7
        True

    References:
        Uscidda & Cuturi, "The Monge Gap: A Regularizer to Learn All Transport Maps", ICML
        2023, https://arxiv.org/abs/2302.04953.
    """
    _check_points(x, mapped)
    if x.shape != mapped.shape:
        raise ValueError(f"mapped must have the shape of x {tuple(x.shape)} (one image per sample), got {tuple(mapped.shape)}")
    dtype = compute_dtype(x, mapped)
    xc, tc = upcast(x, dtype), upcast(mapped, dtype)
    a_ = _weights(a, xc.shape[:-1], "a", dtype, xc.device)
    disp = paired_cost(xc, tc, cost)
    ot_value = sinkhorn(xc, tc, a=a_, b=a_, epsilon=epsilon, cost=cost, max_iter=max_iter, tol=tol, scaling=scaling).value
    return (a_ * disp).sum(-1) - ot_value
