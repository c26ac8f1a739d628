"""Robust contrastive objectives: SogCLR's compositional estimator and iSogCLR's individualized temperatures.

The functions here are pure: state (moving-average denominators, temperatures) goes in as
tensors and, with ``return_state=True``, the updated state comes back; the stateful Modules
in :mod:`losslab.nn.contrastive_robust` keep it in registered buffers indexed by dataset
index.
"""
from __future__ import annotations

import math
from typing import Literal, NamedTuple, overload

import torch
import torch.nn.functional as F

from .._checks import (
    check_floating,
    check_in_range,
    check_ndim,
    check_nonnegative,
    check_positive,
    check_reduction,
    hyperparameter_checks,
    validation_enabled,
)
from .._numerics import compute_dtype, upcast
from .._reduction import Reduction, reduce
from ..distributed import gather as _gather
from ..distributed import reduce_gathered
from ..registry import Example, Reference, register
from ._examples import randn
from .contrastive import _check_gather, _layout

__all__ = ["robust_contrastive_loss", "RobustContrastiveOutput", "soft_label_contrastive_loss"]

ISOGCLR_PAPER = Reference(
    title="Not All Semantics are Created Equal: Contrastive Self-supervised Learning with Automatic Temperature "
    "Individualization",
    authors="Zi-Hao Qiu, Quanqi Hu, Zhuoning Yuan, Denny Zhou, Lijun Zhang, Tianbao Yang",
    year=2023,
    url="https://arxiv.org/abs/2305.11965",
)
ISOGCLR_SEED = (
    "Not All Semantics are Created Equal: Contrastive Self-supervised Learning with Automatic Temperature "
    "Individualization"
)
UNIME_PAPER = Reference(
    title="UniME-V2: MLLM-as-a-Judge for Universal Multimodal Embedding Learning",
    authors="Tiancheng Gu, Kaicheng Yang, Kaichen Zhang, Xiang An, Ziyong Feng, Yueyi Zhang, Weidong Cai, "
    "Jiankang Deng, Lidong Bing",
    year=2025,
    url="https://arxiv.org/abs/2510.13515",
)
UNIME_SEED = "UniME-V2: MLLM-as-a-Judge for Universal Multimodal Embedding Learning"


class RobustContrastiveOutput(NamedTuple):
    """What :func:`robust_contrastive_loss` returns with ``return_state=True``.

    Attributes:
        loss: the reduced loss (as without ``return_state``).
        log_u: ``(B, 2)`` updated :math:`\\log u_i` of the local anchors (column 0: anchors from
            ``query``, column 1: anchors from ``key``), detached.
        tau_grad: ``(B,)`` iSogCLR's stochastic gradient of the robust objective with respect to
            each anchor's temperature (mean of the two directions), detached.
    """

    loss: torch.Tensor
    log_u: torch.Tensor
    tau_grad: torch.Tensor


def _check_temperature(temperature, n: int, dtype, device) -> torch.Tensor:
    if isinstance(temperature, torch.Tensor):
        check_floating(temperature, "temperature")
        if temperature.shape != (n,):
            raise ValueError(f"temperature must be a number or a ({n},) tensor (one per sample), got {tuple(temperature.shape)}")
        if validation_enabled() and n > 0 and not bool((temperature > 0).all()):
            raise ValueError(f"temperature must be > 0, found {float(temperature.min()):.4g}")
        return upcast(temperature.detach(), dtype)
    if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0 (or a tensor of them), got {temperature!r}")
    return torch.full((n,), float(temperature), dtype=dtype, device=device)


