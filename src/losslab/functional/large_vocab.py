"""Large-vocabulary objectives from hidden states without the N × V logit matrix: the family's
shared chunking and matrix-product machinery, and :func:`linear_cross_entropy`.

The rest of the family builds on this module: :mod:`losslab.functional.large_vocab_divergences`
(``linear_kl_divergence``, ``linear_js_divergence``) and
:mod:`losslab.functional.large_vocab_sequence` (``sequence_logprobs``, a wrapper of
:func:`linear_cross_entropy`). The design below holds for all of them.

The logits ``hidden @ weight.T (+ bias)`` are formed one chunk of tokens at a time (full
vocabulary rows, so each chunk's log-sum-exp is exact without an online update), used and
dropped. Every objective of the family runs on a custom :class:`torch.autograd.Function`:

* ``reduction="sum"``/``"mean"``: while a chunk's logits are in memory the forward pass also
  forms the gradient of the logits and immediately contracts it into the gradients of
  ``hidden`` (and, in float32/float64, of ``weight`` and ``bias``) for the upstream
  gradient 1. The backward pass only rescales them by the (scalar) upstream gradient. The
  cost is therefore the three matrix products of the materialized path and no more.
* ``reduction="none"`` (and the gradient of ``return_lse``): the upstream gradient differs
  per token and is unknown during the forward pass, so the forward keeps only per-token
  statistics (log-sum-exp) and the backward recomputes each chunk's logits — four products.
  Precomputing the ``"none"`` gradient with unit upstream weights is the bug other libraries
  had; it is not done here.

Half-precision weights (bfloat16, float16). The point of these objectives is an LLM head
in bfloat16, where a float32 copy of ``weight`` and a float32 ``(V, D)`` gradient would
each be twice the weight itself (4 GiB at V = 256k, D = 4096). So with a half-precision
``weight`` the matrix products run in its dtype (no copy of the weight) and nothing of size
``(V, D)`` is made but the weight's gradient, in the weight's dtype:

* logits: each chunk's product is carried to float32 in two half-precision parts, the
  rounded product ``hi`` and the residue ``lo = h @ w.T - hi`` (one more product, see
  :func:`_logits`), so the logits are not rounded to the half dtype — the materialized
  half-precision path rounds them, which is the larger part of its error;
* statistics (max, log-sum-exp, softmax, the loss) in float32;
* the logit gradient is rounded to the weight's dtype for the products that give the
  gradients of ``hidden`` and ``weight``, as in the materialized path;
* the weight gradient is not accumulated chunk by chunk in the half dtype (the running sum
  would be rounded once per chunk of tokens, an error growing with their number): a second
  pass takes the vocabulary in blocks of rows and gathers each block's gradient over all
  tokens (up to ``BLOCK_ROWS`` per tile) in a float32 ``(block, D)`` accumulator, rounded
  once into the result, as the materialized product ``G^T H`` is.

The price is products: six half-precision products for ``"sum"``/``"mean"`` (two per
logit chunk, twice, plus the two gradient products) against the materialized path's three.
Half-precision products are several times faster than float32 ones on hardware with
bfloat16 units, GPUs and recent CPUs alike. (float16 products on CPUs without float16 units
are very slow in torch, for the materialized path too.)

Subnormal floats. On CPU, ``exp`` of a very negative shifted logit yields a subnormal float,
and arithmetic on subnormals is an order of magnitude slower; a peaked softmax (large logits)
makes many. Every shifted logit ``s = x - max`` (forward) or ``s = x - lse`` (backward) is
clamped at ``_FLOOR = -60`` before ``exp``. Why this does not change the result beyond
round-off: the sum of exponentials contains the maximum term ``exp(0) = 1``; replacing every
term below ``exp(-60) ≈ 8.8e-27`` by ``exp(-60)`` changes the sum by at most
``V·8.8e-27`` relative, below float32's unit round-off (6e-8) for ``V < 6e18`` and float64's
(1.1e-16) for ``V < 1e10``; in the gradient each such softmax entry is off by less than
``8.8e-27`` in absolute value. And ``exp(-60)/V`` stays a normal float32 for ``V < 7e11``,
so the following products (the scaling by ``1/sum``, the matrix products) meet no
subnormals either. No global flag (``torch.set_flush_denormal``) is touched. ``clamp`` keeps
NaN, so a NaN input still gives a NaN loss (non-finite inputs: see CONTRIBUTING.md).
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal, NamedTuple, overload

import torch
from torch.autograd.function import once_differentiable

from .._checks import (
    check_class_target,
    check_floating,
    check_hyperparameters,
    hyperparameter_checks,
)
from .._numerics import LOW_PRECISION
from .._reduction import Reduction
from ..registry import Example, Reference, register
from ._examples import IGNORE, randint, randn

__all__ = [
    "linear_cross_entropy",
    "LinearCrossEntropyOutput",
]

CCE_PAPER = Reference(
    title="Cut Your Losses in Large-Vocabulary Language Models",
    authors="Erik Wijmans, Brody Huval, Alexander Hertzberg, Vladlen Koltun, Philipp Krähenbühl",
    year=2024,
    url="https://arxiv.org/abs/2411.09009",
)
CCE_SEED = "Cut Your Losses in Large-Vocabulary Language Models"

_FLOOR = -60.0  # clamp of shifted logits before exp; see the module docstring
CHUNK_BUDGET_BYTES = 32 * 2**20  # the chunk buffers of logits together (chunk_size=None)
MIN_ROWS = 16  # below this a chunk's products become matrix-vector products (slow)
BLOCK_ROWS = 16384  # most tokens per tile of the half-precision weight-gradient pass
MIN_BLOCK = 64  # fewest vocabulary rows per block of that pass


# --------------------------------------------------------------------------- helpers
def _chunk_rows(chunk_size: int | None, n: int, bytes_per_row: int) -> int:
    """Tokens per chunk: ``chunk_size``, or as many full-vocabulary rows as fit the budget."""
    rows = chunk_size if chunk_size is not None else max(MIN_ROWS, CHUNK_BUDGET_BYTES // max(bytes_per_row, 1))
    return max(1, min(rows, n))


def _tile_shape(n: int, vocab: int, dim: int, bytes_per_entry: int) -> tuple[int, int]:
    """(tokens, vocabulary rows) of a tile of the blocked weight-gradient pass.

    Tokens: all of them up to ``BLOCK_ROWS`` (one tile of tokens per block means one matrix
    product and one rounding per gradient entry, as in the materialized path; each further
    tile adds the rounding of its partial product). Vocabulary rows: what the chunk budget
    leaves, at least ``MIN_BLOCK``, and so that the float32 ``(block, D)`` accumulator stays
    within the budget too.
    """
    rows = max(1, min(n, BLOCK_ROWS))
    block = min(CHUNK_BUDGET_BYTES // (rows * bytes_per_entry), CHUNK_BUDGET_BYTES // (6 * max(dim, 1)))
    return rows, max(1, min(vocab, max(MIN_BLOCK, block)))


def _half(w: torch.Tensor, stat_dtype: torch.dtype) -> bool:
    """Matrix products in the weight's own (half) dtype, statistics in float32."""
    return w.dtype in LOW_PRECISION and stat_dtype == torch.float32


