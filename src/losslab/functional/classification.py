"""Classification objectives on logits ``(*, C)`` and class targets ``(*)``.

The class dimension is last; leading dimensions are flattened in spirit (any number of
them is accepted). This differs from ``torch.nn.functional.cross_entropy``, which puts
the class dimension second for inputs with more than two dimensions; for ``(N, C)``
inputs the two agree.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from .._checks import (
    check_class_target,
    check_class_weight,
    check_floating,
    check_in_range,
    check_ndim,
    check_nonnegative,
    check_nonnegative_tensor,
    check_positive,
    check_probabilities,
    check_reduction,
    check_same_shape,
    hyperparameter_checks,
    validation_enabled,
)
from .._numerics import softcap as _apply_softcap
from .._numerics import softplus, upcast
from .._reduction import reduce
from ..registry import Example, Reference, register
from ._examples import F64, IGNORE, class_weighted_mean, classification_example, randint, randn

__all__ = ["cross_entropy", "z_loss", "focal_loss", "spherical_z_loss", "logit_adjusted_cross_entropy"]

ZLOSS_PAPER = Reference(
    title="Small-scale proxies for large-scale Transformer training instabilities",
    authors="Wortsman, Liu, Xiao, Everett, Alemi, Adlam, Co-Reyes, Gur, Kumar, Novak, Pennington, "
    "Sohl-Dickstein, Xu, Lee, Gilmer, Kornblith",
    year=2023,
    url="https://arxiv.org/abs/2309.14322",
)
ZLOSS_SEED = "Small-scale proxies for large-scale Transformer training instabilities"


def _check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    # No NaN scan here: a full pass over an (N, C) tensor costs more than the loss itself
    # (about 20 ms at 8192 x 1000 on 2 cores), and NaN logits already give a NaN loss.
    check_floating(logits, name)
    check_ndim(logits, name, tuple(range(1, 9)))


def _check_softcap(softcap: float | None) -> None:
    if softcap is not None:
        check_positive(softcap, "softcap")


def check_per_class(value: torch.Tensor | None, name: str) -> None:
    """A per-class constant (class ``weight``, focal ``alpha``): ``None`` or a non-negative ``(C,)`` tensor.

    The number of classes is only known from the logits, so the length is checked at call
    time (``check_class_weight``); this is what a Module can check at construction.
    """
    if value is None:
        return
    check_floating(value, name)
    if value.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor with one value per class, got shape {tuple(value.shape)}")
    check_nonnegative_tensor(value, name)


def _check_cross_entropy(*, weight=None, label_smoothing=0.0, z_loss=0.0, softcap=None, **_) -> None:
    check_per_class(weight, "weight")
    check_in_range(label_smoothing, "label_smoothing", 0.0, 1.0)
    check_nonnegative(z_loss, "z_loss")
    _check_softcap(softcap)


def _ce_mean_rule(none: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """torch's rule: class-index targets divide by sum of w[y] over kept samples, probability targets by N."""
    if args[1].is_floating_point():
        return none.mean()
    return class_weighted_mean(none, args, kwargs)


def _cross_entropy_example() -> Example:
    # make: z-loss only. Label smoothing is in the variants: it gives classes of probability 0
    # (-inf logits, which the property suite draws) target mass, so the loss is +inf there.
    base = classification_example(weight=True, ignore_index=True, z_loss=1e-3)

    def smoothed(gen: torch.Generator):
        target = randint(gen, 5, 7)
        target[::3] = IGNORE
        w = torch.rand(5, generator=gen, dtype=F64) + 0.1
        return (randn(gen, 7, 5), target), {"label_smoothing": 0.1, "z_loss": 1e-3, "weight": w}

    def softcapped(gen: torch.Generator):
        return (randn(gen, 7, 5, scale=4.0), randint(gen, 5, 7)), {"softcap": 3.0, "z_loss": 1e-3,
                                                                   "label_smoothing": 0.2}

    def probability_targets(gen: torch.Generator):
        w = torch.rand(5, generator=gen, dtype=F64) + 0.1
        target = torch.softmax(randn(gen, 2, 3, 5), -1)
        return (randn(gen, 2, 3, 5), target), {"label_smoothing": 0.1, "z_loss": 1e-3, "weight": w}

    return dataclasses.replace(base, mean_rule=_ce_mean_rule,
                               variants=base.variants + (smoothed, softcapped, probability_targets))


