r"""Off-policy value estimators from logged bandit feedback: IPS (plain, clipped, self-normalized) and doubly robust.

Logged data: for each of :math:`N` contexts the logging policy :math:`\mu` drew an action
:math:`a_i` and the reward :math:`r_i` was observed. ``target_probs[i]`` is the target policy
:math:`\pi(\cdot \mid x_i)` and ``logging_probs[i]`` the logging policy :math:`\mu(\cdot \mid x_i)`,
both ``(N, A)`` action distributions. The estimand is the target policy's value
:math:`V(\pi) = E_x E_{a \sim \pi(\cdot|x)}[r(x, a)]`. Both estimators are differentiable in
``target_probs`` (off-policy learning maximizes them over the target policy) and return
:class:`~losslab.estimators.Estimate`.
"""
from __future__ import annotations

import math

import torch

from .._checks import (
    check_class_target,
    check_floating,
    check_leading_shape,
    check_ndim,
    check_positive,
    check_probabilities,
    check_same_shape,
    hyperparameter_checks,
    validation_enabled,
)
from .._numerics import compute_dtype, upcast
from ..registry import Example, Reference, register
from ._estimate import Estimate

__all__ = ["ips_value", "doubly_robust_value"]

AD_LOAD = Reference(
    title="Ad-load Balancing via Off-policy Learning in a Content Marketplace",
    authors="Hitesh Sagtani, Madan Gopal Jhawar, Rishabh Mehrotra, Olivier Jeunen",
    year=2023,
    url="https://arxiv.org/abs/2309.11518",
)
DOUBLY_ROBUST = Reference(
    title="Doubly Robust Policy Evaluation and Learning",
    authors="Miroslav Dudík, John Langford, Lihong Li",
    year=2011,
    url="https://arxiv.org/abs/1103.4601",
)
F64 = torch.float64


def _stack(e: Estimate) -> torch.Tensor:
    """The conformance suite checks value and stderr together."""
    return torch.stack((e.value, e.stderr))


def _check_clip(*, clip=None, **_) -> None:
    if clip is not None:
        check_positive(clip, "clip")


def _importance_weights(rewards, actions, target_probs, logging_probs, clip, extra=None):
    """Checks; returns (rewards, actions, pi, mu, w) in the compute dtype, ``w = pi(a|x)/mu(a|x)`` clipped."""
    check_floating(rewards, "rewards")
    check_floating(target_probs, "target_probs")
    check_floating(logging_probs, "logging_probs")
    check_ndim(target_probs, "target_probs", 2)
    check_same_shape(target_probs, logging_probs, ("target_probs", "logging_probs"))
    check_leading_shape(rewards, "rewards", target_probs.shape[:-1], "target_probs")
    if target_probs.shape[0] == 0:
        raise ValueError("rewards must hold at least one logged sample, got shape (0,)")
    actions = check_class_target(actions, target_probs, name="actions", logits_name="target_probs")
    check_probabilities(target_probs, "target_probs")
    check_probabilities(logging_probs, "logging_probs")
    _check_clip(clip=clip)
    dtype = compute_dtype(rewards, target_probs, logging_probs, extra)
    r, pi, mu = upcast(rewards, dtype), upcast(target_probs, dtype), upcast(logging_probs, dtype)
    idx = actions.unsqueeze(-1)
    mu_a = mu.gather(-1, idx).squeeze(-1)
    if validation_enabled():
        bad = ~(mu_a > 0)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"logging_probs must be > 0 at the logged actions (they are divided by), "
                             f"found {float(mu_a[i]):.4g} at row {i} (action {int(actions[i])})")
    w = pi.gather(-1, idx).squeeze(-1) / mu_a
    if clip is not None:
        w = w.clamp_max(clip)
    return r, actions, pi, mu, w


def _probs(gen, n, a):
    # Rows of k/16 (k >= 1): exactly representable in bfloat16 and float16, so the half-precision
    # checks see distributions that still sum to 1.
    counts = torch.ones(n, a, dtype=F64)
    extra = torch.multinomial(torch.ones(a, dtype=F64), 16 - a, replacement=True, generator=gen)
    counts = counts + torch.zeros(a, dtype=F64).scatter_add_(0, extra, torch.ones(16 - a, dtype=F64))
    rows = [counts[i, torch.randperm(a, generator=gen)] for i in range(n)]
    return torch.stack(rows) / 16


def _bandit_example(gen, n=12, a=4):
    actions = torch.randint(0, a, (n,), generator=gen)
    rewards = torch.rand(n, generator=gen, dtype=F64)
    return rewards, actions, _probs(gen, n, a), _probs(gen, n, a)


def _ips_example(gen):
    return _bandit_example(gen), {"clip": 5.0}


def _ips_mismatch(gen):
    (r, act, pi, mu), kw = _ips_example(gen)
    return (r[:-2], act, pi, mu), kw