def _direction(anchors, cands_self, cands_other, own, tau, log_u_old, gamma):
    r"""One direction of the loss for local ``anchors`` against the gathered views.

    Negatives of anchor ``i``: every gathered view of ``cands_self`` and ``cands_other`` except the
    two at ``own[i]``. Returns (per-anchor surrogate loss, new log u, tau gradient without rho).
    """
    n, m = anchors.shape[0], cands_self.shape[0]
    num_neg = 2 * m - 2
    s_pos = (anchors * cands_other[own]).sum(-1)
    logits = torch.cat([anchors @ cands_self.T, anchors @ cands_other.T], 1)  # (n, 2m)
    h = (logits - s_pos[:, None]) / tau[:, None]  # h_iz / tau_i
    rows = torch.arange(n, device=anchors.device)
    # The anchor's own two views are not negatives: -inf drops them from every log-sum-exp.
    excluded = torch.zeros_like(h, dtype=torch.bool)
    excluded[rows, own] = True
    excluded[rows, own + m] = True
    h = h.masked_fill(excluded, float("-inf"))
    # log g_i = log mean_z exp(h_iz / tau_i), in log space: finite for any temperature.
    log_g = torch.logsumexp(h, dim=1) - math.log(max(num_neg, 1))
    lg = log_g.detach()
    if log_u_old is None:
        log_u = lg
    else:
        mixed = torch.logaddexp(log_u_old + math.log1p(-gamma), lg + math.log(gamma)) if gamma < 1 else lg
        # -inf marks an anchor never seen before: its estimate starts at the current batch value.
        log_u = torch.where(torch.isneginf(log_u_old), lg, mixed)
    # Value tau_i * log g_i (the mini-batch loss); gradient tau_i * grad(g_i) / u_i (SogCLR's
    # estimator): r = g_i / u_i = exp(log g_i - log u_i) <= 1 / gamma since u_i includes gamma * g_i.
    r = torch.exp(log_g - log_u)
    surrogate = tau * (lg + (r - r.detach()))
    with torch.no_grad():
        # d/d tau_i of tau_i log u_i: log u_i - E_z[(exp(h_iz/tau_i) / u_i) * h_iz / tau_i].
        w = torch.exp(h.detach() - math.log(max(num_neg, 1)) - log_u[:, None])
        hz = torch.where(excluded, torch.zeros((), dtype=h.dtype, device=h.device), h.detach())
        tau_grad = log_u - (w * hz).sum(1)
    return surrogate, log_u, tau_grad


def _robust(query, key, temperature, log_u, gamma, gather, group):
    dtype = compute_dtype(query, key)
    for x, name in ((query, "query"), (key, "key")):
        check_floating(x, name)
        check_ndim(x, name, 2)
    if query.shape != key.shape:
        raise ValueError(f"query and key must have the same shape (two views of the same batch), "
                         f"got {tuple(query.shape)} and {tuple(key.shape)}")
    check_in_range(gamma, "gamma", 0.0, 1.0, low_inclusive=False)
    _check_gather(gather=gather)
    n = query.shape[0]
    a1, a2 = F.normalize(upcast(query, dtype), dim=-1), F.normalize(upcast(key, dtype), dim=-1)
    tau = _check_temperature(temperature, n, dtype, a1.device)
    if log_u is not None:
        check_floating(log_u, "log_u")
        if log_u.shape != (n, 2):
            raise ValueError(f"log_u must have shape ({n}, 2) (one estimate per anchor and direction), got {tuple(log_u.shape)}")
        log_u = upcast(log_u.detach(), dtype)
    world, offset, total = _layout(a1, gather, group)
    c1, c2 = (_gather(a1, group=group), _gather(a2, group=group)) if world > 1 else (a1, a2)
    if total < 2:
        raise ValueError(f"robust_contrastive_loss needs at least 2 samples in the (gathered) batch, got {total}")
    own = torch.arange(n, device=a1.device) + offset
    la, ua, ga = _direction(a1, c1, c2, own, tau, None if log_u is None else log_u[:, 0], gamma)
    lb, ub, gb = _direction(a2, c2, c1, own, tau, None if log_u is None else log_u[:, 1], gamma)
    return (la + lb) / 2, torch.stack([ua, ub], 1), (ga + gb) / 2, world, total


def _views(n=6, d=4, **kw) -> Example:
    def make(gen):
        return (randn(gen, n, d), randn(gen, n, d)), dict(kw)

    def mismatch(gen):
        return (randn(gen, n, d), randn(gen, n - 1, d)), dict(kw)

    def with_state(gen):  # per-sample temperatures and a moving-average state (one anchor not seen yet)
        log_u = randn(gen, n, 2)
        log_u[1] = float("-inf")
        tau = torch.rand(n, generator=gen, dtype=torch.float64) * 0.5 + 0.2
        return (randn(gen, n, d), randn(gen, n, d)), {**kw, "temperature": tau, "log_u": log_u, "gamma": 0.6}

    return Example(make=make, mismatch=mismatch, mismatch_match="query and key", extreme=(0, 1),
                   variants=(with_state,), module=_module_example)


def _module_example(gen):
    """SogCLR with state: the suite runs a step, round-trips the state_dict and compares the next step."""
    from ..nn.contrastive_robust import SogCLRLoss

    module = SogCLRLoss(12, temperature=0.5, gamma=0.7).double()
    index = torch.randperm(12, generator=gen)[:6]
    return module, (randn(gen, 6, 4), randn(gen, 6, 4)), {"index": index}


