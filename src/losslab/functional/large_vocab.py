"""Large-vocabulary objectives computed from hidden states without the full N × V logit matrix.

Tokens are processed in chunks; each chunk's logits are formed, used and freed, and
recomputed in the backward pass (activation checkpointing), so the extra memory is one
chunk of logits whatever the vocabulary size. Every chunk goes through the same functions
as the materialized path (:func:`~losslab.functional.cross_entropy`,
:func:`~losslab.functional.kl_divergence`, ...), so options and conventions are identical.
"""
from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from .._checks import check_floating, check_integer, check_positive, validation_enabled
from .._numerics import softcap as _apply_softcap
from .._numerics import upcast
from .._reduction import reduce
from ..registry import Example, Reference, register
from ._examples import randint, randn
from .classification import cross_entropy
from .divergences import generalized_js_divergence, kl_divergence

__all__ = ["linear_cross_entropy", "linear_kl_divergence", "linear_js_divergence", "sequence_logprobs"]

CCE_PAPER = Reference(
    title="Cut Your Losses in Large-Vocabulary Language Models",
    authors="Erik Wijmans, Brody Huval, Alexander Hertzberg, Vladlen Koltun, Philipp Krähenbühl",
    year=2024,
    url="https://arxiv.org/abs/2411.09009",
)
CCE_SEED = "Cut Your Losses in Large-Vocabulary Language Models"
CHUNK_BUDGET_BYTES = 8 * 2**20  # logits of one chunk in float32 (~5x that in use while a chunk runs)


def _chunk_rows(chunk_size: int | None, vocab: int) -> int:
    if chunk_size is None:
        return max(1, CHUNK_BUDGET_BYTES // (4 * vocab))
    if not (isinstance(chunk_size, int) and chunk_size > 0):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return chunk_size


def _check_linear(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, name: str = "hidden"):
    check_floating(hidden, name)
    check_floating(weight, "weight")
    if weight.dim() != 2:
        raise ValueError(f"weight must be (V, D), got shape {tuple(weight.shape)}")
    if hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"the last dimension of {name} ({tuple(hidden.shape)}) must equal weight's second ({weight.shape[1]})")
    if bias is not None:
        check_floating(bias, "bias")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")


