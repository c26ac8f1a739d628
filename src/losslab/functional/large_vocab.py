"""Large-vocabulary objectives computed from hidden states without the N × V logit matrix.

The logits ``hidden @ weight.T (+ bias)`` are formed one chunk of tokens at a time (full
vocabulary rows, so each chunk's log-sum-exp is exact without an online update), used and
dropped. :func:`linear_cross_entropy` runs on a custom :class:`torch.autograd.Function`:

* ``reduction="sum"``/``"mean"``: while a chunk's logits are in memory the forward pass also
  forms the softmax gradient and immediately contracts it into the gradients of ``hidden``,
  ``weight`` and ``bias`` (for the upstream gradient 1). The backward pass only rescales
  them by the (scalar) upstream gradient. The cost is therefore the three matrix products
  of the materialized path — forward logits, grad of hidden, grad of weight — and no more.
* ``reduction="none"`` (and the gradient of ``return_lse``): the upstream gradient differs
  per token and is unknown during the forward pass, so the forward keeps only per-token
  statistics (log-sum-exp) and the backward recomputes each chunk's logits — four products.
  Precomputing the ``"none"`` gradient with unit upstream weights is the bug other libraries
  had; it is not done here.

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
subnormals either. No global flag (``torch.set_flush_denormal``) is touched.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from .._checks import (
    check_floating,
    check_in_range,
    check_integer,
    check_nonnegative,
    check_positive,
    check_reduction,
    validation_enabled,
)
from .._numerics import compute_dtype, upcast
from .._reduction import reduce
from ..registry import Example, Reference, register
from ._examples import randint, randn
from .divergences import generalized_js_divergence, kl_divergence

__all__ = ["linear_cross_entropy", "linear_kl_divergence", "linear_js_divergence", "sequence_logprobs"]

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


# --------------------------------------------------------------------------- helpers
def _chunk_rows(chunk_size: int | None, vocab: int, n: int, itemsize: int, buffers: int) -> int:
    """Tokens per chunk: ``chunk_size``, or as many as fit ``buffers`` logit rows in the budget."""
    if chunk_size is None:
        rows = max(MIN_ROWS, CHUNK_BUDGET_BYTES // (itemsize * max(vocab, 1) * buffers))
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    else:
        rows = chunk_size
    return max(1, min(rows, n))


def _check_linear(hidden, weight, bias, name: str = "hidden", wname: str = "weight") -> None:
    for t, nm in ((hidden, name), (weight, wname)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{nm} must be a floating-point tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    if weight.dim() != 2:
        raise ValueError(f"{wname} must be (V, D), got shape {tuple(weight.shape)}")
    if hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"the last dimension of {name} {tuple(hidden.shape)} must equal the second of {wname} {tuple(weight.shape)}"
        )
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
            raise TypeError("bias must be a floating-point tensor")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    check_floating(hidden, name)
    check_floating(weight, wname)


def _check_target(target, lead, vocab, ignore_index, name="target", optional_ignore=True) -> None:
    check_integer(target, name)
    if target.shape != lead:
        raise ValueError(f"{name} must have shape {tuple(lead)} (the leading shape of hidden), got {tuple(target.shape)}")
    if validation_enabled() and target.numel() > 0:
        bad = ((target < 0) | (target >= vocab)) & (target != ignore_index)
        if bool(bad.any()):
            raise ValueError(
                f"{name} has class index {int(target[bad][0])} outside [0, {vocab}) other than ignore_index={ignore_index}"
            )


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


def _apply_target_terms(g: torch.Tensor, y: torch.Tensor, c: torch.Tensor, eps: float, vocab: int) -> None:
    """``g -= c * ((1 - eps) onehot(y) + eps / V)`` in place (the non-softmax part of dCE/dx)."""
    if eps > 0:
        g.sub_((c * (eps / vocab)).unsqueeze(1))
    if eps < 1:
        rows = torch.arange(g.shape[0], device=g.device)
        g.index_put_((rows, y), c * -(1.0 - eps), accumulate=True)


class _LinearCrossEntropy(torch.autograd.Function):
    """Chunked CE of ``h @ w.T + b``: outputs (per-token loss or its sum, per-token lse)."""

    @staticmethod
    def forward(ctx, h, w, b, safe, keep, cfg, rows, per_token, want_grad):
        eps, zl, cap = cfg
        n, vocab = h.shape[0], w.shape[0]
        dt, dev = h.dtype, h.device
        need = tuple(want_grad and x for x in ctx.needs_input_grad[:3])
        precompute = want_grad and not per_token and any(need)
        ctx.cfg, ctx.rows, ctx.per_token, ctx.need = cfg, rows, per_token, need
        loss = torch.empty(n, dtype=dt, device=dev)
        lse = torch.empty(n, dtype=dt, device=dev)
        xbuf = torch.empty(rows, vocab, dtype=dt, device=dev)
        # Softcap keeps tanh(x/c) for its derivative: a second buffer (rows are halved for it).
        ebuf = torch.empty(rows, vocab, dtype=dt, device=dev) if cap is not None else None
        if eps > 0 and cap is None:
            # sum_k x_k = h . sum_k w_k + sum_k b_k: a matrix-vector product, no pass over the chunk
            wsum = w.sum(0)
            bsum = b.sum() if b is not None else 0.0
        if precompute:
            dh = torch.empty(h.shape, dtype=dt, device=dev) if need[0] else None
            dw = torch.zeros(w.shape, dtype=dt, device=dev) if need[1] else None
            db = torch.zeros(b.shape, dtype=dt, device=dev) if need[2] else None
        for s0 in range(0, n, rows):
            s1 = min(s0 + rows, n)
            hc, yc, kc = h[s0:s1], safe[s0:s1], keep[s0:s1]
            if cap is None:
                e = _logits_into(xbuf[: s1 - s0], hc, w, b)
                m = e.amax(1, keepdim=True)
                xy = e.gather(1, yc.unsqueeze(1))
                if eps > 0:
                    sumx = (torch.mv(hc, wsum) + bsum).unsqueeze(1)
                e.sub_(m)
            else:
                # capped logits c tanh(x / c): statistics are taken on tanh and scaled (tanh is
                # monotone), and c th - m is one fused pass into the second buffer
                th = _logits_into(xbuf[: s1 - s0], hc, w, b, 1.0 / cap).tanh_()
                m = th.amax(1, keepdim=True).mul_(cap)
                xy = th.gather(1, yc.unsqueeze(1)).mul_(cap)
                if eps > 0:
                    sumx = th.sum(1, keepdim=True).mul_(cap)
                e = torch.add(m.neg(), th, alpha=cap, out=ebuf[: s1 - s0])
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
            loss[s0:s1] = torch.where(kc, lc, torch.zeros((), dtype=dt, device=dev))
            lse[s0:s1] = lse_c
            if precompute:
                # dCE/dx for upstream gradient 1: softmax * (1 + 2 zl Z) - (1-eps) onehot - eps/V
                kf = kc.to(dt)
                a = kf * (1.0 + 2.0 * zl * lse_c) if zl > 0 else kf
                g = e.mul_((a.unsqueeze(1) / ssum))
                _apply_target_terms(g, yc, kf, eps, vocab)
                if cap is not None:
                    g.addcmul_(g, th.square_(), value=-1.0)  # chain rule: d(c tanh(x/c))/dx = 1 - tanh^2
                if need[0]:
                    torch.mm(g, w, out=dh[s0:s1])
                if need[1]:
                    dw.addmm_(g.t(), hc)
                if need[2]:
                    db.add_(g.sum(0))
        del xbuf, ebuf
        ctx.precompute = precompute
        if want_grad:
            # the precomputed gradients are saved tensors (not ctx attributes) so that autograd
            # frees them right after the backward pass instead of when the graph dies
            ctx.save_for_backward(h, w, b, safe, keep, lse, *((dh, dw, db) if precompute else ()))
        ctx.set_materialize_grads(False)
        return (loss if per_token else loss.sum()), lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_loss, g_lse):
        h, w, b, safe, keep, lse, *pre = ctx.saved_tensors
        eps, zl, cap = ctx.cfg
        need = ctx.need
        grads = [None, None, None]
        recompute_loss = g_loss is not None and ctx.per_token
        if ctx.precompute and g_loss is not None:
            # "sum"/"mean": the gradients were formed in the forward pass for upstream 1 and
            # are only scaled here (out of place, so that a second backward with
            # retain_graph=True gives the same bits; the saved buffers are freed after backward).
            grads = [None if t is None else t * g_loss for t in pre]
        if not recompute_loss and g_lse is None:
            return (*grads, None, None, None, None, None, None)
        n, vocab, dt = h.shape[0], w.shape[0], h.dtype
        kf = keep.to(dt)
        # Per token: d/dx of g_n * CE_n + gl_n * Z_n  =  a_n softmax - c_n ((1-eps) onehot + eps/V)
        a = torch.zeros(n, dtype=dt, device=h.device) if g_lse is None else g_lse.to(dt)
        c = None
        if recompute_loss:
            c = g_loss * kf  # per-token upstream gradient ("none") or the scalar one ("sum")
            a = a + (c * (1.0 + 2.0 * zl * lse) if zl > 0 else c)
        rows = ctx.rows
        xbuf = torch.empty(rows, vocab, dtype=dt, device=h.device)
        ebuf = torch.empty(rows, vocab, dtype=dt, device=h.device) if cap is not None else None
        dh = grads[0] if grads[0] is not None else (torch.zeros(h.shape, dtype=dt, device=h.device) if need[0] else None)
        dw = grads[1] if grads[1] is not None else (torch.zeros(w.shape, dtype=dt, device=h.device) if need[1] else None)
        db = grads[2] if grads[2] is not None else (torch.zeros(b.shape, dtype=dt, device=h.device) if need[2] else None)
        for s0 in range(0, n, rows):
            s1 = min(s0 + rows, n)
            hc = h[s0:s1]
            z = lse[s0:s1].unsqueeze(1)
            if cap is None:
                e = _logits_into(xbuf[: s1 - s0], hc, w, b).sub_(z)
            else:
                th = _logits_into(xbuf[: s1 - s0], hc, w, b, 1.0 / cap).tanh_()
                e = torch.add(z.neg(), th, alpha=cap, out=ebuf[: s1 - s0])
            # softmax = exp(max(x - Z, floor)), scaled by a_n
            g = e.clamp_min_(_FLOOR).exp_().mul_(a[s0:s1].unsqueeze(1))
            if c is not None:
                _apply_target_terms(g, safe[s0:s1], c[s0:s1], eps, vocab)
            if cap is not None:
                g.addcmul_(g, th.square_(), value=-1.0)
            if need[0]:
                dh[s0:s1].addmm_(g, w)
            if need[1]:
                dw.addmm_(g.t(), hc)
            if need[2]:
                db.add_(g.sum(0))
        return dh, dw, db, None, None, None, None, None, None


def _needs_grad(*ts) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def _lce_example() -> Example:
    def make(gen):
        t = randint(gen, 11, 2, 4)
        t[0, 2] = -100
        kw = {"chunk_size": 3, "label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 4.0}
        return (randn(gen, 2, 4, 5), randn(gen, 11, 5), t), kw

    def mismatch(gen):
        return (randn(gen, 7, 5), randn(gen, 11, 4), randint(gen, 11, 7)), {}

    return Example(make=make, mismatch=mismatch, logits=(0,))


@register("linear_cross_entropy", family="large_vocab", reference=CCE_PAPER, seed=CCE_SEED, example=_lce_example(),
          input_kind="hidden states", classification_calibrated=True, bounded=False, memory="O(chunk * V)")
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
    shift: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
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
    autograd function never keeps the logits: with ``"sum"``/``"mean"`` the gradients of
    ``hidden``, ``weight`` and ``bias`` are formed in the forward pass while each chunk is in
    memory (three matrix products in all, like the materialized path; the backward only
    scales them by the upstream gradient, so it can be run once); with ``"none"`` the
    upstream gradient differs per token, so only the per-token log-sum-exp is kept and the
    backward recomputes each chunk (four products) — the gradient is exact for any upstream
    weights. Shifted logits are clamped at -60 before ``exp`` so that no subnormal float is
    produced (they make CPU arithmetic ~10x slower); this changes nothing beyond round-off
    (argument in the module docstring). Half/bfloat16 inputs are upcast to float32 (one
    float32 copy of ``weight``); the loss, the log-sum-exp and the weight gradient
    accumulate in float32 and the loss is returned in float32. Caller tensors are never
    written to.

    ``shift=True`` is next-token prediction: position :math:`t` of ``hidden`` is scored
    against ``target[..., t + 1]`` (``target`` holds the token ids of the same positions),
    without copying ``hidden``; the last position has no target, so the ``"none"`` output
    and the log-sum-exp have shape ``(*, T - 1)``.

    Args:
        hidden: ``(*, D)`` hidden states.
        weight: ``(V, D)`` output embedding (classifier) matrix.
        target: ``(*)`` class indices in ``[0, V)`` or ``ignore_index``.
        bias: optional ``(V,)`` output bias.
        ignore_index: target value of tokens left out.
        label_smoothing: :math:`\varepsilon \in [0, 1]`, as in torch.
        z_loss: coefficient :math:`\lambda_z \ge 0` of :math:`Z^2` per kept token.
        softcap: ``c > 0`` applies :math:`c\tanh(x/c)` to the logits first (Gemma 2: 30).
        reduction: ``"mean"`` (over kept tokens), ``"sum"`` or ``"none"``.
        chunk_size: tokens per chunk (``None``: from the 32 MiB budget).
        return_lse: also return the per-token log-sum-exp :math:`Z` of the (capped) logits,
            for every token including ignored ones; it is differentiable.
        shift: next-token prediction along the last leading dimension (see above).

    Shape:
        hidden ``(*, D)``, target ``(*)``; output ``(*)`` for ``"none"`` (``(*, T-1)``
        with ``shift``), else a scalar; the log-sum-exp has the ``"none"`` shape.

    Returns:
        the loss, or ``(loss, lse)`` with ``return_lse=True``.

    Example:
        >>> import torch
        >>> from losslab.functional import linear_cross_entropy
        >>> g = torch.Generator().manual_seed(0)
        >>> h, w = torch.randn(6, 8, generator=g), torch.randn(50, 8, generator=g)
        >>> t = torch.tensor([1, 4, 9, 16, 25, -100])
        >>> torch.allclose(linear_cross_entropy(h, w, t, chunk_size=4),
        ...                torch.nn.functional.cross_entropy(h @ w.T, t))
        True

    References:
        Wijmans, Huval, Hertzberg, Koltun, Krähenbühl, "Cut Your Losses in
        Large-Vocabulary Language Models", ICLR 2025, https://arxiv.org/abs/2411.09009;
        Wortsman et al., 2023, https://arxiv.org/abs/2309.14322 (z-loss).
    """
    _check_linear(hidden, weight, bias)
    check_in_range(label_smoothing, "label_smoothing", 0.0, 1.0)
    check_nonnegative(z_loss, "z_loss")
    if softcap is not None:
        check_positive(softcap, "softcap")
    check_reduction(reduction)
    vocab, dim = weight.shape
    lead = hidden.shape[:-1]
    check_integer(target, "target")
    if target.shape != lead:
        raise ValueError(f"target must have shape {tuple(lead)} (the leading shape of hidden), got {tuple(target.shape)}")
    if shift:
        if len(lead) == 0 or lead[-1] < 1:
            raise ValueError("shift=True needs hidden of shape (*, T, D) with T >= 1")
        # target of position t is the token at t + 1; the last position is ignored (an int copy
        # of the target, hidden is not copied)
        t_full = torch.full_like(target, ignore_index)
        t_full[..., :-1] = target[..., 1:]
    else:
        t_full = target
    _check_target(t_full, lead, vocab, ignore_index)
    dtype = compute_dtype(hidden, weight, bias)
    h2 = upcast(hidden.reshape(-1, dim), dtype)
    w_c, b_c = upcast(weight, dtype), upcast(bias, dtype)
    t1 = t_full.reshape(-1)
    keep = t1 != ignore_index
    safe = torch.where(keep, t1, torch.zeros((), dtype=t1.dtype, device=t1.device))
    itemsize = torch.empty((), dtype=dtype).element_size()
    rows = _chunk_rows(chunk_size, vocab, h2.shape[0], itemsize, 1 if softcap is None else 2)
    cfg = (float(label_smoothing), float(z_loss), None if softcap is None else float(softcap))
    want_grad = _needs_grad(hidden, weight, bias)
    out, lse = _LinearCrossEntropy.apply(h2, w_c, b_c, safe, keep, cfg, rows, reduction == "none", want_grad)
    lse = lse.reshape(lead)
    if reduction == "none":
        out = out.reshape(lead)
    elif reduction == "mean":
        count = keep.sum().to(out.dtype)
        out = out / torch.where(count == 0, torch.ones_like(count), count)
    if shift:
        lse = lse[..., :-1]
        if reduction == "none":
            out = out[..., :-1]
    return (out, lse) if return_lse else out


