"""f-divergences by their generator: the shared table and :func:`f_divergence`.

:data:`F_DIVERGENCES` / :func:`f_divergence_generator` give each named generator f with
its derivative f' (the f-DPO score) and convex conjugate f* (variational / f-GAN bounds);
:func:`f_divergence` evaluates D_f(P‖Q) for a named generator by a stable closed form.

Part of the divergences family: log-probabilities, masks, reductions, the KL helper and the
conventions (P first, ``temperature``, ``log_probs``, ``mask``, zero-probability classes,
precision, non-finite inputs) are shared with :mod:`losslab.functional.divergences`, whose
module docstring states them.
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._checks import hyperparameter_checks
from .._reduction import Reduction
from ..registry import register
from ._examples import pair_logits_example
from .divergences import (
    FDIV_PAPER,
    FDIV_SEED,
    _both_zero,
    _check_alpha,
    _doc,
    _kl,
    _log_probs,
    _reduce,
    alpha_divergence,
    hellinger_distance,
    js_divergence,
    kl_divergence,
    total_variation,
)

__all__ = [
    "f_divergence",
    "FDivergenceGenerator",
    "F_DIVERGENCES",
    "f_divergence_generator",
]


# Names users bring from other libraries, with what they are here (P first).
_DIVERGENCE_HINTS = {
    "forward_kl": "'kl' (KL(P‖Q): distillation's forward KL with P = teacher) or 'reverse_kl' (KL(Q‖P): "
                  "TRL f-DPO's 'forward_kl' KL(π_ref‖π) with P = π)",
    "jsd": "'js'", "jensen_shannon": "'js'", "js_divergence": "'js'", "tv": "'total_variation'",
    "chi_squared": "'chi2'", "chi2_divergence": "'chi2'", "pearson": "'chi2'", "alpha_divergence": "'alpha'",
    "squared_hellinger": "'hellinger' (the squared Hellinger distance)", "symmetric_kl": "'jeffreys'",
}


def _check_divergence(*, divergence: str = "kl", alpha: float = 0.5, **kw) -> None:
    if divergence not in DIVERGENCE_NAMES:
        hint = _DIVERGENCE_HINTS.get(divergence) if isinstance(divergence, str) else None
        if hint is None and isinstance(divergence, str):
            close = difflib.get_close_matches(divergence.lower(), DIVERGENCE_NAMES, n=2, cutoff=0.5)
            hint = " or ".join(repr(c) for c in close) or None
        raise ValueError(f"divergence must be one of {DIVERGENCE_NAMES}, got {divergence!r}"
                         + (f"; did you mean {hint}?" if hint else ""))
    _check_alpha(alpha=alpha, **kw)


def _chi2_value(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Pearson chi^2 = sum_k (p - q)^2 / q = sum_k q expm1(u)^2 (u = log p - log q) per sample.

    Summed as squares (no ``sum p^2/q - 1`` cancellation near P = Q). For u > 1 the term is
    formed in log-space, exp(log q + 2u + 2 log(1 - e^-u)), so that q e^(2u) does not
    overflow before the (representable) product does. q = 0 < p gives +inf, p = q = 0 gives 0.
    """
    both, sp, sq = _both_zero(logp, logq)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    live = ~torch.isneginf(logq)
    u = torch.where(live, sp - sq, zero)
    small = u <= 1.0
    u_small = torch.where(small, u, zero)
    u_big = torch.where(small, torch.ones((), dtype=u.dtype, device=u.device), u)
    near = torch.exp(sq) * torch.expm1(u_small).square()
    far = torch.exp(sq + 2 * u_big + 2 * torch.log1p(-torch.exp(-u_big)))
    term = torch.where(small, near, far)
    inf = torch.full((), math.inf, dtype=logp.dtype, device=logp.device)
    term = torch.where(live, term, torch.where(torch.isneginf(logp), zero, inf))
    return term.sum(-1)


