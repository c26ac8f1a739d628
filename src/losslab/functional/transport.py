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
from collections.abc import Callable
from typing import Literal, NamedTuple

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
from .transport_solver import _entropic_value, _gibbs, _warn_not_converged  # noqa: F401 (_gibbs: re-exported)

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
    weight (so a near-permutation plan is found at the ε where it forms; never below the
    round-off floor of the marginal error, which float32 reaches past a few thousand
    points), over-relaxation at a factor fitted to the measured convergence rate, and
    Newton's method on the dual
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
