"""Preference alignment and unlearning objectives on per-sequence log-probabilities.

Inputs are per-sequence log-probabilities, one value per sequence, as
:func:`losslab.functional.sequence_logprobs` returns them: summed over the completion
tokens (``average="none"``) unless an objective says it takes length-averaged ones
(``average="all"``: SimPO, ORPO, and IPO in the paper's form). Names follow TRL:
``policy_chosen_logps``, ``policy_rejected_logps``, ``ref_chosen_logps``,
``ref_rejected_logps``. Every tensor of one call has the same shape, usually ``(B,)``
(any shape is taken elementwise); ``reduction="none"`` returns one value per pair.

Conventions shared by the family:

* ``beta > 0``; ``label_smoothing`` ε is the probability that a preference label is
  flipped, in ``[0, 0.5)``, used by the objectives that say so (and rejected as ε > 0 by
  the others, rather than ignored).
* Half-precision inputs are computed in float32 and the loss is float32 (float64 stays
  float64). Every loss and gradient is finite for log-prob differences of ±1e4:
  log-sigmoids are ``F.logsigmoid`` (never ``log(sigmoid(x))``), and the exponential
  f-DPO scores clamp their exponent (see :func:`dpo_loss`).
* A NaN input gives a NaN loss (clamps and ``relu`` propagate NaN).
"""
from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from .._checks import check_floating, check_positive, check_same_shape, hyperparameter_checks, validation_enabled
from .._numerics import compute_dtype, log1mexp, upcast
from .._reduction import Reduction, reduce
from ..registry import Reference, register
from ._examples import custom_example
from .divergences import FDPO_PAPER
from .divergences_f import F_DIVERGENCES, f_divergence_generator

__all__ = ["dpo_loss", "dpo_rewards", "DPORewards", "npo_loss", "simpo_loss", "orpo_loss", "cpo_loss"]

DPO_PAPER = Reference(
    title="Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
    authors="Rafael Rafailov, Archit Sharma, Eric Mitchell, Stefano Ermon, Christopher D. Manning, Chelsea Finn",
    year=2023,
    url="https://arxiv.org/abs/2305.18290",
)
NPO_PAPER = Reference(
    title="Negative Preference Optimization: From Catastrophic Collapse to Effective Unlearning",
    authors="Ruiqi Zhang, Licong Lin, Yu Bai, Song Mei",
    year=2024,
    url="https://arxiv.org/abs/2404.05868",
)
LOGIC_PAPER = Reference(
    title="Understanding the Logic of Direct Preference Alignment through Logic",
    authors="Kyle Richardson, Vivek Srikumar, Ashish Sabharwal",
    year=2024,
    url="https://arxiv.org/abs/2412.17696",
)
SIMPO_PAPER = Reference(
    title="SimPO: Simple Preference Optimization with a Reference-Free Reward",
    authors="Yu Meng, Mengzhou Xia, Danqi Chen",
    year=2024,
    url="https://arxiv.org/abs/2405.14734",
)
ORPO_PAPER = Reference(
    title="ORPO: Monolithic Preference Optimization without Reference Model",
    authors="Jiwoo Hong, Noah Lee, James Thorne",
    year=2024,
    url="https://arxiv.org/abs/2403.07691",
)
CPO_PAPER = Reference(
    title="Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance in Machine Translation",
    authors="Haoran Xu, Amr Sharaf, Yunmo Chen, Weiting Tan, Lingfeng Shen, Benjamin Van Durme, Kenton Murray, "
            "Young Jin Kim",
    year=2024,
    url="https://arxiv.org/abs/2401.08417",
)

LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust", "conservative")
_SMOOTHED = ("robust", "conservative")
#: f-DPO divergence names (TRL's, for the divergence of the policy π from π_ref) -> the
#: generator of the shared table with P = π: TRL's "reverse_kl" KL(π‖π_ref) is the table's
#: "kl"; TRL's "forward_kl" KL(π_ref‖π) is the table's "reverse_kl".
DIVERGENCES = {"reverse_kl": "kl", "forward_kl": "reverse_kl", "js": "js", "alpha": "alpha"}
_DIVERGENCE_HINTS = {"kl": "'reverse_kl' (KL(π‖π_ref), plain DPO)", "js_divergence": "'js'",
                     "alpha_divergence": "'alpha'", "jsd": "'js'"}
