r"""Entropic optimal transport between weighted point clouds.

Conventions (and how to map peers):

- ``cost="sqeuclidean"`` (default): :math:`C_{ij} = \|x_i - y_j\|^2`, with ``epsilon`` = POT's
  ``reg`` (``ot.sinkhorn2(a, b, C, reg=epsilon, method="sinkhorn_log")`` returns our
  ``transport_cost``). Other costs: ``"euclidean"`` :math:`\|x_i - y_j\|`, ``"cosine"``
  :math:`1 - \cos(x_i, y_j)`, ``"dot"`` :math:`-\langle x_i, y_j\rangle` (SciPy's ``cdist``
  names), or a callable ``cost(x, y) -> (…, n, m)``.
- geomloss's ``SamplesLoss("sinkhorn", p=2, blur=blur)`` uses :math:`\tfrac12\|x - y\|^2` and
  :math:`\varepsilon = \mathrm{blur}^2`: scaling cost and ε together scales the value, so
  ``cost="sqeuclidean", epsilon=2 * blur**2`` gives twice geomloss's value.
- ``value`` is the entropic OT value :math:`\mathrm{OT}_\varepsilon = \langle a, f\rangle +
  \langle b, g\rangle` (the dual objective at the optimum, = linear cost + ε·KL(P‖a⊗b));
  ``transport_cost`` is the linear cost :math:`\langle P, C\rangle`. For every ε,
  :math:`\mathrm{OT}_0 \le \langle P_\varepsilon, C\rangle \le \mathrm{OT}_\varepsilon \le
  \mathrm{OT}_0 + \varepsilon \min(H(a), H(b))` (:math:`\mathrm{OT}_0`: exact OT, e.g. ``ot.emd2``).

The solvers stop when the L1 marginal error is below ``tol``, a test read on the host: under
``torch.compile`` the solver runs eagerly (a graph break by design, registry property
``graph_breaks``) and the differentiable last step around it is compiled.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Literal, NamedTuple

import torch

from .._checks import (
    check_choice,
    check_floating,
    check_nonnegative_tensor,
    check_positive,
    check_reduction,
    hyperparameter_checks,
    validation_enabled,
)
from .._numerics import compute_dtype, upcast
from .._reduction import reduce
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
MONGE_GAP_PAPER = Reference(
    title="The Monge Gap: A Regularizer to Learn All Transport Maps",
    authors="Théo Uscidda, Marco Cuturi",
    year=2023,
    url="https://arxiv.org/abs/2302.04953",
)
#: Cost names (SciPy's ``cdist`` names, the house vocabulary); a callable is accepted too.
COSTS = ("sqeuclidean", "euclidean", "cosine", "dot")
GRAPH_BREAKS = ("the Sinkhorn loop stops on a convergence test read on the host; it runs eagerly under "
                "torch.compile (torch.compiler.disable) and the differentiable last step is compiled")


def _center(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Translate both clouds by their common mean (distances are unchanged): the expansion
    ||x||^2 + ||y||^2 - 2 x.y then loses far less to cancellation for clouds far from 0. The
    mean is detached: translation invariance makes its exact gradient 0, and a detached one
    keeps each point's gradient its own (exactly 0 for a point of zero weight)."""
    if x is y:
        x = y = x - x.detach().mean(-2, keepdim=True)
        return x, y
    c = (x.detach().sum(-2, keepdim=True) + y.detach().sum(-2, keepdim=True)) / (x.shape[-2] + y.shape[-2])
    return x - c, y - c


def pairwise_cost(x: torch.Tensor, y: torch.Tensor, cost: str | Callable = "sqeuclidean") -> torch.Tensor:
    r"""Cost matrix ``(…, n, m)`` between ``x (…, n, d)`` and ``y (…, m, d)``.

    ``"sqeuclidean"`` :math:`\|x_i - y_j\|^2`, ``"euclidean"`` :math:`\|x_i - y_j\|`,
    ``"cosine"`` :math:`1 - \cos(x_i, y_j)`, ``"dot"`` :math:`-\langle x_i, y_j\rangle`, or a
    callable ``cost(x, y)``. ``pairwise_cost(x, x)`` has an exact zero diagonal (except
    ``"dot"``, whose diagonal is :math:`-\|x_i\|^2`).
    """
    if callable(cost):
        return cost(x, y)
    if cost == "dot":
        return -(x @ y.transpose(-1, -2))
    if cost == "cosine":
        xn = torch.nn.functional.normalize(x, dim=-1)
        yn = xn if x is y else torch.nn.functional.normalize(y, dim=-1)
        d = 1.0 - xn @ yn.transpose(-1, -2)
        d = d.clamp_min(0.0)  # round-off below 0 for parallel vectors (clamp keeps NaN)
    elif cost in ("sqeuclidean", "euclidean"):
        xc, yc = _center(x, y)
        # ||x||^2 + ||y||^2 - 2 x.y is one matmul; clamp the round-off negatives of nearby points.
        d = (xc.square().sum(-1, keepdim=True) + yc.square().sum(-1).unsqueeze(-2)
             - 2 * xc @ yc.transpose(-1, -2)).clamp_min(0)
        if cost == "euclidean" and x is not y:
            d = torch.sqrt(d.clamp_min(torch.finfo(d.dtype).tiny))
    else:
        raise ValueError(f"cost must be one of {COSTS} or a callable, got {cost!r}")
    if x is y:
        # A point's cost to itself is exactly 0; the expansion leaves round-off there, which
        # the euclidean cost would turn into sqrt(eps) (3e-4 relative in float32).
        eye = torch.eye(d.shape[-1], dtype=torch.bool, device=d.device)
        d = d.masked_fill(eye, 0.0)
        if cost == "euclidean":
            d = torch.sqrt(d.clamp_min(torch.finfo(d.dtype).tiny)).masked_fill(eye, 0.0)
    return d


def paired_cost(x: torch.Tensor, y: torch.Tensor, cost: str | Callable = "sqeuclidean") -> torch.Tensor:
    """Cost ``c(x_i, y_i)`` between matched rows ``(…, n, d)`` -> ``(…, n)``: the diagonal of
    :func:`pairwise_cost`."""
    if callable(cost):
        return torch.diagonal(cost(x, y), dim1=-2, dim2=-1)
    if cost == "dot":
        return -(x * y).sum(-1)
    if cost == "cosine":
        xn, yn = torch.nn.functional.normalize(x, dim=-1), torch.nn.functional.normalize(y, dim=-1)
        return (1.0 - (xn * yn).sum(-1)).clamp_min(0.0)
    if cost not in ("sqeuclidean", "euclidean"):
        raise ValueError(f"cost must be one of {COSTS} or a callable, got {cost!r}")
    d2 = (x - y).square().sum(-1)
    return d2 if cost == "sqeuclidean" else torch.sqrt(d2.clamp_min(torch.finfo(d2.dtype).tiny))