@register(
    "cross_entropy",
    family="classification",
    reference=ZLOSS_PAPER,
    seed=ZLOSS_SEED,
    example=_cross_entropy_example(),
    tags=("label smoothing", "soft targets", "language models", "training stability", "logit soft-capping"),
    input_kind="logits",
    classification_calibrated=True,
    bounded=False,
    noise_robust=False,
)
@hyperparameter_checks(_check_cross_entropy)
def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Cross-entropy with class weights, label smoothing, soft targets, z-loss and soft-capping.

    With :math:`\tilde x = c\tanh(x/c)` when ``softcap=c`` (else :math:`\tilde x = x`),
    :math:`Z = \log\sum_k e^{\tilde x_k}` and smoothing :math:`\varepsilon`, the loss of one
    sample with class index :math:`y` is

    .. math::
        \ell = w_y\Big[(1-\varepsilon)(Z - \tilde x_y) + \lambda_z Z^2\Big]
             + \frac{\varepsilon}{C}\sum_k w_k (Z - \tilde x_k),

    where :math:`w` are the class weights (all 1 by default) and
    :math:`\lambda_z` = ``z_loss`` (PaLM's auxiliary log-partition penalty, weighted by the
    token's class weight). With probability targets :math:`p` the loss is
    :math:`\sum_k w_k \tilde p_k (Z - \tilde x_k) + \lambda_z Z^2`, with
    :math:`\tilde p = (1-\varepsilon)p + \varepsilon/C`.

    ``reduction="mean"`` follows ``F.cross_entropy``: with class indices it divides by
    :math:`\sum_i w_{y_i}` over non-ignored samples; with probability targets by the
    number of samples. Where the options overlap the result equals
    ``F.cross_entropy`` to float round-off. Unlike torch, a batch whose samples are all
    ignored gives 0 (with zero gradients) rather than NaN.

    Computed with torch's own kernels (``log_softmax`` then ``nll_loss``, as
    ``F.cross_entropy`` does internally), in float32 for half/bfloat16 logits without
    copying them to float32 (``log_softmax(dtype=float32)``); the z-loss reuses
    :math:`Z = x_y - \log p_y` (no extra pass over the logits).

    Class indices may have any integer dtype (int64, int32, uint8, ...). A floating target
    is read as class probabilities and must have the logits' shape. The class dimension is
    last: for torch's ``(N, C, d1, ...)`` layout pass ``logits.movedim(1, -1)``.

    Non-finite inputs (see CONTRIBUTING.md): a NaN or ``+inf`` logit of a kept sample gives
    a NaN loss (the log-softmax of its row is NaN); ``-inf`` logits are classes of
    probability 0 (with ``label_smoothing > 0`` the smoothed target gives them mass, so the
    loss is ``+inf``, as in torch). With ``softcap=c`` an infinite logit is capped to
    :math:`\pm c` like any other (``tanh(±∞) = ±1``), so it gives a finite loss.

    Args:
        logits: unnormalized scores, shape ``(*, C)``.
        target: class indices ``(*)`` (any integer dtype), or class probabilities ``(*, C)``.
        weight: per-class weights ``(C,)``.
        ignore_index: class index whose samples are left out (class-index targets only).
        label_smoothing: :math:`\varepsilon \in [0, 1]`, as in torch.
        z_loss: coefficient :math:`\lambda_z \ge 0` of :math:`Z^2` (1e-4 in PaLM).
        softcap: ``c > 0`` applies :math:`c\tanh(x/c)` to the logits first (Gemma 2 uses 30).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        logits ``(*, C)``; target ``(*)`` or ``(*, C)``; output ``(*)`` for ``"none"``,
        else a scalar. float32 for half/bfloat16 inputs.

    Example:
        >>> import torch
        >>> from losslab.functional import cross_entropy
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
        >>> target = torch.tensor([0, 2])
        >>> torch.allclose(cross_entropy(logits, target),
        ...                torch.nn.functional.cross_entropy(logits, target))
        True
        >>> cross_entropy(logits, target, z_loss=1e-4, reduction="none").shape
        torch.Size([2])

    References:
        Wortsman et al., "Small-scale proxies for large-scale Transformer training
        instabilities", 2023, https://arxiv.org/abs/2309.14322 (z-loss);
        Chowdhery et al., "PaLM", 2022, https://arxiv.org/abs/2204.02311;
        Szegedy et al., "Rethinking the Inception Architecture", 2016 (label smoothing).
    """
    _check_logits(logits)
    _check_cross_entropy(weight=weight, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
    num_classes = logits.shape[-1]
    check_class_weight(weight, num_classes)
    # A floating target with the logits' number of dimensions is a probability target;
    # anything else goes through the class-index check first (any integer dtype, returned
    # as int64; a float target of the leading shape gets "class indices must be integers").
    soft = isinstance(target, torch.Tensor) and target.is_floating_point() and target.dim() == logits.dim()
    if soft:
        check_same_shape(target, logits, ("target", "logits"))
        check_probabilities(target, "target")
    else:
        target = check_class_target(target, logits, ignore_index=ignore_index)
    return _cross_entropy(logits, target, soft, weight, ignore_index, label_smoothing, z_loss, softcap, reduction)


def _cross_entropy(logits, target, soft, weight, ignore_index, label_smoothing, z_loss, softcap, reduction):
    """:func:`cross_entropy` on checked inputs (``target`` int64 class indices, or probabilities if ``soft``)."""
    num_classes = logits.shape[-1]
    lead = logits.shape[:-1]
    # Half/bfloat16 logits are read as they are and the log-softmax is produced in float32
    # (log_softmax(dtype=float32)): no float32 copy of the (N, C) logits is made. Softcap
    # needs tanh of the logits, so that option upcasts first.
    x2 = logits.reshape(-1, num_classes)
    if softcap is not None:
        x2 = _apply_softcap(upcast(x2), softcap)
    out_dtype = torch.float64 if x2.dtype == torch.float64 else torch.float32
    logp = torch.log_softmax(x2, dim=-1, dtype=out_dtype)
    w = upcast(weight, out_dtype)
    eps = float(label_smoothing)

    if soft:
        p2 = upcast(target, out_dtype).reshape(-1, num_classes)
        if eps > 0:
            p2 = p2 * (1.0 - eps) + eps / num_classes
        if w is not None:
            p2 = p2 * w
        loss = -(p2 * logp).sum(-1)
        if z_loss > 0:
            loss = loss + z_loss * torch.logsumexp(upcast(x2, out_dtype), dim=-1).square()
        # torch's rule for probability targets: "mean" divides by the number of samples.
        return reduce(loss.reshape(lead), reduction)

    t1 = target.reshape(-1)
    # Only the smoothing and z-loss terms need the keep mask, and only the z-loss needs a
    # safe copy of the target and w[y]: nll_loss skips ignored samples and weights the kept
    # ones itself. Every kernel saved counts at small C, where the loss is launch-bound.
    keep = t1 != ignore_index if (eps > 0 or z_loss > 0) else None
    safe = torch.where(keep, t1, torch.zeros((), dtype=t1.dtype, device=t1.device)) if z_loss > 0 else None
    w_y = w[safe] if (w is not None and z_loss > 0) else None

    def smoothing_term():
        # (eps / C) * sum_k w_k (-log p_k), 0 for ignored samples (torch's definition).
        s = -(logp.sum(-1) if w is None else logp @ w)
        return torch.where(keep, s, torch.zeros((), dtype=out_dtype)) * (eps / num_classes)

    def z_term():
        # Z = x_y - log p_y: the log-partition from the gathered target logit, no extra pass.
        lse = upcast(x2.gather(-1, safe.unsqueeze(-1)).squeeze(-1), out_dtype) - logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        term = z_loss * torch.where(keep, lse, torch.zeros((), dtype=out_dtype)).square()
        return term if w_y is None else term * w_y

    if reduction == "none":
        loss = F.nll_loss(logp, t1, weight=w, ignore_index=ignore_index, reduction="none")
        if eps > 0:
            loss = (1.0 - eps) * loss + smoothing_term()
        if z_loss > 0:
            loss = loss + z_term()
        # Every term is already 0 on ignored samples (nll_loss skips them, the extra terms are
        # masked), so no further masking pass is needed.
        return loss.reshape(lead)

    # "sum"/"mean": torch's fused nll_loss sum kernel (faster backward than a per-sample
    # vector); the same value as reduce(<"none" loss>, reduction, mask, normalizer). The
    # aten op behind F.nll_loss also returns the kernel's total weight, sum_i w_{y_i} over
    # kept samples (their count without `weight`), which is the "mean" denominator: no
    # separate mask, count or gather pass is needed for it.
    check_reduction(reduction)
    total, total_weight = torch.ops.aten.nll_loss_forward(logp, t1, w, 2, ignore_index)  # 2 = sum
    if eps > 0:
        total = (1.0 - eps) * total + smoothing_term().sum()
    if z_loss > 0:
        total = total + z_term().sum()
    if reduction == "sum":
        return total
    # "mean": divide by sum of w[y] over kept samples (torch's rule). A zero denominator
    # (nothing kept, or only zero-weight target classes) is replaced by 1 rather than giving
    # torch's NaN: with nothing kept the loss is 0, with zero gradients.
    if w is None:
        # total_weight is the kept count: clamping at 1 only changes the all-ignored case.
        return total / total_weight.clamp_min(1)
    return total / torch.where(total_weight == 0, torch.ones_like(total_weight), total_weight)


@register(
    "z_loss",
    family="classification",
    reference=ZLOSS_PAPER,
    seed=ZLOSS_SEED,
    example=classification_example(ignore_index=True),
    tags=("language models", "training stability", "logit drift", "auxiliary loss"),
    input_kind="logits",
    bounded=False,
)
def z_loss(
    logits: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    softcap: float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""The log-partition penalty Z² = logsumexp(logits)² alone (PaLM's auxiliary loss).

    .. math:: \ell = \Big(\log\sum_k e^{x_k}\Big)^2

    It pushes the softmax normalizer towards 1 so that logits do not drift, which
    stabilises large-scale training. Add ``coefficient * z_loss(logits)`` to a loss, or
    use ``cross_entropy(..., z_loss=coefficient)`` to fuse the two. A NaN logit of a kept
    sample gives NaN, a ``+inf`` logit the exact value ``+inf``.

    Args:
        logits: ``(*, C)``.
        target: optional class indices ``(*)``, used only to leave out samples equal to
            ``ignore_index`` (the same masking as :func:`cross_entropy`).
        ignore_index: see ``target``.
        softcap: apply :math:`c\tanh(x/c)` first, as in :func:`cross_entropy`.
        reduction: ``"mean"`` (over kept samples), ``"sum"`` or ``"none"``.

    Shape:
        logits ``(*, C)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import z_loss
        >>> z_loss(torch.zeros(2, 4))  # (log 4)^2
        tensor(1.9218)

    References:
        Wortsman et al., "Small-scale proxies for large-scale Transformer training
        instabilities", 2023, https://arxiv.org/abs/2309.14322;
        Chowdhery et al., "PaLM", 2022, https://arxiv.org/abs/2204.02311.
    """
    _check_logits(logits)
    _check_softcap(softcap)
    x = _apply_softcap(upcast(logits), softcap)
    loss = torch.logsumexp(x, dim=-1).square()
    if target is None:
        return reduce(loss, reduction)
    target = check_class_target(target, logits, ignore_index=ignore_index)
    return reduce(loss, reduction, mask=target != ignore_index)


