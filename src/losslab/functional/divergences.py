"""Divergences between categorical distributions given by logits (class dimension last).

Every function computes D(P‖Q) per sample (leading dimensions kept), then reduces over
samples: ``"mean"`` is the mean over (unmasked) samples — there is no "batchmean" trap.
Inputs are logits, normalized with ``log_softmax(x / temperature)``; ``log_probs=True``
takes log-probabilities as they are. Zero-probability classes (logit ``-inf``) are handled
exactly: a class with p = 0 contributes 0 to KL(P‖Q); a class with q = 0 < p makes
KL(P‖Q) = +inf, which is the true value and is returned as such.

Which argument is the model: in distillation the usual forward KL is
``kl_divergence(teacher_logits, student_logits)`` (P = teacher, Q = student) and the
"reverse" KL swaps them; in RL fine-tuning / DPO, the KL penalty KL(π‖π_ref) is
``kl_divergence(policy_logits, ref_logits)`` (P = model).

Token-level use: leading dimensions are kept (e.g. ``(B, T, V)`` gives ``(B, T)`` for
``reduction="none"``) and ``mask`` (bool, the leading shape; False = padding) leaves
tokens out of the mean. There is no ``ignore_index``: build the mask from your labels,
``mask = labels != -100``.

Precision: float16/bfloat16 inputs are computed in float32 and the result is float32;
float64 stays float64.

Gradients: where a divergence is finite its gradient is finite, including classes with
zero probability under P and/or Q; where it is ``+inf`` (KL(P‖Q) with q = 0 < p, χ², α
outside [0, 1]) the value is ``+inf`` and the gradient is not defined (inf/NaN).

Non-finite inputs (see CONTRIBUTING.md): a NaN or ``+inf`` logit (or log-probability)
makes its sample's value NaN, never a finite number, without a validation pass over the
logits (no raise, no host sync; ``log_probs=True`` takes one row maximum to flag +inf);
``-inf`` is a zero-probability class, as above. Masked-out samples are left out whatever
they hold.

The f-divergence generator table (:data:`F_DIVERGENCES`, :class:`FDivergenceGenerator`) and
:func:`f_divergence` are in :mod:`losslab.functional.divergences_f`; this module holds the
named divergences, the AdaCAD decoding helper :func:`jsd_contrastive_logits` and the shared
log-probability, reduction and KL helpers.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Literal, NamedTuple, overload

import torch

from .._checks import check_floating, check_ndim, check_positive, check_same_shape, hyperparameter_checks
from .._numerics import upcast
from .._reduction import Reduction, reduce
from ..registry import Reference, register
from ._examples import pair_logits_example

__all__ = [
    "kl_divergence",
    "js_divergence",
    "generalized_js_divergence",
    "alpha_divergence",
    "total_variation",
    "hellinger_distance",
    "jsd_contrastive_logits",
    "ContrastiveDecodingOutput",
]

FDIV_PAPER = Reference(
    title="Aligning Language Models with Preferences through f-divergence Minimization",
    authors="Dongyoung Go, Tomasz Korbak, Germán Kruszewski, Jos Rozen, Nahyeon Ryu, Marc Dymetman",
    year=2023,
    url="https://arxiv.org/abs/2302.08215",
)
FDIV_SEED = "Aligning Language Models with Preferences through f-divergence Minimization"
FDPO_PAPER = Reference(
    title="Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse Divergence Constraints",
    authors="Chaoqi Wang, Yibo Jiang, Chenghao Yang, Han Liu, Yuxin Chen",
    year=2023,
    url="https://arxiv.org/abs/2309.16240",
)
JSD_PAPER = Reference(
    title="Divergence measures based on the Shannon entropy",
    authors="Jianhua Lin",
    year=1991,
    url="https://doi.org/10.1109/18.61115",
)


def _check_bool(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")


def _check_finite_number(value: object, name: str) -> None:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _check_shared(*, temperature: float = 1.0, log_probs: bool = False, **_) -> None:
    """Hyperparameters every divergence takes (run by the Modules' ``__init__`` and at call time)."""
    check_positive(temperature, "temperature")
    _check_bool(log_probs, "log_probs")


def _check_beta(*, beta: float = 0.5, **kw) -> None:
    if isinstance(beta, bool) or not (isinstance(beta, (int, float)) and 0.0 < beta < 1.0):
        raise ValueError(f"beta must be in (0, 1) (the scaled limits 0 and 1 are the KL divergences), got {beta!r}")
    _check_shared(**kw)


def _check_alpha(*, alpha: float = 0.5, **kw) -> None:
    _check_finite_number(alpha, "alpha")
    _check_shared(**kw)


def _check_squared(*, squared: bool = False, **kw) -> None:
    _check_bool(squared, "squared")
    _check_shared(**kw)


def _check_contrastive(*, offset: float = 0.0, return_alpha: bool = False, **_) -> None:
    _check_finite_number(offset, "offset")
    _check_bool(return_alpha, "return_alpha")


def _check_inputs(p_logits, q_logits, temperature: float, log_probs: bool,
                  names: tuple[str, str] = ("p_logits", "q_logits")) -> torch.dtype:
    """The checks every divergence makes on its inputs (no value read); the compute dtype."""
    check_floating(p_logits, names[0])
    check_floating(q_logits, names[1])
    check_ndim(p_logits, names[0], tuple(range(1, 9)))
    check_same_shape(p_logits, q_logits, names)
    _check_shared(temperature=temperature, log_probs=log_probs)
    return torch.float64 if torch.float64 in (p_logits.dtype, q_logits.dtype) else torch.float32


def _posinf_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor | None:
    """Samples holding a +inf log-probability (two row maxima; see :func:`_log_probs`)."""
    return torch.isposinf(p.amax(-1)) | torch.isposinf(q.amax(-1)) if p.shape[-1] > 0 else None


def _log_probs(p_logits, q_logits, temperature: float, log_probs: bool,
               names: tuple[str, str] = ("p_logits", "q_logits")):
    """Checked log-probabilities of P and Q in the compute dtype, and the samples to poison.

    No value check on these (possibly vocabulary-sized) inputs: a NaN propagates to its
    sample's value, and so does a ``+inf`` logit (``log_softmax`` turns its row into NaN);
    ``-inf`` is a zero-probability class. Log-probabilities taken as given cannot be +inf,
    but would read as p = inf, which some formulas (α outside [0, 1]) turn into a finite
    number: the third output flags those samples (None on the logits path), for
    :func:`_reduce` to set to NaN. Two row maxima, no per-element output: on (32, 32000)
    float32, 1 thread, 0.1 ms against 9 ms for the KL itself (a per-element ``where``
    guard would cost a pass over the inputs).
    """
    dtype = _check_inputs(p_logits, q_logits, temperature, log_probs, names)
    p, q = upcast(p_logits, dtype), upcast(q_logits, dtype)
    if log_probs and temperature == 1.0:
        return p, q, _posinf_rows(p, q)
    return torch.log_softmax(p / temperature, dim=-1), torch.log_softmax(q / temperature, dim=-1), None


def _reduce(value: torch.Tensor, posinf: torch.Tensor | None, reduction: str, mask: torch.Tensor | None,
            logp: torch.Tensor) -> torch.Tensor:
    """Per-sample ``value`` -> reduced, with samples holding a +inf log-probability set to NaN."""
    if posinf is not None:
        value = torch.where(posinf, torch.full((), math.nan, dtype=value.dtype, device=value.device), value)
    return reduce(value, reduction, mask=_check_mask(mask, logp))


def _check_mask(mask: torch.Tensor | None, logp: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if mask.shape != logp.shape[:-1]:
        raise ValueError(f"mask must have the leading shape {tuple(logp.shape[:-1])} of the logits, got {tuple(mask.shape)}")
    return mask


def _kl_graph(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(P||Q) = sum_k [p_k log(p_k/q_k) - p_k + q_k], a sum of non-negative terms (autograd form).

    The -p + q terms add 0 (both sum to 1) but make every term >= 0: the plain
    sum_k p_k u_k (u = log p - log q) adds first-order terms of both signs that cancel for
    nearby distributions (float32 then loses ~40% of a KL of 1e-6; this form keeps the
    error at the level of the log-probabilities' own rounding). Per class, with p > 0:
    p (u + expm1(-u)) for |u| < 1 (expm1 keeps the u^2/2 exactly), p (u - 1) + q otherwise
    (no overflow of e^-u = q/p). p = 0 gives q (0 log 0 = 0), q = 0 < p gives +inf.
    Double-where throughout: discarded branches get zero gradient, never inf * 0 = NaN.
    Differentiated by autograd (any order): :class:`_KL` uses it for ``create_graph=True``.
    """
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    one = torch.ones((), dtype=logp.dtype, device=logp.device)
    pos = ~torch.isneginf(logp)  # not "> -inf": NaN must propagate, not read as p = 0
    p, q = logp.exp(), logq.exp()
    u = torch.where(pos, logp, zero) - torch.where(pos, logq, zero)  # +inf where q = 0 < p
    small = u.abs() < 1
    u_small = torch.where(small, u, zero)
    u_big = torch.where(small, one, u)
    term = torch.where(small, p * (u_small + torch.expm1(-u_small)), p * (u_big - 1) + q)
    return torch.where(pos, term, q).sum(-1)


# Rows per block of :class:`_KL`: about this many elements (256 KiB of float32) per
# temporary. The careful form takes ~15 elementwise passes; over whole (tokens, V) tensors
# each pass writes a fresh vocabulary-sized temporary whose first touch (page faults) costs
# more than the arithmetic (measured: a (1024, 32000) float32 subtraction takes 82 ms into a
# new tensor, 16 ms into a reused one). Blocks of this size stay in cache and the allocator
# reuses their memory, so the forward reads each input once and writes no (N, C) tensor.
_KL_BLOCK_ELEMS = 1 << 16
# On accelerators the per-block kernel launches would dominate (a (8192, 32000) input is
# 4000 CPU blocks): there a block only bounds the temporaries (64 Mi elements).
_KL_DEVICE_BLOCK_ELEMS = 1 << 26


def _kl_blocks(n: int, c: int, device: torch.device) -> list[tuple[int, int]]:
    """Row ranges of about ``_KL_BLOCK_ELEMS`` elements on the CPU (``_KL_DEVICE_BLOCK_ELEMS``
    elsewhere); one block while ``torch.compile`` traces (the compiler fuses the elementwise
    passes itself, and a loop would unroll)."""
    if torch.compiler.is_compiling():
        return [(0, n)]
    rows = max(1, (_KL_BLOCK_ELEMS if device.type == "cpu" else _KL_DEVICE_BLOCK_ELEMS) // max(c, 1))
    return [(i, min(i + rows, n)) for i in range(0, n, rows)]


def _kl_block_logs(p: torch.Tensor, q: torch.Tensor, i: int, j: int, temperature: float | None, dtype: torch.dtype):
    """log P and log Q of rows ``i:j``: ``log_softmax(x / temperature)`` of logits, or the
    log-probabilities as given (``temperature=None``), in the compute ``dtype``."""
    a, b = p[i:j].to(dtype), q[i:j].to(dtype)
    if temperature is None:
        return a, b
    if temperature != 1.0:
        a, b = a / temperature, b / temperature
    return torch.log_softmax(a, dim=-1), torch.log_softmax(b, dim=-1)


def _kl_block_value(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """The per-class terms of :func:`_kl_graph` summed per row, without autograd (the forward of :class:`_KL`).

    With v = log q - log p = -u: p (expm1(v) - v) where v <= 1 (the same value as
    p (u + expm1(-u)) and p (u - 1) + q: expm1 keeps the u^2/2 near u = 0, both summands are
    positive for v < 0, and v = -inf, q = 0 < p, gives +inf), q - p (1 + v) where v > 1
    (no overflow of e^v = q/p; the difference loses at most 2 bits there), q where p = 0
    (this also replaces the NaN of v = -inf - -inf when p = q = 0). NaN stays NaN.
    """
    v = logq - logp
    p, q = torch.exp(logp), torch.exp(logq)
    near = v <= 1
    w = torch.clamp(v, max=1.0)
    term = torch.where(near, torch.expm1(w).sub_(w).mul_(p), torch.addcmul(q, p, v.add_(1.0), value=-1.0))
    return torch.where(torch.isneginf(logp), q, term).sum(-1)


class _KL(torch.autograd.Function):
    """Per-row KL(P‖Q) of ``(N, C)`` logits (``temperature`` a float: P = softmax(p / T),
    Q = softmax(q / T)) or log-probabilities taken as given (``temperature=None``).

    The value is :func:`_kl_graph`'s (cancellation-free: every term >= 0), computed by
    blocks of rows without autograd; the gradients are closed forms, recomputed by blocks
    in backward from the saved inputs (nothing of size (N, C) is saved). With g the
    upstream gradient of a row:

    * q side: ``g (q - p)`` (log-probabilities; d/d log q of the careful form), ``g (q - p) / T``
      for logits (the log_softmax Jacobian maps it to itself);
    * p side: ``g p u`` (u = log p - log q) for log-probabilities, ``g p (u - KL) / T`` for
      logits; 0 where p = 0 (never 0 * inf = NaN).

    ``create_graph=True`` differentiates :func:`_kl_graph` instead (gradients of any order).
    """

    @staticmethod
    def forward(ctx, p, q, temperature, dtype):
        n, c = p.shape
        with torch.no_grad():
            parts = [_kl_block_value(*_kl_block_logs(p, q, i, j, temperature, dtype)) for i, j in _kl_blocks(n, c, p.device)]
            value = parts[0] if len(parts) == 1 else torch.cat(parts)
        ctx.save_for_backward(p, q, value)
        ctx.temperature, ctx.dtype = temperature, dtype
        return value

    @staticmethod
    def backward(ctx, grad):
        p, q, value = ctx.saved_tensors
        temperature, dtype = ctx.temperature, ctx.dtype
        need_p, need_q = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():
            # create_graph=True: the closed forms below hold no graph; differentiate the
            # autograd form of the same value so that higher derivatives are right.
            with torch.enable_grad():
                logp, logq = _kl_block_logs(p, q, 0, p.shape[0], temperature, dtype)
                wrt = [x for x, need in ((p, need_p), (q, need_q)) if need]
                grads = iter(torch.autograd.grad(_kl_graph(logp, logq), wrt, grad, create_graph=True))
            return (next(grads) if need_p else None), (next(grads) if need_q else None), None, None
        n, c = p.shape
        scale = grad if temperature is None else grad / temperature
        blocks = _kl_blocks(n, c, p.device)
        one = len(blocks) == 1
        gp = None if not need_p or one else torch.empty_like(p)
        gq = None if not need_q or one else torch.empty_like(q)
        for i, j in blocks:
            s = scale[i:j, None]
            if need_q and not need_p and temperature is not None:
                a, b = p[i:j].to(dtype), q[i:j].to(dtype)
                if temperature != 1.0:
                    a, b = a / temperature, b / temperature
                dq = torch.softmax(b, dim=-1).sub_(torch.softmax(a, dim=-1)).mul_(s)
                dp = None
            else:
                logp, logq = _kl_block_logs(p, q, i, j, temperature, dtype)
                prob_p = torch.exp(logp)
                dq = torch.exp(logq).sub_(prob_p).mul_(s) if need_q else None
                dp = None
                if need_p:
                    u = logp - logq
                    if temperature is not None:
                        u = u.sub_(value[i:j, None])
                    dp = torch.where(torch.isneginf(logp), 0.0, prob_p.mul_(u)).mul_(s)
            if one:
                gp = dp.to(p.dtype) if dp is not None else None
                gq = dq.to(q.dtype) if dq is not None else None
            else:
                if dp is not None:
                    gp[i:j] = dp
                if dq is not None:
                    gq[i:j] = dq
        return gp, gq, None, None


def _kl_rows(p: torch.Tensor, q: torch.Tensor, temperature: float | None, dtype: torch.dtype) -> torch.Tensor:
    """:class:`_KL` on ``(*, C)`` inputs of one shape: ``(*)`` per-sample values."""
    if p.numel() == 0:  # nothing to compute (and no (N, C) view of a (*, 0) input)
        return _kl_graph(*_kl_block_logs(p, q, 0, p.shape[0], temperature, dtype))
    lead, c = p.shape[:-1], p.shape[-1]
    return _KL.apply(p.reshape(-1, c), q.reshape(-1, c), temperature, dtype).reshape(lead)


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(P||Q) per sample from log-probabilities of one shape and dtype (see :func:`_kl_graph`
    for the form; :class:`_KL` computes it, with closed-form gradients)."""
    if logp.shape != logq.shape or logp.dtype != logq.dtype:
        return _kl_graph(logp, logq)
    return _kl_rows(logp, logq, None, logp.dtype)


def _both_zero(logp: torch.Tensor, logq: torch.Tensor):
    """Classes with p = q = 0, and both logs with those entries replaced by 0.

    Such a class contributes 0 to every f-divergence, but log-space combinations of two
    ``-inf`` give NaN (``-inf - -inf``, ``logaddexp(-inf, -inf)``'s gradient). Callers compute
    on the safe copies and put the right limit back with ``torch.where`` (double-where: the
    gradient through the discarded branch is then 0, not NaN).
    """
    both = torch.isneginf(logp) & torch.isneginf(logq)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    return both, torch.where(both, zero, logp), torch.where(both, zero, logq)


def _mixture(logp: torch.Tensor, logq: torch.Tensor, beta: float) -> torch.Tensor:
    """log(beta p + (1 - beta) q), in log-space (-inf where p = q = 0, with zero gradient there)."""
    both, sp, sq = _both_zero(logp, logq)
    logm = torch.logaddexp(sp + math.log(beta), sq + math.log1p(-beta))
    return torch.where(both, torch.full((), -math.inf, dtype=logm.dtype, device=logm.device), logm)


def _alpha_value(logp: torch.Tensor, logq: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 - sum_k p^a q^(1-a)) / (a (1 - a)) per sample, accurate near a = 0 and a = 1.

    With u = log p - log q, p^a q^(1-a) = q e^(a u) = p e^(-(1-a) u), and as sum q = sum p = 1,
    ``1 - sum p^a q^(1-a) = -sum q expm1(a u) = -sum p expm1((a-1) u)``. Weighting by q for
    a < 1/2 and by p otherwise keeps the exponent small near the KL limits, so expm1 carries
    the O(a) (or O(1-a)) difference itself: no ``1 - (1 - O(a))`` cancellation (float32
    would lose ~1e-7 / (a (1 - a)) relative). A class where the weight is 0 contributes 0
    (its p - p^a q^(1-a) or q - p^a q^(1-a) vanishes); where the other distribution is 0,
    u = ±inf gives the exact limits (-1, or +inf when the divergence is infinite).
    """
    both, sp, sq = _both_zero(logp, logq)
    if alpha < 0.5:
        logw, c = logq, alpha
    else:
        logw, c = logp, alpha - 1.0
    live = ~torch.isneginf(logw)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    cu = c * torch.where(live, sp - sq, zero)  # double-where: no inf * 0 in the backward
    w = torch.exp(logw)
    # w expm1(cu) for cu <= 1; exp(log w + cu) - w above, where w may have underflowed to 0
    # while e^cu overflows (logits of 1e4): their product p^a q^(1-a) is formed in log-space.
    big = cu > 1
    cu_small = torch.where(big, zero, cu)
    cu_big = torch.where(big, cu, zero)
    logw_big = torch.where(big & live, logw, zero)
    term = torch.where(big, torch.exp(logw_big + cu_big) - w, w * torch.expm1(cu_small))
    term = torch.where(live, term, zero)
    return -term.sum(-1) / (alpha * (1.0 - alpha))


def _doc(fn):
    """Fill the arguments every divergence shares into ``fn``'s docstring."""
    fn.__doc__ = fn.__doc__.replace("{common_args}", _DOC_ARGS)
    return fn


_DOC_ARGS = """p_logits: logits of P, ``(*, C)``.
        q_logits: logits of Q, ``(*, C)`` (same shape).
        temperature: both are divided by it before the softmax (distillation's T), > 0.
        log_probs: inputs are log-probabilities (used as given when ``temperature == 1``).
            NaN or ``+inf`` inputs give NaN either way (non-finite inputs: see CONTRIBUTING.md).
        mask: optional bool ``(*)``, per batch (a ``forward`` argument of the Module);
            False samples are left out of the value and of the ``"mean"`` denominator
            (token-level use). With nothing kept, ``"mean"`` is 0.
        reduction: ``"mean"`` over the (kept) samples, ``"sum"``, or ``"none"``: the
            per-sample values ``(*)``, 0 where ``mask`` is False."""


@register("kl_divergence", family="divergences", reference=FDIV_PAPER, seed=FDIV_SEED,
          example=pair_logits_example(mask=True), input_kind="logits", symmetric=False,
          tags=("kl", "kullback-leibler", "relative entropy", "distillation", "kl penalty", "rlhf", "token-level"))
@hyperparameter_checks(_check_shared)
@_doc
def kl_divergence(
    p_logits: torch.Tensor,
    q_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    log_probs: bool = False,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Kullback–Leibler divergence KL(P‖Q) between categorical distributions given by logits.

    .. math:: \mathrm{KL}(P\,\|\,Q) = \sum_k p_k \log\frac{p_k}{q_k},

    computed from ``log_softmax`` outputs; classes with :math:`p_k = 0` contribute 0 (also
    to the gradient), :math:`q_k = 0 < p_k` gives :math:`+\infty`. Unlike
    ``F.kl_div(input, target)``, the arguments are in the mathematical order (P first) and
    both are logits; ``reduction="mean"`` averages over samples, not over elements (it is
    ``F.kl_div(log_softmax(q), log_softmax(p), log_target=True, reduction="batchmean")``
    for 2-D inputs). The model is usually Q in distillation (forward KL, P = teacher) and P
    in KL-regularized RL (P = policy, Q = reference); :func:`f_divergence` ``"reverse_kl"``
    is this with the arguments swapped.

    Cost: the ``log_softmax`` and the sum of non-negative per-class terms (no cancellation
    for nearby distributions in float32) are computed a block of rows at a time, and the
    gradients in closed form (:math:`(q - p)/T` for ``q_logits``); backward keeps only the
    inputs, no vocabulary-sized temporaries. Higher derivatives (``create_graph=True``)
    are supported.

    Args:
        {common_args}

    Shape:
        inputs ``(*, C)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import kl_divergence
        >>> p, q = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 0.0, 0.0]])
        >>> kl_divergence(p, q)
        tensor(0.5743)
        >>> kl_divergence(p, p)
        tensor(0.)

    References:
        Kullback & Leibler, "On Information and Sufficiency", 1951; Go et al., "Aligning
        Language Models with Preferences through f-divergence Minimization", ICML 2023,
        https://arxiv.org/abs/2302.08215.
    """
    dtype = _check_inputs(p_logits, q_logits, temperature, log_probs)
    # The inputs go to _KL as they are (half precision is upcast a block at a time inside);
    # for logits it takes the log_softmax itself.
    if log_probs and temperature == 1.0:
        value, posinf = _kl_rows(p_logits, q_logits, None, dtype), _posinf_rows(p_logits, q_logits)
    else:
        value, posinf = _kl_rows(p_logits, q_logits, float(temperature), dtype), None
    return _reduce(value, posinf, reduction, mask, p_logits)


@register("js_divergence", family="divergences", reference=JSD_PAPER, seed="Sinkhorn Distance Minimization for Knowledge Distillation",
          example=pair_logits_example(mask=True), input_kind="logits", symmetric=True, bounded=True,
          tags=("jensen-shannon", "jsd", "distillation", "token-level"))
@hyperparameter_checks(_check_shared)
@_doc
def js_divergence(
    p_logits: torch.Tensor,
    q_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    log_probs: bool = False,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Jensen–Shannon divergence, symmetric and bounded by log 2; the mixture is formed in log-space.

    .. math::
        \mathrm{JS}(P, Q) = \tfrac12\mathrm{KL}(P\,\|\,M) + \tfrac12\mathrm{KL}(Q\,\|\,M),
        \qquad M = \tfrac12(P + Q),

    with :math:`\log M = \operatorname{logaddexp}(\log p, \log q) - \log 2`. In nats; it equals
    the square of SciPy's ``jensenshannon`` distance (natural log). Always finite, even with
    disjoint supports (then it is :math:`\log 2`), and so is its gradient. Symmetric: either
    argument may be the model (e.g. student vs teacher in distillation).

    Args:
        {common_args}

    Shape:
        inputs ``(*, C)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import js_divergence
        >>> inf = float("inf")
        >>> js_divergence(torch.tensor([[0.0, -inf]]), torch.tensor([[-inf, 0.0]]))  # log 2
        tensor(0.6931)

    References:
        Lin, "Divergence measures based on the Shannon entropy", IEEE Trans. Inf. Theory
        1991, https://doi.org/10.1109/18.61115.
    """
    return generalized_js_divergence(p_logits, q_logits, beta=0.5, temperature=temperature,
                                     log_probs=log_probs, mask=mask, reduction=reduction)


@register("generalized_js_divergence", family="divergences", reference=JSD_PAPER,
          example=pair_logits_example(mask=True, beta=0.3), input_kind="logits", bounded=True,
          tags=("jensen-shannon", "skew", "on-policy distillation", "gkd", "token-level"))
@hyperparameter_checks(_check_beta)
@_doc
def generalized_js_divergence(
    p_logits: torch.Tensor,
    q_logits: torch.Tensor,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    log_probs: bool = False,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Generalized (skewed) Jensen–Shannon divergence with mixture weight β.

    .. math::
        \mathrm{JS}_\beta(P, Q) = \beta\,\mathrm{KL}(P\,\|\,M) + (1-\beta)\,\mathrm{KL}(Q\,\|\,M),
        \qquad M = \beta P + (1 - \beta) Q,

    bounded by the binary entropy :math:`h(\beta) \le \log 2`; :math:`\beta = \tfrac12` is
    :func:`js_divergence`. Limits: as :math:`\beta \to 0` or :math:`\beta \to 1` it tends
    to 0 (the mixture collapses onto one distribution), linearly in :math:`\beta`:
    :math:`\mathrm{JS}_\beta / \beta \to \mathrm{KL}(P\,\|\,Q)` as :math:`\beta \to 0`, and
    :math:`\mathrm{JS}_\beta / (1-\beta) \to \mathrm{KL}(Q\,\|\,P)` as :math:`\beta \to 1`.
    ``beta`` must lie in the open interval (0, 1) (use :func:`kl_divergence` for the scaled
    limits). Which argument is the model: in on-policy distillation (GKD) P = teacher,
    Q = student, so that the scaled limits are forward KL (β → 0) and reverse KL (β → 1),
    the reading TRL's GKD trainer documents for its β = 0 / β = 1 (it special-cases those
    two values as the KLs themselves; here they are excluded, not special-cased).

    Args:
        beta: mixture weight :math:`\beta \in (0, 1)` of P.
        {common_args}

    Shape:
        inputs ``(*, C)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import generalized_js_divergence, js_divergence
        >>> p, q = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
        >>> torch.allclose(generalized_js_divergence(p, q, beta=0.5), js_divergence(p, q))
        True

    References:
        Lin, 1991, https://doi.org/10.1109/18.61115; Agarwal et al., "On-Policy
        Distillation of Language Models: Learning from Self-Generated Mistakes", ICLR 2024,
        https://arxiv.org/abs/2306.13649.
    """
    _check_beta(beta=beta)
    logp, logq, posinf = _log_probs(p_logits, q_logits, temperature, log_probs)
    logm = _mixture(logp, logq, float(beta))
    value = beta * _kl(logp, logm) + (1.0 - beta) * _kl(logq, logm)
    return _reduce(value, posinf, reduction, mask, logp)


@register("alpha_divergence", family="divergences", reference=FDPO_PAPER,
          seed="Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse Divergence Constraints",
          example=pair_logits_example(mask=True, alpha=0.3), input_kind="logits",
          tags=("amari", "alpha-divergence", "f-divergence", "f-dpo", "mode seeking", "mass covering"))
@hyperparameter_checks(_check_alpha)
@_doc
def alpha_divergence(
    p_logits: torch.Tensor,
    q_logits: torch.Tensor,
    *,
    alpha: float = 0.5,
    temperature: float = 1.0,
    log_probs: bool = False,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Amari α-divergence; tends to KL(P‖Q) as α → 1 and to KL(Q‖P) as α → 0.

    .. math::
        D_\alpha(P\,\|\,Q) = \frac{1 - \sum_k p_k^{\alpha} q_k^{1-\alpha}}{\alpha(1-\alpha)},

    the f-divergence of :math:`f(u) = (u^\alpha - \alpha u - (1-\alpha))/(\alpha(\alpha-1))`.
    It is computed as :math:`-\sum_k q_k\,\mathrm{expm1}(\alpha u_k)/(\alpha(1-\alpha))` for
    :math:`\alpha < \tfrac12` and :math:`-\sum_k p_k\,\mathrm{expm1}((\alpha-1) u_k)/(\alpha(1-\alpha))`
    otherwise (:math:`u = \log p - \log q`, equal because both distributions sum to 1): no
    cancellation near the KL limits, where the textbook form loses
    :math:`\sim 10^{-7}/(\alpha(1-\alpha))` relative accuracy in float32. α = 1 and α = 0 are
    dispatched to the KL divergences exactly. Known limit: for nearly equal P and Q (divergence
    ≲ 1e-5) the per-class terms still cancel at first order, and float32 keeps only ~1
    significant digit there (KL, JS, χ² and Hellinger use cancellation-free forms); compute
    in float64 if such tiny values matter. :math:`\alpha = \tfrac12` gives
    :math:`4(1 - \mathrm{BC}) = 4 H^2` (Bhattacharyya coefficient BC, squared Hellinger
    distance :math:`H^2 = 1 - \mathrm{BC}` of :func:`hellinger_distance`).

    Conventions (P first, Q second): this is the α of Cichocki & Amari (2010), the one
    whose limits are α → 1: KL(P‖Q) and α → 0: KL(Q‖P). Amari's original ±1 index
    :math:`\alpha_A` (with :math:`\tfrac{4}{1-\alpha_A^2}(1 - \sum p^{(1-\alpha_A)/2}
    q^{(1+\alpha_A)/2})`) is :math:`\alpha = (1 - \alpha_A)/2`. TRL ≥ 1.x's f-DPO
    ``alpha_divergence`` score :math:`(e^{(\alpha-1) r} - 1)/(\alpha - 1)` is :math:`f'`
    of this generator with the *same* α, P = π (the model), Q = π_ref, and its α → 1 limit
    is what TRL calls "reverse KL", KL(π‖π_ref); older TRL versions used 1 − α.

    Which argument is the model: P in KL-regularized fine-tuning (P = π, Q = π_ref);
    Q in distillation when α near 1 should mean forward KL (P = teacher).

    Args:
        alpha: any finite real :math:`\alpha`; outside [0, 1] the value is :math:`+\infty`
            when a class has q = 0 < p (α > 1) or p = 0 < q (α < 0).
        {common_args}

    Shape:
        inputs ``(*, C)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import alpha_divergence, kl_divergence
        >>> p, q = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
        >>> torch.allclose(alpha_divergence(p, q, alpha=1.0), kl_divergence(p, q))
        True

    References:
        Amari, "Differential-Geometrical Methods in Statistics", 1985; Wang et al.,
        "Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse
        Divergence Constraints", ICLR 2024, https://arxiv.org/abs/2309.16240.
    """
    _check_alpha(alpha=alpha)
    logp, logq, posinf = _log_probs(p_logits, q_logits, temperature, log_probs)
    if alpha == 1:
        value = _kl(logp, logq)
    elif alpha == 0:
        value = _kl(logq, logp)
    else:
        value = _alpha_value(logp, logq, float(alpha))
    return _reduce(value, posinf, reduction, mask, logp)


@register("total_variation", family="divergences", reference=FDIV_PAPER, seed=FDIV_SEED,
          example=pair_logits_example(mask=True), input_kind="logits", symmetric=True, bounded=True,
          tags=("total variation distance", "tv", "f-divergence"))
@hyperparameter_checks(_check_shared)
@_doc
def total_variation(
    p_logits: torch.Tensor,
    q_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    log_probs: bool = False,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Total variation distance ½ ‖p − q‖₁, in [0, 1].

    .. math:: \mathrm{TV}(P, Q) = \tfrac12 \sum_k |p_k - q_k|

    The f-divergence of :math:`f(u) = \tfrac12|u - 1|`. Its gradient is the sign of
    :math:`p - q` (zero where they are equal). Symmetric: either argument may be the model.

    Args:
        {common_args}

    Shape:
        inputs ``(*, C)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import total_variation
        >>> inf = float("inf")
        >>> total_variation(torch.tensor([[0.0, -inf]]), torch.tensor([[-inf, 0.0]]))
        tensor(1.)

    References:
        Go et al., "Aligning Language Models with Preferences through f-divergence
        Minimization", ICML 2023, https://arxiv.org/abs/2302.08215.
    """
    logp, logq, posinf = _log_probs(p_logits, q_logits, temperature, log_probs)
    value = 0.5 * (logp.exp() - logq.exp()).abs().sum(-1)
    return _reduce(value, posinf, reduction, mask, logp)


@register("hellinger_distance", family="divergences", reference=FDIV_PAPER, seed=FDIV_SEED,
          example=pair_logits_example(mask=True), input_kind="logits", symmetric=True, bounded=True,
          tags=("hellinger", "bhattacharyya", "f-divergence"))
@hyperparameter_checks(_check_squared)
@_doc
def hellinger_distance(
    p_logits: torch.Tensor,
    q_logits: torch.Tensor,
    *,
    squared: bool = False,
    temperature: float = 1.0,
    log_probs: bool = False,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Hellinger distance between categorical distributions, in [0, 1] (or its square).

    .. math:: H^2(P, Q) = \tfrac12 \sum_k \big(\sqrt{p_k} - \sqrt{q_k}\big)^2, \qquad H = \sqrt{H^2}

    :math:`\sqrt{p} = e^{\log p / 2}` from ``log_softmax``; the square is summed directly (not
    as :math:`1 - \sum\sqrt{pq}`, which cancels for nearby distributions). :math:`H^2` is the
    f-divergence of :math:`f(u) = \tfrac12(\sqrt u - 1)^2` (``f_divergence(..., "hellinger")``).
    The distance :math:`H` has an infinite slope at P = Q; train with ``squared=True``.
    Symmetric: either argument may be the model.

    Args:
        squared: return :math:`H^2` instead of :math:`H`.
        {common_args}

    Shape:
        inputs ``(*, C)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import hellinger_distance
        >>> inf = float("inf")
        >>> hellinger_distance(torch.tensor([[0.0, -inf]]), torch.tensor([[-inf, 0.0]]))
        tensor(1.)

    References:
        Hellinger, 1909; Go et al., ICML 2023, https://arxiv.org/abs/2302.08215.
    """
    _check_squared(squared=squared)
    logp, logq, posinf = _log_probs(p_logits, q_logits, temperature, log_probs)
    h2 = 0.5 * (torch.exp(0.5 * logp) - torch.exp(0.5 * logq)).square().sum(-1)
    # H has an infinite slope at H = 0 (P = Q); the floor keeps its gradient finite (0 there).
    value = h2 if squared else torch.sqrt(h2.clamp_min(torch.finfo(h2.dtype).tiny))
    return _reduce(value, posinf, reduction, mask, logp)


ADACAD_PAPER = Reference(
    title="AdaCAD: Adaptively Decoding to Balance Conflicts between Contextual and Parametric Knowledge",
    authors="Han Wang, Archiki Prasad, Elias Stengel-Eskin, Mohit Bansal",
    year=2024,
    url="https://arxiv.org/abs/2409.07394",
)


class ContrastiveDecodingOutput(NamedTuple):
    """What :func:`jsd_contrastive_logits` returns with ``return_alpha=True``.

    Attributes:
        logits: ``(*, V)`` the adjusted next-token logits (as without ``return_alpha``).
        alpha: ``(*)`` the per-position weight :math:`\alpha` (JS divergence + offset, nats).
    """

    logits: torch.Tensor
    alpha: torch.Tensor


@overload
def jsd_contrastive_logits(
    context_logits: torch.Tensor, no_context_logits: torch.Tensor, *, offset: float = ...,
    return_alpha: Literal[False] = ...,
) -> torch.Tensor: ...


@overload
def jsd_contrastive_logits(
    context_logits: torch.Tensor, no_context_logits: torch.Tensor, *, offset: float = ...,
    return_alpha: Literal[True],
) -> ContrastiveDecodingOutput: ...


@register("jsd_contrastive_logits", family="divergences", reference=ADACAD_PAPER, seed=ADACAD_PAPER.title,
          example=replace(pair_logits_example(), mismatch_match="context_logits|no_context_logits"),
          input_kind="logits", module_required=False, differentiable=False, inference_only=True,
          tags=("contrastive decoding", "context-aware decoding", "cad", "knowledge conflict", "decoding",
                "inference", "jensen-shannon"))
@hyperparameter_checks(_check_contrastive)
def jsd_contrastive_logits(
    context_logits: torch.Tensor,
    no_context_logits: torch.Tensor,
    *,
    offset: float = 0.0,
    return_alpha: bool = False,
) -> torch.Tensor | ContrastiveDecodingOutput:
    r"""AdaCAD decoding: contrast next-token logits with and without context, weighted by their JS divergence.

    Context-aware decoding (CAD) sharpens the model towards what the context adds,
    :math:`(1+\alpha)\,\ell_{\text{ctx}} - \alpha\,\ell_{\text{no-ctx}}`, with a fixed
    :math:`\alpha`. AdaCAD sets :math:`\alpha` per token to the degree of conflict between
    the two next-token distributions,

    .. math::
        \alpha = \mathrm{JS}\big(\operatorname{softmax}\ell_{\text{ctx}},\,
                 \operatorname{softmax}\ell_{\text{no-ctx}}\big) + \text{offset},

    in nats (so :math:`0 \le \alpha \le \log 2` without offset): no conflict, no
    adjustment. An inference-time helper, not a loss: no reduction and no gradient
    semantics are promised (call it under ``torch.no_grad()``). The authors' code computes
    one :math:`\alpha` for its batch of one token; here every position gets its own.

    Args:
        context_logits: ``(*, V)`` next-token logits given the context.
        no_context_logits: ``(*, V)`` next-token logits without it.
        offset: added to :math:`\alpha` (the authors' ``--offset``, default 0).
        return_alpha: also return :math:`\alpha`: the result is then a
            :class:`ContrastiveDecodingOutput` ``(logits, alpha)``.

    Shape:
        inputs ``(*, V)``; output ``(*, V)`` logits (float32 for half inputs), and ``(*)``.

    Example:
        >>> import torch
        >>> from losslab.functional import jsd_contrastive_logits
        >>> same = torch.tensor([[1.0, 0.0, -1.0]])
        >>> torch.equal(jsd_contrastive_logits(same, same), same)   # no conflict: unchanged
        True
        >>> jsd_contrastive_logits(same, same, offset=0.1, return_alpha=True).alpha
        tensor([0.1000])

    References:
        Wang, Prasad, Stengel-Eskin, Bansal, "AdaCAD: Adaptively Decoding to Balance
        Conflicts between Contextual and Parametric Knowledge", NAACL 2025,
        https://arxiv.org/abs/2409.07394; Shi et al., "Trusting Your Evidence:
        Hallucinate Less with Context-aware Decoding", 2023, https://arxiv.org/abs/2305.14739.
    """
    _check_contrastive(offset=offset, return_alpha=return_alpha)
    logp, logq, _ = _log_probs(context_logits, no_context_logits, 1.0, False, ("context_logits", "no_context_logits"))
    logm = _mixture(logp, logq, 0.5)
    alpha = 0.5 * _kl(logp, logm) + 0.5 * _kl(logq, logm) + offset
    a = alpha.unsqueeze(-1)
    ctx, noctx = upcast(context_logits, logp.dtype), upcast(no_context_logits, logp.dtype)
    # (1 + a) ctx - a noctx written as ctx + a (ctx - noctx), with the limits of -inf logits
    # made explicit: a token banned in both (-inf, -inf) stays -inf (the plain formula gives
    # -inf + inf = NaN); with a = 0 the output is ctx even where ctx - noctx is infinite.
    zero = torch.zeros((), dtype=ctx.dtype, device=ctx.device)
    adjust = torch.where(a == 0, zero, a * (ctx - noctx))
    out = torch.where(torch.isneginf(ctx) & torch.isneginf(noctx), ctx, ctx + adjust)
    return ContrastiveDecodingOutput(out, alpha) if return_alpha else out