#: Exponents of the f-DPO scores are clamped so that no score exceeds e^40 ≈ 2.4e17 in
#: magnitude: then a squared (IPO) difference of two scores, 4 e^80 ≈ 2e35, is still below
#: float32's 3.4e38. (TRL 1.x clamps the α exponent at 80 and forward KL's not at all; both
#: overflow float32 there.) The clamp is reached only where the sigmoid loss is already
#: saturated (|β Δ| > 1e16), so in practice it never changes a gradient that matters.
_EXP_CAP = 40.0
_FULL_PRECISION = (torch.float32, torch.float64)
_FLOATING = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _capped(x: torch.Tensor, cap: float) -> torch.Tensor:
    """min(x, cap), NaN kept. ``hardtanh`` with no lower bound rather than ``clamp``: the same
    values, and its backward is one kernel where clamp's is three (a comparison, a zero and a
    ``where``), which shows at small B. The gradient is 0 from x = cap on (clamp: from x > cap)."""
    return F.hardtanh(x, -math.inf, cap)


# --------------------------------------------------------------------------- checks
def _check_beta(beta: object) -> None:
    check_positive(beta, "beta")


def _check_smoothing(label_smoothing: object) -> None:
    if isinstance(label_smoothing, bool) or not (isinstance(label_smoothing, (int, float))
                                                 and 0.0 <= label_smoothing < 0.5):
        raise ValueError(f"label_smoothing must be in [0, 0.5) (the probability that a preference label is flipped), "
                         f"got {label_smoothing!r}")


def _check_real(value: object, name: str) -> None:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _check_dpo(*, beta=0.1, loss_type="sigmoid", divergence="reverse_kl", alpha=0.5, label_smoothing=0.0, **_) -> None:
    _check_beta(beta)
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if divergence not in DIVERGENCES:
        hint = _DIVERGENCE_HINTS.get(divergence) if isinstance(divergence, str) else None
        raise ValueError(f"divergence must be one of {tuple(DIVERGENCES)}, got {divergence!r}"
                         + (f"; did you mean {hint}?" if hint else ""))
    _check_real(alpha, "alpha")
    _check_smoothing(label_smoothing)
    if label_smoothing > 0 and loss_type not in _SMOOTHED:
        raise ValueError(f"label_smoothing is the flip rate of loss_type 'robust' and 'conservative'; "
                         f"loss_type {loss_type!r} takes none, got label_smoothing={label_smoothing!r}")


def _check_npo(*, beta=0.1, **_) -> None:
    _check_beta(beta)


def _check_simpo(*, beta=2.0, gamma=1.0, label_smoothing=0.0, **_) -> None:
    _check_beta(beta)
    _check_real(gamma, "gamma")
    _check_smoothing(label_smoothing)


def _check_orpo(*, beta=0.1, **_) -> None:
    _check_beta(beta)


def _check_cpo(*, beta=0.1, label_smoothing=0.0, nll_weight=1.0, **_) -> None:
    _check_beta(beta)
    _check_smoothing(label_smoothing)
    _check_real(nll_weight, "nll_weight")
    if nll_weight < 0:
        raise ValueError(f"nll_weight must be >= 0, got {nll_weight!r}")


def _logps(names: tuple[str, ...], tensors: tuple[torch.Tensor, ...],
           extra: tuple[tuple[str, torch.Tensor | None], ...] = ()) -> tuple[torch.Tensor, ...]:
    """Check that every log-prob tensor is floating with the first one's shape; upcast all
    (half -> float32). ``extra`` tensors (``chosen_nll``) are checked the same way and cast
    to the log-probs' compute dtype (a float64 auxiliary term does not promote the loss)."""
    # The usual call (one floating dtype, one shape, no extra tensor) in a dtype and a shape
    # comparison per tensor: at B = 64 a call is ~50-100 us of kernels and the general path
    # below cost 6-14 us of it. Anything else takes the general path (and its messages).
    first = tensors[0]
    if not extra and isinstance(first, torch.Tensor) and first.dtype in _FLOATING:
        dtype, shape = first.dtype, first.shape
        for t in tensors:
            if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.shape != shape:
                break
        else:
            return tensors if dtype in _FULL_PRECISION else tuple(t.float() for t in tensors)
    for name, t in zip(names, tensors):
        check_floating(t, name)
    for name, t in zip(names[1:], tensors[1:]):
        check_same_shape(tensors[0], t, (names[0], name))
    dtype = compute_dtype(*tensors)
    out = [upcast(t, dtype) for t in tensors]
    for name, t in extra:
        if t is None:
            out.append(None)
            continue
        check_floating(t, name)
        check_same_shape(tensors[0], t, (names[0], name))
        out.append(upcast(t, dtype))
    return tuple(out)