def _check_hyperparameters(*, gamma: float, rho: float, return_state: bool, **kw) -> None:
    check_in_range(gamma, "gamma", 0.0, 1.0, low_inclusive=False)
    check_nonnegative(rho, "rho")
    if not isinstance(return_state, bool):
        raise TypeError(f"return_state must be a bool, got {return_state!r}")
    _check_gather(**kw)


@overload
def robust_contrastive_loss(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    temperature: float | torch.Tensor = ...,
    log_u: torch.Tensor | None = ...,
    gamma: float = ...,
    rho: float = ...,
    gather: bool = ...,
    group=...,
    return_state: Literal[False] = ...,
    reduction: Reduction = ...,
) -> torch.Tensor: ...


@overload
def robust_contrastive_loss(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    temperature: float | torch.Tensor = ...,
    log_u: torch.Tensor | None = ...,
    gamma: float = ...,
    rho: float = ...,
    gather: bool = ...,
    group=...,
    return_state: Literal[True],
    reduction: Reduction = ...,
) -> RobustContrastiveOutput: ...


@register("robust_contrastive_loss", family="contrastive", reference=ISOGCLR_PAPER, seed=ISOGCLR_SEED,
          example=_views(temperature=0.5), input_kind="embeddings", stateful_module=True,
          tags=("self-supervised", "sogclr", "isogclr", "global contrastive", "small batch", "individualized temperature",
                "dro", "distributionally robust", "distributed"))
