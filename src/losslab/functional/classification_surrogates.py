"""Classification objectives beyond the softmax-CE family: metric surrogates and proxy-based losses."""
from __future__ import annotations

import math

import torch

from .._checks import (
    check_choice,
    check_class_target,
    check_floating,
    check_ndim,
    check_positive,
    check_size,
    validation_enabled,
)
from .._numerics import compute_dtype, upcast
from ..registry import Example, Reference, register
from ._examples import randint, randn
from .classification import cross_entropy

__all__ = ["anyloss", "normalized_softmax_loss", "ANYLOSS_METRICS"]

ANYLOSS_PAPER = Reference(
    title="AnyLoss: Transforming Classification Metrics into Loss Functions",
    authors="Doheon Han, Nuno Moniz, Nitesh V. Chawla",
    year=2024,
    url="https://arxiv.org/abs/2405.14745",
)
NSOFTMAX_PAPER = Reference(
    title="Classification is a Strong Baseline for Deep Metric Learning",
    authors="Andrew Zhai, Hao-Yu Wu",
    year=2019,
    url="https://arxiv.org/abs/1811.12649",
)


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)


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


def _anyloss_example() -> Example:
    def make(gen: torch.Generator):
        return (torch.sigmoid(randn(gen, 12)), randint(gen, 2, 12)), {"metric": "f1"}

    def mismatch(gen: torch.Generator):
        return (torch.sigmoid(randn(gen, 12)), randint(gen, 2, 10)), {"metric": "f1"}

    return Example(make=make, mismatch=mismatch, logits=())


@register(
    "anyloss",
    family="classification",
    reference=ANYLOSS_PAPER,
    seed=ANYLOSS_PAPER.title,
    example=_anyloss_example(),
    input_kind="probabilities",
    batch_level=True,
)
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

    Binary: ``probs (N,)`` (e.g. ``sigmoid`` outputs) and ``target (N,)`` in {0, 1}.
    Multi-class: ``probs (N, C)`` (e.g. ``softmax`` outputs) and class indices ``(N,)``:
    one-vs-rest per class, then the macro average of the metric.

    The whole computation runs in float64 (the result is returned in float32 unless the
    input is float64): in float32, ``sigmoid(73 (p − 0.5))`` saturates to exactly 1 for
    :math:`p \gtrsim 0.73` and its gradient vanishes there; in float64 it does not.
    The loss is one value for the whole batch (it has no per-sample form, so no
    ``reduction`` argument).

    Args:
        probs: ``(N,)`` or ``(N, C)`` probabilities in [0, 1].
        target: ``(N,)`` 0/1 labels (binary) or class indices (multi-class).
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
    check_choice(metric, "metric", tuple(ANYLOSS_METRICS))
    check_positive(beta, "beta")
    check_positive(amplifier, "amplifier")
    if probs.dim() == 1:
        check_class_target(target, probs.unsqueeze(-1).expand(-1, 2), name="target")
    else:
        check_class_target(target, probs, name="target")
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

    return Example(make=make, mismatch=mismatch, logits=(0,))


@register(
    "normalized_softmax_loss",
    family="classification",
    reference=NSOFTMAX_PAPER,
    seed="Hyperspherical embedding for novel class classification",
    example=_nsoftmax_example(),
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
    return cross_entropy(e @ w.T / temperature, labels, reduction=reduction)