@register(
    "ips_value",
    family="estimators",
    reference=AD_LOAD,
    seed=AD_LOAD.title,
    # Rewards are scaled to 1e4; the probabilities are distributions (scaled they raise).
    example=Example(make=_ips_example, mismatch=_ips_mismatch, mismatch_match="rewards", output=_stack, extreme=(0,)),
    tags=("off-policy evaluation", "inverse propensity scoring", "IPS", "SNIPS", "bandit", "counterfactual"),
    module_required=False,
)
@hyperparameter_checks(_check_clip)
def ips_value(
    rewards: torch.Tensor,
    actions: torch.Tensor,
    target_probs: torch.Tensor,
    logging_probs: torch.Tensor,
    *,
    clip: float | None = None,
    self_normalized: bool = False,
) -> Estimate:
    r"""Inverse propensity scoring (IPS) estimate of a target policy's value from logged bandit feedback.

    With importance weights :math:`w_i = \pi(a_i|x_i)/\mu(a_i|x_i)`, optionally clipped to
    :math:`\min(w_i, c)`,

    .. math::
        \hat V_{IPS} = \frac1N \sum_i w_i r_i, \qquad
        \hat V_{SNIPS} = \frac{\sum_i w_i r_i}{\sum_i w_i}.

    IPS is unbiased when :math:`\mu(a|x) > 0` wherever :math:`\pi(a|x) > 0` (actions the
    logging policy never takes are invisible to it), with variance
    :math:`\operatorname{Var}(w r)/N`; ``stderr`` is the sample standard deviation of
    :math:`w_i r_i` over :math:`\sqrt N`. Clipping (``clip``) trades a downward bias for
    non-negative rewards for a bounded variance. The self-normalized estimator
    (``self_normalized=True``) is consistent with an :math:`O(1/N)` bias, is invariant to
    adding a constant to the rewards, and its ``stderr`` is the delta-method
    :math:`\sqrt{\sum_i w_i^2 (r_i - \hat V)^2}/\sum_i w_i`.

    ``logging_probs`` must be positive at the logged actions (a ``ValueError`` naming it
    otherwise, while validation is enabled); both probability inputs are checked to be
    distributions over the last dimension. Only the logged actions' propensities are used;
    the full rows are taken so that the doubly robust estimator and the checks see the same
    inputs.

    Args:
        rewards: ``(N,)`` observed rewards.
        actions: ``(N,)`` logged action indices (any integer dtype).
        target_probs: ``(N, A)`` target policy :math:`\pi(\cdot|x_i)`.
        logging_probs: ``(N, A)`` logging policy :math:`\mu(\cdot|x_i)` (the propensities).
        clip: optional upper bound :math:`c > 0` on the weights.
        self_normalized: divide by :math:`\sum_i w_i` instead of :math:`N` (SNIPS).

    Shape:
        rewards, actions ``(N,)``; probabilities ``(N, A)``; ``value`` and ``stderr`` 0-dim.

    Returns:
        :class:`Estimate` ``(value, stderr)``.

    Example:
        >>> import torch
        >>> from losslab.estimators import ips_value
        >>> mu = torch.full((4, 2), 0.5)                      # uniform logging policy
        >>> pi = torch.tensor([[1.0, 0.0]]).expand(4, 2)      # target: always action 0
        >>> actions, rewards = torch.tensor([0, 1, 0, 1]), torch.tensor([1.0, 0.0, 0.5, 0.0])
        >>> ips_value(rewards, actions, pi, mu).value         # (2 * 1 + 2 * 0.5) / 4
        tensor(0.7500)
        >>> ips_value(rewards, actions, pi, mu, self_normalized=True).value
        tensor(0.7500)

    References:
        Sagtani, Jhawar, Mehrotra, Jeunen, "Ad-load Balancing via Off-policy Learning in a
        Content Marketplace", WSDM 2024, https://arxiv.org/abs/2309.11518. Horvitz,
        Thompson, "A Generalization of Sampling Without Replacement from a Finite Universe",
        1952, https://doi.org/10.1080/01621459.1952.10483446. Swaminathan, Joachims, "The
        Self-Normalized Estimator for Counterfactual Learning", NeurIPS 2015.
    """
    r, _, _, _, w = _importance_weights(rewards, actions, target_probs, logging_probs, clip)
    n = r.shape[0]
    if self_normalized:
        total = w.sum()
        if validation_enabled() and not bool(total > 0):
            raise ValueError("target_probs puts zero probability on every logged action: the self-normalized "
                             "estimate divides by the sum of the weights, which is 0")
        value = (w * r).sum() / total
        stderr = (w.pow(2) * (r - value).pow(2)).sum().sqrt() / total
        return Estimate(value, stderr)
    terms = w * r
    return Estimate(terms.mean(), terms.std(correction=1) / math.sqrt(n))