@hyperparameter_checks(_check_hyperparameters)
def robust_contrastive_loss(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 0.1,
    log_u: torch.Tensor | None = None,
    gamma: float = 0.9,
    rho: float = 0.0,
    gather: bool = False,
    group=None,
    return_state: bool = False,
    reduction: Reduction = "mean",
) -> torch.Tensor | RobustContrastiveOutput:
    r"""Global (compositional) contrastive loss with SogCLR's moving-average denominators and per-sample temperatures.

    Two views :math:`q, k` of a batch (``query``, ``key``), unit-normalized. For the anchor
    :math:`x_i = q_i` (and symmetrically :math:`k_i`), its positive is the other view of the
    same sample and its negatives :math:`S_i^-` are the :math:`2B-2` views of the other
    samples. With :math:`h_i(z) = \langle x_i, z\rangle - \langle x_i, x_i^+\rangle` and
    temperature :math:`\tau_i`,

    .. math::
        g_i = \frac{1}{|S_i^-|}\sum_{z \in S_i^-} e^{h_i(z)/\tau_i}, \qquad
        \ell_i = \tau_i \log g_i ,

    the global contrastive loss of SogCLR (fixed :math:`\tau`) and iSogCLR's robust (DRO) loss
    without its constant :math:`\tau_i\rho` term. SogCLR's estimator replaces the denominator of
    the gradient :math:`\tau_i\nabla g_i / g_i` by a moving average :math:`u_i` over the epochs:

    .. math:: u_i \leftarrow (1-\gamma)\,u_i + \gamma\, g_i, \qquad \widehat{\nabla} \ell_i = \tau_i\,\nabla g_i / u_i ,

    with the updated :math:`u_i` (which contains :math:`\gamma g_i`, so :math:`g_i/u_i \le 1/\gamma`).
    The returned value is the mini-batch :math:`\ell_i` (for logging); its gradient is the
    estimator (the two coincide when ``log_u`` is None, the first visit of every anchor, where
    :math:`u_i = g_i` and the gradient is that of the ordinary contrastive loss with negatives
    only). Both directions are averaged per sample (``"none"`` gives :math:`(\ell^q_i + \ell^k_i)/2`).
    The state is kept in log space (:math:`\log u_i`, updated with ``logaddexp``) so that no
    temperature overflows it; :math:`\log u_i = -\infty` marks an anchor not seen yet, whose
    :math:`u_i` starts at :math:`g_i` (LibAUC's initialization rule).

    iSogCLR (``return_state=True``) also returns the stochastic gradient of the robust
    objective :math:`\tau_i \log u_i + \tau_i \rho` with respect to :math:`\tau_i`,

    .. math:: \partial_{\tau_i} = \log u_i + \rho - \frac{1}{|S_i^-|}\sum_z \frac{e^{h_i(z)/\tau_i}}{u_i}\,\frac{h_i(z)}{\tau_i},

    averaged over the two directions; :class:`losslab.nn.ISogCLRLoss` turns it into the paper's
    momentum update of :math:`\tau_i`. Conventions: :math:`h` includes the positive (the paper's
    definition; LibAUC's ``GCLoss`` tracks :math:`e^{\langle x_i, z\rangle/\tau}` instead), and the two
    directions keep separate :math:`u` estimates (LibAUC stores their average).

    Args:
        query, key: ``(B, D)`` the two views, row ``i`` of each from the same sample
            (normalized inside).
        temperature: :math:`\tau > 0`, a number or a ``(B,)`` tensor of per-sample temperatures
            (not differentiated).
        log_u: ``(B, 2)`` current :math:`\log u` of the batch's samples (``-inf`` = not seen), or None.
        gamma: moving-average weight :math:`\gamma \in (0, 1]` of the current batch (0.9 in LibAUC).
        rho: DRO radius :math:`\rho \ge 0`, used only in the returned temperature gradient.
        gather: contrast with the views of every rank; ``group``: the process group (implies
            ``gather``). Each rank then returns its *share*: ``W`` times its local anchors'
            values (``"none"``, ``"sum"``), the ``"mean"`` dividing their sum by the global
            batch size, so that the mean over the ``W`` ranks is the single-process value.
            Log :func:`losslab.distributed.global_value` of the loss, not a rank's own value
            (rule in :mod:`losslab.distributed`). The returned state is always local and
            unscaled.
        return_state: also return the updated ``log_u`` and ``tau_grad``: the result is then a
            :class:`RobustContrastiveOutput` ``(loss, log_u, tau_grad)`` instead of the loss.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per sample).

    Shape:
        query, key ``(B, D)``; loss ``(B,)`` for ``"none"``, else a scalar.

    Returns:
        The loss, or with ``return_state=True`` a :class:`RobustContrastiveOutput` whose
        first field is the loss.

    Example:
        >>> import torch
        >>> from losslab.functional import robust_contrastive_loss
        >>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
        >>> out = robust_contrastive_loss(q, q, temperature=0.5, return_state=True)
        >>> out.loss   # anchor 1: 0.5 * log mean(exp(-1 / 0.5)) = -1; anchors 0, 2: 0.5 * log((e^-2 + e^-4) / 2)
        tensor(-1.1887)
        >>> out.log_u.shape
        torch.Size([3, 2])

    References:
        Qiu, Hu, Yuan, Zhou, Zhang, Yang, "Not All Semantics are Created Equal: Contrastive
        Self-supervised Learning with Automatic Temperature Individualization", ICML 2023,
        https://arxiv.org/abs/2305.11965; Yuan et al., "Provable Stochastic Optimization for
        Global Contrastive Learning: Small Batch Does Not Harm Performance", ICML 2022,
        https://arxiv.org/abs/2202.12387.
    """
    check_reduction(reduction)
    _check_hyperparameters(gamma=gamma, rho=rho, return_state=return_state, gather=gather)
    loss, new_log_u, tau_grad, world, total = _robust(query, key, temperature, log_u, gamma, gather, group)
    out = reduce_gathered(loss, reduction, world=world, count=total) if world > 1 else reduce(loss, reduction)
    if return_state:
        return RobustContrastiveOutput(out, new_log_u, tau_grad + rho)
    return out


# ----------------------------------------------------------------------------- soft labels (UniME-V2)
def _soft_label_example(b=4, k=3, d=5, **kw) -> Example:
    def make(gen):
        scores = torch.rand(b, k, generator=gen, dtype=torch.float64)
        return (randn(gen, b, d), randn(gen, b, k, d), scores), dict(kw)

    def mismatch(gen):
        scores = torch.rand(b, k + 1, generator=gen, dtype=torch.float64)
        return (randn(gen, b, d), randn(gen, b, k, d), scores), dict(kw)

    return Example(make=make, mismatch=mismatch, mismatch_match="judge_scores", extreme=(0, 1), grad=(0, 1))


def _check_soft_label(*, temperature: float, judge_temperature: float | None, symmetric: bool, normalize: bool,
                      **_) -> None:
    check_positive(temperature, "temperature")
    if judge_temperature is not None:
        check_positive(judge_temperature, "judge_temperature")
    for value, name in ((symmetric, "symmetric"), (normalize, "normalize")):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}")


@register("soft_label_contrastive_loss", family="contrastive", reference=UNIME_PAPER, seed=UNIME_SEED,
          example=_soft_label_example(temperature=0.5), input_kind="embeddings",
          tags=("soft labels", "multimodal", "retrieval", "hard negatives", "llm judge", "embedding"))