class SinkhornResult(NamedTuple):
    """Output of :func:`sinkhorn` (a ``NamedTuple``; the first field is the value).

    Attributes:
        value: entropic OT value :math:`\\mathrm{OT}_\\varepsilon`, ``()`` or ``(B,)``.
        transport_cost: linear cost :math:`\\langle P, C\\rangle`, ``()`` or ``(B,)``.
        f: ``(…, n)`` and g: ``(…, m)`` the dual potentials.
        plan: the plan :math:`P` ``(…, n, m)`` if ``return_plan``, else None.
        n_iter: iterations run (ε-scaling levels and Newton steps included).
        marginal_error: L1 marginal error reached (max over the batch).
    """

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
        check_nonnegative_tensor(w.detach(), name)
        err = float((w.detach().sum(-1) - 1).abs().max())
        if err > 1e-5 * max(1.0, math.sqrt(shape[-1])) and w.dtype == torch.float64 or err > 1e-4:
            raise ValueError(f"{name} must sum to 1 (probability weights), found a sum off by {err:.3g}")
    return w


def _check_points(x, y, y_name: str = "y") -> None:
    check_floating(x, "x")
    check_floating(y, y_name)
    if x.dim() not in (2, 3) or y.dim() != x.dim():
        raise ValueError(f"x and {y_name} must both be (n, d) or (B, n, d), got x {tuple(x.shape)} and "
                         f"{y_name} {tuple(y.shape)}")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"{y_name} must have the feature dimension of x ({x.shape[-1]}), got {y_name} "
                         f"{tuple(y.shape)}")
    if x.dim() == 3 and x.shape[0] != y.shape[0]:
        raise ValueError(f"{y_name} must have the batch size of x ({x.shape[0]}), got {y_name} {tuple(y.shape)}")


