"""Per-sequence log-probability of the target tokens from hidden states, :func:`sequence_logprobs`:
the building block of DPO-style preference objectives.

Part of the large-vocabulary family: computed with
:func:`~losslab.functional.large_vocab.linear_cross_entropy` (``reduction="none"``, chunked,
no N × V logits; see :mod:`losslab.functional.large_vocab` for the design). Unlike the
family's losses it defaults to ``reduction="none"``, one value per sequence: it is a
per-sequence quantity, not a loss.
"""
from __future__ import annotations

from typing import Literal

import torch

from .._checks import check_choice, check_floating, check_hyperparameters, hyperparameter_checks
from .._reduction import Reduction, reduce
from ..registry import Example, register
from ._examples import IGNORE, randint, randn
from .large_vocab import CCE_PAPER, linear_cross_entropy

__all__ = ["sequence_logprobs"]


def _check_seq(*, average: str = "none", shift: bool = False, **_) -> None:
    check_choice(average, "average", ("none", "all"))
    if not isinstance(shift, bool):
        raise TypeError(f"shift must be a bool, got {shift!r}")


def _seq_example() -> Example:
    def make(gen):
        t = randint(gen, 13, 3, 5)
        t[0, 3:] = IGNORE
        return (randn(gen, 3, 5, 4), randn(gen, 13, 4), t), {"chunk_size": 4}

    def shifted_average(gen):  # next-token prediction, mean over each sequence's kept tokens
        t = randint(gen, 13, 2, 6)
        t[1, :2] = IGNORE
        return (randn(gen, 2, 6, 4), randn(gen, 13, 4), t), {"shift": True, "average": "all"}

    def mismatch(gen):
        return (randn(gen, 3, 5, 4), randn(gen, 13, 4), randint(gen, 13, 3, 4)), {}

    def empty(gen):
        return (randn(gen, 3, 5, 4), randn(gen, 13, 4), torch.full((3, 5), IGNORE)), {"chunk_size": 4}

    return Example(make=make, mismatch=mismatch, mismatch_match="target", extreme=None, variants=(shifted_average,),
                   empty=empty)


@register("sequence_logprobs", family="large_vocab", reference=CCE_PAPER, example=_seq_example(),
          input_kind="hidden states", module_required=False, memory="O(chunk * V)",
          tags=("dpo", "preference", "log-likelihood", "sequence log-probability", "language model", "llm",
                "fused linear", "large vocabulary"))
@hyperparameter_checks(_check_seq)
def sequence_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    average: Literal["none", "all"] = "none",
    shift: bool = False,
    reduction: Reduction = "none",
    chunk_size: int | None = None,
) -> torch.Tensor:
    r"""Per-sequence log-probability of the target tokens from hidden states, without the logits.

    .. math::
        \log\pi(y \mid x) = \sum_{t:\, y_t \ne \text{ignore}} \log\operatorname{softmax}(h_t W^\top + b)_{y_t},

    the plain sum with ``average="none"`` (DPO), or its mean over the kept tokens with
    ``average="all"`` (SimPO and IPO use the average). DPO-style objectives need one value
    per sequence, so that is what it returns by default (``reduction="none"``), unlike the
    losses, which default to ``"mean"``: it is a per-sequence quantity used as a building
    block, not a loss; ``"mean"`` and ``"sum"`` reduce over the sequences. Differentiable;
    computed with :func:`linear_cross_entropy` (``reduction="none"``: chunked, recomputed in
    backward; half-precision weights as described there). A sequence with no kept token
    gets 0. ``shift=True`` is next-token prediction, as in :func:`linear_cross_entropy`:
    position :math:`t` is scored against ``target[:, t + 1]`` (``target`` then holds the
    token ids of the same positions as ``hidden``); with ``shift=False`` ``target`` is
    already aligned with ``hidden``.

    Args:
        hidden: ``(B, T, D)``.
        weight: ``(V, D)``.
        target: ``(B, T)`` token ids (any integer dtype) or ``ignore_index`` (prompt, padding).
        bias: optional ``(V,)``.
        ignore_index: target value of tokens left out.
        average: what the average runs over: ``"none"`` (the sum of the token
            log-probabilities) or ``"all"`` (their mean over the kept tokens).
        shift: score position :math:`t` against the token at :math:`t + 1`.
        reduction: ``"none"`` (the default, not ``"mean"`` as for the losses: a
            per-sequence quantity, not a loss): one value per sequence ``(B,)``; ``"mean"``
            (over the sequences, each counted once whatever its kept tokens) or ``"sum"``.
        chunk_size: tokens per chunk.

    Shape:
        output ``(B,)`` for ``reduction="none"`` (the default), else a scalar (float32 for
        half-precision inputs).

    Example:
        >>> import torch
        >>> from losslab.functional import sequence_logprobs
        >>> h, w = torch.zeros(1, 3, 2), torch.zeros(4, 2)             # uniform over 4 tokens
        >>> t = torch.tensor([[1, 2, -100]])
        >>> sequence_logprobs(h, w, t)                  # one value per sequence: 2 log(1/4)
        tensor([-2.7726])
        >>> sequence_logprobs(h, w, t, average="all")   # log(1/4) per kept token
        tensor([-1.3863])
        >>> sequence_logprobs(h, w, t, reduction="mean")  # mean over the sequences: a scalar
        tensor(-2.7726)

    References:
        Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a
        Reward Model", 2023, https://arxiv.org/abs/2305.18290; Wijmans et al., 2024,
        https://arxiv.org/abs/2411.09009.
    """
    check_hyperparameters(sequence_logprobs, dict(average=average, shift=shift, reduction=reduction,
                                                  ignore_index=ignore_index, chunk_size=chunk_size))
    check_floating(hidden, "hidden")
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be (B, T, D), got shape {tuple(hidden.shape)}")
    per_token = -linear_cross_entropy(hidden, weight, target, bias=bias, ignore_index=ignore_index, reduction="none",
                                      chunk_size=chunk_size, shift=shift)
    value = per_token.sum(-1)
    if average == "all":
        kept = target[..., 1:] if shift else target
        value = value / (kept != ignore_index).sum(-1).clamp_min(1).to(value.dtype)
    return reduce(value, reduction)
