"""Label-distributionally robust (LDR) losses: LDR-KL and its adaptive version ALDR-KL."""
from __future__ import annotations

import math

import torch

from .._checks import (
    check_choice,
    check_class_target,
    check_floating,
    check_in_range,
    check_leading_shape,
    check_ndim,
    check_positive,
    hyperparameter_checks,
    validation_enabled,
)
from .._numerics import softplus, upcast
from .._reduction import reduce
from ..registry import Example, Reference, register
from ._examples import IGNORE, class_weighted_mean, classification_example, randint, randn
from .classification import _check_logits

__all__ = ["ldr_kl_loss", "aldr_kl_loss", "aldr_kl_update", "LOGIT_TRANSFORMS"]

LDR_PAPER = Reference(
    title="Label Distributionally Robust Losses for Multi-class Classification: Consistency, Robustness and Adaptivity",
    authors="Dixian Zhu, Yiming Ying, Tianbao Yang",
    year=2023,
    url="https://arxiv.org/abs/2112.14869",
)
LDR_SEED = "Label Distributionally Robust Losses for Multi-class Classification: Consistency, Robustness and Adaptivity"

#: Values of ``logit_transform``: ``None`` (the paper's loss on the given logits) or the
#: authors' code's rescaling by the mean absolute logit, without / after a softplus.
LOGIT_TRANSFORMS = (None, "normalize", "softplus_normalize")