def _check_solver_hyperparameters(*, epsilon=0.05, cost="sqeuclidean", max_iter=1000, tol=1e-6, scaling=0.5,
                                  check_every=10, return_plan=False, unrolled=False, reduction="mean", **_):
    """The Sinkhorn entry points' hyperparameters (run by the Modules' ``__init__`` and at call time)."""
    check_positive(epsilon, "epsilon")
    check_positive(tol, "tol")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every must be an integer >= 1, got {check_every!r}")
    if scaling is not None and not (isinstance(scaling, (int, float)) and 0.0 < scaling < 1.0):
        raise ValueError(f"scaling must be in (0, 1) or None, got {scaling!r}")
    if not callable(cost):
        check_choice(cost, "cost", COSTS)
    for name, flag in (("return_plan", return_plan), ("unrolled", unrolled)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    check_reduction(reduction)


def _solver_inputs(x, y, a, b, hyper: dict, y_name: str = "y"):
    """Checked point clouds and weights in the compute dtype, shared by the Sinkhorn entry points."""
    _check_points(x, y, y_name)
    _check_solver_hyperparameters(**hyper)
    dtype = compute_dtype(x, y)
    xc, yc = upcast(x, dtype), upcast(y, dtype)
    return xc, yc, _weights(a, xc.shape[:-1], "a", dtype, xc.device), _weights(b, yc.shape[:-1], "b", dtype, yc.device)


def _matvec(K: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(…, n, m) @ (…, m) -> (…, n): one BLAS pass over K."""
    return torch.matmul(K, w.unsqueeze(-1)).squeeze(-1)


def _rmatvec(K: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(…, n) @ (…, n, m) -> (…, m) without materializing Kᵀ."""
    return torch.matmul(w.unsqueeze(-2), K).squeeze(-2)


def _softmin(eps: float, cost: torch.Tensor, logw_plus_pot: torch.Tensor) -> torch.Tensor:
    """-eps * logsumexp_j(h_j - C_ij / eps): the c-transform in log-domain (rows of ``cost``)."""
    return -eps * torch.logsumexp(logw_plus_pot.unsqueeze(-2) - cost / eps, dim=-1)


def _transform(C: torch.Tensor, h: torch.Tensor, logw: torch.Tensor, eps: float, dim: int) -> torch.Tensor:
    """Log-domain c-transform ``-eps * logsumexp(logw + (h - C) / eps)`` over ``dim``.

    ``dim=-1`` gives the row potential f from (g, log b); ``dim=-2`` the column potential g
    from (f, log a). Zero weights (log 0 = -inf) drop out exactly."""
    if dim == -1:
        return -eps * torch.logsumexp(logw.unsqueeze(-2) + (h.unsqueeze(-2) - C) / eps, dim=-1)
    return -eps * torch.logsumexp(logw.unsqueeze(-1) + (h.unsqueeze(-1) - C) / eps, dim=-2)


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


def _max_float(t: torch.Tensor) -> float:
    return float(t.max().detach())


def _log_range(*ts) -> float:
    return max(float(t.detach().log().abs().max()) for t in ts)


# epsilon-scaling: an intermediate level iterates until its L1 marginal error is below
# LEVEL_TOL times the smallest point weight (a plan that sends one point's mass to the wrong
# place has an error of about twice that weight), checked every iteration (the check reuses
# the update's matrix-vector product). The potentials then track the optimum as epsilon
# shrinks and a near-permutation plan is found at the epsilon where it forms: a level left
# early locks in a wrong assignment that costs ~(cost gap / epsilon) iterations to undo at the
# target (the 20 000-iteration stalls of a fixed 3 iterations per level). 0.01 rather than
# 0.1: with 0.1, 1 of 300 random hard instances (4-40 points, eps / diameter 1e-6 to 1e-2)
# missed tol 1e-9 in 1000 iterations; with 0.01, none of 600 (up to 120 points, eps /
# diameter down to 1e-7). LEVEL_CAP bounds the checks of a
# level without a new best error (plateaus of plain Sinkhorn last up to a few hundred
# iterations; a round-off floor forever).
LEVEL_TOL = 0.01
LEVEL_CAP = 200
STALL_CHECKS = 50  # checks without a new best error at the target epsilon: the round-off floor
OMEGA_MAX = 1.95  # cap of the over-relaxation factor (omega -> 2 loses the contraction)
RELAX_CYCLE = 5  # checks' worth of over-relaxed iterations between two plain measuring steps
NEWTON_STEPS = 4  # Newton steps budgeted when comparing its cost with Sinkhorn's predicted iterations
NEWTON_MAX_STEPS = 50  # Newton steps per hand-over at most
NEWTON_MAX_SIZE = 2048  # largest min(n, m) for the dense Newton system
# float32 cannot resolve exp((f + g - C) / eps) once eps is below ~30 roundoffs of max |C|
# (f + g - C then carries an error above eps / 10): such problems are solved in float64.
FLOAT32_RESOLUTION = 30 * 2.0 ** -24


def _omega(rate: float) -> float:
    """Optimal over-relaxation for a plain-Sinkhorn error rate per iteration, omega* = 2 / (1 +
    sqrt(1 - rate)), which brings the local rate down to omega* - 1 (Lehmann, von Renesse,
    Sambale, Uschmajew 2022)."""
    return min(OMEGA_MAX, 2.0 / (1.0 + math.sqrt(max(1.0 - rate, 0.0))))


def _newton_cost(n: int, m: int) -> float:
    """Cost of one Newton step in Sinkhorn iterations (4nm flops each): the Schur complement
    (2 s^2 L flops), its Cholesky factorization (s^3 / 3) and a few exp passes."""
    s, big_side = min(n, m), max(n, m)
    return s / 2 + s * s / (12 * big_side) + 10


def _newton(C, a, b, f, g, eps, tol, max_steps):
    """Newton's method on the entropic dual (Brauer, Clason, Lorenz, Wirth 2017), from f, g.

    The dual D(f, g) = <a, f> + <b, g> - eps sum P(f, g) is concave with gradient (a - P1,
    b - P^T 1) and Hessian -(1/eps) [[diag(P1), P], [P^T, diag(P^T 1)]]; the Newton system is
    solved on the smaller side through its Schur complement (positive semi-definite, null
    space the constants, removed by a rank-one term; a relative ridge handles a support graph
    that has split into blocks), followed by a backtracking (Armijo) line search on D and an
    exact half-step g = T(f). Quadratic convergence where Sinkhorn's rate 1 - gap is close to
    1 (near-permutation plans at small epsilon). Runs in float64 (the Schur complement of a
    near-permutation plan is too ill-conditioned for float32). Returns f, g (in the input
    dtype), steps, L1 marginal error."""
    dtype = C.dtype
    if dtype != torch.float64:
        f, g, steps, err = _newton(C.double(), a.double(), b.double(), f.double(), g.double(), eps, tol, max_steps)
        return f.to(dtype), g.to(dtype), steps, err
    transpose = C.shape[-2] < C.shape[-1]  # eliminate the larger side, solve on the smaller
    if transpose:
        C, a, b, f, g = C.transpose(-1, -2), b, a, g, f
    loga, eye = torch.log(a), None
    ab = a.unsqueeze(-1) * b.unsqueeze(-2)

    def plan(f, g):
        return ab * _gibbs(C, f, g, eps)

    P = plan(f, g)
    err, steps, last, decrements, t_min = math.inf, 0, (f, g), [], 1.0
    while True:
        r1, c1 = P.sum(-1), P.sum(-2)
        ra, rb = a - r1, b - c1
        new_err = _max_float(ra.abs().sum(-1) + rb.abs().sum(-1))
        if not math.isfinite(new_err):
            f, g = last  # a step that overflowed: keep the last finite potentials
            break
        err = new_err
        # Stop when converged, out of budget, when the line search fails (round-off floor), or
        # when the Newton decrement (the dual's predicted increase) has not fallen over five
        # steps. The marginal error is no progress measure: it may rise on a long damped step
        # that still increases the dual.
        stalled = t_min < 1e-6 or (len(decrements) > 5 and min(decrements[-5:]) > 0.9 * min(decrements[:-5]))
        if err < tol or stalled or steps >= max_steps:
            break
        # Schur complement on the b side: S = diag(c1) - P^T diag(1/r1) P (rows of zero mass,
        # a_i = 0, drop out through P = 0; r1 is clamped only to avoid 0/0).
        r1s = r1.clamp_min(torch.finfo(P.dtype).tiny)
        S = torch.diag_embed(c1) - P.transpose(-1, -2) @ (P / r1s.unsqueeze(-1))
        scale = c1.mean(-1, keepdim=True).unsqueeze(-1)
        if eye is None:
            eye = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device)
        S = S + scale * (1.0 / S.shape[-1] + 1e-10 * eye)  # + constants' direction, + ridge
        rhs = rb - _rmatvec(P, ra / r1s)
        L, info = torch.linalg.cholesky_ex(S)
        if bool(info.any()):
            break
        dy = torch.cholesky_solve(rhs.unsqueeze(-1), L).squeeze(-1)
        dx = (ra - _matvec(P, dy)) / r1s
        # Armijo backtracking on the concave dual, one step size per batch item. Near the
        # optimum the dual's increase (~ error^2) is below its round-off: a step that halves
        # the marginal error is accepted too.
        D0 = (a * f).sum(-1) + (b * g).sum(-1) - eps * P.sum((-1, -2))
        slope = eps * ((ra * dx).sum(-1) + (rb * dy).sum(-1))
        e0 = ra.abs().sum(-1) + rb.abs().sum(-1)
        t = torch.ones_like(D0)
        for _ in range(30):
            fn, gn = f + (eps * t).unsqueeze(-1) * dx, g + (eps * t).unsqueeze(-1) * dy
            Pn = plan(fn, gn)
            D = (a * fn).sum(-1) + (b * gn).sum(-1) - eps * Pn.sum((-1, -2))
            en = (a - Pn.sum(-1)).abs().sum(-1) + (b - Pn.sum(-2)).abs().sum(-1)
            ok = (D >= D0 + 1e-4 * t * slope) | (en < 0.5 * e0)
            if bool(ok.all()):
                break
            t = torch.where(ok, t, 0.5 * t)
        t_min = float(t.detach().min())
        decrements.append(_max_float(slope))
        last = (f, g)
        f = fn
        g = _transform(C, f, loga, eps, -2)  # exact column half-step
        P = plan(f, g)
        steps += 1
    if transpose:
        f, g = g, f
    return f, g, steps, err


def _sinkhorn_level(C, a, b, f, g, eps, it, max_iter, level_tol, every, last, newton_budget, symmetric,
                    exact_step, start_rate=1.0):
    """Scaling-form Sinkhorn at one epsilon from potentials f, g, until the L1 marginal error is
    below ``level_tol``, the iteration budget is spent, the error stalls, or the iterations
    predicted to reach ``level_tol`` cost more than ``newton_budget`` (then Newton takes over).
    ``last``: the target epsilon; ``start_rate``: plain Sinkhorn's rate measured at the previous
    level, whose over-relaxation factor this level starts with (rates change little from one
    level to the next). Returns f, g, it, err, converged (at the target), hand_over_to_newton,
    the last plain rate measured."""
    big = _ABSORB.get(C.dtype, _ABSORB[torch.float32])
    K = _gibbs(C, f, g, eps)
    u = torch.ones_like(f)
    v = u if symmetric else torch.ones_like(g)
    best, since_best, k, since_check, err = math.inf, 0, 0, 0, math.inf
    relax, omega, relax_left, relax_failed = False, 1.0, 0, False  # over-relaxation state
    rate, prev_err, prev_k = 1.0, math.inf, 0  # plain Sinkhorn's measured error decay per iteration
    # Head start: one cycle over-relaxed at the factor fitted on the previous level (rates
    # change little from one level to the next).
    carried = not symmetric and 0.5 < start_rate < 1.0
    if carried:
        relax, omega, rate = True, _omega(start_rate), start_rate
    converged = newton = False
    while it < max_iter:
        Kw = _matvec(K, a * u) if symmetric else _matvec(K, b * v)
        if relax_left == 0 and (since_check >= every or k == 0):
            since_check = 0
            # After a plain half-step pair the columns fit exactly: the error is the rows'. On a
            # fresh kernel (k = 0: new epsilon, after Newton) the columns are measured too.
            e = (a * (u * Kw - 1)).abs().sum(-1)
            if symmetric:
                e = 2 * e  # rows and columns are the same marginal
            elif k == 0:
                e = e + (b * (v * _rmatvec(K, a * u) - 1)).abs().sum(-1)
            err = _max_float(e)
            if not math.isfinite(err):
                # An update overflowed (a row or column of the kernel flushed to zero after a
                # jump of the potentials, or an over-relaxed step too long): restart from the
                # last absorbed potentials after an exact log-domain step, with plain updates.
                if k == 0:
                    raise ValueError(f"Sinkhorn produced a non-finite marginal error at epsilon={eps:.3g}; "
                                     "use float64 inputs or a larger epsilon")
                f, g = exact_step(f, g, eps)
                it += 1
                K = _gibbs(C, f, g, eps)
                u = torch.ones_like(f)
                v = u if symmetric else torch.ones_like(g)
                relax, omega, relax_failed, k, prev_err = False, 1.0, True, 0, math.inf
                continue
            if err < level_tol:
                converged = last
                break
            if err < best:
                best, since_best = err, 0
            else:
                since_best += 1
            if since_best >= (STALL_CHECKS if last else LEVEL_CAP):
                break  # stalled: the round-off floor (or a level that does not settle)
            if not symmetric and k > prev_k:
                new_rate = (err / prev_err) ** (1.0 / (k - prev_k)) if prev_err < math.inf else math.nan
                if carried:
                    # The head start is over: plain updates measure this level's own rate; until
                    # then the previous level's rate predicts the work left (and may call Newton).
                    relax, omega, carried = False, 1.0, False
                elif relax and not new_rate < rate:
                    relax, omega, relax_failed = False, 1.0, True  # not faster than plain: plain for good
                elif not relax and 0.0 < new_rate < 1.0:
                    # Over-relax once two successive plain rates agree (the asymptotic regime,
                    # not the transient after a new kernel) and say it is slow.
                    stable = abs(math.log(new_rate) - math.log(rate)) <= 0.25 * -math.log(new_rate)
                    rate = new_rate
                    if stable and rate > 0.5 and not relax_failed:
                        relax, omega = True, _omega(rate)
                r = new_rate if relax else rate
                predicted = math.log(err / level_tol) / -math.log(r) if 0.0 < r < 1.0 else math.inf
                # Newton when the iterations still predicted, or those already spent on this
                # level (the rate keeps slowing on hard problems), cost more than it would.
                if (predicted > newton_budget or k > newton_budget) and k >= 3 * every:
                    newton = True
                    break
                prev_err, prev_k = err, k
            if relax:
                relax_left = RELAX_CYCLE * every
            if _log_range(u, v) > big:  # absorb, rebuild the kernel around the new potentials
                f = f + eps * torch.log(u)
                g = f if symmetric else g + eps * torch.log(v)
                K = _gibbs(C, f, g, eps)
                u = torch.ones_like(f)
                v = u if symmetric else torch.ones_like(g)
                Kw = _matvec(K, a * u) if symmetric else _matvec(K, b * v)
        if symmetric:
            u = v = torch.sqrt(u / Kw)
        elif relax_left > 1:  # over-relaxed, in log form f <- (1 - w) f + w T(g)
            u = u.pow(1 - omega) * Kw.pow(-omega)
            v = v.pow(1 - omega) * _rmatvec(K, a * u).pow(-omega)
        else:  # plain (also the measuring step that closes an over-relaxed cycle)
            u = 1.0 / Kw
            v = 1.0 / _rmatvec(K, a * u)
        relax_left = max(relax_left - 1, 0)
        it += 1
        k += 1
        since_check += 1
    f = f + eps * torch.log(u)
    g = f if symmetric else g + eps * torch.log(v)
    return f, g, it, err, converged, newton, rate


class _Solution(NamedTuple):
    f: torch.Tensor
    g: torch.Tensor
    n_iter: int
    err: float  # L1 marginal error of (f, g), max over the batch
    ok: bool  # err <= tol, or stalled at the arithmetic's resolution of the problem


@torch.compiler.disable
def _solve(C, a, b, epsilon, scaling, max_iter, tol, check_every, symmetric=False) -> _Solution:
    """Sinkhorn in scaling form on a stabilized kernel, with epsilon-scaling and absorption.

    The potentials f, g (P_ij = a_i b_j exp((f_i + g_j - C_ij)/eps)) are kept in log form and
    the iterations run on multiplicative corrections u, v: one matrix-vector product per
    half-step instead of a log-sum-exp over the n x m matrix (an exp per entry, tens of times
    dearer on a CPU). The kernel is rebuilt (Schmitzer 2019) at every new epsilon and whenever
    u, v leave a safe range (absorption into f, g). The first kernel, and any kernel on which
    an update overflows (a row or column flushed to zero after a jump of the potentials), is
    built after one exact log-domain step (c-transforms f = T(g), g = T(f)), which gives every
    row and column an entry of order one, so the duals always move.

    epsilon-scaling (``scaling`` in (0, 1)): epsilon goes geometrically from the cost's
    diameter (max - min) down to ``epsilon``; each intermediate level is solved until its
    error is below LEVEL_TOL x (smallest weight), the target level to ``tol``. On every level
    the error decay per iteration of plain alternating updates, r, is measured. When it is
    slow, cycles of over-relaxed updates u <- u^(1-w) (1/K(bv))^w with w = 2 / (1 + sqrt(1 -
    r)) (Thibault, Chizat, Dossal, Papadakis 2021; Lehmann et al. 2022: same fixed point,
    local rate w - 1 instead of r), each closed by a plain step that measures the error, run
    as long as they beat plain Sinkhorn (a level starts with one such cycle at the previous
    level's factor); when the iterations predicted (or already spent) exceed the cost of about
    NEWTON_STEPS Newton steps, Newton's method on the dual finishes the level (quadratic
    convergence where Sinkhorn crawls: near-permutation plans at small epsilon / diameter).
    ``symmetric=True`` solves OT(a, a) with one potential and averaged updates
    u <- sqrt(u / K(au)) (Feydy et al. 2019), which converge where alternating updates
    oscillate.

    Runs eagerly under torch.compile (its stopping tests read values on the host). Newton steps
    count as one iteration each. Raises ValueError if the cost holds NaN/inf while validation
    is enabled (with validation off the potentials come back NaN: the NaN propagates)."""
    dtype = C.dtype
    f = torch.zeros(C.shape[:-1], dtype=dtype, device=C.device)
    g = f if symmetric else torch.zeros(C.shape[:-2] + C.shape[-1:], dtype=dtype, device=C.device)
    if C.numel() == 0:
        return _Solution(f, g, 0, 0.0, True)
    lo, hi = torch.aminmax(C.detach())
    lo, hi = float(lo), float(hi)
    diameter, magnitude = hi - lo, max(abs(lo), abs(hi))
    if not math.isfinite(diameter):
        if validation_enabled():
            raise ValueError("the cost matrix has NaN or infinite entries (NaN or inf in x or y, or from the cost "
                             "callable): Sinkhorn cannot run on it")
        nan = torch.full((), math.nan, dtype=dtype, device=C.device)
        return _Solution(f + nan, g + nan, 0, math.nan, False)
    if dtype != torch.float64 and epsilon < FLOAT32_RESOLUTION * magnitude:
        # The kernel exp((f + g - C) / eps) is noise in float32 here: solve in float64 (the
        # value of the problem posed by the rounded cost, accurate to float32's resolution).
        s = _solve(C.double(), a.double(), b.double(), epsilon, scaling, max_iter, tol, check_every, symmetric)
        return s._replace(f=s.f.to(dtype), g=s.g.to(dtype))
    n, m = C.shape[-2], C.shape[-1]
    loga = torch.log(a)  # -inf for zero weights: those points drop out exactly
    logb = loga if symmetric else torch.log(b)
    # epsilon-scaling schedule: K geometric steps of ratio <= 1 / scaling from the diameter,
    # spread evenly so that the last intermediate level is not a near copy of the target.
    levels = [epsilon]
    if scaling is not None and diameter > epsilon:
        steps = math.ceil(math.log(diameter / epsilon) / -math.log(scaling) - 1e-9)
        levels = [epsilon * (diameter / epsilon) ** (k / steps) for k in range(steps, 0, -1)] + levels
    ad, bd = a.detach(), b.detach()
    quantum = float(ad[ad > 0].min()) if symmetric else min(float(ad[ad > 0].min()), float(bd[bd > 0].min()))
    newton_budget = NEWTON_STEPS * _newton_cost(n, m) if min(n, m) <= NEWTON_MAX_SIZE and not symmetric else math.inf

    def exact_step(f, g, eps):
        # After f = T(g), g = T(f) every column of the kernel sums to 1 against a and every
        # row to at least min_j b_j against b (T(T(g)) >= g + eps log b), whatever f, g were.
        if symmetric:
            f = 0.5 * (f + _transform(C, f, loga, eps, -1))
            return f, f
        f = _transform(C, g, logb, eps, -1)
        return f, _transform(C, f, loga, eps, -2)

    it, err, converged, rate = 0, math.inf, False, 1.0
    for level, eps in enumerate(levels):
        last = level == len(levels) - 1
        # OT(a, a)'s plan is near the diagonal at every epsilon (no assignment to find) and the
        # averaged symmetric updates contract fast: a rough level is enough there.
        level_tol = tol if last else max(tol, LEVEL_TOL * (1.0 if symmetric else quantum))
        every = check_every if last else 1
        if level == 0:
            f, g = exact_step(f, g, eps)
            it += 1
        budget = newton_budget
        while True:  # Sinkhorn, possibly handing over to Newton (and back, if Newton stops short)
            f, g, it, err, converged, newton, rate = _sinkhorn_level(
                C, a, b, f, g, eps, it, max_iter, level_tol, every, last, budget, symmetric, exact_step, rate)
            if not newton:
                break
            f, g, steps, err = _newton(C, a, b, f, g, eps, level_tol, min(max_iter - it, NEWTON_MAX_STEPS))
            it += steps
            budget = math.inf  # if Newton stopped short, Sinkhorn finishes the level
            if err < level_tol or it >= max_iter:
                converged = last and err < level_tol
                break
    if not converged and math.isfinite(err):
        # The error of the returned potentials (the last measurement may predate absorption).
        K = _gibbs(C, f, g, levels[-1])
        w = a if symmetric else b
        err = _max_float((a * (_matvec(K, w) - 1)).abs().sum(-1) + (w * (_rmatvec(K, a) - 1)).abs().sum(-1))
    # A tolerance below what the arithmetic resolves (f + g - C carries ~ roundoff x max |C|,
    # i.e. a relative error of that over eps in every kernel entry) is met as well as it can be.
    floor = 4 * torch.finfo(dtype).eps * magnitude / epsilon
    ok = err <= tol or (it < max_iter and err <= floor)
    if validation_enabled() and not (bool(torch.isfinite(f).all()) and bool(torch.isfinite(g).all())):
        raise ValueError(f"Sinkhorn produced non-finite potentials at epsilon={epsilon:.3g} (cost range "
                         f"[{lo:.3g}, {hi:.3g}]); use float64 inputs or a larger epsilon")
    return _Solution(f, g, it, err, ok)


def _entropic_value(C, a, b, epsilon, scaling, max_iter, tol, check_every, *, symmetric=False, unrolled=False):
    """OT_eps value <a, f> + <b, g> and the solver's solution; gradients by the envelope theorem.

    The solver runs without autograd; when ``C`` carries a graph, one differentiable half-step
    f = c-transform(g*) gives d value / d C = P, the exact gradient at the fixed point, for the
    memory of one log-sum-exp. ``unrolled`` differentiates through every iteration instead."""
    eps = float(epsilon)
    if unrolled:
        with torch.enable_grad():
            sol = _solve(C, a, b, eps, scaling, max_iter, tol, check_every, symmetric)
        return (a * sol.f).sum(-1) + (b * sol.g).sum(-1), sol
    with torch.no_grad():
        sol = _solve(C.detach(), a.detach(), b.detach(), eps, scaling, max_iter, tol, check_every, symmetric)
    f = sol.f
    if torch.is_grad_enabled() and (C.requires_grad or a.requires_grad or b.requires_grad):
        f = _softmin(eps, C, torch.log(b) + sol.g / eps)  # log 0 = -inf: zero-weight points drop out
    return (a * f).sum(-1) + (b * sol.g).sum(-1), sol._replace(f=f)


@torch.compiler.disable
def _warn_not_converged(what: str, sol: _Solution, max_iter: int, tol: float) -> None:
    if sol.ok:
        return
    if math.isnan(sol.err):
        return  # NaN inputs with validation off: the NaN value says it
    reason = (f"did not converge in max_iter={max_iter} iterations" if sol.n_iter >= max_iter
              else f"stalled after {sol.n_iter} iterations")
    warnings.warn(f"{what} {reason}: L1 marginal error {sol.err:.3g} > tol {tol:.3g}; increase max_iter or "
                  "epsilon, keep scaling on (the default), or use float64 inputs", RuntimeWarning, stacklevel=3)


def _unbatched_or_reduced(loss: torch.Tensor, batched: bool, reduction: str) -> torch.Tensor:
    """``(B,)`` per-item values reduced; an unbatched input is one item without a batch dimension,
    returned as is (0-dim) for every reduction, like ``F.cross_entropy`` on an unbatched input."""
    return reduce(loss, reduction) if batched else loss


_SOLVER_ARGS = r"""
        epsilon: :math:`\varepsilon > 0`, in the units of the cost (see the module notes).
        cost: ``"sqeuclidean"`` (default), ``"euclidean"``, ``"cosine"``, ``"dot"`` or a
            callable ``cost(x, y) -> (…, n, m)``.
        max_iter: iteration cap (ε-scaling levels and Newton steps included).
        tol: tolerance on the L1 marginal error :math:`\|P\mathbf 1 - a\|_1 + \|P^\top\mathbf 1 - b\|_1`.
        scaling: ε-scaling factor in (0, 1) (default 0.5): ε goes geometrically from the
            cost's diameter down to ``epsilon``; None starts at ``epsilon`` (slow when it is
            small relative to the diameter).
        check_every: iterations between convergence checks at the target ε (one host sync each)."""

_SOLVER_NOTES = r"""
    Solver: Sinkhorn iterations in scaling form on a log-stabilized kernel (absorption into
    the potentials), ε-scaling with every level solved to a fraction of the smallest point
    weight (so a near-permutation plan is found at the ε where it forms), over-relaxation
    at a factor fitted to the measured convergence rate, and Newton's method on the dual
    (a dense system of size min(n, m), up to 2048) when Sinkhorn's predicted remaining
    iterations cost more (near-permutation plans at small ε / diameter). It stops when the
    L1 marginal error is below ``tol`` and **warns** (``RuntimeWarning`` with the error
    reached) if ``max_iter`` comes first or the error stalls above the arithmetic's
    resolution; float32 problems whose ε is below float32's resolution of the cost (~2e-6
    of its largest entry) are solved in float64. Points with zero weight are handled
    exactly (no NaN, unlike ``log(0)`` in POT). Under ``torch.compile`` the solver runs
    eagerly (a graph break: its loop stops on a test read on the host) and the
    differentiable last step is compiled. Non-finite inputs: see CONTRIBUTING.md (a NaN or
    inf point raises ``ValueError`` while validation is on, and gives NaN without iterating
    when it is off)."""


def _fill_doc(fn):
    """Insert the shared solver notes and arguments into a Sinkhorn entry point's docstring."""
    fn.__doc__ = fn.__doc__.replace("    <<SOLVER_NOTES>>\n", _SOLVER_NOTES + "\n").replace(
        "<<SOLVER_ARGS>>", _SOLVER_ARGS)
    return fn


def _sinkhorn_example() -> Example:
    def make(gen):
        return (randn(gen, 7, 2), randn(gen, 6, 2) + 0.5), {"epsilon": 0.5, "tol": 1e-13, "max_iter": 5000}

    def mismatch(gen):
        return (randn(gen, 7, 2), randn(gen, 6, 3)), {"epsilon": 0.5}

    return Example(make=make, mismatch=mismatch, mismatch_match=r"\by\b", extreme=None, output=lambda r: r.value)


@register("sinkhorn", family="transport", reference=SINKHORN_PAPER, seed=MONGE_GAP_PAPER.title,
          example=_sinkhorn_example(), input_kind="point clouds", module_required=False, batch_level=True,
          graph_breaks=GRAPH_BREAKS,
          tags=("optimal transport", "entropic optimal transport", "wasserstein", "point clouds", "solver"))
@hyperparameter_checks(_check_solver_hyperparameters)
@_fill_doc
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
    scaling: float | None = 0.5,
    check_every: int = 10,
    return_plan: bool = False,
    unrolled: bool = False,
) -> SinkhornResult:
    r"""Entropic optimal transport between weighted point clouds (Sinkhorn, with ε-scaling and Newton steps).

    Solves :math:`\mathrm{OT}_\varepsilon(\alpha, \beta) = \min_{P \in \Pi(a, b)}
    \langle P, C\rangle + \varepsilon\,\mathrm{KL}(P\,\|\,a\otimes b)` through its dual,

    .. math::
        f_i = -\varepsilon \log\sum_j b_j e^{(g_j - C_{ij})/\varepsilon}, \qquad
        g_j = -\varepsilon \log\sum_i a_i e^{(f_i - C_{ij})/\varepsilon},

    with :math:`P_{ij} = a_i b_j e^{(f_i + g_j - C_{ij})/\varepsilon}` and
    :math:`\mathrm{OT}_\varepsilon = \langle a, f\rangle + \langle b, g\rangle`. A solver,
    not a per-sample loss: it returns one value per problem (batch level).
    <<SOLVER_NOTES>>

    Gradients (default): by the envelope theorem — the loop runs without autograd and a
    last differentiable half-step :math:`f(C; g^\star)` gives
    :math:`\partial\,\mathrm{value}/\partial C = P`, the exact gradient of
    :math:`\mathrm{OT}_\varepsilon` at convergence, at the memory cost of one iteration.
    ``unrolled=True`` differentiates through every iteration instead. ``transport_cost`` and
    ``plan`` treat the plan as a constant.

    Args:
        x: ``(n, d)`` or ``(B, n, d)`` source points.
        y: ``(m, d)`` or ``(B, m, d)`` target points.
        a, b: weights ``(n,)``/``(m,)`` (or batched), non-negative, summing to 1; default
            uniform.<<SOLVER_ARGS>>
        return_plan: also return the plan :math:`P` (``(…, n, m)``).
        unrolled: backpropagate through the iterations.

    Shape:
        ``value``, ``transport_cost``: ``()`` or ``(B,)``; ``f``: ``(…, n)``; ``g``: ``(…, m)``.

    Returns:
        :class:`SinkhornResult`, a ``NamedTuple`` ``(value, transport_cost, f, g, plan,
        n_iter, marginal_error)``.

    Example:
        >>> import torch
        >>> from losslab.functional import sinkhorn
        >>> x = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
        >>> res = sinkhorn(x, x + torch.tensor([0.0, 2.0]), epsilon=0.1)
        >>> round(res.transport_cost.item(), 4)   # every point moves by 2: cost 4
        4.0
        >>> res.value >= res.transport_cost   # + eps * KL(P || a b^T)
        tensor(True)

    References:
        Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", NeurIPS
        2013, https://arxiv.org/abs/1306.0895; Peyré & Cuturi, "Computational Optimal
        Transport", 2019, https://arxiv.org/abs/1803.00567; Schmitzer, "Stabilized Sparse
        Scaling Algorithms for Entropy Regularized Transport Problems", 2019,
        https://arxiv.org/abs/1610.06519; Brauer, Clason, Lorenz, Wirth, "A Sinkhorn-Newton
        method for entropic optimal transport", 2017, https://arxiv.org/abs/1710.06635.
    """
    hyper = dict(epsilon=epsilon, cost=cost, max_iter=max_iter, tol=tol, scaling=scaling, check_every=check_every,
                 return_plan=return_plan, unrolled=unrolled)
    xc, yc, a_, b_ = _solver_inputs(x, y, a, b, hyper)
    C = pairwise_cost(xc, yc, cost)
    eps = float(epsilon)
    value, sol = _entropic_value(C, a_, b_, eps, scaling, max_iter, tol, check_every, unrolled=unrolled)
    _warn_not_converged("sinkhorn", sol, max_iter, tol)
    if unrolled:
        P = (a_.unsqueeze(-1) * b_.unsqueeze(-2)) * ((sol.f.unsqueeze(-1) + sol.g.unsqueeze(-2) - C) / eps).exp()
    else:
        # The plan of the last half-step f = T(g): rows exactly a (finite at any epsilon),
        # columns b up to the marginal error. Zero-weight rows/columns get P = 0.
        with torch.no_grad():
            logits = torch.log(b_).unsqueeze(-2) + (sol.g.unsqueeze(-2) - C) / eps
            P = a_.unsqueeze(-1) * torch.softmax(logits, dim=-1)
    transport_cost = (P * C).sum((-1, -2))
    return SinkhornResult(value=value, transport_cost=transport_cost, f=sol.f, g=sol.g,
                          plan=P if return_plan else None, n_iter=sol.n_iter, marginal_error=sol.err)