def _stat_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (the statistics' dtype)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _operands(hidden: torch.Tensor, weight: torch.Tensor, sd: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hidden (N, D), weight)`` in the dtype of the matrix products.

    A half-precision weight is used as it is (hidden is cast to its dtype if needed: an
    ``(N, D)`` copy, never a ``(V, D)`` one); otherwise both are in the statistics' dtype.
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    mm = weight.dtype if _half(weight, sd) else sd
    return h.to(mm), weight.to(mm)


class _Buffers:
    """Scratch buffers reused by every chunk (allocated once, at the first and largest chunk:
    a fresh large allocation per chunk would fault its pages in every time)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
        size = rows * cols
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < size or buf.dtype != dtype:
            buf = torch.empty(size, dtype=dtype, device=self.device)
            self._bufs[name] = buf
        return buf[:size].view(rows, cols)


def _logits_into(
    out: torch.Tensor, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, scale: float = 1.0
) -> torch.Tensor:
    """``scale * (h @ w.T (+ b))`` written into a preallocated buffer (no allocation per chunk;
    the scale, the softcap's ``1/c``, rides on the matrix product instead of a pass of its own)."""
    if b is None:
        if scale == 1.0:
            return torch.mm(h, w.t(), out=out)
        return out.addmm_(h, w.t(), beta=0.0, alpha=scale)  # beta=0: the buffer's old contents are ignored
    return torch.addmm(b, h, w.t(), beta=scale, alpha=scale, out=out)


def _logits(pool: _Buffers, name: str, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, scale: float,
            sd: torch.dtype) -> torch.Tensor:
    """Logits ``scale * (h @ w.T + b)`` of a chunk (or tile) in the statistics' dtype ``sd``.

    With a half-precision weight the product runs in its dtype and is carried to ``sd`` in
    two parts, so that the logits are not rounded to the half dtype: ``hi = h @ w.T`` rounded,
    then ``lo = h @ w.T - hi`` by ``addmm(hi, h, w.T, beta=-1)``, which subtracts ``hi`` inside
    the product's float32 accumulator before its one rounding; ``hi + lo`` in float32 carries
    about 16 significant bits (bfloat16) — the float32 logits of the same inputs to ~1e-5
    relative — for a second half-precision product instead of a float32 one or a float32 copy
    of the weight. (A backend that rounded the product before subtracting would give
    ``lo = 0``: the logits rounded once, as in the materialized half-precision path.)
    """
    out = pool.get(name, h.shape[0], w.shape[0], sd)
    if w.dtype == sd:
        return _logits_into(out, h, w, b, scale)
    low = torch.mm(h, w.t(), out=pool.get(name + "_half", h.shape[0], w.shape[0], w.dtype))
    if b is None:
        out.copy_(low)
    else:
        torch.add(low, b, out=out)  # half + float32 is computed in float32
    out.add_(low.addmm_(h, w.t(), beta=-1.0))
    return out if scale == 1.0 else out.mul_(scale)


def _contract(pool: _Buffers, name: str, g: torch.Tensor, hc: torch.Tensor, w: torch.Tensor,
              dh: torch.Tensor | None, dw: torch.Tensor | None, db: torch.Tensor | None, accumulate: bool) -> None:
    """From a chunk's logit gradient ``g``: ``dh (=|+=) g @ w``, ``dw += g.T @ hc``, ``db += g.sum(0)``.

    For a half-precision weight ``g`` is rounded to its dtype first (the materialized path's
    logit gradient is in that dtype too); the half buffer of the chunk's logits is free by
    now and holds it.
    """
    if dh is None and dw is None:
        gm = g
    else:
        gm = g if w.dtype == g.dtype else pool.get(name + "_half", g.shape[0], g.shape[1], w.dtype).copy_(g)
    if dh is not None:
        if accumulate:
            dh.addmm_(gm, w)
        else:
            torch.mm(gm, w, out=dh)
    if dw is not None:
        dw.addmm_(gm.t(), hc)
    if db is not None:
        db.add_(g.sum(0))


TileGrad = Callable[[_Buffers, torch.Tensor, torch.Tensor, int, int, int, int], torch.Tensor]


def _weight_grad_blocked(h: torch.Tensor, w: torch.Tensor, tile_grad: TileGrad, rows: int, block: int) -> torch.Tensor:
    """The ``(V, D)`` weight gradient in the weight's (half) dtype, a block of vocabulary rows at a time.

    ``tile_grad(pool, h_rows, w_block, s0, s1, v0, v1)`` returns the float32 logit gradient of
    tokens ``s0:s1`` and vocabulary rows ``v0:v1``. Each block's gradient is gathered over all
    tokens in a float32 ``(block, D)`` accumulator and rounded once into the result (module
    docstring); with a single tile of tokens the product writes the result directly.
    """
    n, dim = h.shape
    vocab = w.shape[0]
    dw = torch.empty(vocab, dim, dtype=w.dtype, device=w.device)
    pool = _Buffers(h.device)
    single = rows >= n
    for v0 in range(0, vocab, block):
        v1 = min(v0 + block, vocab)
        wb = w[v0:v1]
        acc = None if single else pool.get("acc", v1 - v0, dim, torch.float32)
        for s0 in range(0, n, rows):
            s1 = min(s0 + rows, n)
            hc = h[s0:s1]
            g = tile_grad(pool, hc, wb, s0, s1, v0, v1)
            gm = pool.get("tile_half", s1 - s0, v1 - v0, w.dtype).copy_(g)
            if single:
                torch.mm(gm.t(), hc, out=dw[v0:v1])
                continue
            part = torch.mm(gm.t(), hc, out=pool.get("part", v1 - v0, dim, w.dtype))
            if s0 == 0:
                acc.copy_(part)
            else:
                acc.add_(part)
        if acc is not None:
            dw[v0:v1].copy_(acc)
    return dw


def _check_linear(hidden, weight, bias, name: str = "hidden", wname: str = "weight") -> None:
    check_floating(hidden, name)
    check_floating(weight, wname)
    if weight.dim() != 2:
        raise ValueError(f"{wname} must be (V, D), got shape {tuple(weight.shape)}")
    if hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"the last dimension of {name} {tuple(hidden.shape)} must equal the second of {wname} {tuple(weight.shape)}"
        )
    if bias is not None:
        check_floating(bias, "bias")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")


def _check_tokens(target, hidden, vocab: int, ignore_index: int, hname: str = "hidden") -> torch.Tensor:
    """Token ids of shape ``hidden.shape[:-1]`` in ``[0, V)`` or ``ignore_index``, returned as int64."""
    if isinstance(target, torch.Tensor) and target.is_floating_point():
        raise TypeError(f"target: class indices must be integers (token ids), got dtype {target.dtype}")
    # the checks see the logits' shape (*, V) without any logits existing (a meta tensor)
    rows = torch.empty((*hidden.shape[:-1], vocab), device="meta")
    return check_class_target(target, rows, ignore_index=ignore_index, logits_name=hname)


def _apply_target_terms(g: torch.Tensor, y: torch.Tensor, c: torch.Tensor, eps: float, vocab: int,
                        v0: int = 0) -> None:
    """``g -= c * ((1 - eps) onehot(y) + eps / V)`` in place (the non-softmax part of dCE/dx).

    ``g`` holds the vocabulary columns ``v0 : v0 + g.shape[1]``; targets outside them add 0.
    """
    if eps > 0:
        g.sub_((c * (eps / vocab)).unsqueeze(1))
    if eps < 1:
        rows = torch.arange(g.shape[0], device=g.device)
        width = g.shape[1]
        if v0 == 0 and width == vocab:
            g.index_put_((rows, y), c * -(1.0 - eps), accumulate=True)
        else:
            local = y - v0
            inside = (local >= 0) & (local < width)
            g.index_put_((rows, local.clamp(0, width - 1)), torch.where(inside, c * -(1.0 - eps), 0.0),
                         accumulate=True)


def _needs_grad(*ts) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


# --------------------------------------------------------------------------- cross-entropy
def _ce_tile_grad(b, safe, lse, a, c, cfg, vocab, sd) -> TileGrad:
    """Logit gradient ``a_n softmax - c_n ((1-eps) onehot + eps/V)`` (softcap chain rule
    included) of one tile, from the per-token log-sum-exp."""
    eps, _, cap = cfg

    def tile(pool, hc, wb, s0, s1, v0, v1):
        bb = None if b is None else b[v0:v1]
        z = lse[s0:s1].unsqueeze(1)
        if cap is None:
            e = _logits(pool, "tile", hc, wb, bb, 1.0, sd).sub_(z)
        else:
            th = _logits(pool, "tile", hc, wb, bb, 1.0 / cap, sd).tanh_()
            e = torch.add(z.neg(), th, alpha=cap, out=pool.get("tile_e", s1 - s0, v1 - v0, sd))
        g = e.clamp_min_(_FLOOR).exp_().mul_(a[s0:s1].unsqueeze(1))
        if c is not None:
            _apply_target_terms(g, safe[s0:s1], c[s0:s1], eps, vocab, v0)
        if cap is not None:
            g.addcmul_(g, th.square_(), value=-1.0)  # d(c tanh(x/c))/dx = 1 - tanh^2
        return g

    return tile


class _LinearCrossEntropy(torch.autograd.Function):
    """Chunked CE of ``h @ w.T + b``: outputs (per-token loss, or its sum / kept mean; per-token lse)."""

    @staticmethod
    def forward(ctx, h, w, b, safe, keep, denom, cfg, rows, tile, per_token, want_grad):
        eps, zl, cap = cfg
        n, vocab = h.shape[0], w.shape[0]
        sd = torch.float64 if h.dtype == torch.float64 else torch.float32  # statistics
        half = w.dtype != sd
        dev = h.device
        need = tuple(want_grad and x for x in ctx.needs_input_grad[:3])
        precompute = want_grad and not per_token and any(need)
        ctx.cfg, ctx.rows, ctx.tile, ctx.per_token, ctx.need = cfg, rows, tile, per_token, need
        ctx.precompute = precompute
        loss = torch.empty(n, dtype=sd, device=dev)
        lse = torch.empty(n, dtype=sd, device=dev)
        pool = _Buffers(dev)
        if eps > 0 and cap is None:
            # sum_k x_k = h . sum_k w_k + sum_k b_k: a matrix-vector product, no pass over the chunk
            wsum = w.sum(0, dtype=sd)
            bsum = b.sum() if b is not None else 0.0
        dh = dw = db = None
        if precompute:
            dh = torch.empty(h.shape, dtype=h.dtype, device=dev) if need[0] else None
            # a half-precision weight's gradient is formed in the backward pass (blocked, module docstring)
            dw = torch.zeros(w.shape, dtype=sd, device=dev) if need[1] and not half else None
            db = torch.zeros(b.shape, dtype=sd, device=dev) if need[2] else None
        for s0 in range(0, n, rows):
            s1 = min(s0 + rows, n)
            hc, yc, kc = h[s0:s1], safe[s0:s1], keep[s0:s1]
            if cap is None:
                e = _logits(pool, "x", hc, w, b, 1.0, sd)
                m = e.amax(1, keepdim=True)
                xy = e.gather(1, yc.unsqueeze(1))
                if eps > 0:
                    sumx = (torch.mv(hc.to(sd), wsum) + bsum).unsqueeze(1)
                e.sub_(m)
            else:
                # capped logits c tanh(x / c): statistics are taken on tanh and scaled (tanh is
                # monotone), and c th - m is one fused pass into the second buffer
                th = _logits(pool, "x", hc, w, b, 1.0 / cap, sd).tanh_()
                m = th.amax(1, keepdim=True).mul_(cap)
                xy = th.gather(1, yc.unsqueeze(1)).mul_(cap)
                if eps > 0:
                    sumx = th.sum(1, keepdim=True).mul_(cap)
                e = torch.add(m.neg(), th, alpha=cap, out=pool.get("e", s1 - s0, vocab, sd))
            # exp(max(x - m, floor)): never a subnormal (module docstring); e becomes the weights
            e.clamp_min_(_FLOOR).exp_()
            ssum = e.sum(1, keepdim=True)
            logs = ssum.log()
            # CE = Z - (1-eps) x_y - eps mean_k x_k with Z = m + log(sum), written around m
            lc = logs - (1.0 - eps) * (xy - m)
            if eps > 0:
                lc = lc - eps * (sumx / vocab - m)
            lse_c = (m + logs).squeeze(1)
            lc = lc.squeeze(1)
            if zl > 0:
                lc = lc + zl * lse_c.square()
            # where, not a product: an ignored token's value never counts, whatever it holds
            loss[s0:s1] = torch.where(kc, lc, torch.zeros((), dtype=sd, device=dev))
            lse[s0:s1] = lse_c
            if precompute:
                # dCE/dx for upstream gradient 1 (/ the kept count for "mean"):
                # softmax * (1 + 2 zl Z) - (1-eps) onehot - eps/V
                kf = kc.to(sd) if denom is None else kc.to(sd) / denom
                a = kf * (1.0 + 2.0 * zl * lse_c) if zl > 0 else kf
                g = e.mul_(a.unsqueeze(1) / ssum)
                _apply_target_terms(g, yc, kf, eps, vocab)
                if cap is not None:
                    g.addcmul_(g, th.square_(), value=-1.0)  # chain rule: d(c tanh(x/c))/dx = 1 - tanh^2
                _contract(pool, "x", g, hc, w, None if dh is None else dh[s0:s1], dw, db, accumulate=False)
        del pool
        if want_grad:
            # the precomputed gradients are saved tensors (not ctx attributes) so that autograd
            # frees them right after the backward pass instead of when the graph dies
            ctx.save_for_backward(h, w, b, safe, keep, lse, denom, dh, dw, db)
        ctx.set_materialize_grads(False)
        if per_token:
            return loss, lse
        return (loss.sum() if denom is None else loss.sum() / denom), lse

    @staticmethod
    @once_differentiable
    def backward(ctx, g_loss, g_lse):
        h, w, b, safe, keep, lse, denom, pre_dh, pre_dw, pre_db = ctx.saved_tensors
        eps, zl, cap = ctx.cfg
        need = ctx.need
        n, vocab, sd = h.shape[0], w.shape[0], lse.dtype
        half = w.dtype != sd
        dev = h.device
        kf = keep.to(sd)
        # Per token: d/dx of G_n * CE_n + gl_n * Z_n = a_n softmax - c_n ((1-eps) onehot + eps/V)
        c = None
        if g_loss is not None:
            c = g_loss * kf if denom is None else g_loss * kf / denom
        a = None if g_lse is None else g_lse.to(sd)
        if c is not None:
            ac = c * (1.0 + 2.0 * zl * lse) if zl > 0 else c
            a = ac if a is None else a + ac
        pre = ctx.precompute and g_loss is not None
        # "sum"/"mean": the loss part was formed in the forward pass for upstream 1 and is only
        # scaled here (out of place, so that a second backward with retain_graph=True gives the
        # same bits; the saved buffers are freed after backward). What is left for a pass over
        # the chunks: the log-sum-exp part, or everything ("none").
        a_rest, c_rest = (g_lse, None) if pre else (a, c)
        dh = dw = db = None
        if need[0]:
            dh = pre_dh * g_loss if pre else torch.zeros(h.shape, dtype=h.dtype, device=dev)
        if need[1] and not half:
            dw = pre_dw * g_loss if pre else torch.zeros(w.shape, dtype=sd, device=dev)
        if need[2]:
            db = pre_db * g_loss if pre else torch.zeros(b.shape, dtype=sd, device=dev)
        if a_rest is not None and (dh is not None or dw is not None or db is not None):
            a_rest = a_rest.to(sd)
            pool = _Buffers(dev)
            rows = ctx.rows
            for s0 in range(0, n, rows):
                s1 = min(s0 + rows, n)
                hc = h[s0:s1]
                z = lse[s0:s1].unsqueeze(1)
                if cap is None:
                    e = _logits(pool, "x", hc, w, b, 1.0, sd).sub_(z)
                else:
                    th = _logits(pool, "x", hc, w, b, 1.0 / cap, sd).tanh_()
                    e = torch.add(z.neg(), th, alpha=cap, out=pool.get("e", s1 - s0, vocab, sd))
                # softmax = exp(max(x - Z, floor)), scaled by a_n
                g = e.clamp_min_(_FLOOR).exp_().mul_(a_rest[s0:s1].unsqueeze(1))
                if c_rest is not None:
                    _apply_target_terms(g, safe[s0:s1], c_rest[s0:s1], eps, vocab)
                if cap is not None:
                    g.addcmul_(g, th.square_(), value=-1.0)
                _contract(pool, "x", g, hc, w, None if dh is None else dh[s0:s1], dw, db, accumulate=True)
            del pool
        if need[1] and half and a is not None:
            rows, block = ctx.tile
            dw = _weight_grad_blocked(h, w, _ce_tile_grad(b, safe, lse, a, c, ctx.cfg, vocab, sd), rows, block)
        return dh, dw, db, None, None, None, None, None, None, None, None


class LinearCrossEntropyOutput(NamedTuple):
    """What :func:`linear_cross_entropy` returns with ``return_lse=True``.

    Attributes:
        loss: the loss, reduced as asked (the value returned without ``return_lse``).
        lse: per-token log-sum-exp :math:`Z` of the (capped) logits, float32 for half inputs,
            with the ``"none"`` shape (``(*)``, or ``(*, T - 1)`` with ``shift=True``), for
            every token including ignored ones; differentiable.
    """

    loss: torch.Tensor
    lse: torch.Tensor


def _check_lce(*, return_lse: bool = False, shift: bool = False, **_) -> None:
    """Hyperparameters of :func:`linear_cross_entropy` beyond the shared vocabulary."""
    for name, value in (("return_lse", return_lse), ("shift", shift)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}")


def _kept_mean(none: torch.Tensor, args: tuple, kwargs: dict, *, target_pos: int) -> torch.Tensor:
    """``"mean"`` of the token objectives: the sum of ``"none"`` over the kept tokens' count."""
    target = args[target_pos] if len(args) > target_pos else None
    if target is None:
        return none.mean() if none.numel() else none.sum()
    if kwargs.get("shift"):
        target = target[..., 1:]
    k = (target != kwargs.get("ignore_index", IGNORE)).sum()
    return none.sum() / k if k > 0 else none.sum() * 0


def _lce_example() -> Example:
    options = {"chunk_size": 3, "label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 4.0}

    def make(gen):
        t = randint(gen, 11, 2, 4)
        t[0, 2] = IGNORE
        return (randn(gen, 2, 4, 5), randn(gen, 11, 5), t), dict(options)

    def plain(gen):  # no option on, flat tokens, default chunking
        t = randint(gen, 11, 7)
        t[3] = IGNORE
        return (randn(gen, 7, 5), randn(gen, 11, 5), t), {}

    def shifted(gen):  # next-token prediction, "none" is (B, T - 1)
        t = randint(gen, 11, 3, 4)
        t[1, 2] = IGNORE
        return (randn(gen, 3, 4, 5), randn(gen, 11, 5), t), {"shift": True, "chunk_size": 4, "z_loss": 1e-2}

    def mismatch(gen):
        return (randn(gen, 7, 5), randn(gen, 11, 4), randint(gen, 11, 7)), {}

    def empty(gen):
        return (randn(gen, 2, 4, 5), randn(gen, 11, 5), torch.full((2, 4), IGNORE)), dict(options)

    return Example(make=make, mismatch=mismatch, mismatch_match="hidden", extreme=None,
                   mean_rule=partial(_kept_mean, target_pos=2), variants=(plain, shifted), empty=empty)


@overload
def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, *, bias: torch.Tensor | None = ...,
    ignore_index: int = ..., label_smoothing: float = ..., z_loss: float = ..., softcap: float | None = ...,
    reduction: Reduction = ..., chunk_size: int | None = ..., return_lse: Literal[False] = ..., shift: bool = ...,
) -> torch.Tensor: ...


@overload
def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, *, bias: torch.Tensor | None = ...,
    ignore_index: int = ..., label_smoothing: float = ..., z_loss: float = ..., softcap: float | None = ...,
    reduction: Reduction = ..., chunk_size: int | None = ..., return_lse: Literal[True], shift: bool = ...,
) -> LinearCrossEntropyOutput: ...