# --------------------------------------------------------------------------- f-DPO scores
def _generator(divergence: str, alpha: float):
    """The shared table's generator for an f-DPO name (names already checked: a dict lookup)."""
    name = DIVERGENCES[divergence]
    if name != "alpha":
        return F_DIVERGENCES[name]
    return f_divergence_generator(name, alpha=alpha)  # alpha 1 -> "kl", alpha 0 -> "reverse_kl"


def _scores(log_ratio: torch.Tensor, divergence: str, alpha: float) -> torch.Tensor:
    r"""TRL 1.x's f-DPO score :math:`s(r) = c\,(f'(e^r) - f'(1))` of log-ratios ``r``, in log-space.

    ``f`` is the shared table's generator (:func:`f_divergence_generator`, P = π); ``c`` is
    2 for ``"js"`` (TRL's JS generator is the sum of the two KLs, the table's their mean)
    and 1 otherwise; subtracting :math:`f'(1)` makes :math:`s(0) = 0` (a constant, which
    cancels in every loss). The table's :math:`f'` takes the ratio :math:`u = e^r`, which
    overflows for |r| > 88 in float32, so each generator's :math:`f'(e^r)` is written here
    in terms of ``r`` (tests check the two agree where :math:`e^r` is representable).
    """
    gen = _generator(divergence, float(alpha))
    if gen.name == "kl":  # f'(u) = log u + 1
        return log_ratio
    if gen.name == "reverse_kl":  # f'(u) = -1/u: s = 1 - e^{-r}, exponent clamped (see _EXP_CAP)
        return -torch.expm1(_capped(-log_ratio, _EXP_CAP))
    if gen.name == "js":  # 2 f'(u) = log(2u / (1 + u)) = log 2 + logsigmoid(r)
        return math.log(2.0) + F.logsigmoid(log_ratio)
    # alpha: f'(u) = (u^(a-1) - 1)/(a - 1). expm1 keeps the a -> 1 limit accurate; the
    # exponent is clamped so that |s| <= e^40 for every a.
    a1 = float(alpha) - 1.0
    t = _capped(a1 * log_ratio, _EXP_CAP + math.log(abs(a1)))
    return torch.expm1(t) / a1


def _score_delta(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, divergence: str,
                 alpha: float) -> torch.Tensor:
    """Δ = s(r_w) - s(r_l) with the fewest kernels (as many as the hand-written TRL expression):
    constants of :func:`_scores` cancel and are not added, and the exponential scores take the
    negated log-ratio ``ref - policy`` directly. Equal to ``_scores(r_w) - _scores(r_l)`` (tested)."""
    gen = _generator(divergence, float(alpha))
    if gen.name == "kl":
        return (pc - rc) - (pr - rr)
    if gen.name == "reverse_kl":  # (1 - e^{-r_w}) - (1 - e^{-r_l}) = e^{-r_l} - e^{-r_w}
        # exp, not expm1: no division follows (unlike "alpha"), so the absolute error of the
        # difference is one ulp of max(e^{-r}), as in TRL; expm1's backward costs a pass more.
        return torch.exp(_capped(rr - pr, _EXP_CAP)) - torch.exp(_capped(rc - pc, _EXP_CAP))
    if gen.name == "js":
        return F.logsigmoid(pc - rc) - F.logsigmoid(pr - rr)
    a1 = float(alpha) - 1.0
    cap = _EXP_CAP + math.log(abs(a1))
    tw, tl = _capped(a1 * (pc - rc), cap), _capped(a1 * (pr - rr), cap)
    return (torch.expm1(tw) - torch.expm1(tl)) / a1


def _neg_logsigmoid_smoothed(x: torch.Tensor, eps: float) -> torch.Tensor:
    """-(1 - eps) log σ(x) - eps log σ(-x) (plain -log σ(x) for eps = 0)."""
    loss = -F.logsigmoid(x)
    if eps > 0:
        loss = (1 - eps) * loss - eps * F.logsigmoid(-x)
    return loss