def _divergence_example() -> Example:
    def make(gen):
        return (randn(gen, 3, 6, 2), randn(gen, 3, 5, 2) + 0.3), {"epsilon": 0.5, "tol": 1e-13, "max_iter": 5000}

    def mismatch(gen):
        return (randn(gen, 3, 6, 2), randn(gen, 3, 5, 4)), {"epsilon": 0.5}

    return Example(make=make, mismatch=mismatch, mismatch_match=r"\by\b", extreme=None)


@register("sinkhorn_divergence", family="transport", reference=DEBIASED_PAPER, example=_divergence_example(),
          input_kind="point clouds", symmetric=True, graph_breaks=GRAPH_BREAKS,
          tags=("optimal transport", "wasserstein", "distance between distributions", "debiased", "mmd",
                "point clouds", "generative models"))
@hyperparameter_checks(_check_solver_hyperparameters)
@_fill_doc
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
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> torch.Tensor:
    r"""Debiased Sinkhorn divergence, ≥ 0 and 0 for identical inputs.

    .. math::
        S_\varepsilon(\alpha, \beta) = \mathrm{OT}_\varepsilon(\alpha, \beta)
            - \tfrac12\mathrm{OT}_\varepsilon(\alpha, \alpha) - \tfrac12\mathrm{OT}_\varepsilon(\beta, \beta),

    from the entropic values of :func:`sinkhorn` (gradients by the envelope theorem); the
    self terms use one potential and symmetric averaged updates
    :math:`f \leftarrow \tfrac12(f + T(f))` (Feydy et al. 2019), which converge where
    alternating updates oscillate. It interpolates between OT (:math:`\varepsilon \to 0`)
    and a kernel MMD (:math:`\varepsilon \to \infty`). geomloss's
    ``SamplesLoss("sinkhorn", p=2, blur=blur, debias=True)`` (cost :math:`\tfrac12\|x-y\|^2`)
    equals half of ``sinkhorn_divergence(x, y, epsilon=2 * blur**2)`` once both converge
    (geomloss stops after its ε-annealing schedule; compare at its ``scaling`` ≥ 0.9).
    <<SOLVER_NOTES>>

    Batches: ``(B, n, d)`` inputs are B independent problems, ``reduction="none"`` returns
    their ``(B,)`` divergences and ``"mean"``/``"sum"`` reduce them; an unbatched ``(n, d)``
    input is one problem without a batch dimension, so every reduction returns its 0-dim
    value (like ``torch.nn.functional.cross_entropy`` on an unbatched input).

    Args:
        x: ``(n, d)`` or ``(B, n, d)`` samples of the first measure.
        y: ``(m, d)`` or ``(B, m, d)`` samples of the second.
        a, b: weights ``(n,)``/``(m,)`` (or batched), non-negative, summing to 1; default
            uniform.<<SOLVER_ARGS>>
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` over the batch.

    Shape:
        x ``(n, d)`` / y ``(m, d)``: output ``()``; x ``(B, n, d)`` / y ``(B, m, d)``: output
        ``(B,)`` with ``reduction="none"``, else ``()``.

    Example:
        >>> import torch
        >>> from losslab.functional import sinkhorn_divergence
        >>> x = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
        >>> abs(sinkhorn_divergence(x, x, epsilon=0.1).item()) < 1e-5
        True
        >>> xs = torch.randn(4, 20, 2, generator=torch.Generator().manual_seed(1))
        >>> sinkhorn_divergence(xs, xs + 1.0, epsilon=0.1, reduction="none").shape
        torch.Size([4])

    References:
        Feydy et al., "Interpolating between Optimal Transport and MMD using Sinkhorn
        Divergences", AISTATS 2019, https://arxiv.org/abs/1810.08278; Genevay, Peyré,
        Cuturi, "Learning Generative Models with Sinkhorn Divergences", AISTATS 2018,
        https://arxiv.org/abs/1706.00292.
    """
    hyper = dict(epsilon=epsilon, cost=cost, max_iter=max_iter, tol=tol, scaling=scaling, check_every=check_every,
                 reduction=reduction)
    xc, yc, a_, b_ = _solver_inputs(x, y, a, b, hyper)
    kw = dict(epsilon=float(epsilon), scaling=scaling, max_iter=max_iter, tol=tol, check_every=check_every)
    # Self terms: one potential, symmetric averaged updates (fast and oscillation-free).
    xx, s_xx = _entropic_value(pairwise_cost(xc, xc, cost), a_, a_, symmetric=True, **kw)
    if x is y and (a is b):
        # The very same measure: the cross term is the self term (exactly 0, with zero gradient).
        worst = s_xx
        out = xx - xx
    else:
        xy, s_xy = _entropic_value(pairwise_cost(xc, yc, cost), a_, b_, **kw)
        yy, s_yy = _entropic_value(pairwise_cost(yc, yc, cost), b_, b_, symmetric=True, **kw)
        worst = s_xx
        for s in (s_xy, s_yy):  # the unconverged one with the largest error
            if (not s.ok, s.err) > (not worst.ok, worst.err):
                worst = s
        out = xy - 0.5 * (xx + yy)
    _warn_not_converged("sinkhorn_divergence", worst, max_iter, tol)  # one warning for the three problems
    return _unbatched_or_reduced(out, x.dim() == 3, reduction)