# --------------------------------------------------------------------------- the generator table
@dataclass(frozen=True)
class FDivergenceGenerator:
    r"""An f-divergence :math:`D_f(P\|Q) = \sum_k q_k f(p_k/q_k)` by its generator.

    The one table of generators (:data:`F_DIVERGENCES`, plus :func:`f_divergence_generator`
    for the α family) shared by :func:`f_divergence` (whose values are computed by
    dedicated log-space formulas, tested equal to :math:`\sum_k q_k f(p_k/q_k)`), the
    f-DPO preference loss (which uses :math:`f'`) and variational / f-GAN bounds (which use
    :math:`f^*`). Generators act elementwise on tensors.

    Mapping to TRL's f-DPO names, with :math:`u = \pi/\pi_\text{ref} = e^r` (P = π):

    ========================  ======================  =====================================
    ours                      TRL ``f_divergence``     :math:`f'(e^r)` vs TRL's score
    ========================  ======================  =====================================
    ``"kl"``  KL(π‖π_ref)     ``reverse_kl``          :math:`r + 1` vs :math:`r`
    ``"reverse_kl"``          ``forward_kl``          :math:`-e^{-r}` vs :math:`1 - e^{-r}`
    ``"js"``                  ``js_divergence``       :math:`\tfrac12(\log 2 + \log\sigma(r))`,
                                                      half TRL's :math:`\log 2 + \log\sigma(r)`
    ``"alpha"`` (α)           ``alpha_divergence``    equal: :math:`(e^{(\alpha-1)r}-1)/(\alpha-1)`
    ========================  ======================  =====================================

    Constant offsets cancel in the DPO difference of chosen and rejected scores; the factor
    ½ of ``"js"`` (our JS is the mean of the two KLs, TRL's generator their sum) rescales β.

    Attributes:
        name: the key in :data:`F_DIVERGENCES`.
        f: the convex generator, :math:`f(1) = 0`.
        f_prime: its derivative :math:`f'(u)` (the f-DPO score of a density ratio :math:`u`).
        conjugate: the convex conjugate :math:`f^*(t) = \sup_u\, t u - f(u)` (variational /
            f-GAN bounds), or None where it has no closed form (``"jeffreys"``).
        conjugate_domain: the open interval of :math:`t` where :math:`f^*` is finite.
    """

    name: str
    f: Callable[[torch.Tensor], torch.Tensor]
    f_prime: Callable[[torch.Tensor], torch.Tensor]
    conjugate: Callable[[torch.Tensor], torch.Tensor] | None
    conjugate_domain: tuple[float, float] = (-math.inf, math.inf)


def _alpha_generator(alpha: float) -> FDivergenceGenerator:
    a = float(alpha)

    def f(u):
        return (u.pow(a) - a * u - (1 - a)) / (a * (a - 1))

    def fp(u):
        return (u.pow(a - 1) - 1) / (a - 1)

    def conj(t):
        u = (1 + (a - 1) * t).pow(1 / (a - 1))  # (f')^{-1}(t)
        return t * u - f(u)

    dom = (-1 / (a - 1), math.inf) if a > 1 else (-math.inf, -1 / (a - 1))
    return FDivergenceGenerator("alpha", f, fp, conj, dom)


#: Generators of the named f-divergences (P first: D_f(P‖Q) = E_Q f(dP/dQ)); "alpha" is
#: built per α by :func:`f_divergence_generator`. See :class:`FDivergenceGenerator` for the
#: mapping to TRL's f-DPO names.
F_DIVERGENCES: dict[str, FDivergenceGenerator] = {
    "kl": FDivergenceGenerator("kl", lambda u: torch.xlogy(u, u), lambda u: torch.log(u) + 1, lambda t: torch.exp(t - 1)),
    "reverse_kl": FDivergenceGenerator("reverse_kl", lambda u: -torch.log(u), lambda u: -1 / u,
                                       lambda t: -1 - torch.log(-t), (-math.inf, 0.0)),
    "js": FDivergenceGenerator(
        "js",
        lambda u: 0.5 * (torch.xlogy(u, u) - torch.xlogy(u + 1, (u + 1) / 2)),
        lambda u: 0.5 * torch.log(2 * u / (u + 1)),
        lambda t: -0.5 * torch.log(2 - torch.exp(2 * t)),
        (-math.inf, 0.5 * math.log(2)),
    ),
    "total_variation": FDivergenceGenerator("total_variation", lambda u: 0.5 * (u - 1).abs(),
                                            lambda u: 0.5 * torch.sign(u - 1), lambda t: t, (-0.5, 0.5)),
    "hellinger": FDivergenceGenerator("hellinger", lambda u: 0.5 * (torch.sqrt(u) - 1).square(),
                                      lambda u: 0.5 * (1 - 1 / torch.sqrt(u)), lambda t: t / (1 - 2 * t), (-math.inf, 0.5)),
    "chi2": FDivergenceGenerator("chi2", lambda u: (u - 1).square(), lambda u: 2 * (u - 1), lambda t: t + t.square() / 4),
    "jeffreys": FDivergenceGenerator("jeffreys", lambda u: (u - 1) * torch.log(u), lambda u: torch.log(u) + 1 - 1 / u, None),
}
DIVERGENCE_NAMES = ("kl", "reverse_kl", "js", "alpha", "total_variation", "hellinger", "chi2", "jeffreys")


def f_divergence_generator(name: str, *, alpha: float = 0.5) -> FDivergenceGenerator:
    """The :class:`FDivergenceGenerator` of ``name`` (``"alpha"`` needs ``alpha``).

    ``f_divergence_generator("alpha", alpha=1.0)`` is the ``"kl"`` generator and ``alpha=0.0`` the
    ``"reverse_kl"`` one (the limits of the α family; the closed form divides by
    α(α − 1)). Its ``f_prime(e^r) = (e^{(α-1) r} - 1)/(α - 1)`` is TRL's f-DPO
    ``alpha_divergence`` score with the same α (TRL ≥ 1.x).
    """
    _check_divergence(divergence=name, alpha=alpha)
    if name != "alpha":
        return F_DIVERGENCES[name]
    if alpha == 1:
        return F_DIVERGENCES["kl"]
    if alpha == 0:
        return F_DIVERGENCES["reverse_kl"]
    return _alpha_generator(alpha)


