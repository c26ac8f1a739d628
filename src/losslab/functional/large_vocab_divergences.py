"""Distillation divergences between teacher and student vocabularies from hidden states, chunked:
:func:`linear_kl_divergence` and :func:`linear_js_divergence`, on one custom autograd function.

Part of the large-vocabulary family. The chunking, the matrix products (half-precision weights
included), the blocked weight-gradient pass and the input checks are shared with
:mod:`losslab.functional.large_vocab`, whose module docstring states the family's design
(gradients formed in the forward pass for ``"sum"``/``"mean"``, chunks recomputed in the
backward pass for ``"none"``, products in a half-precision weight's dtype with float32
statistics). No gradient reaches the teacher.
"""
from __future__ import annotations

import math
from functools import partial

import torch
from torch.autograd.function import once_differentiable

from .._checks import check_hyperparameters, hyperparameter_checks
from .._reduction import Reduction
from ..registry import Example, register
from ._examples import IGNORE, randint, randn
from .divergences import generalized_js_divergence, kl_divergence
from .large_vocab import (
    CCE_PAPER,
    TileGrad,
    _Buffers,
    _check_linear,
    _check_tokens,
    _chunk_rows,
    _contract,
    _kept_mean,
    _logits,
    _needs_grad,
    _operands,
    _stat_dtype,
    _tile_shape,
    _weight_grad_blocked,
)

__all__ = [
    "linear_kl_divergence",
    "linear_js_divergence",
]


def _log_mixture(logp: torch.Tensor, logq: torch.Tensor, beta: float, out: torch.Tensor) -> torch.Tensor:
    """``log(beta p + (1 - beta) q)`` into ``out``."""
    return torch.logaddexp(logp + math.log(beta), logq + math.log1p(-beta), out=out)


def _div_grad(kind: str, logp: torch.Tensor, logq: torch.Tensor, logm: torch.Tensor | None,
              klqm: torch.Tensor | None, coef: torch.Tensor, temperature: float, beta: float) -> torch.Tensor:
    """Gradient of the per-token divergence w.r.t. the student logits, times ``coef`` per token,
    in place over ``logq`` (``logp`` and ``logm`` are overwritten too).

    With s = x_s / T, Q = softmax(s), P = softmax(x_t / T):
    KL(P‖Q): d/ds_j = q_j - p_j.
    JS_β = β Σ p log p + (1-β) Σ q log q - Σ m log m: d/dq_k = (1-β)(log q_k - log m_k), and
    through the softmax d/ds_j = (1-β) q_j [(log q_j - log m_j) - KL(Q‖M)].
    Both are divided by T for d/dx_s.
    """
    scale = (coef / temperature).unsqueeze(1)
    if kind == "kl":
        return logq.exp_().sub_(logp.exp_()).mul_(scale)
    t = logm.neg_().add_(logq).sub_(klqm.unsqueeze(1))  # log q - log m - KL(Q‖M)
    return logq.exp_().mul_(t).mul_(scale * (1.0 - beta))


def _div_tile_grad(kind, ht, wt, stats, coef, temperature, beta, sd) -> TileGrad:
    def tile(pool, hc, wb, s0, s1, v0, v1):
        logq = _logits(pool, "tile", hc, wb, None, 1.0 / temperature, sd).sub_(stats[s0:s1, 0:1])
        logp = _logits(pool, "tile_t", ht[s0:s1], wt[v0:v1], None, 1.0 / temperature, sd).sub_(stats[s0:s1, 1:2])
        logm = klqm = None
        if kind == "js":
            logm = _log_mixture(logp, logq, beta, pool.get("tile_m", s1 - s0, v1 - v0, sd))
            klqm = stats[s0:s1, 2]
        return _div_grad(kind, logp, logq, logm, klqm, coef[s0:s1], temperature, beta)

    return tile