@hyperparameter_checks(_check_soft_label)
def soft_label_contrastive_loss(
    query: torch.Tensor,
    candidates: torch.Tensor,
    judge_scores: torch.Tensor,
    *,
    temperature: float = 0.01,
    judge_temperature: float | None = None,
    symmetric: bool = True,
    normalize: bool = True,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Soft-label contrastive loss: align each query's similarity distribution over its candidates with judge scores.

    For query :math:`q_b` and its :math:`K` candidates :math:`c_{b1..bK}` (e.g. the positive and mined
    hard negatives), with similarities :math:`s_{bk} = \langle q_b, c_{bk}\rangle` and soft matching
    scores :math:`j_{bk}` (UniME-V2: an MLLM judge's probability of "yes"),

    .. math::
        Q_b = \operatorname{softmax}(s_b/\tau), \quad P_b = \operatorname{softmax}(j_b/\tau_j), \quad
        \ell_b = \tfrac12\big[\mathrm{KL}(P_b\,\|\,Q_b) + \mathrm{KL}(Q_b\,\|\,P_b)\big],

    the symmetric KL of the authors' code (``symmetric=False`` keeps only :math:`\mathrm{KL}(P\|Q)`,
    the judge as target). Both distributions are formed with ``log_softmax`` (the authors add
    1e-8 inside a ``log(softmax)``; here no offset is needed). ``"mean"`` averages over queries
    (their ``batchmean``). The judge scores are targets: they are not differentiated in spirit
    (pass them detached); the temperature defaults to 0.01 as in the authors' distributed
    training loss and :math:`\tau_j = \tau` unless ``judge_temperature`` is given.

    Args:
        query: ``(B, D)`` query embeddings.
        candidates: ``(B, K, D)`` candidate embeddings per query.
        judge_scores: ``(B, K)`` soft matching scores (any real scale).
        temperature: :math:`\tau > 0` of the similarities.
        judge_temperature: :math:`\tau_j > 0` of the judge scores (default: ``temperature``).
        symmetric: average of both KL directions (default) or :math:`\mathrm{KL}(P\|Q)` only.
        normalize: L2-normalize query and candidates (cosine similarities), default True.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per query).

    Shape:
        output ``(B,)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import soft_label_contrastive_loss
        >>> q = torch.tensor([[1.0, 0.0]])
        >>> c = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
        >>> soft_label_contrastive_loss(q, c, torch.tensor([[1.0, 0.0]]), temperature=1.0)   # same distributions
        tensor(0.)

    References:
        Gu et al., "UniME-V2: MLLM-as-a-Judge for Universal Multimodal Embedding Learning",
        2025, https://arxiv.org/abs/2510.13515.
    """
    check_reduction(reduction)
    _check_soft_label(temperature=temperature, judge_temperature=judge_temperature, symmetric=symmetric,
                      normalize=normalize)
    tj = temperature if judge_temperature is None else judge_temperature
    dtype = compute_dtype(query, candidates, judge_scores)
    check_floating(query, "query")
    check_floating(candidates, "candidates")
    check_floating(judge_scores, "judge_scores")
    check_ndim(query, "query", 2)
    check_ndim(candidates, "candidates", 3)
    if candidates.shape[0] != query.shape[0] or candidates.shape[2] != query.shape[1]:
        raise ValueError(f"candidates must have shape ({query.shape[0]}, K, {query.shape[1]}) for query {tuple(query.shape)}, "
                         f"got {tuple(candidates.shape)}")
    if judge_scores.shape != candidates.shape[:2]:
        raise ValueError(f"judge_scores must have shape {tuple(candidates.shape[:2])} (one per candidate), "
                         f"got {tuple(judge_scores.shape)}")
    q, c = upcast(query, dtype), upcast(candidates, dtype)
    if normalize:
        q, c = F.normalize(q, dim=-1), F.normalize(c, dim=-1)
    s = torch.einsum("bd,bkd->bk", q, c)
    log_q = torch.log_softmax(s / temperature, dim=-1)
    log_p = torch.log_softmax(upcast(judge_scores, dtype) / tj, dim=-1)
    # KL(P || Q) = sum_k P (log P - log Q); exp(log P) instead of a softmax keeps one source of truth.
    loss = (log_p.exp() * (log_p - log_q)).sum(-1)
    if symmetric:
        loss = 0.5 * (loss + (log_q.exp() * (log_q - log_p)).sum(-1))
    return reduce(loss, reduction)