def _dr_example(gen):
    r, act, pi, mu = _bandit_example(gen)
    return (r, act, pi, mu, torch.rand(*pi.shape, generator=gen, dtype=F64)), {"clip": 5.0}


def _dr_mismatch(gen):
    (r, act, pi, mu, q), kw = _dr_example(gen)
    return (r, act, pi, mu, q[:, :-1]), kw


@register(
    "doubly_robust_value",
    family="estimators",
    reference=DOUBLY_ROBUST,
    seed=AD_LOAD.title,
    # Rewards and reward estimates are scaled to 1e4; the probabilities are distributions.
    example=Example(make=_dr_example, mismatch=_dr_mismatch, mismatch_match="reward_estimates", output=_stack,
                    extreme=(0, 4)),
    tags=("off-policy evaluation", "doubly robust", "DR", "bandit", "counterfactual", "direct method"),
    module_required=False,
)
@hyperparameter_checks(_check_clip)
def doubly_robust_value(
    rewards: torch.Tensor,
    actions: torch.Tensor,
    target_probs: torch.Tensor,
    logging_probs: torch.Tensor,
    reward_estimates: torch.Tensor,
    *,
    clip: float | None = None,
) -> Estimate:
    r"""Doubly robust (DR) estimate of a target policy's value from logged bandit feedback and a reward model.

    With a reward model :math:`\hat r(x, a)` (``reward_estimates``) and weights
    :math:`w_i = \pi(a_i|x_i)/\mu(a_i|x_i)` (optionally clipped to :math:`\min(w_i, c)`),

    .. math::
        \hat V_{DR} = \frac1N \sum_i \Big[\sum_a \pi(a|x_i)\,\hat r(x_i, a)
            + w_i\,\big(r_i - \hat r(x_i, a_i)\big)\Big],

    the direct-method estimate corrected by IPS on the reward model's residuals. Unbiased if
    either the propensities are correct (and :math:`\mu > 0` where :math:`\pi > 0`) or the
    reward model is, hence "doubly robust" (Dudík, Langford, Li 2011); with an accurate
    reward model its variance is well below that of IPS, since the weights multiply only the
    residuals. The variance is :math:`\operatorname{Var}(\text{term}_i)/N`; ``stderr`` is the
    sample standard deviation of the bracketed terms over :math:`\sqrt N`. Clipping
    (``clip``) bounds the variance at the price of a bias.

    Args:
        rewards: ``(N,)`` observed rewards.
        actions: ``(N,)`` logged action indices (any integer dtype).
        target_probs: ``(N, A)`` target policy :math:`\pi(\cdot|x_i)`.
        logging_probs: ``(N, A)`` logging policy :math:`\mu(\cdot|x_i)` (positive at the
            logged actions).
        reward_estimates: ``(N, A)`` reward model :math:`\hat r(x_i, a)` for every action.
        clip: optional upper bound :math:`c > 0` on the weights.

    Shape:
        rewards, actions ``(N,)``; probabilities and reward_estimates ``(N, A)``; ``value`` and
        ``stderr`` 0-dim.

    Returns:
        :class:`Estimate` ``(value, stderr)``.

    Example:
        >>> import torch
        >>> from losslab.estimators import doubly_robust_value
        >>> mu = torch.full((4, 2), 0.5)
        >>> pi = torch.tensor([[1.0, 0.0]]).expand(4, 2)
        >>> actions, rewards = torch.tensor([0, 1, 0, 1]), torch.tensor([1.0, 0.0, 0.5, 0.0])
        >>> exact_model = torch.tensor([[1.0, 0.0], [0.75, 0.0], [0.5, 0.0], [0.75, 0.0]])
        >>> doubly_robust_value(rewards, actions, pi, mu, exact_model)  # no residual: the model's value
        Estimate(value=tensor(0.7500), stderr=tensor(0.1021))

    References:
        Dudík, Langford, Li, "Doubly Robust Policy Evaluation and Learning", ICML 2011,
        https://arxiv.org/abs/1103.4601. Sagtani, Jhawar, Mehrotra, Jeunen, "Ad-load
        Balancing via Off-policy Learning in a Content Marketplace", WSDM 2024,
        https://arxiv.org/abs/2309.11518.
    """
    check_floating(reward_estimates, "reward_estimates")
    check_ndim(target_probs, "target_probs", 2)
    if reward_estimates.shape != target_probs.shape:
        raise ValueError(f"reward_estimates must have the shape of target_probs {tuple(target_probs.shape)} "
                         f"(one estimate per context and action), got {tuple(reward_estimates.shape)}")
    r, actions, pi, _, w = _importance_weights(rewards, actions, target_probs, logging_probs, clip,
                                               extra=reward_estimates)
    q = upcast(reward_estimates, r.dtype)
    q_a = q.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    terms = (pi * q).sum(-1) + w * (r - q_a)
    return Estimate(terms.mean(), terms.std(correction=1) / math.sqrt(r.shape[0]))