def _gather_target(x: torch.Tensor, target: torch.Tensor, ignore_index: int):
    """Kept-sample mask, a safe copy of the target (ignored -> class 0) and ``x[..., target]``.

    The gathered value of an ignored sample is 0, not ``x[..., 0]``: class 0 may have a
    ``-inf`` logit (probability 0), and a loss computed from it would be masked out of the
    value but not out of the gradient (``0 * inf = NaN`` in the backward pass).
    """
    keep = target != ignore_index
    safe = torch.where(keep, target, torch.zeros((), dtype=target.dtype, device=target.device))
    x_y = x.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return keep, safe, torch.where(keep, x_y, torch.zeros((), dtype=x_y.dtype, device=x_y.device))


FOCAL_PAPER = Reference(
    title="Focal Loss for Dense Object Detection",
    authors="Tsung-Yi Lin, Priya Goyal, Ross Girshick, Kaiming He, Piotr Dollár",
    year=2017,
    url="https://arxiv.org/abs/1708.02002",
)


def _check_focal(*, gamma=2.0, alpha=None, weight=None, **_) -> None:
    check_nonnegative(gamma, "gamma")
    check_per_class(alpha, "alpha")
    check_per_class(weight, "weight")


def _focal_example() -> Example:
    base = classification_example(weight=True, ignore_index=True, gamma=2.0)

    def with_alpha(gen: torch.Generator):
        # alpha multiplies the loss but leaves the "mean" denominator alone (class_weighted_mean
        # divides by the class weights only).
        target = randint(gen, 5, 7)
        target[1] = IGNORE
        kw = {"gamma": 0.5, "alpha": torch.rand(5, generator=gen, dtype=F64) + 0.1,
              "weight": torch.rand(5, generator=gen, dtype=F64) + 0.1}
        return (randn(gen, 7, 5), target), kw

    return dataclasses.replace(base, variants=base.variants + (with_alpha,))


