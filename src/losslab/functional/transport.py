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
    if x is y:
        # A point's distance to itself is exactly 0; the expansion leaves round-off there,
        # which the euclidean cost turns into sqrt(eps) (3e-4 relative in float32).
        eye = torch.eye(d2.shape[-1], dtype=torch.bool, device=d2.device)
        d2 = d2.masked_fill(eye, 0.0)
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


def _matvec(K: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(…, n, m) @ (…, m) -> (…, n): one BLAS pass over K."""
    return torch.matmul(K, w.unsqueeze(-1)).squeeze(-1)


def _rmatvec(K: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(…, n) @ (…, n, m) -> (…, m) without materializing Kᵀ."""
    return torch.matmul(w.unsqueeze(-2), K).squeeze(-2)


# |log u| past which the scalings u, v are absorbed into the potentials, and the log of the
# smallest kernel entry kept. Flushing smaller entries to 0 keeps every product K_ij * b_j v_j
# of a matrix-vector product a normal float (weights down to e^-17): subnormal operands make
# CPU arithmetic ~20x slower. The mass dropped, at most exp(floor + 2 * big) per entry in
# units of a_i b_j (4e-18 in float32), is far below any reachable tolerance.
_ABSORB = {torch.float32: 10.0, torch.float64: 50.0}
_KERNEL_FLOOR = {dt: math.log(torch.finfo(dt).tiny) + _ABSORB[dt] + 17.0 for dt in _ABSORB}


def _gibbs(C: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    """Stabilized kernel exp((f_i + g_j - C_ij) / eps) (Schmitzer 2019). With near-optimal
    potentials its entries are P_ij / (a_i b_j): bounded, so the kernel neither underflows
    where the plan has mass nor overflows, at any epsilon and in float32 too."""
    z = (f.unsqueeze(-1) + g.unsqueeze(-2) - C).mul_(1.0 / eps)
    floor = _KERNEL_FLOOR.get(z.dtype, _KERNEL_FLOOR[torch.float32])
    return z.masked_fill_(z < floor, -math.inf).exp_()  # tiny entries -> exactly 0


def _marginal_error(K, a, b, u, v, Kw=None) -> float:
    """L1 error of both marginals, sum_i |a_i u_i (K bv)_i - a_i| + sum_j |b_j v_j (K^T au)_j - b_j|
    (max over the batch; for the symmetric problem v = u, b = a and the two are equal)."""
    Kw = _matvec(K, b * v) if Kw is None else Kw
    rows = (a * (u * Kw - 1)).abs().sum(-1)
    cols = (b * (v * _rmatvec(K, a * u) - 1)).abs().sum(-1)
    return float((rows + cols).max().detach())


def _log_range(*ts) -> float:
    return max(float(t.detach().log().abs().max()) for t in ts)


OMEGA = 1.5  # over-relaxation factor at the target epsilon (Thibault et al. 2021)
TRIAL = 3  # convergence checks per trial of an update rule
_MODES = ("relaxed", "plain", "averaged")


def _solve(C, a, b, epsilon, scaling, max_iter, tol, check_every, symmetric=False):
    """Sinkhorn in scaling form on a stabilized kernel, with epsilon-scaling and absorption.

    The potentials f, g (P_ij = a_i b_j exp((f_i + g_j - C_ij)/eps)) are kept in log form and
    the iterations run on multiplicative corrections u, v: one matrix-vector product per
    half-step instead of a log-sum-exp over the n x m matrix (an exp per entry, tens of times
    dearer on a CPU). Exponentials are recomputed only when epsilon changes or u, v leave a
    safe range (absorption into f, g). At the target epsilon the updates are over-relaxed,
    u <- u^(1-w) (1/K(bv))^w with w = 1.5 (Thibault, Chizat, Dossal, Papadakis 2021: same
    fixed point, often several times fewer iterations at small epsilon) while that is the
    fastest of three measured update rules (see below; plain Sinkhorn, w = 1, always converges
    and takes over for good if the over-relaxed error blows up).
    ``symmetric=True`` solves OT(a, a) with one potential and averaged updates
    u <- sqrt(u / K(au)) (Feydy et al. 2019), which converge where alternating updates
    oscillate. Returns f, g, iterations, L1 marginal error reached (float)."""
    dtype = C.dtype
    big = _ABSORB.get(dtype, _ABSORB[torch.float32])
    diameter = float(C.detach().max()) if C.numel() else 1.0
    levels = []
    if scaling is not None:
        e = diameter
        while e > epsilon:
            levels.append(e)
            e *= scaling
    levels.append(epsilon)
    if len(levels) == 1 and diameter > epsilon:
        # Cold start at a small epsilon: c-transforms of the zero potential make every row of
        # the kernel peak at O(1) (exp(-C/eps) alone underflows in float32 once C/eps > 87).
        f = -epsilon * torch.logsumexp(torch.log(b).unsqueeze(-2) - C / epsilon, dim=-1)
        if symmetric:
            f = g = 0.5 * f
        else:
            g = -epsilon * torch.logsumexp(torch.log(a).unsqueeze(-1) + (f.unsqueeze(-1) - C) / epsilon, dim=-2)
    else:
        f = torch.zeros(C.shape[:-1], dtype=dtype, device=C.device)
        g = f if symmetric else torch.zeros(C.shape[:-2] + C.shape[-1:], dtype=dtype, device=C.device)
    it, err, converged = 0, math.inf, False
    for level, eps in enumerate(levels):
        last = level == len(levels) - 1
        K = _gibbs(C, f, g, eps)
        u = torch.ones_like(f)
        v = u if symmetric else torch.ones_like(g)
        mode, rate, best, trial_start, trial_k, k = "relaxed", {}, math.inf, math.inf, 0, 0
        while it < max_iter and (last or k < 3):  # a few cheap iterations per annealing level
            Kw = _matvec(K, a * u) if symmetric else _matvec(K, b * v)
            if last and k > 0 and k % check_every == 0:
                err = _marginal_error(K, a, a if symmetric else b, u, v, Kw)
                if err < tol:
                    converged = True
                    break
                if err > 10.0 * best and mode == "relaxed":
                    mode, rate["relaxed"] = "plain", math.inf  # diverging: plain Sinkhorn always converges
                elif not symmetric and (k // check_every) % TRIAL == 0:
                    # Run the fastest of three updates, judged by their error decay over TRIAL
                    # checks: over-relaxed alternating (fastest for spread plans near
                    # convergence), plain alternating (steadier far from it, where a fixed
                    # over-relaxation can be several times slower) and averaged simultaneous
                    # updates (for plans near a permutation, e.g. a cloud and a copy of it, where
                    # alternating updates crawl). A slow rule (error not halved per check) hands
                    # over to an untried one, else to the fastest measured so far.
                    rate[mode] = (err / trial_start) ** (check_every / (k - trial_k))  # per check
                    trial_start, trial_k = err, k
                    if rate[mode] > 0.5:
                        untried = [m for m in _MODES if m not in rate]
                        mode = untried[0] if untried else min(rate, key=rate.get)
                best = min(best, err)
                if trial_start == math.inf:
                    trial_start, trial_k = err, k
                if _log_range(u, v) > big:  # absorb, rebuild the kernel around the new potentials
                    f = f + eps * torch.log(u)
                    g = f if symmetric else g + eps * torch.log(v)
                    K = _gibbs(C, f, g, eps)
                    u = torch.ones_like(f)
                    v = u if symmetric else torch.ones_like(g)
                    Kw = _matvec(K, a * u) if symmetric else _matvec(K, b * v)
            if symmetric:
                u = v = torch.sqrt(u / Kw)
            elif mode == "plain" or not last:
                u = 1.0 / Kw
                v = 1.0 / _rmatvec(K, a * u)
            elif mode == "averaged":  # in log form f <- (f + T(g)) / 2, g <- (g + T(f)) / 2
                u, v = torch.sqrt(u / Kw), torch.sqrt(v / _rmatvec(K, a * u))
            else:  # over-relaxed, in log form f <- (1 - w) f + w T(g)
                u = u.pow(1 - OMEGA) * Kw.pow(-OMEGA)
                v = v.pow(1 - OMEGA) * _rmatvec(K, a * u).pow(-OMEGA)
            it += 1
            k += 1
        if last and not converged:
            err = _marginal_error(K, a, a if symmetric else b, u, v)
        f = f + eps * torch.log(u)
        g = f if symmetric else g + eps * torch.log(v)
    return f, g, it, err


def _entropic_value(C, a, b, epsilon, scaling, max_iter, tol, check_every, *, symmetric=False, unrolled=False):
    """OT_eps value <a, f> + <b, g> and its potentials; gradients by the envelope theorem.

    The solver runs without autograd; when ``C`` carries a graph, one differentiable half-step
    f = c-transform(g*) gives d value / d C = P, the exact gradient at the fixed point, for the
    memory of one log-sum-exp. ``unrolled`` differentiates through every iteration instead."""
    eps = float(epsilon)
    if unrolled:
        with torch.enable_grad():
            f, g, it, err = _solve(C, a, b, eps, scaling, max_iter, tol, check_every, symmetric)
        return (a * f).sum(-1) + (b * g).sum(-1), f, g, it, err
    with torch.no_grad():
        f, g, it, err = _solve(C.detach(), a.detach(), b.detach(), eps, scaling, max_iter, tol, check_every, symmetric)
    if torch.is_grad_enabled() and (C.requires_grad or a.requires_grad or b.requires_grad):
        f = _softmin(eps, C, torch.log(b) + g / eps)  # log 0 = -inf: zero-weight points drop out
    return (a * f).sum(-1) + (b * g).sum(-1), f, g, it, err


def _warn_not_converged(what: str, max_iter: int, err: float, tol: float) -> None:
    warnings.warn(f"{what} did not converge in {max_iter} iterations: marginal error {err:.3g} > tol {tol:.3g}; "
                  "increase max_iter or epsilon, or use scaling", RuntimeWarning, stacklevel=3)


def _check_solver_args(epsilon, scaling, max_iter, tol, cost, check_every):
    check_positive(epsilon, "epsilon")
    if scaling is not None and not (0.0 < scaling < 1.0):
        raise ValueError(f"scaling must be in (0, 1) or None, got {scaling!r}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    if not (isinstance(check_every, int) and check_every >= 1):
        raise ValueError(f"check_every must be a positive int, got {check_every!r}")
    check_positive(tol, "tol")
    if not callable(cost) and cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS} or a callable, got {cost!r}")


def _solver_inputs(x, y, a, b, epsilon, scaling, max_iter, tol, cost, check_every):
    """Checked point clouds and weights in the compute dtype, shared by the Sinkhorn entry points."""
    _check_points(x, y)
    _check_solver_args(epsilon, scaling, max_iter, tol, cost, check_every)
    dtype = compute_dtype(x, y)
    xc, yc = upcast(x, dtype), upcast(y, dtype)
    return xc, yc, _weights(a, xc.shape[:-1], "a", dtype, xc.device), _weights(b, yc.shape[:-1], "b", dtype, yc.device)


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
    xc, yc, a_, b_ = _solver_inputs(x, y, a, b, epsilon, scaling, max_iter, tol, cost, check_every)
    C = pairwise_cost(xc, yc, cost)
    eps = float(epsilon)
    value, f, g, it, err = _entropic_value(C, a_, b_, eps, scaling, max_iter, tol, check_every, unrolled=unrolled)
    if err > tol:
        _warn_not_converged("sinkhorn", max_iter, err, tol)
    # Plan from the potentials (its gradient treats the plan as fixed: only ``value`` has the
    # exact envelope gradient). Zero-weight rows/columns get P = 0 through a_i b_j = 0.
    logP = (f.unsqueeze(-1) + g.unsqueeze(-2) - C) / eps
    P = (a_.unsqueeze(-1) * b_.unsqueeze(-2)) * logP.exp()
    if not unrolled:
        P = P.detach()
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
    scaling: float | None = 0.5,
    check_every: int = 10,
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
    xc, yc, a_, b_ = _solver_inputs(x, y, a, b, epsilon, scaling, max_iter, tol, cost, check_every)
    kw = dict(epsilon=float(epsilon), scaling=scaling, max_iter=max_iter, tol=tol, check_every=check_every)
    # Self terms: one potential, symmetric averaged updates (fast and oscillation-free).
    xx, _, _, it_xx, err_xx = _entropic_value(pairwise_cost(xc, xc, cost), a_, a_, symmetric=True, **kw)
    if x is y and (a is b):
        # The very same measure: the cross term is the self term (exactly 0, with zero gradient).
        worst = err_xx
        out = xx - xx
    else:
        xy, _, _, _, err_xy = _entropic_value(pairwise_cost(xc, yc, cost), a_, b_, **kw)
        yy, _, _, _, err_yy = _entropic_value(pairwise_cost(yc, yc, cost), b_, b_, symmetric=True, **kw)
        worst = max(err_xx, err_xy, err_yy)
        out = xy - 0.5 * (xx + yy)
    if worst > tol:  # one warning for the three problems
        _warn_not_converged("sinkhorn_divergence", max_iter, worst, tol)
    return out


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