@register("linear_cross_entropy", family="large_vocab", reference=CCE_PAPER, seed=CCE_SEED, example=_lce_example(),
          input_kind="hidden states", classification_calibrated=True, bounded=False, memory="O(chunk * V)",
          tags=("language model", "llm", "lm head", "next-token prediction", "cut cross-entropy", "fused linear",
                "memory-efficient", "z-loss", "softcap", "large vocabulary"))
@hyperparameter_checks(_check_lce)
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
    reduction: Reduction = "mean",
    chunk_size: int | None = None,
    return_lse: bool = False,
    shift: bool = False,
) -> torch.Tensor | LinearCrossEntropyOutput:
    r"""Cross-entropy of hidden @ weight.T (+ bias) without materializing the N × V logits.

    Exactly :func:`~losslab.functional.cross_entropy` of the logits :math:`x = hW^\top + b`:
    with :math:`\tilde x = c\tanh(x/c)` (``softcap=c``, applied first),
    :math:`Z = \log\sum_k e^{\tilde x_k}` and smoothing :math:`\varepsilon`, a kept token
    with target :math:`y` costs

    .. math::
        \ell = (1-\varepsilon)(Z - \tilde x_y) + \frac{\varepsilon}{V}\sum_k (Z - \tilde x_k)
               + \lambda_z Z^2 ,

    ignored tokens cost 0, ``"mean"`` divides by the number of kept tokens (0 with zero
    gradients when every token is ignored), ``"sum"`` adds, ``"none"`` returns :math:`\ell`
    per token. Equal to ``F.cross_entropy(hidden @ weight.T + bias, target)`` where the
    options overlap.

    Tokens are processed in chunks of full vocabulary rows (``chunk_size`` tokens;
    ``None`` picks them so that the chunk buffers take about 32 MiB, at least 16 rows), so
    the extra memory is one chunk of logits plus the gradient buffers, whatever N is. A custom
    autograd function never keeps the logits: with ``"sum"``/``"mean"`` the gradients are
    formed in the forward pass while each chunk is in memory (three matrix products in all,
    like the materialized path; the backward only scales them by the upstream gradient, so
    it can be run once); with ``"none"`` the upstream gradient differs per token, so only the
    per-token log-sum-exp is kept and the backward recomputes each chunk (four products) —
    the gradient is exact for any upstream weights. Shifted logits are clamped at -60 before
    ``exp`` so that no subnormal float is produced (they make CPU arithmetic ~10x slower);
    this changes nothing beyond round-off. Caller tensors are never written to.

    Precision: float32 and float64 inputs are computed in their dtype. With a bfloat16 or
    float16 ``weight`` the matrix products run in that dtype (``hidden`` is cast to it if it
    differs) and nothing of size ``(V, D)`` is made but the weight's gradient, in the
    weight's dtype: each chunk's logits are upcast to float32 for the max, log-sum-exp and
    softmax, the loss and log-sum-exp are float32, and the weight gradient of each block of
    vocabulary rows is summed over all tokens in float32 and rounded once (one extra matrix
    product in the backward pass). The error against float64 is then that of the
    materialized half-precision path or smaller.

    ``shift=True`` is next-token prediction: position :math:`t` of ``hidden`` is scored
    against ``target[..., t + 1]`` (``target`` holds the token ids of the same positions),
    without copying ``hidden``; the last position has no target, so the ``"none"`` output
    and the log-sum-exp have shape ``(*, T - 1)``.

    Args:
        hidden: ``(*, D)`` hidden states.
        weight: ``(V, D)`` output embedding (classifier) matrix.
        target: ``(*)`` class indices (any integer dtype) in ``[0, V)`` or ``ignore_index``.
        bias: optional ``(V,)`` output bias (a ``forward`` argument of the Module, like
            ``weight``: trainable tensors are never held by the loss).
        ignore_index: target value of tokens left out.
        label_smoothing: :math:`\varepsilon \in [0, 1]`, as in torch.
        z_loss: coefficient :math:`\lambda_z \ge 0` of :math:`Z^2` per kept token.
        softcap: ``c > 0`` applies :math:`c\tanh(x/c)` to the logits first (Gemma 2: 30).
        reduction: ``"mean"`` (over kept tokens), ``"sum"`` or ``"none"``.
        chunk_size: tokens per chunk (``None``: from the 32 MiB budget).
        return_lse: also return the per-token log-sum-exp :math:`Z` of the (capped) logits:
            the result is then a :class:`LinearCrossEntropyOutput` ``(loss, lse)``.
        shift: next-token prediction along the last leading dimension (see above).

    Shape:
        hidden ``(*, D)``, target ``(*)``; output ``(*)`` for ``"none"`` (``(*, T-1)``
        with ``shift``), else a scalar; the log-sum-exp has the ``"none"`` shape.

    Returns:
        the loss (float32 for half-precision inputs), or a
        :class:`LinearCrossEntropyOutput` ``(loss, lse)`` with ``return_lse=True``.

    Example:
        >>> import torch
        >>> from losslab.functional import linear_cross_entropy
        >>> g = torch.Generator().manual_seed(0)
        >>> h, w = torch.randn(6, 8, generator=g), torch.randn(50, 8, generator=g)
        >>> t = torch.tensor([1, 4, 9, 16, 25, -100])
        >>> torch.allclose(linear_cross_entropy(h, w, t, chunk_size=4),
        ...                torch.nn.functional.cross_entropy(h @ w.T, t))
        True
        >>> out = linear_cross_entropy(h, w, t, reduction="none", return_lse=True)
        >>> torch.allclose(out.lse, torch.logsumexp(h @ w.T, -1))
        True

    References:
        Wijmans, Huval, Hertzberg, Koltun, Krähenbühl, "Cut Your Losses in
        Large-Vocabulary Language Models", ICLR 2025, https://arxiv.org/abs/2411.09009;
        Wortsman et al., 2023, https://arxiv.org/abs/2309.14322 (z-loss).
    """
    _check_linear(hidden, weight, bias)
    check_hyperparameters(linear_cross_entropy, dict(
        ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
        reduction=reduction, chunk_size=chunk_size, return_lse=return_lse, shift=shift))
    vocab, dim = weight.shape
    lead = hidden.shape[:-1]
    target = _check_tokens(target, hidden, vocab, ignore_index)
    if shift:
        if len(lead) == 0 or lead[-1] < 1:
            raise ValueError("shift=True needs hidden of shape (*, T, D) with T >= 1")
        # target of position t is the token at t + 1; the last position is ignored (an int copy
        # of the target, hidden is not copied)
        t_full = torch.full_like(target, ignore_index)
        t_full[..., :-1] = target[..., 1:]
    else:
        t_full = target
    sd = _stat_dtype(hidden, weight, bias)
    h2, w_c = _operands(hidden, weight, sd)
    b_c = None if bias is None else bias.to(sd)
    t1 = t_full.reshape(-1)
    keep = t1 != ignore_index
    safe = torch.where(keep, t1, torch.zeros((), dtype=t1.dtype, device=t1.device))
    n = h2.shape[0]
    item = torch.empty((), dtype=sd).element_size()
    extra = 0 if softcap is None else item  # softcap keeps tanh(x/c) for its derivative: a second buffer
    half_item = w_c.element_size() if w_c.dtype != sd else 0
    rows = _chunk_rows(chunk_size, n, vocab * (item + extra + half_item))
    tile = _tile_shape(n, vocab, dim, half_item + item + extra) if half_item else None
    cfg = (float(label_smoothing), float(z_loss), None if softcap is None else float(softcap))
    want_grad = _needs_grad(hidden, weight, bias)
    denom = None
    if reduction == "mean":
        # kept tokens, at least 1: with nothing kept the mean is 0 with zero gradients
        denom = keep.sum().clamp_min(1).to(sd)
    out, lse = _LinearCrossEntropy.apply(h2, w_c, b_c, safe, keep, denom, cfg, rows, tile, reduction == "none",
                                         want_grad)
    lse = lse.reshape(lead)
    if reduction == "none":
        out = out.reshape(lead)
    if shift:
        lse = lse[..., :-1]
        if reduction == "none":
            out = out[..., :-1]
    return LinearCrossEntropyOutput(out, lse) if return_lse else out