def _logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Logits of one chunk; inputs are already in the compute dtype."""
    out = h @ weight.T
    return out if bias is None else out + bias


def _compute_dtype(*ts) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in ts) else torch.float32


def _lce_example() -> Example:
    def make(gen):
        t = randint(gen, 11, 7)
        t[2] = -100
        return (randn(gen, 7, 5), randn(gen, 11, 5), t), {"chunk_size": 3, "label_smoothing": 0.1, "z_loss": 1e-3}

    def mismatch(gen):
        return (randn(gen, 7, 5), randn(gen, 11, 4), randint(gen, 11, 7)), {}

    return Example(make=make, mismatch=mismatch, logits=(0,))


@register("linear_cross_entropy", family="large_vocab", reference=CCE_PAPER, seed=CCE_SEED, example=_lce_example(),
          input_kind="hidden states", memory="O(chunk * V)")
def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Cross-entropy of ``hidden @ weight.T (+ bias)`` without materializing the N × V logits.

    Exactly :func:`~losslab.functional.cross_entropy` of the logits
    :math:`x = hW^\top + b` (softcap, label smoothing, z-loss, ``ignore_index`` and every
    ``reduction`` with the same definitions), computed over chunks of tokens: each chunk's
    logits live only while its per-token loss is computed, and are recomputed in the
    backward pass, so the extra memory is a few chunks of logits (``chunk_size=None`` picks the
    rows so that a chunk's float32 logits take about 8 MiB) instead of N × V. Gradients
    reach ``hidden``, ``weight`` and ``bias`` for every reduction, including ``"none"``.
    When every token is ignored, ``"mean"`` is 0 with zero gradients. Caller tensors are
    never written to. (On glibc, chunk buffers below its adaptive mmap threshold may be kept
    in the process heap after they are freed, so RSS can exceed the live memory; setting
    ``MALLOC_MMAP_THRESHOLD_`` returns them to the OS.)

    Costs: the logits are computed twice (forward, and again in backward), so about four
    matrix products of the N × D × V shape instead of three. Half/bfloat16 inputs are
    upcast once to float32 (losslab's precision rule: the logits, the loss and the weight
    gradient accumulate in float32), which costs one float32 copy of ``weight``.

    Args:
        hidden: ``(*, D)`` hidden states.
        weight: ``(V, D)`` output embedding.
        target: ``(*)`` class indices in ``[0, V)`` or ``ignore_index``.
        bias: optional ``(V,)``.
        ignore_index, label_smoothing, z_loss, softcap, reduction: as in
            :func:`~losslab.functional.cross_entropy`.
        chunk_size: tokens per chunk (None: from an 8 MiB budget).
        return_lse: also return the per-token log-sum-exp ``(*)`` of the (capped) logits,
            differentiable.

    Shape:
        hidden ``(*, D)``, target ``(*)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import linear_cross_entropy, cross_entropy
        >>> g = torch.Generator().manual_seed(0)
        >>> h, w = torch.randn(6, 8, generator=g), torch.randn(50, 8, generator=g)
        >>> t = torch.tensor([1, 4, 9, 16, 25, 36])
        >>> torch.allclose(linear_cross_entropy(h, w, t, chunk_size=4), cross_entropy(h @ w.T, t))
        True

    References:
        Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", ICLR 2025,
        https://arxiv.org/abs/2411.09009.
    """
    _check_linear(hidden, weight, bias)
    if softcap is not None:
        check_positive(softcap, "softcap")
    vocab = weight.shape[0]
    lead = hidden.shape[:-1]
    check_integer(target, "target")
    if target.shape != lead:
        raise ValueError(f"target must have shape {tuple(lead)} (the leading shape of hidden), got {tuple(target.shape)}")
    if validation_enabled() and target.numel() > 0:
        bad = ((target < 0) | (target >= vocab)) & (target != ignore_index)
        if bool(bad.any()):
            raise ValueError(f"target has class index {int(target[bad][0])} outside [0, {vocab}) or ignore_index={ignore_index}")
    dtype = _compute_dtype(hidden, weight, bias)
    h2 = upcast(hidden.reshape(-1, hidden.shape[-1]), dtype)
    w_c, b_c = upcast(weight, dtype), upcast(bias, dtype)
    t1 = target.reshape(-1)
    rows = _chunk_rows(chunk_size, vocab)

    def chunk_loss(h, w, b, t):
        x = _apply_softcap(_logits(h, w, b), softcap)
        loss = cross_entropy(x, t, ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
                             reduction="none")
        return loss, torch.logsumexp(x, dim=-1)

    losses, lses = [], []
    for start in range(0, h2.shape[0], rows):
        h_c, t_c = h2[start : start + rows], t1[start : start + rows]
        if _needs_grad(h_c, w_c, b_c):
            loss_c, lse_c = checkpoint(chunk_loss, h_c, w_c, b_c, t_c, use_reentrant=False)
        else:
            loss_c, lse_c = chunk_loss(h_c, w_c, b_c, t_c)
        losses.append(loss_c)
        lses.append(lse_c)
    loss = torch.cat(losses) if losses else torch.zeros(0, dtype=dtype, device=hidden.device)
    lse = torch.cat(lses) if lses else torch.zeros(0, dtype=dtype, device=hidden.device)
    out = reduce(loss.reshape(lead), reduction, mask=(t1 != ignore_index).reshape(lead))
    return (out, lse.reshape(lead)) if return_lse else out



def _needs_grad(*ts) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def _pair_example(**kw) -> Example:
    def make(gen):
        t = randint(gen, 9, 6)
        t[1] = -100
        return (randn(gen, 6, 4), randn(gen, 9, 4), randn(gen, 6, 3), randn(gen, 9, 3), t), dict(chunk_size=4, **kw)

    def mismatch(gen):
        return (randn(gen, 6, 4), randn(gen, 9, 4), randn(gen, 5, 3), randn(gen, 9, 3)), {}

    return Example(make=make, mismatch=mismatch, logits=(0, 2), grad=(0, 1))