class _LinearDivergence(torch.autograd.Function):
    """Chunked divergence between teacher (P) and student (Q) vocabulary distributions."""

    @staticmethod
    def forward(ctx, hs, ws, ht, wt, keep, denom, cfg, rows, tile, per_token, want_grad):
        kind, temperature, beta = cfg
        n = hs.shape[0]
        sd = torch.float64 if torch.float64 in (hs.dtype, ht.dtype) else torch.float32
        half = ws.dtype != sd
        dev = hs.device
        need = tuple(want_grad and x for x in ctx.needs_input_grad[:2])
        precompute = want_grad and not per_token and any(need)
        ctx.cfg, ctx.rows, ctx.tile, ctx.per_token, ctx.need = cfg, rows, tile, per_token, need
        ctx.precompute = precompute
        value = torch.empty(n, dtype=sd, device=dev)
        # per token: log-sum-exp of the student's and the teacher's scaled logits, KL(Q‖M) (JS)
        stats = torch.zeros(n, 3, dtype=sd, device=dev)
        kf_all = keep.to(sd)
        coef_all = kf_all if denom is None else kf_all / denom
        dh = torch.empty(hs.shape, dtype=hs.dtype, device=dev) if precompute and need[0] else None
        dw = torch.zeros(ws.shape, dtype=sd, device=dev) if precompute and need[1] and not half else None
        pool = _Buffers(dev)
        for s0 in range(0, n, rows):
            s1 = min(s0 + rows, n)
            xs = _logits(pool, "s", hs[s0:s1], ws, None, 1.0 / temperature, sd)
            xt = _logits(pool, "t", ht[s0:s1], wt, None, 1.0 / temperature, sd)
            ls, lt = torch.logsumexp(xs, 1, keepdim=True), torch.logsumexp(xt, 1, keepdim=True)
            logq, logp = xs.sub_(ls), xt.sub_(lt)
            # values from the divergence functions themselves (their cancellation-free forms)
            if kind == "kl":
                v = kl_divergence(logp, logq, log_probs=True, reduction="none")
            else:
                v = generalized_js_divergence(logp, logq, beta=beta, log_probs=True, reduction="none")
            value[s0:s1] = v
            stats[s0:s1, 0:1], stats[s0:s1, 1:2] = ls, lt
            logm = None
            if kind == "js" and want_grad:
                logm = _log_mixture(logp, logq, beta, pool.get("m", s1 - s0, logq.shape[1], sd))
                stats[s0:s1, 2] = kl_divergence(logq, logm, log_probs=True, reduction="none")
            if precompute:
                g = _div_grad(kind, logp, logq, logm, stats[s0:s1, 2], coef_all[s0:s1], temperature, beta)
                _contract(pool, "s", g, hs[s0:s1], ws, None if dh is None else dh[s0:s1], dw, None, accumulate=False)
        del pool
        # where, not a product: an ignored token's value never counts, whatever it holds
        value = torch.where(keep, value, torch.zeros((), dtype=sd, device=dev))
        if want_grad:
            ctx.save_for_backward(hs, ws, ht, wt, keep, denom, stats, dh, dw)
        ctx.set_materialize_grads(False)
        if per_token:
            return value
        return value.sum() if denom is None else value.sum() / denom

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out):
        if g_out is None:  # no gradient flows back (grads are not materialized)
            return (None,) * 11
        hs, ws, ht, wt, keep, denom, stats, pre_dh, pre_dw = ctx.saved_tensors
        kind, temperature, beta = ctx.cfg
        need = ctx.need
        sd = stats.dtype
        half = ws.dtype != sd
        dev = hs.device
        kf = keep.to(sd)
        coef = g_out * kf if denom is None else g_out * kf / denom
        dh = dw = None
        if ctx.precompute:
            dh = None if pre_dh is None else pre_dh * g_out
            dw = None if pre_dw is None else pre_dw * g_out
        else:
            dh = torch.empty(hs.shape, dtype=hs.dtype, device=dev) if need[0] else None
            dw = torch.zeros(ws.shape, dtype=sd, device=dev) if need[1] and not half else None
            pool = _Buffers(dev)
            rows = ctx.rows
            for s0 in range(0, hs.shape[0], rows):
                s1 = min(s0 + rows, hs.shape[0])
                logq = _logits(pool, "s", hs[s0:s1], ws, None, 1.0 / temperature, sd).sub_(stats[s0:s1, 0:1])
                logp = _logits(pool, "t", ht[s0:s1], wt, None, 1.0 / temperature, sd).sub_(stats[s0:s1, 1:2])
                logm = None
                if kind == "js":
                    logm = _log_mixture(logp, logq, beta, pool.get("m", s1 - s0, logq.shape[1], sd))
                g = _div_grad(kind, logp, logq, logm, stats[s0:s1, 2], coef[s0:s1], temperature, beta)
                _contract(pool, "s", g, hs[s0:s1], ws, None if dh is None else dh[s0:s1], dw, None, accumulate=False)
            del pool
        if need[1] and half:
            rows, block = ctx.tile
            dw = _weight_grad_blocked(hs, ws, _div_tile_grad(kind, ht, wt, stats, coef, temperature, beta, sd),
                                      rows, block)
        return dh, dw, None, None, None, None, None, None, None, None, None