@register("f_divergence", family="divergences", reference=FDIV_PAPER, seed=FDIV_SEED,
          example=pair_logits_example(mask=True, divergence="jeffreys"), input_kind="logits",
          tags=("f-divergence", "f-gan", "f-dpo", "convex conjugate", "variational bound", "chi-squared", "jeffreys",
                "reverse kl"))
@hyperparameter_checks(_check_divergence)
@_doc
def f_divergence(
    p_logits: torch.Tensor,
    q_logits: torch.Tensor,
    *,
    divergence: str = "kl",
    alpha: float = 0.5,
    temperature: float = 1.0,
    log_probs: bool = False,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""The f-divergence D_f(P‖Q) for a named generator, computed in a stable closed form.

    .. math:: D_f(P\,\|\,Q) = \sum_k q_k\, f\!\Big(\frac{p_k}{q_k}\Big)

    ``divergence``: ``"kl"`` KL(P‖Q); ``"reverse_kl"`` KL(Q‖P); ``"js"`` Jensen–Shannon;
    ``"alpha"`` Amari α (``alpha``); ``"total_variation"``; ``"hellinger"`` the *squared*
    Hellinger distance (the f-divergence); ``"chi2"`` Pearson
    :math:`\chi^2 = \sum p^2/q - 1` (from a ``logsumexp``); ``"jeffreys"`` KL(P‖Q) + KL(Q‖P).
    Each is evaluated by its dedicated log-space formula, never as the generic sum (whose
    ratio :math:`p/q` overflows). The generators themselves (:math:`f`, :math:`f'`,
    :math:`f^*`) are in :data:`F_DIVERGENCES` / :func:`f_divergence_generator`, shared with the
    preference (f-DPO) and distillation objectives.

    Zero-probability classes: a class with :math:`p_k = q_k = 0` contributes 0 to every
    divergence; the value is :math:`+\infty` exactly where it is mathematically (q = 0 < p
    for ``"kl"``, ``"chi2"``, ``"jeffreys"``, ``"alpha"`` with α ≥ 1; p = 0 < q for
    ``"reverse_kl"``, ``"jeffreys"``, ``"alpha"`` with α ≤ 0). ``"js"``, ``"total_variation"``
    and ``"hellinger"`` are always finite. Magnitudes: KL, Jeffreys and α ∈ [0, 1] grow at
    most linearly with the logit gap (finite at logits of 1e4 in float32); χ² and α outside
    [0, 1] grow like :math:`e^{|\log(p/q)|}`, finite mathematically but beyond float32 once
    a log-ratio exceeds ~88: they then return ``+inf`` (never NaN).

    Which argument is the model: P = π (policy), Q = π_ref in f-DPO / f-DPG; P = teacher,
    Q = student in distillation (so ``"kl"`` is the forward KL there).

    Args:
        divergence: one of the names above.
        alpha: the α of ``"alpha"``.
        {common_args}

    Shape:
        inputs ``(*, C)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import f_divergence, kl_divergence
        >>> p, q = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
        >>> torch.allclose(f_divergence(p, q, divergence="reverse_kl"), kl_divergence(q, p))
        True

    References:
        Csiszár, 1967; Ali & Silvey, 1966; Go et al., ICML 2023,
        https://arxiv.org/abs/2302.08215; Nowozin et al., "f-GAN", 2016,
        https://arxiv.org/abs/1606.00709 (conjugates).
    """
    _check_divergence(divergence=divergence, alpha=alpha)
    kw = dict(temperature=temperature, log_probs=log_probs, mask=mask, reduction=reduction)
    if divergence == "kl":
        return kl_divergence(p_logits, q_logits, **kw)
    if divergence == "reverse_kl":
        return kl_divergence(q_logits, p_logits, **kw)
    if divergence == "js":
        return js_divergence(p_logits, q_logits, **kw)
    if divergence == "alpha":
        return alpha_divergence(p_logits, q_logits, alpha=alpha, **kw)
    if divergence == "total_variation":
        return total_variation(p_logits, q_logits, **kw)
    if divergence == "hellinger":
        return hellinger_distance(p_logits, q_logits, squared=True, **kw)
    logp, logq, posinf = _log_probs(p_logits, q_logits, temperature, log_probs)
    if divergence == "chi2":
        return _reduce(_chi2_value(logp, logq), posinf, reduction, mask, logp)
    return _reduce(_kl(logp, logq) + _kl(logq, logp), posinf, reduction, mask, logp)  # jeffreys
