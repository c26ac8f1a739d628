"""Per-token log-probabilities (and entropies) of the target tokens from hidden states,
:func:`linear_token_logprobs`: the inputs of policy-gradient objectives (GRPO and its
descendants), which need one log-probability per completion token and log the entropy.

Part of the large-vocabulary family and built on its machinery
(:mod:`losslab.functional.large_vocab`: chunks of full vocabulary rows, the logits of a
chunk formed by ``_logits`` — half-precision heads in two parts —, the clamp of shifted
logits at ``-60`` so that no subnormal float is made, the contraction of a chunk's logit
gradient by ``_contract`` and the blocked half-precision weight gradient). Without the
entropy the log-probabilities *are* ``-linear_cross_entropy(..., reduction="none")``, the
implementation :func:`~losslab.functional.sequence_logprobs` sums. With the entropy one
pass forms both (the entropy needs the softmax-weighted logits, which the cross-entropy
does not), and the backward pass recomputes the logits, as the family does for
``reduction="none"``: four matrix products against the materialized path's three. With a
float32 or float64 head that pass runs in tiles of tokens by vocabulary rows, the
vocabulary in the outer loop, with per-token statistics merged block by block
(``_TokenLogprobsEntropyTiled``): each weight block is read once per pass and its
gradient gathered over all tokens before the next block, one ``exp`` per logit in each pass,
the logit gradient formed in place in the two tile buffers and its one-hot part added as
rows outside the tiles (see ``TILE_BYTES`` for the tile size). Half-precision heads keep
chunks of full vocabulary rows (``_TokenLogprobsEntropy``, the family's two-part logits and
blocked weight gradient).
"""
from __future__ import annotations

from functools import partial
from typing import Literal, NamedTuple, overload

import torch
from torch.autograd.function import once_differentiable

from .._checks import check_hyperparameters, hyperparameter_checks
from .._reduction import Reduction, reduce
from ..registry import Example, register
from ._examples import IGNORE, randint, randn
from .large_vocab import (
    _FLOOR,
    CCE_PAPER,
    _apply_target_terms,
    _Buffers,
    _check_linear,
    _check_tokens,
    _chunk_rows,
    _contract,
    _kept_mean,
    _logits,
    _logits_into,
    _needs_grad,
    _operands,
    _stat_dtype,
    _tile_shape,
    _weight_grad_blocked,
    linear_cross_entropy,
)

__all__ = ["linear_token_logprobs", "TokenLogprobsOutput"]

# Tiles of the full-precision path (float32/float64 heads with the entropy): TILE_VOCAB
# vocabulary rows by as many tokens as make the two tile buffers (logits, probabilities)
# TILE_BYTES together: 2048 tokens x 4096 rows in float32, 32 MiB each. Measured at N = 4096,
# V = 32768, D = 256, forward + backward: with one thread (process CPU time) the tile size
# hardly matters (3.78 s for 1024-token x 1024-row tiles, 3.88 s for these, 4.09 s for
# 4096 x 4096; the materialized path 6.37 s); with two threads on a loaded machine every
# elementwise operation waits for both threads, so the number of tiles dominates (wall time
# 15.3 s for 1024 x 1024 tiles, 5.2 s for these, materialized 5.4 s, in one interleaved run).
TILE_VOCAB = 4096
TILE_BYTES = 64 * 2**20

# Fewest tokens per chunk of the half-precision path when chunk_size is None. Each of its
# matrix products streams the whole (V, D) weight once per chunk: with the family's 32 MiB
# budget a large vocabulary gets 32 rows (V = 131072), the products become memory-bound and
# forward + backward is 1.7x slower than with 128 rows (measured with float32 heads at
# N = 1024, V = 131072, D = 256: 15.2 s vs 8.9 s; 512 rows 8.9 s).
MIN_TOKEN_ROWS = 128


class TokenLogprobsOutput(NamedTuple):
    """What :func:`linear_token_logprobs` returns with ``return_entropy=True``.

    Attributes:
        logps: per-token log-probabilities of the targets (reduced as asked).
        entropy: per-token entropy of the (tempered) next-token distribution, reduced the same way.
    """

    logps: torch.Tensor
    entropy: torch.Tensor


