"""Classification objectives beyond the softmax-CE family: metric surrogates and proxy-based losses."""
from __future__ import annotations

import math

import torch

from .._checks import (
    check_choice,
    check_class_target,
    check_floating,
    check_integer,
    check_ndim,
    check_positive,
    check_size,
    check_tensor,
    hyperparameter_checks,
    validation_enabled,
)
from .._numerics import compute_dtype, upcast
from .._reduction import reduce
from ..registry import Example, Reference, register
from ._examples import randint, randn

__all__ = ["anyloss", "ensloss", "ensloss_derivatives", "normalized_softmax_loss", "ANYLOSS_METRICS"]

ANYLOSS_PAPER = Reference(
    title="AnyLoss: Transforming Classification Metrics into Loss Functions",
    authors="Doheon Han, Nuno Moniz, Nitesh V. Chawla",
    year=2024,
    url="https://arxiv.org/abs/2405.14745",
)
ENSLOSS_PAPER = Reference(
    title="EnsLoss: Stochastic Calibrated Loss Ensembles for Preventing Overfitting in Classification",
    authors="Ben Dai",
    year=2024,
    url="https://arxiv.org/abs/2409.00908",
)
NSOFTMAX_PAPER = Reference(
    title="Classification is a Strong Baseline for Deep Metric Learning",
    authors="Andrew Zhai, Hao-Yu Wu",
    year=2019,
    url="https://arxiv.org/abs/1811.12649",
)


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den``, and 0 with a zero gradient where ``den == 0`` (sklearn's ``zero_division=0``).

    A denominator is 0 only for a class without samples (e.g. ``TP + FN``). Dividing by a
    clamped ``tiny`` instead gave the right value but a gradient of ``1 / tiny = inf``, and
    ``inf * 0 = NaN`` in the backward pass. ``den == 0`` rather than ``den > 0`` so that a
    NaN denominator stays NaN.
    """
    empty = den == 0
    return torch.where(empty, torch.zeros((), dtype=num.dtype, device=num.device),
                       num / torch.where(empty, torch.ones((), dtype=den.dtype, device=den.device), den))


def _f_beta(tp, fn, fp, tn, beta):
    b2 = beta * beta
    return _safe_div((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp)


#: Confusion-matrix metrics of AnyLoss, as functions of soft (TP, FN, FP, TN) and beta.
ANYLOSS_METRICS = {
    "accuracy": lambda tp, fn, fp, tn, beta: _safe_div(tp + tn, tp + fn + fp + tn),
    "f1": lambda tp, fn, fp, tn, beta: _f_beta(tp, fn, fp, tn, 1.0),
    "fbeta": _f_beta,
    "balanced_accuracy": lambda tp, fn, fp, tn, beta: 0.5 * (_safe_div(tp, tp + fn) + _safe_div(tn, tn + fp)),
    # sqrt has an infinite slope at 0: a tiny offset keeps the gradient finite.
    "gmean": lambda tp, fn, fp, tn, beta: torch.sqrt(_safe_div(tp, tp + fn) * _safe_div(tn, tn + fp) + 1e-30),
}


def _binary_target(target: torch.Tensor, scores: torch.Tensor, scores_name: str) -> torch.Tensor:
    """0/1 labels of ``scores``' shape, any integer dtype; returned as int64.

    The binary counterpart of ``check_class_target`` (same dtype rule and message style).
    """
    check_tensor(target, "target")
    if target.is_floating_point():
        raise TypeError(f"target: binary labels must be integers 0/1 (got dtype {target.dtype}), "
                        f"one per entry of {scores_name} {tuple(scores.shape)}")
    check_integer(target, "target")
    if target.shape != scores.shape:
        raise ValueError(f"target must have the shape of {scores_name} {tuple(scores.shape)}, got {tuple(target.shape)}")
    if target.dtype != torch.int64:
        target = target.long()
    if validation_enabled() and target.numel() > 0:
        lo, hi = torch.aminmax(target)
        if int(lo) < 0 or int(hi) > 1:
            raise ValueError(f"target must hold binary labels 0/1, found {int(lo) if int(lo) < 0 else int(hi)}")
    return target


def _check_anyloss(*, metric="f1", beta=1.0, amplifier=73.0, **_) -> None:
    check_choice(metric, "metric", tuple(ANYLOSS_METRICS))
    check_positive(beta, "beta")
    check_positive(amplifier, "amplifier")


def _anyloss_example() -> Example:
    def make(gen: torch.Generator):
        return (torch.sigmoid(randn(gen, 12)), randint(gen, 2, 12)), {"metric": "f1"}

    def multiclass(gen: torch.Generator):
        return (torch.softmax(randn(gen, 12, 3), -1), randint(gen, 3, 12)), {"metric": "balanced_accuracy"}

    def mismatch(gen: torch.Generator):
        return (torch.sigmoid(randn(gen, 12)), randint(gen, 2, 10)), {"metric": "f1"}

    return Example(
        make=make, mismatch=mismatch, mismatch_match="target", variants=(multiclass,), extreme=(),
        extreme_skip="probs are probabilities in [0, 1] (scaled by 1e4 they are rejected); the saturated "
                     "ends 0 and 1 are tested in tests/functional/test_classification_surrogates.py",
    )


@register(
    "anyloss",
    family="classification",
    reference=ANYLOSS_PAPER,
    seed=ANYLOSS_PAPER.title,
    example=_anyloss_example(),
    tags=("class imbalance", "imbalanced data", "F1", "balanced accuracy", "metric optimization", "confusion matrix"),
    input_kind="probabilities",
    # One value for the whole batch: the soft confusion matrix sums over the samples and the
    # metric (a ratio of those sums) has no per-sample form.
    batch_level=True,
)
@hyperparameter_checks(_check_anyloss)
def anyloss(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    metric: str = "f1",
    beta: float = 1.0,
    amplifier: float = 73.0,
) -> torch.Tensor:
    r"""AnyLoss: 1 − a confusion-matrix metric (F1, accuracy, F-beta, ...) made differentiable.

    Each predicted probability is pushed towards 0 or 1 by the approximation function

    .. math:: A(p) = \frac{1}{1 + e^{-L(p - 1/2)}},

    with the amplifier :math:`L` (73 in the paper: the largest integer with
    :math:`A(1) < 1` in float64). The soft confusion matrix is
    :math:`TP = \sum y A`, :math:`FN = \sum y (1-A)`, :math:`FP = \sum (1-y) A`,
    :math:`TN = \sum (1-y)(1-A)`, and the loss is :math:`1 - \mathrm{metric}(TP, FN, FP, TN)`.
    With 0/1 predictions the metric is exactly the usual one.

    Input convention: probabilities, as in the paper (the network ends in a sigmoid and
    :math:`A` amplifies its output), not logits. Binary: ``probs (N,)`` and
    ``target (N,)`` in {0, 1}. Multi-class: ``probs (N, C)`` (softmax or per-class
    sigmoid outputs; each column is read as that class's probability) and class indices
    ``(N,)``: one-vs-rest per class, then the macro average of the metric (so
    ``"accuracy"`` is the mean per-class binary accuracy, not the multi-class accuracy;
    ``"f1"`` with 0/1 predictions is sklearn's ``f1_score(average="macro")``). The
    paper covers the binary case; the one-vs-rest extension is ours. Metric values
    with an empty denominator (e.g. F1 for a class that is neither present nor
    predicted) count as 0, like sklearn's ``zero_division=0``.

    The whole computation runs in float64 (the result is returned in float32 unless the
    input is float64): in float32, ``sigmoid(73 (p − 0.5))`` saturates to exactly 1 for
    :math:`p \gtrsim 0.73` and its gradient vanishes there; in float64 it does not.
    The loss is one value for the whole batch (it has no per-sample form, so no
    ``reduction`` argument).

    Args:
        probs: ``(N,)`` or ``(N, C)`` probabilities in [0, 1].
        target: ``(N,)`` 0/1 labels (binary) or class indices (multi-class), any integer dtype.
        metric: one of ``"accuracy"``, ``"f1"``, ``"fbeta"``, ``"balanced_accuracy"``, ``"gmean"``.
        beta: :math:`\beta > 0` of ``"fbeta"``.
        amplifier: :math:`L > 0`.

    Shape:
        probs ``(N,)`` or ``(N, C)``, target ``(N,)``; output a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import anyloss
        >>> probs, target = torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([1, 1, 0, 0])
        >>> anyloss(probs, target, metric="accuracy")   # exact: 2 of 4 right
        tensor(0.5000)

    References:
        Han, Moniz, Chawla, "AnyLoss: Transforming Classification Metrics into Loss
        Functions", KDD 2024, https://arxiv.org/abs/2405.14745.
    """
    check_floating(probs, "probs")
    check_ndim(probs, "probs", (1, 2))
    _check_anyloss(metric=metric, beta=beta, amplifier=amplifier)
    if probs.dim() == 1:
        target = _binary_target(target, probs, "probs")
    else:
        target = check_class_target(target, probs, name="target", logits_name="probs")
    # A range check (it also rejects NaN); probs is (N,) or (N, C) with small C, and the
    # metric needs every entry anyway.
    if validation_enabled() and probs.numel() > 0:
        lo, hi = float(probs.detach().min()), float(probs.detach().max())
        if lo < 0 or hi > 1 or math.isnan(lo):
            raise ValueError(f"probs must be probabilities in [0, 1], found values in [{lo:.4g}, {hi:.4g}]")
    out_dtype = compute_dtype(probs)
    p = probs.to(torch.float64)
    if p.dim() == 1:
        y = target.to(torch.float64)
    else:
        y = torch.nn.functional.one_hot(target, p.shape[-1]).to(torch.float64)
    a = torch.sigmoid(amplifier * (p - 0.5))
    tp = (y * a).sum(0)
    fn = (y * (1 - a)).sum(0)
    fp = ((1 - y) * a).sum(0)
    tn = ((1 - y) * (1 - a)).sum(0)
    value = ANYLOSS_METRICS[metric](tp, fn, fp, tn, float(beta))
    return (1.0 - value.mean()).to(out_dtype)


def _nsoftmax_example() -> Example:
    def make(gen: torch.Generator):
        return (randn(gen, 8, 4), randint(gen, 3, 8), randn(gen, 3, 4)), {"temperature": 0.5}

    def mismatch(gen: torch.Generator):
        return (randn(gen, 8, 4), randint(gen, 3, 8), randn(gen, 3, 5)), {"temperature": 0.5}

    def module(gen: torch.Generator):
        from ..nn import NormalizedSoftmaxLoss

        crit = NormalizedSoftmaxLoss(num_classes=3, embedding_size=4, temperature=0.5).double()
        with torch.no_grad():
            crit.proxies.copy_(randn(gen, 3, 4))
        return crit, (randn(gen, 8, 4), randint(gen, 3, 8)), {}

    return Example(make=make, mismatch=mismatch, mismatch_match="proxies", extreme=(0, 2), module=module)


@register(
    "normalized_softmax_loss",
    family="classification",
    reference=NSOFTMAX_PAPER,
    seed="Hyperspherical embedding for novel class classification",
    example=_nsoftmax_example(),
    tags=("metric learning", "proxies", "retrieval", "hypersphere", "cosine similarity"),
    input_kind="embeddings",
    module_owns_parameters=True,
)
def normalized_softmax_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    proxies: torch.Tensor,
    *,
    temperature: float = 0.05,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Normalized softmax: cross-entropy over cosine similarities to class proxies, divided by a temperature.

    .. math::
        \ell_i = -\log\frac{\exp(\cos(e_i, w_{y_i})/T)}{\sum_c \exp(\cos(e_i, w_c)/T)}

    Embeddings and proxies are L2-normalized, so the logits are bounded by :math:`1/T`.
    ``proxies`` has one row per class, ``(C, D)``; pytorch-metric-learning's
    ``NormalizedSoftmaxLoss`` stores the transpose, ``W (D, C)``, with the same default
    :math:`T = 0.05`. :class:`losslab.nn.NormalizedSoftmaxLoss` owns learnable proxies.

    Args:
        embeddings: ``(N, D)``.
        labels: ``(N,)`` class indices.
        proxies: ``(C, D)`` class proxies.
        temperature: :math:`T > 0`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        embeddings ``(N, D)``, labels ``(N,)``, proxies ``(C, D)``; output ``(N,)`` for
        ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import normalized_softmax_loss
        >>> emb = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> proxies = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> normalized_softmax_loss(emb, torch.tensor([0, 1]), proxies, temperature=0.5)
        tensor(0.1269)

    References:
        Zhai & Wu, "Classification is a Strong Baseline for Deep Metric Learning",
        BMVC 2019, https://arxiv.org/abs/1811.12649; seed: "Hyperspherical embedding for
        novel class classification".
    """
    check_floating(embeddings, "embeddings")
    check_ndim(embeddings, "embeddings", 2)
    check_floating(proxies, "proxies")
    check_ndim(proxies, "proxies", 2)
    check_size(proxies, "proxies", 1, embeddings.shape[1], "the embedding size of embeddings")
    check_positive(temperature, "temperature")
    dtype = compute_dtype(embeddings, proxies)
    e = torch.nn.functional.normalize(upcast(embeddings, dtype), dim=-1)
    w = torch.nn.functional.normalize(upcast(proxies, dtype), dim=-1)
    logits = e @ w.T / temperature
    # labels index the proxies' rows: (N,) class indices in [0, C), any integer dtype.
    labels = check_class_target(labels, logits, name="labels", logits_name="embeddings @ proxies.T")
    loss = -torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return reduce(loss, reduction)


def ensloss_derivatives(
    margins: torch.Tensor, *, boxcox_lambda: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""Draw EnsLoss's random loss derivatives for a batch of margins (no gradient).

    :math:`z \sim N(0, 1)^B`, :math:`g = -\mathrm{BoxCox}^{-1}_\lambda(z)` (for
    :math:`\lambda = 0`: :math:`-e^{z}`; else :math:`-\max(1 + \lambda z, 0)^{1/\lambda}`),
    clipped below at −1 and sorted; the sample with the :math:`k`-th smallest margin gets
    the :math:`k`-th smallest (most negative) derivative, so the derivative is
    non-decreasing in the margin (a convex loss); for margins above 1 it is divided by the
    margin (a super-linear tail); finally :math:`10^{-6}` is subtracted so that every
    derivative is strictly negative (a classification-calibrated loss).

    Args:
        margins: ``(B,)`` margins :math:`y_i f(x_i)` with :math:`y \in \{-1, 1\}`.
        boxcox_lambda: :math:`\lambda` of the inverse Box–Cox transform (0 in the paper).
        generator: source of randomness (default: torch's global generator).

    Returns:
        ``(B,)`` derivatives in the dtype of ``margins``.
    """
    with torch.no_grad():
        s = margins.detach().reshape(-1)
        # Drawn on the generator's device (a CPU generator also serves CUDA margins), in
        # float64 so that the draw does not depend on the margins' dtype.
        gen_device = generator.device if generator is not None else s.device
        z = torch.randn(s.shape[0], generator=generator, dtype=torch.float64, device=gen_device).to(s.device)
        if boxcox_lambda == 0:
            g = -torch.exp(z)
        else:
            g = -torch.clamp(1.0 + boxcox_lambda * z, min=0.0).pow(1.0 / boxcox_lambda)
        g = torch.sort(g.clamp_min(-1.0)).values.to(s.dtype)
        out = torch.empty_like(s)
        out[torch.argsort(s, stable=True)] = g
        out = torch.where(s > 1.0, out / s, out)
        return (out - 1e-6).reshape(margins.shape)


def _check_boxcox_lambda(boxcox_lambda: float) -> None:
    if isinstance(boxcox_lambda, bool) or not isinstance(boxcox_lambda, (int, float)) \
            or not math.isfinite(boxcox_lambda):
        raise ValueError(f"boxcox_lambda must be a finite number, got {boxcox_lambda!r}")


def _check_seed(seed: int | None) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")


def check_ensloss_hyperparameters(*, boxcox_lambda=0.0, seed=None, **_) -> None:
    """The hyperparameter checks of :func:`ensloss` (also run by ``nn.EnsLoss``)."""
    _check_boxcox_lambda(boxcox_lambda)
    _check_seed(seed)


def _ensloss_example() -> Example:
    def make(gen: torch.Generator):
        return (randn(gen, 10), randint(gen, 2, 10)), {"seed": 3}

    def leading(gen: torch.Generator):
        return (randn(gen, 2, 5), randint(gen, 2, 2, 5)), {"seed": 4, "boxcox_lambda": 0.5}

    def mismatch(gen: torch.Generator):
        return (randn(gen, 10), randint(gen, 2, 8)), {"seed": 3}

    def module(gen: torch.Generator):
        from ..nn import EnsLoss

        crit = EnsLoss(seed=5)
        crit(randn(gen, 10), randint(gen, 2, 10))  # advance the stream: the state is not the seed's
        return crit, (randn(gen, 10), randint(gen, 2, 10)), {}

    # grad=(): the defined gradient g·y is not the derivative of the value sg(g)·s as a
    # function of the logits: g is re-drawn from the margins' ranks at every call, and for
    # margins s > 1 the value (g/s)·s = g is constant, so finite differences see 0 where
    # the gradient is g/s. The gradient is tested against the drawn derivatives directly
    # in tests/functional/test_classification_surrogates.py.
    return Example(make=make, mismatch=mismatch, mismatch_match="target", extreme=(0,), grad=(),
                   variants=(leading,), module=module)


@register(
    "ensloss",
    family="classification",
    reference=ENSLOSS_PAPER,
    seed=ENSLOSS_PAPER.title,
    example=_ensloss_example(),
    tags=("overfitting", "regularization", "ensemble", "binary classification", "stochastic", "calibrated"),
    input_kind="binary logits",
    classification_calibrated=True,
    stochastic=True,
    graph_breaks="draws the derivatives from a torch.Generator (seed= creates one per call), "
                 "which torch.compile cannot create or trace inside a graph",
)
@hyperparameter_checks(check_ensloss_hyperparameters)
def ensloss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    boxcox_lambda: float = 0.0,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""EnsLoss: a fresh random convex, calibrated binary loss per batch (doubly stochastic gradient).

    Instead of a fixed surrogate, every call draws loss *derivatives*
    :math:`g_i = \ell'(s_i)` for the batch margins :math:`s_i = y_i f(x_i)`
    (:func:`ensloss_derivatives`: random, non-decreasing in the margin — a convex loss —
    and strictly negative, so :math:`\ell'(0) < 0` — a calibrated one) and returns

    .. math:: \ell_i = \operatorname{sg}(g_i)\, s_i ,

    whose gradient with respect to the logits is exactly :math:`g_i y_i` (times
    :math:`1/B` for ``"mean"``). Over many batches this is an ensemble of convex
    calibrated losses, which the paper shows reduces overfitting. The *value* is not a
    loss to monitor (it is :math:`g \cdot s`, of either sign); log another metric.
    ``reduction`` therefore only scales the gradient: ``"mean"`` (the authors' choice)
    gives :math:`g_i y_i / B`, ``"sum"`` gives :math:`g_i y_i`, ``"none"`` returns the
    per-sample :math:`g_i s_i` (the derivatives are still drawn for the whole batch: the
    loss is batch-level, rank-matched to the margins).

    Binary only: ``target`` in {0, 1} (mapped to :math:`y = 2t - 1`, as the authors'
    code does). Randomness: ``generator`` (a stream: a new draw on every call, what
    training wants; ``nn.EnsLoss(seed=...)`` owns one), ``seed`` (a fresh generator per
    call: the *same* draw every time, for tests and reproducible single calls), or
    neither (torch's global generator). The authors' code draws from the global
    generator and runs on CUDA only.

    Non-finite inputs (see CONTRIBUTING.md): a NaN logit gives a NaN loss; an infinite
    margin :math:`s_i = \pm\infty` gives :math:`\mp\infty` (the drawn derivative is
    negative), a non-finite loss too.

    Args:
        logits: ``(*)`` real scores :math:`f(x)`.
        target: ``(*)`` 0/1 labels (any integer dtype).
        boxcox_lambda: :math:`\lambda` of the inverse Box–Cox transform (0: :math:`-e^z`,
            the paper's choice).
        generator: optional ``torch.Generator`` (any device; the draw is moved to the
            logits' device).
        seed: optional int: draw from ``torch.Generator().manual_seed(seed)``; not
            together with ``generator``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        logits, target ``(*)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import ensloss
        >>> logits = torch.tensor([2.0, -0.5, 0.3], requires_grad=True)
        >>> ensloss(logits, torch.tensor([1, 1, 0]), seed=0).backward()
        >>> bool((logits.grad * torch.tensor([1.0, 1.0, -1.0]) < 0).all())  # pushes every margin up
        True

    References:
        Ben Dai, "EnsLoss: Stochastic Calibrated Loss Ensembles for Preventing Overfitting
        in Classification", ICML 2025, https://arxiv.org/abs/2409.00908. Authors' code:
        https://github.com/statmlben/ensLoss (``losses.py``).
    """
    check_floating(logits, "logits")
    target = _binary_target(target, logits, "logits")
    check_ensloss_hyperparameters(boxcox_lambda=boxcox_lambda, seed=seed)
    if seed is not None:
        if generator is not None:
            raise ValueError("pass either generator or seed, not both")
        generator = torch.Generator().manual_seed(seed)
    x = upcast(logits)
    s = x * (2.0 * target.to(x.dtype) - 1.0)
    g = ensloss_derivatives(s, boxcox_lambda=boxcox_lambda, generator=generator)
    return reduce(g * s, reduction)