def _check_js(*, beta: float = 0.5, **_) -> None:
    if isinstance(beta, bool) or not (isinstance(beta, (int, float)) and 0.0 < beta < 1.0):
        raise ValueError(f"beta must be in (0, 1), got {beta!r}")


def _pair_example(**kw) -> Example:
    def make(gen):
        t = randint(gen, 9, 6)
        t[1] = IGNORE
        return (randn(gen, 6, 4), randn(gen, 9, 4), randn(gen, 6, 3), randn(gen, 9, 3), t), dict(chunk_size=4, **kw)

    def no_target_leading(gen):  # every token kept, (B, T) leading dimensions, default chunking
        return (randn(gen, 2, 3, 4), randn(gen, 9, 4), randn(gen, 2, 3, 3), randn(gen, 9, 3)), dict(kw)

    def mismatch(gen):
        return (randn(gen, 6, 4), randn(gen, 9, 4), randn(gen, 5, 3), randn(gen, 9, 3)), {}

    def empty(gen):
        args = (randn(gen, 6, 4), randn(gen, 9, 4), randn(gen, 6, 3), randn(gen, 9, 3), torch.full((6,), IGNORE))
        return args, dict(chunk_size=4, **kw)

    return Example(make=make, mismatch=mismatch, mismatch_match="teacher_hidden", extreme=None, grad=(0, 1),
                   mean_rule=partial(_kept_mean, target_pos=4), variants=(no_target_leading,), empty=empty)


def _linear_divergence(kind, student_hidden, student_weight, teacher_hidden, teacher_weight, target, *, temperature,
                       beta, ignore_index, reduction, chunk_size):
    _check_linear(student_hidden, student_weight, None, "student_hidden", "student_weight")
    _check_linear(teacher_hidden, teacher_weight, None, "teacher_hidden", "teacher_weight")
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(f"student_weight and teacher_weight have different vocabularies: "
                         f"{student_weight.shape[0]} vs {teacher_weight.shape[0]} rows")
    lead = student_hidden.shape[:-1]
    if teacher_hidden.shape[:-1] != lead:
        raise ValueError(
            f"teacher_hidden must have leading shape {tuple(lead)} (that of student_hidden), "
            f"got {tuple(teacher_hidden.shape[:-1])}")
    vocab = student_weight.shape[0]
    if target is not None:
        target = _check_tokens(target, student_hidden, vocab, ignore_index, "student_hidden")
    sd = _stat_dtype(student_hidden, student_weight, teacher_hidden, teacher_weight)
    hs, ws = _operands(student_hidden, student_weight, sd)
    ht, wt = _operands(teacher_hidden.detach(), teacher_weight.detach(), sd)
    n = hs.shape[0]
    keep = (target.reshape(-1) != ignore_index) if target is not None else torch.ones(n, dtype=torch.bool,
                                                                                     device=hs.device)
    item = torch.empty((), dtype=sd).element_size()
    halves = (ws.element_size() if ws.dtype != sd else 0) + (wt.element_size() if wt.dtype != sd else 0)
    # a chunk holds the student's and the teacher's logits, the mixture (JS) and the
    # divergence functions' temporaries: ~12 rows of V in the statistics' dtype
    rows = _chunk_rows(chunk_size, n, vocab * (12 * item + halves))
    tile = _tile_shape(n, vocab, hs.shape[1], 4 * item + halves) if ws.dtype != sd else None
    denom = keep.sum().clamp_min(1).to(sd) if reduction == "mean" else None
    want_grad = _needs_grad(student_hidden, student_weight)
    value = _LinearDivergence.apply(hs, ws, ht, wt, keep, denom, (kind, float(temperature), float(beta)), rows, tile,
                                    reduction == "none", want_grad)
    return value.reshape(lead) if reduction == "none" else value