def _linear_divergence(kind, student_hidden, student_weight, teacher_hidden, teacher_weight, target, *, temperature,
                       beta, ignore_index, reduction, chunk_size):
    _check_linear(student_hidden, student_weight, None, "student_hidden")
    _check_linear(teacher_hidden, teacher_weight, None, "teacher_hidden")
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(f"student and teacher vocabularies differ: {student_weight.shape[0]} vs {teacher_weight.shape[0]}")
    lead = student_hidden.shape[:-1]
    if teacher_hidden.shape[:-1] != lead:
        raise ValueError(f"teacher_hidden must have leading shape {tuple(lead)}, got {tuple(teacher_hidden.shape[:-1])}")
    check_positive(temperature, "temperature")
    if target is not None:
        check_integer(target, "target")
        if target.shape != lead:
            raise ValueError(f"target must have shape {tuple(lead)}, got {tuple(target.shape)}")
    vocab = student_weight.shape[0]
    rows = _chunk_rows(chunk_size, vocab)
    dtype = _compute_dtype(student_hidden, student_weight, teacher_hidden, teacher_weight)
    hs = upcast(student_hidden.reshape(-1, student_hidden.shape[-1]), dtype)
    ws = upcast(student_weight, dtype)
    ht = upcast(teacher_hidden.reshape(-1, teacher_hidden.shape[-1]).detach(), dtype)
    wt = upcast(teacher_weight.detach(), dtype)

    def chunk_div(h, w, h_t):
        xs = _logits(h, w, None)
        with torch.no_grad():
            xt = _logits(h_t, wt, None)
        if kind == "kl":  # forward KL(teacher || student)
            return kl_divergence(xt, xs, temperature=temperature, reduction="none")
        return generalized_js_divergence(xt, xs, beta=beta, temperature=temperature, reduction="none")

    parts = []
    for start in range(0, hs.shape[0], rows):
        args = (hs[start : start + rows], ws, ht[start : start + rows])
        parts.append(checkpoint(chunk_div, *args, use_reentrant=False) if _needs_grad(*args[:2]) else chunk_div(*args))
    value = torch.cat(parts) if parts else torch.zeros(0, dtype=dtype, device=hs.device)
    mask = None if target is None else (target != ignore_index).reshape(lead)
    return reduce(value.reshape(lead), reduction, mask=mask)


@register("linear_kl_divergence", family="large_vocab", reference=CCE_PAPER, example=_pair_example(temperature=2.0),
          input_kind="hidden states", memory="O(chunk * V)")
