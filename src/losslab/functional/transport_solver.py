"""Private Sinkhorn solver behind :func:`~losslab.functional.transport.sinkhorn`,
:func:`~losslab.functional.transport.sinkhorn_divergence` and
:func:`~losslab.functional.transport.monge_gap`: scaling-form Sinkhorn on a log-stabilized
kernel (log-domain c-transforms for exact steps), with epsilon-scaling, over-relaxation and
Newton steps on the entropic dual.
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch

from .._checks import validation_enabled


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
# A level's tolerance is never below the round-off floor of the measured error, though: in
# float32 the row and column sums of a matrix-vector product carry a relative error that grows
# with the number of terms, and the L1 error stalls there. Floors measured on the points of
# `losslab bench sinkhorn` (n and 6n/7 points, epsilon 0.75): 7.5e-9 at n = 500, 8.8e-8 at
# 1000, 2.9e-7 at 2000, 8.3e-7 at 4000, 2.1e-6 at 8197, i.e. 0.006 to 0.42 x unit roundoff x
# sqrt(m). Below it a level spent LEVEL_CAP checks on noise (0.01 / 8197 points = 1.2e-6:
# max_iter ran out before the target epsilon). The floor used is LEVEL_ROUNDOFF x unit
# roundoff x sqrt(max(n, m)): 5.4e-6 at 8197 points in float32, negligible in float64.
LEVEL_ROUNDOFF = 1.0
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
    error is below LEVEL_TOL x (smallest weight), or the round-off floor of the error if that
    is larger (LEVEL_ROUNDOFF), the target level to ``tol``. On every level
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
    level_floor = LEVEL_ROUNDOFF * 0.5 * torch.finfo(dtype).eps * math.sqrt(max(n, m))
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
        level_tol = tol if last else max(tol, LEVEL_TOL * (1.0 if symmetric else quantum), level_floor)
        every = check_every if last else 1
        if it >= max_iter:
            # The budget ran out before the target epsilon: skip the levels left, but hand back
            # potentials of the target epsilon (one exact log-domain step, one iteration over
            # max_iter), so that the error measured below and the value are the problem's.
            if last:
                f, g = exact_step(f, g, eps)
                it += 1
            continue
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
    if not converged and not math.isnan(err):
        # The error of the returned potentials (the last measurement may predate absorption, or
        # be inf: no measurement at the target epsilon when the budget ran out before it).
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