def _monge_example() -> Example:
    M = torch.tensor([[0.0, 1.0], [1.0, 0.3]], dtype=torch.float64)

    def make(gen):
        x = randn(gen, 3, 7, 2)
        return (x, x @ M + 0.2), {"epsilon": 0.3, "tol": 1e-13, "max_iter": 5000}

    def mismatch(gen):
        return (randn(gen, 3, 7, 2), randn(gen, 3, 6, 2)), {"epsilon": 0.3}

    return Example(make=make, mismatch=mismatch, mismatch_match="mapped", extreme=None)


@register("monge_gap", family="transport", reference=MONGE_GAP_PAPER, seed=MONGE_GAP_PAPER.title,
          example=_monge_example(), input_kind="point clouds", graph_breaks=GRAPH_BREAKS,
          tags=("optimal transport", "transport map", "regularizer", "neural optimal transport", "monge"))
@hyperparameter_checks(_check_solver_hyperparameters)
@_fill_doc
def monge_gap(
    x: torch.Tensor,
    mapped: torch.Tensor,
    *,
    a: torch.Tensor | None = None,
    epsilon: float = 0.05,
    cost: str | Callable = "sqeuclidean",
    max_iter: int = 1000,
    tol: float = 1e-6,
    scaling: float | None = 0.5,
    check_every: int = 10,
    reduction: Literal["mean", "sum", "none"] = "mean",
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
    OT term). The plans of a map close to optimal are close to a permutation, the hard case
    for Sinkhorn at small ε, which the Newton steps of the solver finish.
    <<SOLVER_NOTES>>

    Batches: ``(B, n, d)`` inputs are B independent maps' samples, ``reduction="none"``
    returns their ``(B,)`` gaps and ``"mean"``/``"sum"`` reduce them; an unbatched ``(n, d)``
    input is one sample set without a batch dimension, so every reduction returns its 0-dim
    value.

    Args:
        x: ``(n, d)`` or ``(B, n, d)`` source samples.
        mapped: their images :math:`T(x_i)`, the shape of ``x`` (row i is the image of row i).
        a: optional weights ``(n,)`` (or batched) of the samples (default uniform).<<SOLVER_ARGS>>
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` over the batch.

    Shape:
        x, mapped ``(n, d)``: output ``()``; ``(B, n, d)``: output ``(B,)`` with
        ``reduction="none"``, else ``()``.

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
    hyper = dict(epsilon=epsilon, cost=cost, max_iter=max_iter, tol=tol, scaling=scaling, check_every=check_every,
                 reduction=reduction)
    xc, tc, a_, _ = _solver_inputs(x, mapped, a, None, hyper, y_name="mapped")
    if x.shape != mapped.shape:
        raise ValueError(f"mapped must have the shape of x {tuple(x.shape)} (one image per sample), "
                         f"got {tuple(mapped.shape)}")
    disp = paired_cost(xc, tc, cost)
    ot_value, sol = _entropic_value(pairwise_cost(xc, tc, cost), a_, a_, float(epsilon), scaling, max_iter, tol,
                                    check_every)
    _warn_not_converged("monge_gap", sol, max_iter, tol)
    return _unbatched_or_reduced((a_ * disp).sum(-1) - ot_value, x.dim() == 3, reduction)