def linear_kl_divergence(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> torch.Tensor:
    r"""Forward KL(teacher ‖ student) between vocabulary distributions, from hidden states, chunked.

    Per token, :func:`~losslab.functional.kl_divergence` of the teacher logits
    :math:`h_t W_t^\top` (P) and the student logits :math:`h_s W_s^\top` (Q) at temperature
    :math:`T` — the usual distillation direction — computed chunk by chunk with recomputation
    in backward (one chunk of logits in memory). No gradient reaches the teacher. Tokens whose
    ``target`` equals ``ignore_index`` are left out (``target`` is used only for that).

    Args:
        student_hidden: ``(*, D_s)``; student_weight: ``(V, D_s)``.
        teacher_hidden: ``(*, D_t)``; teacher_weight: ``(V, D_t)``.
        target: optional ``(*)`` token ids, for masking only.
        temperature: :math:`T > 0` (no :math:`T^2` factor is applied).
        ignore_index: masked target value.
        reduction: ``"mean"`` over kept tokens, ``"sum"`` or ``"none"``.
        chunk_size: tokens per chunk (None: from an 8 MiB budget).

    Shape:
        output ``(*)`` for ``"none"``, else a scalar.

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
        https://arxiv.org/abs/1503.02531; Wijmans et al., 2024, https://arxiv.org/abs/2411.09009.
    """
    return _linear_divergence("kl", student_hidden, student_weight, teacher_hidden, teacher_weight, target,
                              temperature=temperature, beta=0.5, ignore_index=ignore_index, reduction=reduction,
                              chunk_size=chunk_size)


@register("linear_js_divergence", family="large_vocab", reference=CCE_PAPER, example=_pair_example(beta=0.3),
          input_kind="hidden states", memory="O(chunk * V)")
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
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> torch.Tensor:
    r"""Generalized Jensen–Shannon divergence between teacher and student vocabularies, chunked.

    Per token, :func:`~losslab.functional.generalized_js_divergence` with P = teacher and
    Q = student (mixture :math:`M = \beta P + (1-\beta) Q`), the on-policy distillation
    objective, computed like :func:`linear_kl_divergence` (one chunk of logits in memory,
    no gradient to the teacher).

    Args:
        student_hidden, student_weight, teacher_hidden, teacher_weight, target, temperature,
        ignore_index, reduction, chunk_size: as in :func:`linear_kl_divergence`.
        beta: :math:`\beta \in (0, 1)`.

    Shape:
        output ``(*)`` for ``"none"``, else a scalar.

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
        Self-Generated Mistakes", ICLR 2024, https://arxiv.org/abs/2306.13649.
    """
    return _linear_divergence("js", student_hidden, student_weight, teacher_hidden, teacher_weight, target,
                              temperature=temperature, beta=beta, ignore_index=ignore_index, reduction=reduction,
                              chunk_size=chunk_size)


def _seq_example() -> Example:
    def make(gen):
        t = randint(gen, 13, 3, 5)
        t[0, 3:] = -100
        return (randn(gen, 3, 5, 4), randn(gen, 13, 4), t), {"chunk_size": 4}

    def mismatch(gen):
        return (randn(gen, 3, 5, 4), randn(gen, 13, 4), randint(gen, 13, 3, 4)), {}

    return Example(make=make, mismatch=mismatch, logits=(0,))


@register("sequence_logprobs", family="large_vocab", reference=CCE_PAPER, example=_seq_example(),
          input_kind="hidden states", module_required=False, memory="O(chunk * V)")
def sequence_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    average: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor:
    r"""Per-sequence log-probability of the target tokens, from hidden states (no N × V logits).

    .. math:: \log\pi(y \mid x) = \sum_{t:\, y_t \ne \text{ignore}} \log\operatorname{softmax}(h_t W^\top + b)_{y_t},

    or its mean over the kept tokens with ``average=True`` (SimPO / IPO use the average).
    The input of DPO-style objectives; computed with :func:`linear_cross_entropy` (chunked,
    recomputed in backward). A sequence with no kept token gets 0.

    Args:
        hidden: ``(B, T, D)``; weight: ``(V, D)``; target: ``(B, T)``.
        bias: optional ``(V,)``.
        ignore_index: target value of tokens left out (prompt, padding).
        average: mean instead of sum over the kept tokens.
        chunk_size: tokens per chunk.

    Shape:
        output ``(B,)``.

    Example:
        >>> import torch
        >>> from losslab.functional import sequence_logprobs
        >>> h, w = torch.zeros(1, 3, 2), torch.zeros(4, 2)             # uniform over 4 tokens
        >>> sequence_logprobs(h, w, torch.tensor([[1, 2, -100]]))       # 2 log(1/4)
        tensor([-2.7726])

    References:
        Rafailov et al., "Direct Preference Optimization", 2023, https://arxiv.org/abs/2305.18290;
        Wijmans et al., 2024, https://arxiv.org/abs/2411.09009.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be (B, T, D), got shape {tuple(hidden.shape)}")
    per_token = -linear_cross_entropy(hidden, weight, target, bias=bias, ignore_index=ignore_index, reduction="none",
                                      chunk_size=chunk_size)
    keep = target != ignore_index
    total = per_token.sum(-1)
    if not average:
        return total
    count = keep.sum(-1).to(total.dtype)
    return total / torch.where(count == 0, torch.ones_like(count), count)