@register(
    "focal_loss",
    family="classification",
    reference=FOCAL_PAPER,
    example=_focal_example(),
    tags=("long tail", "class imbalance", "dense detection", "hard examples"),
    input_kind="logits",
    bounded=False,
    noise_robust=False,
)
@hyperparameter_checks(_check_focal)
def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = 2.0,
    alpha: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Multi-class focal loss: cross-entropy down-weighted on well-classified samples by (1 − p_y)^γ.

    .. math::
        \ell = -\alpha_y\,(1 - p_y)^{\gamma}\,\log p_y, \qquad p = \operatorname{softmax}(x).

    :math:`\log p_y` comes from ``log_softmax`` and :math:`1 - p_y` from
    ``-expm1(log p_y)`` (accurate when :math:`p_y \to 1`), clamped at the smallest
    normal float so that :math:`\gamma < 1` keeps a finite gradient at :math:`p_y = 1`.
    With :math:`\gamma = 0` and no ``alpha`` this is :func:`cross_entropy`.

    ``alpha`` is a per-class factor (the paper's :math:`\alpha_t`, for example inverse
    class frequencies); unlike torch's class ``weight`` it does **not** change the
    ``"mean"`` denominator: ``"mean"`` is the plain mean over non-ignored samples, as in
    the paper and torchvision's ``sigmoid_focal_loss``. ``weight`` is torch's class
    weight: it multiplies sample :math:`i` by :math:`w_{y_i}` **and** ``"mean"`` divides by
    :math:`\sum_i w_{y_i}`, so ``focal_loss(..., gamma=0, weight=w)`` equals
    ``F.cross_entropy(..., weight=w)``. Both may be given (their product multiplies the loss).

    The binary case is torchvision's ``sigmoid_focal_loss``: with logits :math:`[0, s]`,
    :math:`p = [1 - \sigma(s), \sigma(s)]`, and ``alpha=[1 - a, a]`` reproduces its
    :math:`\alpha_t`.

    Args:
        logits: ``(*, C)`` unnormalized scores.
        target: ``(*)`` class indices.
        gamma: focusing parameter :math:`\gamma \ge 0` (2 in the paper).
        alpha: optional per-class factors ``(C,)`` (the ``"mean"`` denominator is unchanged).
        weight: optional per-class weights ``(C,)`` with ``F.cross_entropy``'s ``"mean"`` rule.
        ignore_index: target value whose samples are left out.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        logits ``(*, C)``, target ``(*)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import focal_loss, cross_entropy
        >>> logits, target = torch.tensor([[3.0, 0.0], [0.0, 0.5]]), torch.tensor([0, 0])
        >>> focal_loss(logits, target, gamma=2.0, reduction="none")
        tensor([1.0928e-04, 3.7741e-01])
        >>> torch.allclose(focal_loss(logits, target, gamma=0.0), cross_entropy(logits, target))
        True

    References:
        Lin, Goyal, Girshick, He, Dollár, "Focal Loss for Dense Object Detection",
        ICCV 2017, https://arxiv.org/abs/1708.02002.
    """
    _check_logits(logits)
    _check_focal(gamma=gamma, alpha=alpha, weight=weight)
    check_class_weight(alpha, logits.shape[-1], "alpha")
    check_class_weight(weight, logits.shape[-1])
    target = check_class_target(target, logits, ignore_index=ignore_index)
    x = upcast(logits)
    logp = torch.log_softmax(x, dim=-1)
    keep, safe, logp_y = _gather_target(logp, target, ignore_index)
    loss = -logp_y
    if gamma > 0:
        # 1 - p_y = -expm1(log p_y): no cancellation as p_y -> 1 (1 - exp(.) would give 0 and
        # lose the focal factor of confident samples). Clamped at the smallest normal float:
        # d/dp (1 - p)^gamma is infinite at p = 1 for gamma < 1.
        one_minus_p = (-torch.expm1(logp_y)).clamp_min(torch.finfo(x.dtype).tiny)
        loss = loss * one_minus_p.pow(gamma)
    if alpha is not None:
        loss = loss * upcast(alpha, x.dtype)[safe]
    w_y = None if weight is None else upcast(weight, x.dtype)[safe]
    return reduce(loss, reduction, weight=w_y, mask=keep)


ZSPH_PAPER = Reference(
    title="The Z-loss: a shift and scale invariant classification loss belonging to the Spherical Family",
    authors="Alexandre de Brébisson, Pascal Vincent",
    year=2016,
    url="https://arxiv.org/abs/1604.08859",
)


def _check_spherical(*, a=1.0, b=2.0, weight=None, **_) -> None:
    check_positive(a, "a")
    if isinstance(b, bool) or not isinstance(b, (int, float)):
        raise TypeError(f"b must be a number, got {type(b).__name__}")
    if not math.isfinite(b):
        raise ValueError(f"b must be a finite number, got {b!r}")
    check_per_class(weight, "weight")


@register(
    "spherical_z_loss",
    family="classification",
    reference=ZSPH_PAPER,
    seed=ZSPH_PAPER.title,
    example=classification_example(weight=True, ignore_index=True, a=1.0, b=2.0),
    tags=("spherical family", "scale invariant", "shift invariant"),
    input_kind="logits",
    bounded=False,
    noise_robust=False,
    shift_invariant=True,
    scale_invariant=True,
    # The z-normalization of a row holding -inf is NaN: -inf is not a zero-probability class here.
    neg_inf_unsupported=True,
)
@hyperparameter_checks(_check_spherical)
def spherical_z_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    a: float = 1.0,
    b: float = 2.0,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Spherical Z-loss: softplus of the z-normalized target logit; invariant to logit shift and scale.

    With :math:`\mu` the mean and :math:`\sigma` the population standard deviation of the
    :math:`C` logits of a sample, :math:`z_k = (x_k - \mu)/\sigma` and

    .. math::
        \ell = \frac{1}{a}\operatorname{softplus}\big(a\,(b - z_y)\big).

    It depends on the logits only through :math:`\sum_k x_k`, :math:`\sum_k x_k^2` and
    :math:`x_y` (the spherical family), so adding a constant to all logits or multiplying
    them by a positive factor leaves it unchanged. ``a`` (sharpness) and ``b``
    (location) are hyperparameters the paper tunes per task; it gives no universal
    values. Our defaults ``a=1, b=2`` are a choice, not the paper's: :math:`z_y` ranges
    in :math:`[-\sqrt{C-1}, \sqrt{C-1}]`, and ``b=2`` asks the target to stand two
    standard deviations above the mean. A sweep on the noisy-labels experiment (digits,
    150 epochs, 2 seeds, a ∈ {1, 4}, b ∈ {1, 2, 4}) gave clean test accuracy 0.979–0.981 for
    every pair and, at 40 % symmetric noise, 0.697–0.718 with a = 1 against 0.646–0.702 with
    a = 4; a = 1, b = 2 is within seed noise of the best. Not PaLM's z-loss (see :func:`z_loss`).

    Non-finite inputs (see CONTRIBUTING.md): the z-normalization needs finite logits; a
    NaN or infinite logit (also ``-inf``) of a kept sample gives a NaN loss.

    All-equal logits (:math:`\sigma = 0`, e.g. a zero-initialized last layer) give
    :math:`z = 0`: the variance is floored at :math:`\epsilon\cdot\mathrm{mean}_k(x_k^2) +`
    ``tiny`` (:math:`\epsilon` the machine epsilon of the compute dtype, ``tiny`` its
    smallest normal number), so values and gradients stay finite. The floor scales with
    the logits (scale invariance is exact) and only acts when the spread of the logits is
    at rounding level relative to their size. By scale invariance the gradient grows like
    :math:`1/\sigma` as the logits shrink, so it is large (finite) near all-equal logits.

    ``weight`` follows ``F.cross_entropy``: sample :math:`i` is multiplied by
    :math:`w_{y_i}` and ``"mean"`` divides by :math:`\sum_i w_{y_i}` over kept samples.

    Args:
        logits: ``(*, C)`` with :math:`C \ge 2`.
        target: ``(*)`` class indices.
        a: sharpness :math:`a > 0`.
        b: location :math:`b`.
        weight: optional per-class weights ``(C,)``.
        ignore_index: target value whose samples are left out.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        logits ``(*, C)``, target ``(*)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import spherical_z_loss
        >>> x, t = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
        >>> torch.allclose(spherical_z_loss(x, t), spherical_z_loss(5 * x + 3, t))
        True

    References:
        de Brébisson & Vincent, "The Z-loss: a shift and scale invariant classification
        loss belonging to the Spherical Family", 2016, https://arxiv.org/abs/1604.08859.
    """
    _check_logits(logits)
    _check_spherical(a=a, b=b, weight=weight)
    if logits.shape[-1] < 2:
        raise ValueError(f"spherical_z_loss needs at least 2 classes, got logits of shape {tuple(logits.shape)}")
    check_class_weight(weight, logits.shape[-1])
    target = check_class_target(target, logits, ignore_index=ignore_index)
    x = upcast(logits)
    centered = x - x.mean(-1, keepdim=True)
    var = centered.square().mean(-1)
    # Floor the variance relative to the logits' own scale so that all-equal logits give
    # z = 0 with finite gradients instead of 0/0, while keeping exact scale invariance.
    scale2 = x.detach().square().mean(-1)
    floor = torch.finfo(x.dtype).eps * scale2 + torch.finfo(x.dtype).tiny
    std = torch.sqrt(torch.maximum(var, floor))
    keep, safe, c_y = _gather_target(centered, target, ignore_index)
    z_y = c_y / std
    loss = softplus(a * (b - z_y)) / a
    w_y = None if weight is None else upcast(weight, x.dtype)[safe]
    return reduce(loss, reduction, weight=w_y, mask=keep)