# --------------------------------------------------------------------------- examples
def _randlogp(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """Negative log-probabilities (sequence sums of a few tokens): -(0.5 .. 6)."""
    return -(torch.rand(*shape, generator=gen, dtype=torch.float64) * 5.5 + 0.5)


def _pair_example(num: int, *, n: int = 7, mismatch_name: str, variants: tuple[dict, ...] = (), nll: bool = False,
                  **kwargs) -> custom_example:
    """``num`` log-prob tensors ``(n,)`` plus ``kwargs``; variants vary the hyperparameters
    (and one has extra leading dimensions); ``nll`` adds a per-sample ``chosen_nll``."""

    def build(shape, kw):
        def make(gen):
            extra = dict(kw)
            if nll:
                extra["chosen_nll"] = torch.rand(*shape, generator=gen, dtype=torch.float64) * 3
            return tuple(_randlogp(gen, *shape) for _ in range(num)), extra
        return make

    def mismatch(gen):
        args = [_randlogp(gen, n) for _ in range(num)]
        args[1] = _randlogp(gen, n - 2)
        return tuple(args), dict(kwargs)

    factories = [build((n,), {**kwargs, **v}) for v in variants]
    factories.append(build((2, 3), dict(kwargs)))
    return custom_example(build((n,), kwargs), mismatch, mismatch_match=mismatch_name, variants=tuple(factories))


# --------------------------------------------------------------------------- DPO
@register(
    "dpo_loss",
    family="preference",
    reference=FDPO_PAPER,
    seed=FDPO_PAPER.title,
    example=_pair_example(
        4, mismatch_name="policy_rejected_logps", loss_type="robust", label_smoothing=0.1, divergence="alpha",
        alpha=0.3,
        variants=({"loss_type": "sigmoid", "divergence": "reverse_kl", "label_smoothing": 0.0},
                  {"loss_type": "ipo", "divergence": "forward_kl", "label_smoothing": 0.0},
                  {"loss_type": "conservative", "divergence": "js", "label_smoothing": 0.2},
                  {"loss_type": "hinge", "divergence": "alpha", "alpha": -1.0, "label_smoothing": 0.0, "beta": 0.5})),
    tags=("dpo", "direct preference optimization", "f-dpo", "ipo", "robust dpo", "cdpo", "preference alignment",
          "rlhf", "alignment", "bradley-terry", "language model", "reverse kl", "forward kl", "alpha divergence",
          "jensen-shannon"),
    input_kind="sequence_logprobs",
    reference_model=True,
)
@hyperparameter_checks(_check_dpo)
def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: Literal["sigmoid", "hinge", "ipo", "robust", "conservative"] = "sigmoid",
    divergence: Literal["reverse_kl", "forward_kl", "js", "alpha"] = "reverse_kl",
    alpha: float = 0.5,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Direct preference optimization and its variants (IPO, robust, conservative, hinge, f-DPO).

    With the log-ratios :math:`r_w = \log\pi(y_w) - \log\pi_\text{ref}(y_w)` of the chosen
    and :math:`r_l` of the rejected response, the f-DPO score :math:`s` of ``divergence``,
    :math:`\Delta = s(r_w) - s(r_l)` and :math:`x = \beta\Delta`, per pair:

    .. math::
        \ell = \begin{cases}
        -\log\sigma(x) & \texttt{sigmoid} \text{ (DPO)}\\
        \max(0,\, 1 - x) & \texttt{hinge} \text{ (SLiC)}\\
        (\Delta - \tfrac{1}{2\beta})^2 & \texttt{ipo}\\
        \dfrac{-(1-\varepsilon)\log\sigma(x) + \varepsilon\log\sigma(-x)}{1 - 2\varepsilon}
            & \texttt{robust} \text{ (rDPO)}\\
        -(1-\varepsilon)\log\sigma(x) - \varepsilon\log\sigma(-x) & \texttt{conservative} \text{ (cDPO)}
        \end{cases}

    with ε = ``label_smoothing`` (the label flip rate; only ``robust`` and
    ``conservative`` take one: the others reject ε > 0). Robust DPO is an unbiased estimate
    of the clean-label loss (Chowdhury et al.); conservative DPO is the loss on softened
    labels (Mitchell's cDPO; TRL's older ``sigmoid`` with ``label_smoothing``).

    ``ipo`` works on the log-probs as given: the IPO paper's loss is on **length-averaged**
    log-probs (``sequence_logprobs(..., average="all")``), and ``beta`` is its τ. (TRL
    averages the *scores* by the completion lengths instead; the two agree for
    ``divergence="reverse_kl"``.)

    **f-DPO scores** (Wang et al., "Beyond Reverse KL"), for the divergence of the policy
    π from π_ref, each the shared generator's :math:`f'(e^r)` (from
    :func:`~losslab.functional.f_divergence_generator`, P = π) shifted so that
    :math:`s(0) = 0`, which equals TRL 1.x's scores up to constants that cancel in Δ:

    =================  ===================  ==================================================
    ``divergence``     table generator      :math:`s(r)`
    =================  ===================  ==================================================
    ``"reverse_kl"``   ``"kl"``              :math:`r` — KL(π‖π_ref): plain DPO
    ``"forward_kl"``   ``"reverse_kl"``      :math:`1 - e^{-r}` — KL(π_ref‖π)
    ``"js"``           ``"js"``              :math:`\log 2 + \log\sigma(r)`
    ``"alpha"``        ``"alpha"`` (α)       :math:`(e^{(\alpha-1) r} - 1)/(\alpha - 1)`
    =================  ===================  ==================================================

    ``"js"`` uses TRL's scale, twice the table's :math:`f'` (TRL's JS generator is the sum
    of the two KLs to the mixture, the table's their mean). **α convention** (TRL ≥ 1.x and
    the shared table): α → 1 is ``"reverse_kl"`` (plain DPO) and α → 0 is
    ``"forward_kl"``; α = 1 and α = 0 give them exactly. The f-DPO paper and TRL < 1.0 write
    the score :math:`(1 - u^{-\alpha'})/\alpha'` with :math:`\alpha' = 1 - \alpha`. Exponents
    of ``"forward_kl"`` and ``"alpha"`` are clamped so that no score exceeds
    :math:`e^{40} \approx 2.4\times 10^{17}` in magnitude (beyond it the score is constant and
    its gradient 0; TRL clamps at :math:`e^{80}` or not at all and overflows float32 there):
    every loss type, IPO's square included, stays finite for log-ratios of ±1e4 in float32.

    Args:
        policy_chosen_logps: log π of the chosen responses.
        policy_rejected_logps: log π of the rejected responses.
        ref_chosen_logps: log π_ref of the chosen responses.
        ref_rejected_logps: log π_ref of the rejected responses.
        beta: β > 0, the strength of the divergence constraint (IPO's τ).
        loss_type: ``"sigmoid"``, ``"hinge"``, ``"ipo"``, ``"robust"`` or ``"conservative"``.
        divergence: ``"reverse_kl"``, ``"forward_kl"``, ``"js"`` or ``"alpha"``.
        alpha: the α of ``divergence="alpha"`` (any real; see the convention above).
        label_smoothing: ε ∈ [0, 0.5) for ``"robust"`` and ``"conservative"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        four tensors of one shape, usually ``(B,)``; output of that shape for ``"none"``,
        else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import dpo_loss
        >>> pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -4.0])
        >>> rc, rr = torch.tensor([-3.5, -4.5]), torch.tensor([-3.5, -4.5])
        >>> x = 0.1 * ((pc - rc) - (pr - rr))
        >>> torch.allclose(dpo_loss(pc, pr, rc, rr), -torch.nn.functional.logsigmoid(x).mean())
        True
        >>> torch.allclose(dpo_loss(pc, pr, rc, rr, divergence="alpha", alpha=1.0), dpo_loss(pc, pr, rc, rr))
        True

    References:
        Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a
        Reward Model", NeurIPS 2023, https://arxiv.org/abs/2305.18290;
        Wang et al., "Beyond Reverse KL: Generalizing Direct Preference Optimization with
        Diverse Divergence Constraints", ICLR 2024, https://arxiv.org/abs/2309.16240;
        Azar et al., "A General Theoretical Paradigm to Understand Learning from Human
        Preferences" (IPO), 2023, https://arxiv.org/abs/2310.12036;
        Chowdhury, Kini, Natarajan, "Provably Robust DPO", ICML 2024,
        https://arxiv.org/abs/2403.00409;
        Zhao et al., "SLiC-HF", 2023, https://arxiv.org/abs/2305.10425 (hinge);
        Richardson, Srikumar, Sabharwal, "Understanding the Logic of Direct Preference
        Alignment through Logic", 2024, https://arxiv.org/abs/2412.17696.
    """
    _check_dpo(beta=beta, loss_type=loss_type, divergence=divergence, alpha=alpha, label_smoothing=label_smoothing)
    pc, pr, rc, rr = _logps(
        ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps"),
        (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps))
    delta = _score_delta(pc, pr, rc, rr, divergence, alpha)
    if loss_type == "ipo":
        return reduce((delta - 1 / (2 * beta)).square(), reduction)
    x = delta * beta  # Tensor.__mul__ (C++), not float.__mul__ -> Tensor.__rmul__ (a Python wrapper)
    if loss_type == "sigmoid":
        if reduction != "none":  # negate the reduced scalar, not every element (a pass less each way)
            return -reduce(F.logsigmoid(x), reduction)
        loss = -F.logsigmoid(x)
    elif loss_type == "hinge":
        loss = torch.relu(1 - x)
    elif loss_type == "robust":
        eps = label_smoothing
        loss = (-(1 - eps) * F.logsigmoid(x) + eps * F.logsigmoid(-x)) / (1 - 2 * eps)
    else:  # conservative
        loss = _neg_logsigmoid_smoothed(x, label_smoothing)
    return reduce(loss, reduction)


class DPORewards(NamedTuple):
    """The implicit rewards of DPO and the fraction of pairs they rank correctly."""

    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    reward_accuracy: torch.Tensor


def dpo_rewards(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
) -> DPORewards:
    r"""DPO's implicit rewards β(log π − log π_ref) and the reward accuracy that trainers log.

    .. math::
        \hat r_w = \beta(\log\pi(y_w) - \log\pi_\text{ref}(y_w)), \quad
        \hat r_l = \beta(\log\pi(y_l) - \log\pi_\text{ref}(y_l)), \quad
        \text{accuracy} = \tfrac{1}{B}\textstyle\sum_i [\hat r_{w,i} > \hat r_{l,i}]

    The accuracy is TRL's ``rewards/accuracies``: a strict comparison (ties count as
    wrong), 0 for an empty batch. The rewards keep their graph (call ``.detach()`` to
    log them). Not a loss, so not in the objective registry.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps:
            as in :func:`dpo_loss`.
        beta: β > 0.

    Shape:
        inputs of one shape ``(B,)``; ``chosen_rewards`` and ``rejected_rewards`` of that
        shape, ``reward_accuracy`` a scalar.

    Returns:
        :class:`DPORewards` ``(chosen_rewards, rejected_rewards, reward_accuracy)``
        (float32 for half-precision inputs).

    Example:
        >>> import torch
        >>> from losslab.functional import dpo_rewards
        >>> out = dpo_rewards(torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -4.0]),
        ...                   torch.tensor([-3.5, -4.5]), torch.tensor([-3.5, -4.5]), beta=0.1)
        >>> out.chosen_rewards, out.reward_accuracy
        (tensor([ 0.0500, -0.0500]), tensor(0.5000))

    References:
        Rafailov et al., NeurIPS 2023, https://arxiv.org/abs/2305.18290 (section 5: the
        implicit reward).
    """
    _check_beta(beta)
    pc, pr, rc, rr = _logps(
        ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps"),
        (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps))
    chosen, rejected = beta * (pc - rc), beta * (pr - rr)
    acc = reduce((chosen > rejected).to(chosen.dtype), "mean").detach()
    return DPORewards(chosen, rejected, acc)


# --------------------------------------------------------------------------- NPO
@register(
    "npo_loss",
    family="preference",
    reference=NPO_PAPER,
    seed=NPO_PAPER.title,
    example=_pair_example(2, mismatch_name="ref_logps", beta=0.5, variants=({"beta": 0.05},)),
    tags=("npo", "negative preference optimization", "unlearning", "machine unlearning", "gradient ascent",
          "forgetting", "language model"),
    input_kind="sequence_logprobs",
    reference_model=True,
)
@hyperparameter_checks(_check_npo)
def npo_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Negative preference optimization: unlearning the forget set without catastrophic collapse.

    .. math::
        \ell = -\frac{2}{\beta}\,\log\sigma\big(-\beta\,(\log\pi(y) - \log\pi_\text{ref}(y))\big)

    per forget-set sequence (summed token log-probs), the DPO loss with the forget sample as
    the rejected response and no chosen one. Its gradient with respect to
    :math:`\log\pi` is :math:`2\sigma(\beta r)` with :math:`r = \log\pi - \log\pi_\text{ref}`:
    it tends to 1 as β → 0, the gradient of plain gradient ascent on the NLL (the loss
    :math:`\log\pi`), and vanishes once the model has forgotten (:math:`r \to -\infty`),
    which is what keeps NPO from collapsing.

    Args:
        policy_logps: log π of the forget-set sequences.
        ref_logps: log π_ref of the same sequences.
        beta: β > 0 (the paper uses 0.1).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        two tensors of one shape ``(B,)``; output ``(B,)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import npo_loss
        >>> p, r = torch.tensor([-2.0, -6.0]), torch.tensor([-3.0, -3.0])
        >>> ref = -(2 / 0.1) * torch.nn.functional.logsigmoid(-0.1 * (p - r))
        >>> torch.allclose(npo_loss(p, r, reduction="none"), ref)
        True

    References:
        Zhang, Lin, Bai, Mei, "Negative Preference Optimization: From Catastrophic Collapse
        to Effective Unlearning", COLM 2024, https://arxiv.org/abs/2404.05868.
    """
    _check_npo(beta=beta)
    p, r = _logps(("policy_logps", "ref_logps"), (policy_logps, ref_logps))
    loss = -(2.0 / beta) * F.logsigmoid(-beta * (p - r))
    return reduce(loss, reduction)