def _transform(x: torch.Tensor, logit_transform: str | None) -> torch.Tensor:
    """The authors' code's optional logit rescaling: f / mean_k |f_k| (after a softplus)."""
    if logit_transform is None:
        return x
    if logit_transform == "softplus_normalize":
        x = softplus(x)
    # An all-zero row stays zero instead of becoming 0/0.
    scale = x.abs().mean(-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    return x / scale


def _margins(x: torch.Tensor, target: torch.Tensor, margin: float, keep: torch.Tensor) -> torch.Tensor:
    """d_k = margin * [k != y] + x_k - x_y, with d_y = 0 exactly.

    Ignored samples (``keep`` False, ``target`` a placeholder class) use x_y = 0: the
    placeholder class may have a ``-inf`` logit, and their masked loss must not bring a
    ``0 * inf = NaN`` into the gradient.
    """
    x_y = x.gather(-1, target.unsqueeze(-1))
    x_y = torch.where(keep.unsqueeze(-1), x_y, torch.zeros((), dtype=x_y.dtype, device=x_y.device))
    d = x - x_y + margin
    # d_y = x_y - x_y: exactly 0 for a finite target logit, NaN for a NaN or infinite one
    # (scattering the constant 0 would turn a +inf target logit into a finite loss).
    return d.scatter(-1, target.unsqueeze(-1), x_y - x_y)


def _ldr_value(d: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """lam * log((1/K) sum_k exp(d_k / lam)) via logsumexp (no overflow for any d / lam)."""
    if isinstance(lam, torch.Tensor):
        lam = lam.unsqueeze(-1)
    k = d.shape[-1]
    return (lam * (torch.logsumexp(d / lam, dim=-1, keepdim=True) - math.log(k))).squeeze(-1)


def _safe_target(target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    keep = target != ignore_index
    return keep, torch.where(keep, target, torch.zeros((), dtype=target.dtype, device=target.device))


def _check_margin(margin: float) -> None:
    check_in_range(margin, "margin", 0.0, math.inf)
    if not math.isfinite(margin):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")


def _check_ldr(*, lam=1.0, margin=1.0, logit_transform=None, **_) -> None:
    check_positive(lam, "lam")
    _check_margin(margin)
    check_choice(logit_transform, "logit_transform", LOGIT_TRANSFORMS)


@register(
    "ldr_kl_loss",
    family="classification",
    reference=LDR_PAPER,
    seed=LDR_SEED,
    example=classification_example(ignore_index=True, lam=1.0, margin=1.0),
    tags=("noisy labels", "label noise", "robust loss", "distributionally robust", "margin"),
    input_kind="logits",
    classification_calibrated=True,
    # Robust to label noise for large lambda (the paper's noisy-label runs: lambda = 10);
    # the default lambda = 1 fits noisy labels like cross-entropy (see the docstring).
    noise_robust=True,
)
@hyperparameter_checks(_check_ldr)
def ldr_kl_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    lam: float = 1.0,
    margin: float = 1.0,
    logit_transform: str | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""LDR-KL loss: the worst case over label distributions of the margin loss, KL-regularized.

    With margins :math:`d_k = \delta\,[k \ne y] + f_k - f_y` (so :math:`d_y = 0`),

    .. math::
        \ell = \max_{p \in \Delta_K} \sum_k p_k d_k - \lambda\,\mathrm{KL}(p \,\|\, \tfrac1K\mathbf 1)
             = \lambda \log\Big(\frac1K \sum_k e^{d_k/\lambda}\Big),

    computed with ``logsumexp``. As :math:`\lambda \to 0` it tends to the top-1 margin
    hinge :math:`\max_k d_k` (Crammer–Singer); as :math:`\lambda \to \infty` to the mean
    :math:`\frac1K\sum_k d_k` (Weston–Watkins without the hinge). With :math:`\delta = 0`,
    :math:`\lambda = 1` it is cross-entropy minus :math:`\log K`.

    Defaults and robustness: ``lam=1, margin=1`` (a smoothed Crammer–Singer loss close
    to cross-entropy) fits noisy labels like cross-entropy does. The paper's noisy-label
    experiments use a large :math:`\lambda` (the authors' scripts: :math:`\lambda = 10`,
    :math:`\delta = 0.1`): larger :math:`\lambda` is more robust and slower to fit. For
    a per-sample :math:`\lambda` chosen automatically use :func:`aldr_kl_loss`.

    Non-finite inputs (see CONTRIBUTING.md): a NaN logit, or ``+inf`` on the target class,
    gives NaN; ``+inf`` on another class gives the exact value ``+inf``; ``-inf`` classes
    have margin ``-inf`` and drop out of the log-sum-exp.

    ``logit_transform`` exposes the authors' code's rescaling of the logits by their mean
    absolute value before the loss (``"normalize"``: :math:`f / (\frac1K\|f\|_1)`;
    ``"softplus_normalize"``: the same after a softplus), which bounds the margins by a
    constant of order :math:`K`. The default ``None`` is the paper's definition on the
    given logits.

    Args:
        logits: ``(*, K)`` unnormalized scores.
        target: ``(*)`` class indices.
        lam: :math:`\lambda > 0`.
        margin: :math:`\delta \ge 0` for the non-target classes.
        logit_transform: ``None``, ``"normalize"`` or ``"softplus_normalize"``.
        ignore_index: target value whose samples are left out.
        reduction: ``"mean"`` (over kept samples), ``"sum"`` or ``"none"``.

    Shape:
        logits ``(*, K)``, target ``(*)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import ldr_kl_loss
        >>> x, t = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
        >>> ldr_kl_loss(x, t, lam=1.0, margin=1.0)   # log((e^0 + e^-1 + e^-2) / 3)
        tensor(-0.6910)

    References:
        Zhu, Ying, Yang, "Label Distributionally Robust Losses for Multi-class
        Classification: Consistency, Robustness and Adaptivity", ICML 2023,
        https://arxiv.org/abs/2112.14869. Authors' code:
        https://github.com/Optimization-AI/ICML2023_LDR (``loss.py``).
    """
    _check_logits(logits)
    _check_ldr(lam=lam, margin=margin, logit_transform=logit_transform)
    target = check_class_target(target, logits, ignore_index=ignore_index)
    keep, safe = _safe_target(target, ignore_index)
    x = _transform(upcast(logits), logit_transform)
    loss = _ldr_value(_margins(x, safe, margin, keep), float(lam))
    return reduce(loss, reduction, mask=keep)


# --------------------------------------------------------------------------- ALDR-KL
def _check_aldr_hyper(lam0: float, alpha: float, logit_transform: str | None) -> None:
    check_positive(lam0, "lam0")
    # alpha > 1 keeps every updated lambda >= lam0 (1 - 1/alpha) > 0 (the authors' code
    # notes the same requirement).
    check_in_range(alpha, "alpha", 1.0, math.inf, low_inclusive=False)
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number > 1, got {alpha!r}")
    check_choice(logit_transform, "logit_transform", LOGIT_TRANSFORMS)


def check_aldr_hyperparameters(*, lam0=10.0, alpha=2.0, margin=0.1, logit_transform=None, **_) -> None:
    """The hyperparameter checks of :func:`aldr_kl_loss` (also run by ``nn.AdaptiveLDRKLLoss``)."""
    _check_aldr_hyper(lam0, alpha, logit_transform)
    _check_margin(margin)


def _check_aldr_inputs(logits: torch.Tensor, lam: torch.Tensor) -> None:
    _check_logits(logits)
    check_ndim(logits, "logits", 2)
    if logits.shape[-1] < 2:
        raise ValueError(f"logits must have at least 2 classes for ALDR-KL (log K > 0), got shape {tuple(logits.shape)}")
    check_floating(lam, "lam")
    check_leading_shape(lam, "lam", logits.shape[:-1], "logits")
    if validation_enabled() and lam.numel() > 0 and not bool((lam > 0).all()):
        raise ValueError(f"lam must hold positive per-sample lambdas, found {float(lam.min()):.4g}")


def _new_lambda(x: torch.Tensor, lam: torch.Tensor, lam0: float, alpha: float) -> torch.Tensor:
    """lam0 * (1 - KL(softmax(x / lam) || uniform) / (alpha log K)) without gradient."""
    with torch.no_grad():
        k = x.shape[-1]
        log_k = math.log(k)
        logp = torch.log_softmax(x.detach() / lam.unsqueeze(-1), dim=-1)
        p = logp.exp()
        # KL(p || 1/K) = log K + sum_k p_k log p_k; p_k = 0 contributes 0 (not 0 * -inf = NaN).
        # p == 0, not p > 0: a NaN p (NaN logits) must stay NaN, not count as 0.
        plogp = torch.where(p == 0, torch.zeros((), dtype=p.dtype, device=p.device), p * logp)
        # Round-off can leave KL a hair outside [0, log K]; the clamp keeps the documented
        # range of lambda exactly.
        kl = (log_k + plogp.sum(-1)).clamp(0.0, log_k)
        return lam0 * (1.0 - kl / (alpha * log_k))


def _aldr_kl(
    logits: torch.Tensor,
    target: torch.Tensor,
    lam: torch.Tensor,
    *,
    lam0: float,
    alpha: float,
    margin: float,
    logit_transform: str | None,
    ignore_index: int,
    reduction: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(reduced loss, updated lambda (N,)); shared by :func:`aldr_kl_loss` and the Module."""
    _check_aldr_inputs(logits, lam)
    check_aldr_hyperparameters(lam0=lam0, alpha=alpha, margin=margin, logit_transform=logit_transform)
    target = check_class_target(target, logits, ignore_index=ignore_index)
    keep, safe = _safe_target(target, ignore_index)
    x = _transform(upcast(logits), logit_transform)
    lam_old = upcast(lam.detach(), x.dtype)
    # Samples whose target is ignored keep their lambda.
    new = torch.where(keep, _new_lambda(x, lam_old, lam0, alpha), lam_old)
    k = x.shape[-1]
    penalty = (alpha * math.log(k) / (2.0 * lam0)) * (new - lam0).square()
    loss = _ldr_value(_margins(x, safe, margin, keep), new) - penalty
    return reduce(loss, reduction, mask=keep), new


def aldr_kl_update(
    logits: torch.Tensor,
    lam: torch.Tensor,
    *,
    lam0: float = 10.0,
    alpha: float = 2.0,
    logit_transform: str | None = None,
) -> torch.Tensor:
    r"""ALDR-KL's closed-form per-sample λ update (no gradient): the λ_i that :func:`aldr_kl_loss` uses.

    .. math::
        p = \operatorname{softmax}(f/\lambda_i),\quad
        \mathrm{KL}_i = \sum_k p_k \log(K p_k),\quad
        \lambda_i \leftarrow \lambda_0\Big(1 - \frac{\mathrm{KL}_i}{\alpha \log K}\Big),

    with :math:`f` the (optionally transformed) logits *without* the margin term and
    :math:`\lambda_i` the stored value. :math:`\mathrm{KL}_i \in [0, \log K]` (clamped
    against round-off), so the new :math:`\lambda_i` lies in
    :math:`[\lambda_0(1 - 1/\alpha), \lambda_0]`, positive for :math:`\alpha > 1`.
    Confident (peaked) predictions get a smaller :math:`\lambda` (closer to the margin
    hinge), uncertain ones — often noisy labels — keep a large :math:`\lambda`.

    Args:
        logits: ``(N, K)``.
        lam: ``(N,)`` current per-sample :math:`\lambda_i > 0`.
        lam0: :math:`\lambda_0 > 0`.
        alpha: :math:`\alpha > 1`.
        logit_transform: as in :func:`ldr_kl_loss`.

    Returns:
        ``(N,)`` updated :math:`\lambda_i` in the compute dtype (float32 for half inputs).

    Example:
        >>> import torch
        >>> from losslab.functional import aldr_kl_update
        >>> aldr_kl_update(torch.tensor([[0.0, 0.0, 0.0], [50.0, 0.0, 0.0]]), torch.tensor([10.0, 10.0]))
        tensor([10.0000,  5.3635])
    """
    _check_aldr_inputs(logits, lam)
    _check_aldr_hyper(lam0, alpha, logit_transform)
    x = _transform(upcast(logits.detach()), logit_transform)
    return _new_lambda(x, upcast(lam.detach(), x.dtype), lam0, alpha)


def _aldr_example() -> Example:
    hyper = {"lam0": 10.0, "alpha": 2.0, "margin": 0.1}

    def lam(gen: torch.Generator, n: int) -> torch.Tensor:
        return torch.rand(n, generator=gen, dtype=torch.float64) * 5 + 5

    def make(gen: torch.Generator):
        return (randn(gen, 7, 5), randint(gen, 5, 7), lam(gen, 7)), dict(hyper)

    def mismatch(gen: torch.Generator):
        return (randn(gen, 7, 5), randint(gen, 5, 7), torch.ones(6, dtype=torch.float64)), dict(hyper)

    def ignored(gen: torch.Generator):
        target = randint(gen, 5, 7)
        target[::3] = IGNORE
        return (randn(gen, 7, 5), target, lam(gen, 7)), dict(hyper)

    def empty(gen: torch.Generator):
        return (randn(gen, 7, 5), torch.full((7,), IGNORE, dtype=torch.long), lam(gen, 7)), dict(hyper)

    def module(gen: torch.Generator):
        from ..nn import AdaptiveLDRKLLoss

        crit = AdaptiveLDRKLLoss(num_samples=20, **hyper)
        # One training step first, so that the state being round-tripped is not the initial one.
        crit(randn(gen, 6, 5), randint(gen, 5, 6), torch.randperm(20, generator=gen)[:6])
        return crit, (randn(gen, 7, 5), randint(gen, 5, 7), torch.randperm(20, generator=gen)[:7]), {}

    # grad=(): lambda is updated from the logits inside the call and then held constant
    # (stop-gradient, as in the paper's algorithm), so finite differences of the value see
    # d(loss)/d(lambda) * d(lambda)/d(logits) that the defined gradient leaves out on
    # purpose. tests/functional/test_classification_ldr.py checks the gradient against
    # finite differences at fixed lambda instead.
    return Example(make=make, mismatch=mismatch, mismatch_match="lam", extreme=(0,), grad=(),
                   mean_rule=class_weighted_mean, variants=(ignored,), empty=empty, module=module)


@register(
    "aldr_kl_loss",
    family="classification",
    reference=LDR_PAPER,
    seed=LDR_SEED,
    example=_aldr_example(),
    tags=("noisy labels", "label noise", "robust loss", "distributionally robust", "adaptive", "per-sample state"),
    input_kind="logits",
    noise_robust=True,
    needs_index=False,
    stateful_module=True,
)
@hyperparameter_checks(check_aldr_hyperparameters)
def aldr_kl_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    lam: torch.Tensor,
    *,
    lam0: float = 10.0,
    alpha: float = 2.0,
    margin: float = 0.1,
    logit_transform: str | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Adaptive LDR-KL (ALDR-KL): LDR-KL with a per-sample λ_i adapted in closed form to the label's uncertainty.

    ALDR-KL maximizes the LDR-KL objective over the label distribution *and* a
    per-sample :math:`\lambda_i`, penalized towards :math:`\lambda_0`:

    .. math::
        \ell_i = \max_{\lambda}\; \lambda \log\Big(\frac1K\sum_k e^{d_k/\lambda}\Big)
                 - \frac{\alpha\log K}{2\lambda_0}(\lambda - \lambda_0)^2,
        \qquad d_k = \delta[k\ne y] + f_k - f_y .

    Since :math:`\frac{\partial}{\partial\lambda}\lambda\log\frac1K\sum_k e^{d_k/\lambda}
    = -\mathrm{KL}(\operatorname{softmax}(d/\lambda)\,\|\,\tfrac1K)`, the maximizer solves
    :math:`\lambda = \lambda_0(1 - \mathrm{KL}/(\alpha\log K))`. As in the paper's
    stochastic algorithm, each visit of a sample takes one step of this fixed point from
    the stored :math:`\lambda_i` (``lam``; see :func:`aldr_kl_update`, which uses the
    logits without the margin term, as the authors' code does) and evaluates the objective
    at the new :math:`\lambda_i`, held constant (no gradient through :math:`\lambda`).

    This function is the pure step: ``lam`` is the stored :math:`\lambda_i` of the batch's
    samples; the updated values are :func:`aldr_kl_update` ``(logits, lam, ...)``.
    Training keeps :math:`\lambda_i` for every dataset sample:
    ``losslab.nn.AdaptiveLDRKLLoss(num_samples=N)`` called as ``module(logits, target, index)``
    (registry: ``losslab.info("aldr_kl_loss").module``, property ``stateful_module=True``).

    Conventions: the penalty weight :math:`\alpha\log K/(2\lambda_0)` is the authors'
    code's parameterization (so :math:`\lambda_i \in [\lambda_0(1-1/\alpha), \lambda_0]` for
    every :math:`K`); defaults :math:`\lambda_0 = 10`, :math:`\alpha = 2`,
    :math:`\delta = 0.1` are the authors' scripts'. The authors' code always rescales the
    logits (``logit_transform="normalize"``, ``"softplus_normalize"`` for CIFAR-100) and
    adds :math:`10^{-5}` to the probabilities before the log; we default to the paper's
    loss on the given logits and compute the KL in log-space exactly. The penalty is
    constant for the model and kept so that the value is the paper's objective.

    Args:
        logits: ``(N, K)``, :math:`K \ge 2`.
        target: ``(N,)`` class indices.
        lam: ``(N,)`` stored per-sample :math:`\lambda_i > 0` (no gradient).
        lam0: :math:`\lambda_0 > 0`.
        alpha: :math:`\alpha > 1`.
        margin: :math:`\delta \ge 0`.
        logit_transform: as in :func:`ldr_kl_loss`.
        ignore_index: target value whose samples are left out (their :math:`\lambda_i` is
            not updated).
        reduction: ``"mean"`` (over kept samples), ``"sum"`` or ``"none"``.

    Shape:
        logits ``(N, K)``, target ``(N,)``, lam ``(N,)``; output ``(N,)`` for ``"none"``,
        else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import aldr_kl_loss, aldr_kl_update
        >>> x, t, lam = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0]), torch.tensor([10.0])
        >>> aldr_kl_loss(x, t, lam)          # evaluated at the updated lambda
        tensor(-1.5266)
        >>> aldr_kl_update(x, lam)           # the value a training loop stores
        tensor([9.9637])

    References:
        Zhu, Ying, Yang, "Label Distributionally Robust Losses for Multi-class
        Classification: Consistency, Robustness and Adaptivity", ICML 2023,
        https://arxiv.org/abs/2112.14869. Authors' code:
        https://github.com/Optimization-AI/ICML2023_LDR (``ALDRLoss_V1``).
    """
    loss, _ = _aldr_kl(
        logits, target, lam, lam0=lam0, alpha=alpha, margin=margin, logit_transform=logit_transform,
        ignore_index=ignore_index, reduction=reduction,
    )
    return loss