LOGIT_ADJ_PAPER = Reference(
    title="Long-tail learning via logit adjustment",
    authors="Aditya Krishna Menon, Sadeep Jayasumana, Ankit Singh Rawat, Himanshu Jain, Andreas Veit, Sanjiv Kumar",
    year=2021,
    url="https://arxiv.org/abs/2007.07314",
)


def _check_prior(prior: torch.Tensor, name: str = "prior") -> None:
    check_floating(prior, name)
    if prior.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor with one value per class, got shape {tuple(prior.shape)}")
    # (prior > 0).all() rather than (prior <= 0).any(): a NaN prior fails too.
    if validation_enabled() and prior.numel() > 0 and not bool((prior > 0).all()):
        raise ValueError(f"{name} must be positive for every class, found {float(prior.min()):.4g}")


def _check_logit_adjusted(*, prior=None, tau=1.0, weight=None, **_) -> None:
    if prior is None:
        raise TypeError("logit_adjusted_cross_entropy needs prior, the (C,) positive class prior")
    _check_prior(prior)
    check_nonnegative(tau, "tau")
    check_per_class(weight, "weight")


def _logit_adjusted_example() -> Example:
    # The prior is a per-class constant (a buffer of the Module), fixed for the 5 classes
    # of classification_example: class frequencies of a long-tailed training set.
    prior = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03], dtype=F64)
    base = classification_example(weight=True, ignore_index=True, prior=prior, tau=1.0)

    def module(gen: torch.Generator):
        from ..nn import AdaptiveLogitAdjustedLoss

        crit = AdaptiveLogitAdjustedLoss(5, class_counts=torch.tensor([50.0, 25.0, 15.0, 7.0, 3.0]), tau=1.0)
        crit.update(torch.softmax(randn(gen, 9, 5), -1), randint(gen, 5, 9))
        return crit, (randn(gen, 7, 5), randint(gen, 5, 7)), {}

    return dataclasses.replace(base, module=module)