def _rowdot(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``(a * b).sum(1)`` without an ``(rows, V)`` temporary (a batched dot product), optionally into ``out``."""
    if out is None:
        return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)
    torch.bmm(a.unsqueeze(1), b.unsqueeze(2), out=out.view(-1, 1, 1))
    return out


def _grad_chunk(e: torch.Tensor, p: torch.Tensor, y, z, c1, c0, gy, v0: int, vocab: int):
    """Logit gradient of ``gl * logp_y + ge * H`` for a chunk (or tile) of raw logits ``e`` (in place).

    d logp_y / dx = onehot(y) - p and dH / dx = -p (x - E_p[x]) = -p (s + H) with
    ``s = x - Z``; for the raw logits both are times ``scale`` (1 / temperature). So
    ``g = p * (c1 s + c0) + gy onehot(y)`` with the per-token ``c1 = -scale ge``,
    ``c0 = -scale (gl + ge H)``, ``gy = scale gl`` (folded in: three passes over the chunk
    after ``exp``, no separate negation or scaling).
    """
    s = e.sub_(z.unsqueeze(1)).clamp_min_(_FLOOR)  # never a subnormal exp (large_vocab docstring)
    torch.exp(s, out=p)
    g = p.mul_(torch.addcmul(c0.unsqueeze(1), s, c1.unsqueeze(1), out=s))  # c1 s + c0 in one pass, in place
    _apply_target_terms(g, y, -gy, 0.0, vocab, v0)  # g += gy onehot(y)
    return g


def _merge(m, sm, tm, mb, sb, tb):
    """Merge a vocabulary block's per-token statistics into the running ones (in place).

    Each holds ``(m, S, T)`` with ``S = sum_k exp(x_k - m)`` and ``T = sum_k exp(x_k - m)(x_k - m)``
    over its vocabulary rows; re-referred to the larger maximum ``m'`` a block's terms are
    scaled by ``a = exp(m - m')`` and its ``T`` becomes ``a (T + S (m - m'))``. The shift is
    clamped at the floor like every shifted logit (a block more than 60 below the maximum adds
    at most ``exp(-60)`` of its terms: round-off, module docstring; and no subnormal scale).
    """
    top = torch.maximum(m, mb)
    d0, d1 = (m - top).clamp_min_(_FLOOR), (mb - top).clamp_min_(_FLOOR)
    a0, a1 = d0.exp(), d1.exp()
    tm.addcmul_(sm, d0).mul_(a0).add_(tb.addcmul_(sb, d1).mul_(a1))
    sm.mul_(a0).add_(sb.mul_(a1))
    m.copy_(top)


class _TokenLogprobsEntropyTiled(torch.autograd.Function):
    """Per-token ``(logp_y, H)`` of ``(h @ w.T + b) * scale`` for float32/float64 heads, in tiles.

    Tiles of ``rows`` tokens by ``block`` vocabulary rows, the vocabulary blocks in the outer
    loop: a block of the weight is read once per pass and its gradient gathered over all
    tokens before the next block. Forward: per tile the maximum, ``S`` and ``T`` (see
    :func:`_merge`) of the shifted logits (one ``exp``), merged block by block; then
    ``log Z = m + log S`` and ``H = log S - T / S``. Backward: the tile's logits recomputed with ``-log Z`` folded into
    the product, ``g = p (c1 s + c0)`` in the two tile buffers, then ``dh += g @ w_block``
    and ``dw_block += g.T @ h``; the one-hot part of the logit gradient (``gy`` at the
    target) is added once to ``dh``, ``dw`` and ``db`` as rows, outside the tiles.
    """

    @staticmethod
    def forward(ctx, h, w, b, safe, keep, scale, rows, block, want_grad):
        n, vocab = h.shape[0], w.shape[0]
        sd, dev = h.dtype, h.device
        low = torch.finfo(sd).min  # a row of -inf logits in a block: shift by a finite number
        m, sm, tm = (torch.empty(n, dtype=sd, device=dev) for _ in range(3))
        mb, sb, tb = (torch.empty(n, dtype=sd, device=dev) for _ in range(3))
        xy = torch.zeros(n, dtype=sd, device=dev)
        pool = _Buffers(dev)
        for v0 in range(0, vocab, block):
            v1 = min(v0 + block, vocab)
            wb, bb = w[v0:v1], None if b is None else b[v0:v1]
            first = v0 == 0
            for s0 in range(0, n, rows):
                s1 = min(s0 + rows, n)
                x = _logits_into(pool.get("x", s1 - s0, v1 - v0, sd), h[s0:s1], wb, bb, scale)
                # the target's logit, from the tile that holds it
                local = safe[s0:s1] - v0
                inside = (local >= 0) & (local < v1 - v0)
                got = x.gather(1, local.clamp(0, v1 - v0 - 1).unsqueeze(1)).squeeze(1)
                xy[s0:s1] = torch.where(inside, got, xy[s0:s1])
                mt = torch.amax(x, 1, out=(m if first else mb)[s0:s1]).clamp_min_(low)
                # shifted logits, clamped: never a subnormal exp (large_vocab docstring)
                sh = x.sub_(mt.unsqueeze(1)).clamp_min_(_FLOOR)
                p = torch.exp(sh, out=pool.get("p", s1 - s0, v1 - v0, sd))
                torch.sum(p, 1, out=(sm if first else sb)[s0:s1])
                _rowdot(p, sh, out=(tm if first else tb)[s0:s1])
            if not first:
                _merge(m, sm, tm, mb, sb, tb)
        del pool
        log_s = sm.log()
        lse = m.add_(log_s)
        ent = log_s.sub_(tm.div_(sm))  # H = log S - E_p[x - m]
        zero = torch.zeros((), dtype=sd, device=dev)
        logp = torch.where(keep, xy - lse, zero)
        ent = torch.where(keep, ent, zero)
        ctx.cfg = (scale, rows, block)
        ctx.need = tuple(want_grad and x for x in ctx.needs_input_grad[:3])
        if want_grad:
            ctx.save_for_backward(h, w, b, safe, keep, lse, ent)
        ctx.set_materialize_grads(False)
        return logp, ent

    @staticmethod
    @once_differentiable
    def backward(ctx, g_logp, g_ent):
        h, w, b, safe, keep, lse, ent = ctx.saved_tensors
        scale, rows, block = ctx.cfg
        need = ctx.need
        n, vocab, sd, dev = h.shape[0], w.shape[0], h.dtype, h.device
        if not any(need):
            return None, None, None, None, None, None, None, None, None
        kf = keep.to(sd)
        gl = torch.zeros(n, dtype=sd, device=dev) if g_logp is None else g_logp.to(sd) * kf
        ge = None if g_ent is None else g_ent.to(sd) * kf
        # g = p (c1 s + c0) + gy onehot(y) with s = x - log Z (see _grad_chunk)
        c0 = -scale * (gl if ge is None else gl + ge * ent)
        c1 = None if ge is None else -scale * ge
        gy = scale * gl
        # the one-hot part, once: dh = gy w_y, dw_y += gy h, db_y += gy
        dh = gy.unsqueeze(1) * w[safe] if need[0] else None
        dw = None
        if need[1]:
            dw = torch.zeros(w.shape, dtype=sd, device=dev)
            dw.index_add_(0, safe, gy.unsqueeze(1) * h)
        db = None
        if need[2]:
            db = torch.zeros(b.shape, dtype=sd, device=dev)
            db.index_add_(0, safe, gy)
        nlse = -lse
        sb = None if b is None else b * scale
        pool = _Buffers(dev)
        for v0 in range(0, vocab, block):
            v1 = min(v0 + block, vocab)
            wb = w[v0:v1]
            for s0 in range(0, n, rows):
                s1 = min(s0 + rows, n)
                hc = h[s0:s1]
                x = pool.get("x", s1 - s0, v1 - v0, sd)
                # s = scale (h w^T + b) - log Z: the shift rides on the product (beta = 1)
                if sb is None:
                    x.copy_(nlse[s0:s1].unsqueeze(1).expand_as(x))
                else:
                    torch.add(sb[v0:v1].unsqueeze(0), nlse[s0:s1].unsqueeze(1), out=x)
                sh = x.addmm_(hc, wb.t(), alpha=scale).clamp_min_(_FLOOR)  # subnormal-free exp
                p = torch.exp(sh, out=pool.get("p", s1 - s0, v1 - v0, sd))
                if c1 is None:
                    g = p.mul_(c0[s0:s1].unsqueeze(1))
                else:
                    g = p.mul_(torch.addcmul(c0[s0:s1].unsqueeze(1), sh, c1[s0:s1].unsqueeze(1), out=sh))
                if dh is not None:
                    dh[s0:s1].addmm_(g, wb)
                if dw is not None:
                    dw[v0:v1].addmm_(g.t(), hc)
                if db is not None:
                    db[v0:v1].add_(g.sum(0))
        return dh, dw, db, None, None, None, None, None, None


class _TokenLogprobsEntropy(torch.autograd.Function):
    """Chunked per-token ``(logp_y, H)`` of ``(h @ w.T + b) / temperature`` for half-precision heads
    (chunks of full vocabulary rows); backward recomputes chunks."""

    @staticmethod
    def forward(ctx, h, w, b, safe, keep, scale, rows, tile, want_grad):
        n, vocab = h.shape[0], w.shape[0]
        sd = torch.float64 if h.dtype == torch.float64 else torch.float32
        dev = h.device
        logp = torch.empty(n, dtype=sd, device=dev)
        ent = torch.empty(n, dtype=sd, device=dev)
        lse = torch.empty(n, dtype=sd, device=dev)
        pool = _Buffers(dev)
        for s0 in range(0, n, rows):
            s1 = min(s0 + rows, n)
            e = _logits(pool, "x", h[s0:s1], w, b, scale, sd)
            m, top = e.max(1, keepdim=True)
            # one fused log-softmax pass into the second buffer (torch's kernel: max, sum of exp, shift)
            ls = torch.ops.aten._log_softmax.out(e, 1, False, out=pool.get("p", s1 - s0, vocab, sd))
            logp_c = ls.gather(1, safe[s0:s1].unsqueeze(1)).squeeze(1)
            # Z = m + log(sum), and log(sum) = -log_softmax at the maximum: no cancellation
            lse_c = (m - ls.gather(1, top)).squeeze(1)
            # exp(max(log p, floor)): no subnormal (large_vocab docstring); the logits buffer is free now
            ls.clamp_min_(_FLOOR)
            p = torch.exp(ls, out=e)
            # H = -sum_k p_k log p_k: bounded terms only (p log p with log p >= -60)
            ent_c = -_rowdot(p, ls)
            kc = keep[s0:s1]
            zero = torch.zeros((), dtype=sd, device=dev)
            logp[s0:s1] = torch.where(kc, logp_c, zero)
            ent[s0:s1] = torch.where(kc, ent_c, zero)
            lse[s0:s1] = lse_c
        del pool
        ctx.cfg = (scale, rows, tile)
        ctx.need = tuple(want_grad and x for x in ctx.needs_input_grad[:3])
        if want_grad:
            ctx.save_for_backward(h, w, b, safe, keep, lse, ent)
        ctx.set_materialize_grads(False)
        return logp, ent

    @staticmethod
    @once_differentiable
    def backward(ctx, g_logp, g_ent):
        h, w, b, safe, keep, lse, ent = ctx.saved_tensors
        scale, rows, tile = ctx.cfg
        need = ctx.need
        n, vocab, sd = h.shape[0], w.shape[0], lse.dtype
        half = w.dtype != sd
        dev = h.device
        kf = keep.to(sd)
        gl = torch.zeros(n, dtype=sd, device=dev) if g_logp is None else g_logp.to(sd) * kf
        ge = torch.zeros(n, dtype=sd, device=dev) if g_ent is None else g_ent.to(sd) * kf
        c1, c0, gy = -scale * ge, -scale * (gl + ge * ent), scale * gl
        dh = torch.zeros(h.shape, dtype=h.dtype, device=dev) if need[0] else None
        dw = torch.zeros(w.shape, dtype=sd, device=dev) if need[1] and not half else None
        db = torch.zeros(b.shape, dtype=sd, device=dev) if need[2] else None
        if dh is not None or dw is not None or db is not None:
            pool = _Buffers(dev)
            for s0 in range(0, n, rows):
                s1 = min(s0 + rows, n)
                hc = h[s0:s1]
                e = _logits(pool, "x", hc, w, b, scale, sd)
                g = _grad_chunk(e, pool.get("p", s1 - s0, vocab, sd), safe[s0:s1], lse[s0:s1], c1[s0:s1],
                                c0[s0:s1], gy[s0:s1], 0, vocab)
                _contract(pool, "x", g, hc, w, None if dh is None else dh[s0:s1], dw, db, accumulate=True)
            del pool
        if need[1] and half:
            def tile_grad(pool, hc, wb, s0, s1, v0, v1):
                bb = None if b is None else b[v0:v1]
                e = _logits(pool, "tile", hc, wb, bb, scale, sd)
                return _grad_chunk(e, pool.get("tile_p", s1 - s0, v1 - v0, sd), safe[s0:s1], lse[s0:s1],
                                   c1[s0:s1], c0[s0:s1], gy[s0:s1], v0, vocab)

            dw = _weight_grad_blocked(h, w, tile_grad, *tile)
        return dh, dw, db, None, None, None, None, None, None


def _check_tok(*, return_entropy: bool = False, **_) -> None:
    if not isinstance(return_entropy, bool):
        raise TypeError(f"return_entropy must be a bool, got {return_entropy!r}")


def _tok_example() -> Example:
    def make(gen):
        t = randint(gen, 11, 2, 4)
        t[0, 2] = IGNORE
        return (randn(gen, 2, 4, 5), randn(gen, 11, 5), t), {"return_entropy": True, "temperature": 0.7,
                                                             "chunk_size": 3}

    def plain(gen):  # log-probs only: the cross-entropy path
        t = randint(gen, 11, 7)
        t[3] = IGNORE
        return (randn(gen, 7, 5), randn(gen, 11, 5), t), {"temperature": 1.3}

    def mismatch(gen):
        return (randn(gen, 7, 5), randn(gen, 11, 4), randint(gen, 11, 7)), {}

    def empty(gen):
        return (randn(gen, 2, 4, 5), randn(gen, 11, 5), torch.full((2, 4), IGNORE)), {"return_entropy": True}

    def output(value):
        # both outputs go through the suite: loss = logps + entropy (gradients of both)
        return value.logps + value.entropy if isinstance(value, TokenLogprobsOutput) else value

    return Example(make=make, mismatch=mismatch, mismatch_match="hidden", extreme=None, output=output,
                   mean_rule=partial(_kept_mean, target_pos=2), variants=(plain,), empty=empty)


@overload
def linear_token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, *, bias: torch.Tensor | None = ...,
    temperature: float = ..., ignore_index: int = ..., return_entropy: Literal[False] = ...,
    reduction: Reduction = ..., chunk_size: int | None = ...,
) -> torch.Tensor: ...


@overload
def linear_token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, *, bias: torch.Tensor | None = ...,
    temperature: float = ..., ignore_index: int = ..., return_entropy: Literal[True],
    reduction: Reduction = ..., chunk_size: int | None = ...,
) -> TokenLogprobsOutput: ...


@register("linear_token_logprobs", family="large_vocab", reference=CCE_PAPER, example=_tok_example(),
          input_kind="hidden states", module_required=False, memory="O(chunk * V)",
          tags=("grpo", "policy gradient", "per-token log-probability", "entropy", "token entropy", "temperature",
                "language model", "llm", "fused linear", "large vocabulary", "reinforcement learning"))
@hyperparameter_checks(_check_tok)
def linear_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
    reduction: Reduction = "none",
    chunk_size: int | None = None,
) -> torch.Tensor | TokenLogprobsOutput:
    r"""Per-token log-probabilities of the targets (and entropies) from hidden states, without the logits.

    With the tempered logits :math:`x = (hW^\top + b)/\tau` and :math:`p = \operatorname{softmax} x`,

    .. math::
        \log p_y = x_y - \log\sum_k e^{x_k}, \qquad H = -\sum_k p_k \log p_k ,

    per token; ignored tokens give 0 (both). The temperature is the sampling temperature
    (GRPO trainers divide the logits by it before the log-softmax, so that the
    log-probabilities are those of the distribution the completions were sampled from).
    Differentiable in both outputs (the entropy's gradient is
    :math:`\partial H/\partial x_j = -p_j(x_j - \mathbb{E}_p[x])`, for entropy bonuses);
    chunked, no N × V logits, recomputed in backward, subnormal-free, half-precision heads
    as in :func:`~losslab.functional.linear_cross_entropy`. Without ``return_entropy`` this
    is ``-linear_cross_entropy(hidden / temperature, weight, target, bias=bias / temperature,
    reduction="none")``.

    Args:
        hidden: ``(*, D)`` hidden states (position :math:`t` scores ``target[..., t]``: shift
            them yourself for next-token prediction).
        weight: ``(V, D)`` LM head.
        target: ``(*)`` token ids (any integer dtype) or ``ignore_index``.
        bias: optional ``(V,)``.
        temperature: :math:`\tau > 0`.
        ignore_index: target value of tokens left out.
        return_entropy: also return each token's entropy, as a :class:`TokenLogprobsOutput`.
        reduction: ``"none"`` (the default, not ``"mean"``: per-token quantities used as
            inputs of a loss, not a loss), ``"mean"`` over the kept tokens or ``"sum"``;
            applied to both outputs.
        chunk_size: tokens per chunk (``None``: with the entropy and a float32/float64 head,
            tiles of 4096 vocabulary rows by as many tokens as fit 64 MiB of tile buffers;
            otherwise from the family's 32 MiB budget, at least 128 tokens so that the matrix
            products are not memory-bound at large V).

    Shape:
        hidden ``(*, D)``, target ``(*)``; outputs ``(*)`` for ``"none"``, else scalars
        (float32 for half-precision inputs).

    Returns:
        the log-probabilities, or a :class:`TokenLogprobsOutput` ``(logps, entropy)``.

    Example:
        >>> import torch
        >>> from losslab.functional import linear_token_logprobs
        >>> g = torch.Generator().manual_seed(0)
        >>> h, w = torch.randn(2, 3, 8, generator=g), torch.randn(50, 8, generator=g)
        >>> t = torch.tensor([[1, 4, 9], [16, 25, -100]])
        >>> out = linear_token_logprobs(h, w, t, temperature=0.7, return_entropy=True)
        >>> logp = torch.log_softmax(h @ w.T / 0.7, -1)
        >>> ref = logp.gather(-1, t.clamp_min(0).unsqueeze(-1)).squeeze(-1).masked_fill(t < 0, 0)
        >>> torch.allclose(out.logps, ref, atol=1e-5)
        True
        >>> ent = -(logp.exp() * logp).sum(-1).masked_fill(t < 0, 0)
        >>> torch.allclose(out.entropy, ent, atol=1e-5)
        True

    References:
        Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", 2024,
        https://arxiv.org/abs/2411.09009 (the chunked computation); Shao et al.,
        "DeepSeekMath", 2024, https://arxiv.org/abs/2402.03300 (per-token GRPO).
    """
    _check_linear(hidden, weight, bias)
    check_hyperparameters(linear_token_logprobs, dict(
        temperature=temperature, ignore_index=ignore_index, return_entropy=return_entropy, reduction=reduction,
        chunk_size=chunk_size))
    vocab, dim = weight.shape
    lead = hidden.shape[:-1]
    target = _check_tokens(target, hidden, vocab, ignore_index)
    keep = target != ignore_index
    if not return_entropy:
        h, b = hidden, bias
        if temperature != 1.0:
            # (h W^T + b) / tau = (h / tau) W^T + b / tau: an (N, D) copy, never (N, V)
            h = hidden / temperature
            b = None if bias is None else bias / temperature
        logps = -linear_cross_entropy(h, weight, target, bias=b, ignore_index=ignore_index, reduction="none",
                                      chunk_size=chunk_size)
        return reduce(logps, reduction, mask=keep) if reduction == "mean" else reduce(logps, reduction)
    sd = _stat_dtype(hidden, weight, bias)
    h2, w_c = _operands(hidden, weight, sd)
    b_c = None if bias is None else bias.to(sd)
    t1 = target.reshape(-1)
    k1 = keep.reshape(-1)
    safe = torch.where(k1, t1, torch.zeros((), dtype=t1.dtype, device=t1.device))
    n = h2.shape[0]
    item = torch.empty((), dtype=sd).element_size()
    scale, want_grad = 1.0 / float(temperature), _needs_grad(hidden, weight, bias)
    if w_c.dtype == sd:
        block = min(vocab, TILE_VOCAB)
        rows = max(1, min(n, chunk_size if chunk_size is not None else TILE_BYTES // (2 * item * block)))
        logps, ent = _TokenLogprobsEntropyTiled.apply(h2, w_c, b_c, safe, k1, scale, rows, block, want_grad)
    else:
        half_item = w_c.element_size()
        rows = _chunk_rows(chunk_size, n, vocab * (2 * item + half_item))  # logits and softmax buffers
        if chunk_size is None:
            rows = max(rows, min(n, MIN_TOKEN_ROWS))
        tile = _tile_shape(n, vocab, dim, half_item + 2 * item)
        logps, ent = _TokenLogprobsEntropy.apply(h2, w_c, b_c, safe, k1, scale, rows, tile, want_grad)
    logps, ent = logps.reshape(lead), ent.reshape(lead)
    if reduction == "mean":
        return TokenLogprobsOutput(reduce(logps, reduction, mask=keep), reduce(ent, reduction, mask=keep))
    return TokenLogprobsOutput(reduce(logps, reduction), reduce(ent, reduction))