# --------------------------------------------------------------------------- divergences
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
    _check_linear(student_hidden, student_weight, None, "student_hidden", "student_weight")
    _check_linear(teacher_hidden, teacher_weight, None, "teacher_hidden", "teacher_weight")
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(
            f"student and teacher vocabularies differ: {student_weight.shape[0]} vs {teacher_weight.shape[0]}")
    lead = student_hidden.shape[:-1]
    if teacher_hidden.shape[:-1] != lead:
        raise ValueError(
            f"teacher_hidden must have leading shape {tuple(lead)}, got {tuple(teacher_hidden.shape[:-1])}")
    check_positive(temperature, "temperature")
    if kind == "js" and not (isinstance(beta, (int, float)) and 0.0 < beta < 1.0):
        raise ValueError(f"beta must be in (0, 1), got {beta!r}")
    check_reduction(reduction)
    vocab = student_weight.shape[0]
    if target is not None:
        _check_target(target, lead, vocab, ignore_index)
    dtype = compute_dtype(student_hidden, student_weight, teacher_hidden, teacher_weight)
    hs = upcast(student_hidden.reshape(-1, student_hidden.shape[-1]), dtype)
    ws = upcast(student_weight, dtype)
    ht = upcast(teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1]), dtype)
    wt = upcast(teacher_weight.detach(), dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    # a chunk holds the student and teacher logits and their log-softmax: ~6 buffers of rows x V
    rows = _chunk_rows(chunk_size, vocab, hs.shape[0], itemsize, 6)

    def chunk_div(h, w, h_t):
        xs = h @ w.t()
        with torch.no_grad():
            xt = h_t @ wt.t()
        if kind == "kl":  # forward KL(teacher || student): P = teacher, Q = student
            return kl_divergence(xt, xs, temperature=temperature, reduction="none")
        return generalized_js_divergence(xt, xs, beta=beta, temperature=temperature, reduction="none")

    parts = []
    for start in range(0, hs.shape[0], rows):
        args = (hs[start : start + rows], ws, ht[start : start + rows])
        # activation checkpointing per chunk: only the chunk's inputs are kept, its logits
        # are recomputed in the backward pass
        parts.append(checkpoint(chunk_div, *args, use_reentrant=False) if _needs_grad(*args[:2]) else chunk_div(*args))
    value = torch.cat(parts) if parts else torch.zeros(0, dtype=dtype, device=hs.device)
    mask = None if target is None else (target != ignore_index)
    return reduce(value.reshape(lead), reduction, mask=mask)


@register("linear_kl_divergence", family="large_vocab", reference=CCE_PAPER, example=_pair_example(temperature=2.0),
          input_kind="hidden states", symmetric=False, memory="O(chunk * V)")
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
    r"""Forward KL(teacher ‖ student) between vocabulary distributions from hidden states, chunked.

    Per token, :func:`~losslab.functional.kl_divergence` with P = teacher, logits
    :math:`h_t W_t^\top`, and Q = student, logits :math:`h_s W_s^\top`, both divided by the
    temperature :math:`T`:

    .. math:: \mathrm{KL}(P\,\|\,Q) = \sum_k p_k (\log p_k - \log q_k),

    the usual (forward) distillation direction; the divergence helper's argument order
    (``p_logits`` = P first) is kept, teacher first. No :math:`T^2` factor is applied
    (multiply by it yourself if you want Hinton's gradient scale). Computed over chunks of
    tokens with activation checkpointing (one chunk of student and teacher logits in
    memory; the chunk is recomputed in the backward pass). No gradient reaches the teacher.
    Tokens whose ``target`` equals ``ignore_index`` are left out (``target`` is used only
    for that); ``"mean"`` averages over kept tokens.

    Args:
        student_hidden: ``(*, D_s)``.
        student_weight: ``(V, D_s)``.
        teacher_hidden: ``(*, D_t)``.
        teacher_weight: ``(V, D_t)``.
        target: optional ``(*)`` token ids, for masking only.
        temperature: :math:`T > 0`.
        ignore_index: masked target value.
        reduction: ``"mean"`` over kept tokens, ``"sum"`` or ``"none"``.
        chunk_size: tokens per chunk (None: from a 32 MiB budget).

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
        https://arxiv.org/abs/1503.02531; Wijmans et al., "Cut Your Losses in
        Large-Vocabulary Language Models", 2024, https://arxiv.org/abs/2411.09009.
    """
    return _linear_divergence("kl", student_hidden, student_weight, teacher_hidden, teacher_weight, target,
                              temperature=temperature, beta=0.5, ignore_index=ignore_index, reduction=reduction,
                              chunk_size=chunk_size)


@register("linear_js_divergence", family="large_vocab", reference=CCE_PAPER, example=_pair_example(beta=0.3),
          input_kind="hidden states", bounded=True, memory="O(chunk * V)")
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
    Q = student (the divergence helper's order, teacher first):

    .. math::
        \mathrm{JS}_\beta(P, Q) = \beta\,\mathrm{KL}(P\,\|\,M) + (1-\beta)\,\mathrm{KL}(Q\,\|\,M),
        \qquad M = \beta P + (1-\beta) Q,

    the on-policy distillation objective (GKD), computed like :func:`linear_kl_divergence`
    (one chunk of logits in memory, no gradient to the teacher). Some libraries weight the
    mixture the other way round (β on the student): pass ``1 - beta`` to match them.

    Args:
        student_hidden: ``(*, D_s)``.
        student_weight: ``(V, D_s)``.
        teacher_hidden: ``(*, D_t)``.
        teacher_weight: ``(V, D_t)``.
        target: optional ``(*)`` token ids, for masking only.
        temperature: :math:`T > 0`, divides both logits.
        beta: :math:`\beta \in (0, 1)`, weight of the teacher in the mixture.
        ignore_index: masked target value.
        reduction: ``"mean"`` over kept tokens, ``"sum"`` or ``"none"``.
        chunk_size: tokens per chunk.

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
        Self-Generated Mistakes", ICLR 2024, https://arxiv.org/abs/2306.13649; Wijmans et al.,
        2024, https://arxiv.org/abs/2411.09009.
    """
    return _linear_divergence("js", student_hidden, student_weight, teacher_hidden, teacher_weight, target,
                              temperature=temperature, beta=beta, ignore_index=ignore_index, reduction=reduction,
                              chunk_size=chunk_size)


# --------------------------------------------------------------------------- sequence log-probs
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
    r"""Per-sequence log-probability of the target tokens from hidden states, without the logits.

    .. math::
        \log\pi(y \mid x) = \sum_{t:\, y_t \ne \text{ignore}} \log\operatorname{softmax}(h_t W^\top + b)_{y_t},

    or its mean over the kept tokens with ``average=True`` (SimPO and IPO use the average).
    The input of DPO-style objectives; differentiable. Computed with
    :func:`linear_cross_entropy` (``reduction="none"``: chunked, recomputed in backward).
    A sequence with no kept token gets 0. ``target`` is already aligned with ``hidden``
    (shift it yourself for next-token prediction, or use ``linear_cross_entropy(...,
    shift=True, reduction="none")``).

    Args:
        hidden: ``(B, T, D)``.
        weight: ``(V, D)``.
        target: ``(B, T)`` token ids or ``ignore_index`` (prompt, padding).
        bias: optional ``(V,)``.
        ignore_index: target value of tokens left out.
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
        Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a
        Reward Model", 2023, https://arxiv.org/abs/2305.18290; Wijmans et al., 2024,
        https://arxiv.org/abs/2411.09009.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be (B, T, D), got shape {tuple(hidden.shape)}")
    per_token = -linear_cross_entropy(hidden, weight, target, bias=bias, ignore_index=ignore_index, reduction="none",
                                      chunk_size=chunk_size)
    total = per_token.sum(-1)
    if not average:
        return total
    count = (target != ignore_index).sum(-1).to(total.dtype)
    return total / torch.where(count == 0, torch.ones_like(count), count)