@register("linear_kl_divergence", family="large_vocab", reference=CCE_PAPER, example=_pair_example(temperature=2.0),
          input_kind="hidden states", symmetric=False, memory="O(chunk * V)",
          tags=("distillation", "knowledge distillation", "kl", "language model", "llm", "fused linear",
                "memory-efficient", "large vocabulary"))
def linear_kl_divergence(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    chunk_size: int | None = None,
) -> torch.Tensor:
    r"""Forward KL(teacher ‖ student) between vocabulary distributions from hidden states, chunked.

    Per token, :func:`~losslab.functional.kl_divergence` with P = teacher, logits
    :math:`h_t W_t^\top`, and Q = student, logits :math:`h_s W_s^\top`, both divided by the
    temperature :math:`T`:

    .. math:: \mathrm{KL}(P\,\|\,Q) = \sum_k p_k (\log p_k - \log q_k),

    the usual (forward) distillation direction; the divergence helper's argument order
    (``p_logits`` = P first) is kept, teacher first. No :math:`T^2` factor is applied
    (multiply by it yourself if you want Hinton's gradient scale). Computed over chunks of
    tokens (one chunk of student and teacher logits in memory) by a custom autograd
    function with the analytic gradient :math:`(q - p)/T` per logit: for ``"sum"`` and
    ``"mean"`` it is contracted into the student's gradients in the forward pass, for
    ``"none"`` the backward pass recomputes the chunks. No gradient reaches the teacher.
    Tokens whose ``target`` equals ``ignore_index`` are left out (``target`` is used only
    for that); ``"mean"`` averages over kept tokens. Half-precision weights: products in
    their dtype, statistics in float32, no float32 copy of a weight and the student weight's
    gradient summed in float32 per block of vocabulary rows, as in
    :func:`linear_cross_entropy`.

    Args:
        student_hidden: ``(*, D_s)``.
        student_weight: ``(V, D_s)``.
        teacher_hidden: ``(*, D_t)``.
        teacher_weight: ``(V, D_t)``.
        target: optional ``(*)`` token ids (any integer dtype), for masking only.
        temperature: :math:`T > 0`.
        ignore_index: masked target value.
        reduction: ``"mean"`` over kept tokens, ``"sum"`` or ``"none"`` (0 for ignored tokens).
        chunk_size: tokens per chunk (None: from a 32 MiB budget).

    Shape:
        output ``(*)`` for ``"none"``, else a scalar (float32 for half-precision inputs).

    Example:
        >>> import torch
        >>> from losslab.functional import linear_kl_divergence, kl_divergence
        >>> g = torch.Generator().manual_seed(0)
        >>> hs, ws, ht, wt = (torch.randn(5, 4, generator=g), torch.randn(30, 4, generator=g),
        ...                   torch.randn(5, 6, generator=g), torch.randn(30, 6, generator=g))
        >>> torch.allclose(linear_kl_divergence(hs, ws, ht, wt, chunk_size=2), kl_divergence(ht @ wt.T, hs @ ws.T))
        True

    References:
        Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015,
        https://arxiv.org/abs/1503.02531; Wijmans et al., "Cut Your Losses in
        Large-Vocabulary Language Models", 2024, https://arxiv.org/abs/2411.09009.
    """
    check_hyperparameters(linear_kl_divergence, dict(temperature=temperature, ignore_index=ignore_index,
                                                     reduction=reduction, chunk_size=chunk_size))
    return _linear_divergence("kl", student_hidden, student_weight, teacher_hidden, teacher_weight, target,
                              temperature=temperature, beta=0.5, ignore_index=ignore_index, reduction=reduction,
                              chunk_size=chunk_size)