# --------------------------------------------------------------------------- reference-free
@register(
    "simpo_loss",
    family="preference",
    reference=SIMPO_PAPER,
    seed=LOGIC_PAPER.title,
    example=_pair_example(2, mismatch_name="policy_rejected_logps", label_smoothing=0.1,
                          variants=({"label_smoothing": 0.0, "gamma": 0.0, "beta": 10.0},)),
    tags=("simpo", "simple preference optimization", "reference-free", "preference alignment", "length-normalized",
          "alignment", "language model"),
    input_kind="sequence_logprobs",
    reference_model=False,
)
@hyperparameter_checks(_check_simpo)
def simpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    *,
    beta: float = 2.0,
    gamma: float = 1.0,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""SimPO: reference-free margin loss on length-averaged log-probabilities.

    .. math::
        \ell = -(1-\varepsilon)\log\sigma(x) - \varepsilon\log\sigma(-x), \qquad
        x = \beta(\bar\ell_w - \bar\ell_l) - \gamma

    with :math:`\bar\ell` the per-token **average** log-prob
    (``sequence_logprobs(..., average="all")``). ``gamma`` is the absolute margin γ (the
    paper's target reward margin); the paper and TRL parametrize it by the ratio γ/β,
    which is 0.5 at these defaults (β = 2, γ = 1). ``label_smoothing`` ε is TRL's (0: the
    paper's loss).

    Args:
        policy_chosen_logps: average log π of the chosen responses.
        policy_rejected_logps: average log π of the rejected responses.
        beta: β > 0 (the paper: 2 to 10).
        gamma: the margin γ (any real; the paper: 0.3 β to 1.6 β).
        label_smoothing: ε ∈ [0, 0.5).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        two tensors of one shape ``(B,)``; output ``(B,)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import simpo_loss
        >>> c, r = torch.tensor([-0.8, -1.5]), torch.tensor([-1.2, -1.0])
        >>> ref = -torch.nn.functional.logsigmoid(2.0 * (c - r) - 1.0)
        >>> torch.allclose(simpo_loss(c, r, reduction="none"), ref)
        True

    References:
        Meng, Xia, Chen, "SimPO: Simple Preference Optimization with a Reference-Free
        Reward", NeurIPS 2024, https://arxiv.org/abs/2405.14734.
    """
    _check_simpo(beta=beta, gamma=gamma, label_smoothing=label_smoothing)
    c, r = _logps(("policy_chosen_logps", "policy_rejected_logps"), (policy_chosen_logps, policy_rejected_logps))
    loss = _neg_logsigmoid_smoothed(beta * (c - r) - gamma, label_smoothing)
    return reduce(loss, reduction)


@register(
    "orpo_loss",
    family="preference",
    reference=ORPO_PAPER,
    seed=LOGIC_PAPER.title,
    example=_pair_example(2, mismatch_name="policy_rejected_logps", nll=True, variants=({"beta": 1.0},)),
    tags=("orpo", "odds ratio preference optimization", "reference-free", "preference alignment", "sft",
          "alignment", "language model", "log-odds"),
    input_kind="sequence_logprobs",
    reference_model=False,
)
@hyperparameter_checks(_check_orpo)
def orpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    chosen_nll: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""ORPO: the odds-ratio preference term (plus the chosen NLL), without a reference model.

    .. math::
        \ell = \text{NLL}_w - \beta\log\sigma\Big(\log\frac{\text{odds}(y_w)}{\text{odds}(y_l)}\Big),
        \qquad \log\text{odds}(y) = \bar\ell - \log(1 - e^{\bar\ell})

    with :math:`\bar\ell` the per-token **average** log-prob (``average="all"``), which must
    be < 0. :math:`\log(1 - e^{\bar\ell})` is a stable ``log1mexp`` (exact as
    :math:`\bar\ell \to 0^-` and as :math:`\bar\ell \to -\infty`, where the naive
    ``log1p(-exp(.))`` loses all digits or gives ``-inf``). ``chosen_nll`` (the chosen
    responses' per-sample SFT loss, e.g. ``-sequence_logprobs(..., average="all")``) is
    added when given; without it the function is the odds-ratio term alone.

    Args:
        policy_chosen_logps: average log π of the chosen responses (< 0).
        policy_rejected_logps: average log π of the rejected responses (< 0).
        beta: β > 0, the weight of the odds-ratio term (the paper's λ; 0.1 in TRL).
        chosen_nll: optional per-sample NLL of the chosen responses (same shape), cast to
            the log-probs' compute dtype.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        tensors of one shape ``(B,)``; output ``(B,)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import orpo_loss
        >>> c, r = torch.tensor([-0.5, -1.5]), torch.tensor([-1.0, -1.0])
        >>> odds = lambda l: l - torch.log(1 - torch.exp(l))
        >>> ref = -0.1 * torch.nn.functional.logsigmoid(odds(c) - odds(r))
        >>> torch.allclose(orpo_loss(c, r, reduction="none"), ref)
        True

    References:
        Hong, Lee, Thorne, "ORPO: Monolithic Preference Optimization without Reference
        Model", EMNLP 2024, https://arxiv.org/abs/2403.07691.
    """
    _check_orpo(beta=beta)
    c, r, nll = _logps(("policy_chosen_logps", "policy_rejected_logps"), (policy_chosen_logps, policy_rejected_logps),
                       (("chosen_nll", chosen_nll),))
    if validation_enabled() and c.numel() > 0:
        # A positive "log-probability" has no odds (log1mexp of x > 0 is NaN); NaN passes
        # (NaN > 0 is False) and propagates to the loss.
        for name, t in (("policy_chosen_logps", c), ("policy_rejected_logps", r)):
            hi = float(t.detach().max())
            if hi > 0:
                raise ValueError(f"{name} must be log-probabilities (<= 0), found {hi:.4g}")
    log_odds = (c - r) - (log1mexp(c) - log1mexp(r))
    loss = -beta * F.logsigmoid(log_odds)
    if nll is not None:
        loss = loss + nll
    return reduce(loss, reduction)


@register(
    "cpo_loss",
    family="preference",
    reference=CPO_PAPER,
    seed=LOGIC_PAPER.title,
    example=_pair_example(2, mismatch_name="policy_rejected_logps", nll=True, label_smoothing=0.1, nll_weight=0.5,
                          variants=({"label_smoothing": 0.0, "nll_weight": 1.0, "beta": 1.0},)),
    tags=("cpo", "contrastive preference optimization", "reference-free", "preference alignment", "translation",
          "alignment", "language model"),
    input_kind="sequence_logprobs",
    reference_model=False,
)
@hyperparameter_checks(_check_cpo)
def cpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    chosen_nll: torch.Tensor | None = None,
    nll_weight: float = 1.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""CPO: the reference-free DPO sigmoid loss plus a weighted NLL of the chosen responses.

    .. math::
        \ell = -(1-\varepsilon)\log\sigma(x) - \varepsilon\log\sigma(-x)
               + w\,\text{NLL}_w, \qquad x = \beta(\log\pi(y_w) - \log\pi(y_l))

    DPO's sigmoid loss with π_ref replaced by a uniform reference (which cancels), on
    summed log-probs, plus ``nll_weight`` :math:`w` times ``chosen_nll`` when it is given
    (the paper's behaviour-cloning regularizer; TRL's ``cpo_alpha``, default 1).
    ``label_smoothing`` ε is TRL's (0: the paper's loss).

    Args:
        policy_chosen_logps: log π of the chosen responses.
        policy_rejected_logps: log π of the rejected responses.
        beta: β > 0 (0.1 in the paper and TRL).
        label_smoothing: ε ∈ [0, 0.5).
        chosen_nll: optional per-sample NLL of the chosen responses (same shape), cast to
            the log-probs' compute dtype.
        nll_weight: w ≥ 0, the weight of ``chosen_nll``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        tensors of one shape ``(B,)``; output ``(B,)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import cpo_loss
        >>> c, r, nll = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -4.0]), torch.tensor([1.0, 2.0])
        >>> ref = -torch.nn.functional.logsigmoid(0.1 * (c - r)) + nll
        >>> torch.allclose(cpo_loss(c, r, chosen_nll=nll, reduction="none"), ref)
        True

    References:
        Xu et al., "Contrastive Preference Optimization: Pushing the Boundaries of LLM
        Performance in Machine Translation", ICML 2024, https://arxiv.org/abs/2401.08417.
    """
    _check_cpo(beta=beta, label_smoothing=label_smoothing, nll_weight=nll_weight)
    c, r, nll = _logps(("policy_chosen_logps", "policy_rejected_logps"), (policy_chosen_logps, policy_rejected_logps),
                       (("chosen_nll", chosen_nll),))
    loss = _neg_logsigmoid_smoothed(beta * (c - r), label_smoothing)
    if nll is not None:
        loss = loss + nll_weight * nll
    return reduce(loss, reduction)