@register(
    "logit_adjusted_cross_entropy",
    family="classification",
    reference=LOGIT_ADJ_PAPER,
    seed="PromptMRG: Diagnosis-Driven Prompts for Medical Report Generation",
    example=_logit_adjusted_example(),
    tags=("long tail", "class imbalance", "balanced error", "class prior"),
    input_kind="logits",
    classification_calibrated=True,
    noise_robust=False,
)
@hyperparameter_checks(_check_logit_adjusted)
def logit_adjusted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    prior: torch.Tensor,
    tau: float = 1.0,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Logit-adjusted cross-entropy for long-tailed labels: CE on logits + τ log π.

    .. math::
        \ell = -\log\frac{e^{x_y + \tau\log\pi_y}}{\sum_k e^{x_k + \tau\log\pi_k}}

    Training with the adjusted logits and predicting with the raw ones gives a
    classifier that is consistent for the balanced error (Menon et al.). ``prior`` is
    the class prior :math:`\pi` (class frequencies, or PromptMRG's adaptive per-class
    learning status, see :class:`losslab.nn.AdaptiveLogitAdjustedLoss`); it need not sum
    to 1 (a constant factor cancels), but must be positive.

    Args:
        logits: ``(*, C)``.
        target: ``(*)`` class indices.
        prior: ``(C,)`` positive class prior.
        tau: adjustment strength :math:`\tau \ge 0` (1 in the paper).
        weight: optional per-class weights ``(C,)``, as in :func:`cross_entropy`.
        ignore_index: target value whose samples are left out.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        logits ``(*, C)``, target ``(*)``, prior ``(C,)``; output ``(*)`` for ``"none"``,
        else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import logit_adjusted_cross_entropy, cross_entropy
        >>> x, t = torch.tensor([[1.0, 0.0]]), torch.tensor([1])
        >>> prior = torch.tensor([0.9, 0.1])
        >>> logit_adjusted_cross_entropy(x, t, prior=prior)  # a rare target costs more
        tensor(3.2373)
        >>> cross_entropy(x, t)
        tensor(1.3133)

    References:
        Menon et al., "Long-tail learning via logit adjustment", ICLR 2021,
        https://arxiv.org/abs/2007.07314; Jin et al., "PromptMRG: Diagnosis-Driven
        Prompts for Medical Report Generation", AAAI 2024, https://arxiv.org/abs/2308.12604.
    """
    _check_logits(logits)
    target = check_class_target(target, logits, ignore_index=ignore_index)
    check_nonnegative(tau, "tau")
    check_floating(prior, "prior")
    if prior.shape != (logits.shape[-1],):
        raise ValueError(f"prior must have shape ({logits.shape[-1]},) (one value per class), got {tuple(prior.shape)}")
    _check_logit_adjusted(prior=prior, tau=tau, weight=weight)
    check_class_weight(weight, logits.shape[-1])
    x = upcast(logits)
    adjusted = x + tau * torch.log(upcast(prior, x.dtype))
    return _cross_entropy(adjusted, target, False, weight, ignore_index, 0.0, 0.0, None, reduction)