@register("linear_js_divergence", family="large_vocab", reference=CCE_PAPER, example=_pair_example(beta=0.3),
          input_kind="hidden states", bounded=True, memory="O(chunk * V)",
          tags=("distillation", "on-policy distillation", "gkd", "jensen-shannon", "language model", "llm",
                "fused linear", "memory-efficient", "large vocabulary"))
@hyperparameter_checks(_check_js)
def linear_js_divergence(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    chunk_size: int | None = None,
) -> torch.Tensor:
    r"""Generalized Jensen–Shannon divergence between teacher and student vocabularies, chunked.

    Per token, :func:`~losslab.functional.generalized_js_divergence` with P = teacher and
    Q = student (the divergence helper's order, teacher first):

    .. math::
        \mathrm{JS}_\beta(P, Q) = \beta\,\mathrm{KL}(P\,\|\,M) + (1-\beta)\,\mathrm{KL}(Q\,\|\,M),
        \qquad M = \beta P + (1-\beta) Q,

    the on-policy distillation objective (GKD), computed like :func:`linear_kl_divergence`
    (one chunk of logits in memory, no gradient to the teacher; the analytic gradient per
    student logit is :math:`\tfrac{1-\beta}{T}\,q_j\,[\log q_j - \log m_j - \mathrm{KL}(Q\|M)]`).
    Some libraries weight the mixture the other way round (β on the student): pass
    ``1 - beta`` to match them.

    Args:
        student_hidden: ``(*, D_s)``.
        student_weight: ``(V, D_s)``.
        teacher_hidden: ``(*, D_t)``.
        teacher_weight: ``(V, D_t)``.
        target: optional ``(*)`` token ids (any integer dtype), for masking only.
        temperature: :math:`T > 0`, divides both logits.
        beta: :math:`\beta \in (0, 1)`, weight of the teacher in the mixture.
        ignore_index: masked target value.
        reduction: ``"mean"`` over kept tokens, ``"sum"`` or ``"none"`` (0 for ignored tokens).
        chunk_size: tokens per chunk.

    Shape:
        output ``(*)`` for ``"none"``, else a scalar (float32 for half-precision inputs).

    Example:
        >>> import torch
        >>> from losslab.functional import linear_js_divergence, generalized_js_divergence
        >>> g = torch.Generator().manual_seed(0)
        >>> hs, ws, ht, wt = (torch.randn(5, 4, generator=g), torch.randn(30, 4, generator=g),
        ...                   torch.randn(5, 6, generator=g), torch.randn(30, 6, generator=g))
        >>> torch.allclose(linear_js_divergence(hs, ws, ht, wt, beta=0.3, chunk_size=2),
        ...                generalized_js_divergence(ht @ wt.T, hs @ ws.T, beta=0.3))
        True

    References:
        Agarwal et al., "On-Policy Distillation of Language Models: Learning from
        Self-Generated Mistakes", ICLR 2024, https://arxiv.org/abs/2306.13649; Wijmans et al.,
        2024, https://arxiv.org/abs/2411.09009.
    """
    check_hyperparameters(linear_js_divergence, dict(temperature=temperature, beta=beta, ignore_index=ignore_index,
                                                     reduction=reduction, chunk_size=chunk_size))
    return _linear_divergence("js", student_hidden, student_weight, teacher_hidden, teacher_weight, target,
                              temperature=temperature, beta=beta, ignore_index=ignore_index, reduction=reduction,
                              chunk_size=chunk_size)
