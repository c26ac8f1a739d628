"""Policy-gradient objectives for RL fine-tuning of language models (the GRPO family).

:func:`group_advantages` turns the rewards of groups of completions into advantages,
:func:`grpo_loss` is the clipped surrogate with the normalizations of TRL's ``GRPOTrainer``
(``"grpo"``, ``"bnpo"``, ``"dr_grpo"``, ``"dapo"``, ``"cispo"``), exact across ranks, and
:func:`variance_promotion_score` is MMR1's score for variance-aware prompt sampling. The
per-token log-probabilities these take come from the model, or from hidden states with
:func:`~losslab.functional.linear_token_logprobs` (chunked, no N × V logits).

Conventions were checked against TRL's source, ``trl/trainer/grpo_trainer.py``
(``GRPOTrainer._compute_loss`` and ``_generate_and_score_completions``) of TRL 1.16.0;
:func:`grpo_loss` lists where it deliberately differs.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist

from .. import distributed as _dist
from .._checks import (
    check_choice,
    check_floating,
    check_hyperparameters,
    check_positive,
    check_tensor,
    hyperparameter_checks,
)
from .._numerics import compute_dtype, upcast
from ..registry import Example, Reference, register
from ._examples import randint, randn

__all__ = ["group_advantages", "grpo_loss", "variance_promotion_score"]

GRPO_PAPER = Reference(
    title="DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
    authors="Zhihong Shao, Peiyi Wang, Qihao Zhu, Runxin Xu, Junxiao Song, Xiao Bi, Haowei Zhang, Mingchuan Zhang, "
            "Y.K. Li, Y. Wu, Daya Guo",
    year=2024,
    url="https://arxiv.org/abs/2402.03300",
)
MMR1_PAPER = Reference(
    title="MMR1: Enhancing Multimodal Reasoning with Variance-Aware Sampling and Open Resources",
    authors="Sicong Leng, Jing Wang, Jiaxi Li, Hao Zhang, Zhiqiang Hu, Boqiang Zhang, Yuming Jiang, Hang Zhang, "
            "Xin Li, Lidong Bing, Deli Zhao, Wei Lu, Yu Rong, Aixin Sun, Shijian Lu",
    year=2025,
    url="https://arxiv.org/abs/2509.21268",
)
MMR1_SEED = MMR1_PAPER.title

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo")
LEVELS = ("token", "sequence")
SCALES = ("group", "batch", "none")


def _check_group_size(group_size: object, n: int | None = None) -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}")
    if n is not None and n % group_size:
        raise ValueError(f"rewards has {n} entries, not a multiple of group_size={group_size} "
                         "(B / group_size consecutive groups of completions)")


def _check_rewards(rewards: object) -> torch.Tensor:
    check_floating(rewards, "rewards")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be (B,), got shape {tuple(rewards.shape)}")
    return rewards


# --------------------------------------------------------------------------- advantages
def _check_adv(*, scale: str = "group", eps: float = 1e-4, **_) -> None:
    check_choice(scale, "scale", SCALES)
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")


def _adv_example() -> Example:
    def make(gen):
        return (randn(gen, 12), 4), {}

    def mismatch(gen):
        return (randn(gen, 10), 4), {}

    return Example(make=make, mismatch=mismatch, mismatch_match="group_size")


@register("group_advantages", family="preference", reference=GRPO_PAPER, seed=MMR1_SEED, example=_adv_example(),
          input_kind="rewards", module_required=False, differentiable=False, inference_only=True,
          tags=("grpo", "advantage", "group-relative", "reinforcement learning", "rlhf", "rlvr", "policy gradient"))
@hyperparameter_checks(_check_adv)
def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    scale: Literal["group", "batch", "none"] = "group",
    eps: float = 1e-4,
) -> torch.Tensor:
    r"""Group-relative advantages of GRPO: each reward minus its group's mean, scaled by a std.

    ``rewards`` holds ``B / group_size`` consecutive groups (the completions of one prompt).
    For completion :math:`i` of group :math:`g`,

    .. math::
        A_i = \frac{r_i - \bar r_g}{s + \varepsilon},

    with :math:`s` the standard deviation of the group's rewards (``scale="group"``, GRPO),
    of the whole batch's rewards (``"batch"``, the mean stays the group's) or no division
    at all (``"none"``, Dr. GRPO). The std is the unbiased (Bessel-corrected, :math:`n-1`)
    estimator, as TRL computes it (``trl.trainer.utils.nanstd``); a group of one completion
    has :math:`s = 0` (TRL's rule). A transform of the rewards, not a loss: no reduction and
    no gradient (the result is detached). A NaN reward propagates to its group (TRL's
    ``nanmean`` would drop it; losslab never turns a NaN into a finite value). Under data
    parallelism pass the rewards of the whole generation batch (gathered), as TRL does.

    Args:
        rewards: ``(B,)`` rewards, groups of ``group_size`` consecutive completions.
        group_size: completions per prompt :math:`G`; ``B`` must be a multiple of it.
        scale: ``"group"``, ``"batch"`` or ``"none"`` (see above).
        eps: added to the std before dividing (TRL: ``1e-4``).

    Shape:
        rewards ``(B,)``; output ``(B,)`` (float32 for half-precision rewards).

    Returns:
        the advantages, detached.

    Example:
        >>> import torch
        >>> from losslab.functional import group_advantages
        >>> r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
        >>> group_advantages(r, 3, scale="none")
        tensor([ 0.6667, -0.3333, -0.3333, -0.6667,  0.3333,  0.3333])

    References:
        Shao et al., "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open
        Language Models", 2024, https://arxiv.org/abs/2402.03300; Liu et al., "Understanding
        R1-Zero-Like Training: A Critical Perspective", 2025, https://arxiv.org/abs/2503.20783
        (Dr. GRPO, no std scaling).
    """
    check_hyperparameters(group_advantages, dict(scale=scale, eps=eps))
    _check_rewards(rewards)
    _check_group_size(group_size, rewards.shape[0])
    r = upcast(rewards.detach())
    grouped = r.view(-1, group_size)
    adv = (grouped - grouped.mean(1, keepdim=True)).reshape(-1)
    if scale == "none":
        return adv
    if scale == "group":
        std = grouped.std(1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped[:, :1])
        std = std.expand_as(grouped).reshape(-1)
    else:
        std = r.std() if r.numel() > 1 else torch.zeros((), dtype=r.dtype, device=r.device)
    return adv / (std + eps)


# --------------------------------------------------------------------------- GRPO loss
def _check_grpo(*, beta: float = 0.0, epsilon: float = 0.2, epsilon_high: float | None = None,
                loss_type: str = "grpo", importance_sampling_level: str = "token",
                max_completion_length: int | None = None, **_) -> None:
    if not (isinstance(beta, (int, float)) and beta >= 0):
        raise ValueError(f"beta must be a number >= 0, got {beta!r}")
    check_positive(epsilon, "epsilon")
    if epsilon_high is not None:
        check_positive(epsilon_high, "epsilon_high")
    check_choice(loss_type, "loss_type", LOSS_TYPES)
    check_choice(importance_sampling_level, "importance_sampling_level", LEVELS)
    if max_completion_length is not None and (isinstance(max_completion_length, bool) or not isinstance(
            max_completion_length, int) or max_completion_length < 1):
        raise ValueError(f"max_completion_length must be an integer >= 1, got {max_completion_length!r}")
    if loss_type == "dr_grpo" and max_completion_length is None:
        raise ValueError("max_completion_length is required for loss_type='dr_grpo' "
                         "(the loss is the token sum / (B * max_completion_length))")
    if loss_type == "cispo" and epsilon_high is None:
        raise ValueError("epsilon_high is required for loss_type='cispo': it is the absolute cap of the "
                         "importance ratio (e.g. 5.0), not 1 + epsilon_high")


def _global_count(x: torch.Tensor, group) -> torch.Tensor:
    """``x`` summed over the ranks of ``group`` (a detached all-reduce; identity in one process)."""
    if not _dist.is_distributed(group):
        return x
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x


def _grpo_example() -> Example:
    def inputs(gen, b=4, t=5):
        pol = randn(gen, b, t, scale=0.3) - 1.0
        old = pol + randn(gen, b, t, scale=0.2)
        ref = pol + randn(gen, b, t, scale=0.2)
        adv = randn(gen, b)
        mask = torch.ones(b, t, dtype=torch.bool)
        mask[1, 3:] = False
        mask[2, 1:] = False
        return pol, old, adv, mask, ref

    def make(gen):
        pol, old, adv, mask, ref = inputs(gen)
        return (pol, old, adv, mask), {"ref_logps": ref, "beta": 0.04, "epsilon_high": 0.28}

    def mismatch(gen):
        pol, old, adv, mask, _ = inputs(gen)
        return (pol, old[:, :4], adv, mask), {}

    def empty(gen):
        pol, old, adv, mask, ref = inputs(gen)
        return (pol, old, adv, torch.zeros_like(mask)), {"ref_logps": ref, "beta": 0.04}

    # log-probabilities of magnitude 1e4 make ratios exp(1e4): every implementation overflows
    # there (TRL too); the extreme-input test scales the advantages.
    return Example(make=make, mismatch=mismatch, mismatch_match="old_logps", extreme=(2,), empty=empty)


@register("grpo_loss", family="preference", reference=GRPO_PAPER, seed=MMR1_SEED, example=_grpo_example(),
          input_kind="log-probs",
          batch_level=True,
          tags=("grpo", "dr grpo", "dapo", "bnpo", "cispo", "gspo", "ppo", "clipped surrogate", "policy gradient",
                "reinforcement learning", "rlhf", "rlvr", "language model", "llm", "kl penalty"))
@hyperparameter_checks(_check_grpo)
def grpo_loss(
    policy_logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo", "cispo"] = "grpo",
    importance_sampling_level: Literal["token", "sequence"] = "token",
    max_completion_length: int | None = None,
    num_items: int | torch.Tensor | None = None,
    group=None,
) -> torch.Tensor:
    r"""The GRPO clipped policy-gradient loss with TRL's normalizations, exact across ranks.

    With the importance ratio :math:`\rho_{it} = \exp(\log\pi_{it} - \log\pi^{old}_{it})`
    per token (``importance_sampling_level="token"``) or
    :math:`\rho_i = \exp\big(\frac{1}{|o_i|}\sum_t (\log\pi_{it} - \log\pi^{old}_{it})\big)`
    per sequence (``"sequence"``, GSPO), each completion token costs

    .. math::
        \ell_{it} = -\min\big(\rho_{it} A_{it},\ \operatorname{clip}(\rho_{it}, 1-\epsilon, 1+\epsilon_{high}) A_{it}\big)
                    + \beta\,\big(e^{\log\pi^{ref}_{it} - \log\pi_{it}} - (\log\pi^{ref}_{it} - \log\pi_{it}) - 1\big)

    (the KL term, Schulman's k3 estimator, only when ``beta > 0``), or, for ``"cispo"``,
    :math:`\ell_{it} = -\operatorname{sg}[\min(\rho_{it}, \epsilon_{high})]\,A_{it}\log\pi_{it}`
    (+ the KL term): the ratio is detached and capped at ``epsilon_high`` as an *absolute*
    cap (e.g. 5), as TRL does. ``loss_type`` fixes the normalization (TRL's ``GRPOTrainer``,
    ``_compute_loss``), :math:`M` the completion mask:

    * ``"grpo"``: :math:`\frac1B\sum_i \frac{\sum_t M_{it}\ell_{it}}{\max(1, \sum_t M_{it})}`;
    * ``"bnpo"``: :math:`\sum_{it} M_{it}\ell_{it} / \max(1, \sum_{it} M_{it})`;
    * ``"dr_grpo"``: :math:`\sum_{it} M_{it}\ell_{it} / (B \cdot \text{max\_completion\_length})`;
    * ``"dapo"``, ``"cispo"``: :math:`\sum_{it} M_{it}\ell_{it} / \max(1, \text{num\_items})`,
      ``num_items`` the completion tokens of one optimizer step's batch (all ranks, all
      gradient-accumulation steps); default: the mask's tokens summed over the ranks.

    Distributed (``torch.distributed`` initialized and ``group`` of more than one rank;
    ``group=None`` is the default group). Every count above (:math:`B`, the tokens) is the
    *global* one, taken with a scalar all-reduce over ``group``, and each rank returns its
    share, :math:`W` times its local sum over the global count (``losslab.distributed``'s
    rule): the mean of the ranks' values is the single-process loss of the concatenated
    batch and DDP's averaged gradients are its gradients, also with uneven token counts.
    TRL does this for ``"dapo"``/``"cispo"`` only; its ``"bnpo"`` divides by the *local*
    token count, which is not the single-process loss when ranks hold different numbers of
    tokens. With equal shards ``"grpo"`` and ``"dr_grpo"`` equal TRL's. Log the global value
    with :func:`losslab.distributed.global_value`. Gradient accumulation: divide by the
    number of accumulation steps yourself except for ``"dapo"``/``"cispo"`` with ``num_items``
    of the whole optimizer step (TRL 1.16 counts the tokens of the generation batch and
    rescales the count by ``gradient_accumulation_steps / steps_per_generation``: the same
    number when one generation batch feeds one optimizer step, its default).

    Where TRL 1.16's ``GRPOTrainer`` differs, deliberately: the global token count of
    ``"bnpo"`` across ranks (above); the KL term is the plain k3 estimator above, while
    TRL 1.16 by default (``use_bias_correction_kl=True``, False before 1.16) multiplies it by
    the differentiable importance ratio :math:`\rho` (the token's, or the sequence's for
    ``"sequence"``). The values agree on-policy (:math:`\rho = 1`), but the gradients
    differ by :math:`\beta\,\mathrm{k3}\,\nabla\rho` per token; TRL with
    ``use_bias_correction_kl=False`` is this loss. TRL's ``delta`` (INTELLECT-2's upper cap of
    the unclipped ratio) is not offered; its entropy and off-policy masks and its vLLM
    importance weights are not arguments: multiply them into ``(B, T)`` ``advantages`` (a
    non-negative factor of :math:`A` scales each token's policy term as TRL's product does,
    and leaves the KL term and the token counts alone).

    Masked positions never count, whatever they hold (padding may be NaN). A mask with no
    completion token gives 0 with zero gradients. With ``old_logps = policy_logps.detach()``
    the ratio is 1 and the gradient is the plain policy gradient
    :math:`-\frac{1}{\text{norm}}\sum_{it} M_{it} A_{it}\nabla\log\pi_{it}`.
    ``epsilon_high=None`` means ``epsilon`` (symmetric clipping), except for ``"cispo"``,
    which requires it. Half-precision inputs are computed in float32.

    Args:
        policy_logps: ``(B, T)`` log-probabilities of the sampled tokens under the current policy.
        old_logps: ``(B, T)`` the same under the behaviour policy that sampled them.
        advantages: ``(B,)`` per completion or ``(B, T)`` per token.
        mask: ``(B, T)`` True (or 1) for completion tokens.
        ref_logps: ``(B, T)`` under the reference policy; required when ``beta > 0``.
        beta: KL coefficient :math:`\beta \ge 0`.
        epsilon: lower clip :math:`\epsilon > 0`.
        epsilon_high: upper clip (DAPO's clip-higher); for ``"cispo"`` the absolute cap.
        loss_type: ``"grpo"``, ``"bnpo"``, ``"dr_grpo"``, ``"dapo"`` or ``"cispo"``.
        importance_sampling_level: ``"token"`` or ``"sequence"`` (GSPO).
        max_completion_length: the generation length limit; required by ``"dr_grpo"``.
        num_items: ``"dapo"``/``"cispo"`` denominator (global token count of the optimizer step).
        group: process group for the counts (default: the world when initialized).

    Shape:
        ``(B, T)`` log-probabilities and mask, ``(B,)`` or ``(B, T)`` advantages; output a
        scalar (float32 for half-precision inputs). A batch-level objective (its
        normalization is the reduction), so it takes no ``reduction``.

    Example:
        >>> import torch
        >>> from losslab.functional import grpo_loss
        >>> logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -9.0]], requires_grad=True)
        >>> mask = torch.tensor([[True, True, True], [True, True, False]])
        >>> adv = torch.tensor([1.0, -1.0])
        >>> loss = grpo_loss(logp, logp.detach(), adv, mask)      # ratio 1: -mean of A
        >>> loss
        tensor(0., grad_fn=<DivBackward0>)
        >>> loss.backward(); logp.grad                            # -A / (B |o_i|)
        tensor([[-0.1667, -0.1667, -0.1667],
                [ 0.2500,  0.2500,  0.0000]])

    References:
        Shao et al., "DeepSeekMath", 2024, https://arxiv.org/abs/2402.03300 (GRPO); Yu et
        al., "DAPO", 2025, https://arxiv.org/abs/2503.14476; Liu et al., "Understanding
        R1-Zero-Like Training", 2025, https://arxiv.org/abs/2503.20783 (Dr. GRPO); Zheng et
        al., "Group Sequence Policy Optimization", 2025, https://arxiv.org/abs/2507.18071;
        MiniMax, "MiniMax-M1", 2025, https://arxiv.org/abs/2506.13585 (CISPO); TRL
        ``GRPOTrainer`` (https://github.com/huggingface/trl).
    """
    check_hyperparameters(grpo_loss, dict(
        beta=beta, epsilon=epsilon, epsilon_high=epsilon_high, loss_type=loss_type,
        importance_sampling_level=importance_sampling_level, max_completion_length=max_completion_length))
    check_floating(policy_logps, "policy_logps")
    check_floating(old_logps, "old_logps")
    check_floating(advantages, "advantages")
    check_tensor(mask, "mask")
    if policy_logps.dim() != 2:
        raise ValueError(f"policy_logps must be (B, T), got shape {tuple(policy_logps.shape)}")
    shape = policy_logps.shape
    for name, t in (("old_logps", old_logps), ("mask", mask), ("ref_logps", ref_logps)):
        if t is not None and t.shape != shape:
            raise ValueError(f"{name} must have the shape of policy_logps {tuple(shape)}, got {tuple(t.shape)}")
    if advantages.shape not in ((shape[0],), shape):
        raise ValueError(f"advantages must be (B,) or (B, T) with (B, T) = {tuple(shape)}, "
                         f"got {tuple(advantages.shape)}")
    if beta > 0 and ref_logps is None:
        raise ValueError("ref_logps is required when beta > 0 (the KL penalty to the reference policy)")
    if ref_logps is not None:
        check_floating(ref_logps, "ref_logps")
    # the dtype follows the policy's inputs (a float64 ref_logps next to float32 log-probs is cast)
    sd = compute_dtype(policy_logps, old_logps, advantages)
    pol, old, adv = upcast(policy_logps, sd), upcast(old_logps, sd), upcast(advantages, sd)
    m = mask if mask.dtype == torch.bool else mask != 0
    zero = torch.zeros((), dtype=sd, device=pol.device)
    adv = adv.unsqueeze(1) if adv.dim() == 1 else adv
    # where, not a product: padding outside the mask may hold anything (NaN, -inf)
    log_ratio = torch.where(m, pol - old, zero)
    if importance_sampling_level == "token":
        coef = log_ratio.exp()
    else:
        count = m.sum(-1, keepdim=True).clamp_min(1).to(sd)
        coef = (log_ratio.sum(-1, keepdim=True) / count).exp()
    eps_high = epsilon if epsilon_high is None else epsilon_high
    if loss_type == "cispo":
        per_token = -coef.clamp(max=eps_high).detach() * adv * pol
    else:
        clipped = coef.clamp(1.0 - epsilon, 1.0 + eps_high)
        per_token = -torch.minimum(coef * adv, clipped * adv)
    if beta > 0:
        d = upcast(ref_logps, sd) - pol
        per_token = per_token + beta * (d.exp() - d - 1.0)
    per_token = torch.where(m, per_token.expand(shape), zero)

    world = _dist.world_size(group)
    batch = per_token.shape[0]
    if loss_type == "grpo":
        tokens = m.sum(-1).clamp_min(1).to(sd)
        total = (per_token.sum(-1) / tokens).sum()
        denom = _global_count(torch.tensor(float(batch), dtype=sd, device=pol.device), group)
    elif loss_type == "dr_grpo":
        total = per_token.sum()
        denom = _global_count(torch.tensor(float(batch), dtype=sd, device=pol.device), group)
        denom = denom * max_completion_length
    else:
        total = per_token.sum()
        if loss_type in ("dapo", "cispo") and num_items is not None:
            denom = torch.as_tensor(num_items, dtype=sd, device=pol.device)
        else:
            denom = _global_count(m.sum().to(sd), group)
    # nothing kept: the total is 0, so 0 / 1 = 0 with zero gradients
    loss = total / denom.clamp_min(1.0)
    return loss * world if world != 1 else loss


# --------------------------------------------------------------------------- variance promotion score
def _check_vps(*, alpha: float = 1.0, beta: float = 1.0, ngram: int = 3, **_) -> None:
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not (isinstance(value, (int, float)) and value >= 0):
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if isinstance(ngram, bool) or not isinstance(ngram, int) or ngram < 1:
        raise ValueError(f"ngram must be an integer >= 1, got {ngram!r}")


def _distinct_n(seqs: list[list[int]], n: int) -> float:
    """Distinct-n of a group: unique n-grams over all n-grams of its completions (0 with none)."""
    grams = [tuple(s[i:i + n]) for s in seqs for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _vps_example() -> Example:
    def make(gen):
        rewards = randint(gen, 2, 12).to(torch.float64)
        ids = randint(gen, 4, 12, 6)
        mask = torch.ones(12, 6, dtype=torch.bool)
        mask[0, 4:] = False
        return (rewards, 4, ids), {"completion_mask": mask}

    def mismatch(gen):
        return (randint(gen, 2, 12).to(torch.float64), 5), {}

    return Example(make=make, mismatch=mismatch, mismatch_match="group_size")


@register("variance_promotion_score", family="preference", reference=MMR1_PAPER, seed=MMR1_SEED,
          example=_vps_example(), input_kind="rewards", module_required=False, differentiable=False,
          inference_only=True,
          graph_breaks="distinct n-grams of the completions are counted on the host (Python sets)",
          tags=("variance-aware sampling", "vas", "vps", "curriculum", "data selection", "grpo", "reward variance",
                "trajectory diversity", "distinct-n", "reinforcement learning", "rlvr"))
@hyperparameter_checks(_check_vps)
def variance_promotion_score(
    rewards: torch.Tensor,
    group_size: int,
    completion_ids: torch.Tensor | None = None,
    *,
    completion_mask: torch.Tensor | None = None,
    alpha: float = 1.0,
    beta: float = 1.0,
    ngram: int = 3,
) -> torch.Tensor:
    r"""MMR1's Variance Promotion Score of each prompt, from its group of rollouts.

    For a prompt with :math:`N` rollouts of correctness :math:`V_i \in \{0, 1\}` (the
    ``rewards``), pass rate :math:`P = \frac1N\sum_i V_i`,

    .. math::
        \mathrm{VPS} = \alpha\,\underbrace{P(1-P)}_{\mathrm{OVS}}
                       + \beta\,\underbrace{\mathrm{distinct}_n(y_1, \dots, y_N)}_{\mathrm{TDS}},

    the Outcome Variance Score (the Bernoulli variance of correctness, largest at
    :math:`P = 1/2`) plus the Trajectory Diversity Score. The paper leaves the diversity
    function open ("inverse self-BLEU or distinct-n"); this is distinct-n as in the authors'
    code (``verl/curriculum/metrics.py``: unique n-grams over all n-grams of the group's
    token sequences, 0 when there is none; their default ``n = 3``). Without
    ``completion_ids`` the score is :math:`\alpha\,\mathrm{OVS}`, the authors' released
    configuration (``examples/mmr1.yaml``: the metric ``learnability`` = :math:`P(1-P)`,
    weight 1). Prompts are sampled with probability proportional to the score
    (variance-aware sampling). A data-selection score, not a loss: no reduction, no
    gradient. ``rewards`` are read as correctness in :math:`[0, 1]` (means of them are pass
    rates); a NaN reward gives a NaN score.

    Args:
        rewards: ``(B,)`` correctness of each rollout, ``B / group_size`` groups of consecutive rollouts.
        group_size: rollouts per prompt :math:`N`.
        completion_ids: optional ``(B, T)`` token ids of the rollouts (for the diversity term).
        completion_mask: optional ``(B, T)``, True for the completion's tokens (default: all);
            it selects the tokens whose n-grams count, nothing is averaged over it.
        alpha: weight :math:`\alpha \ge 0` of OVS.
        beta: weight :math:`\beta \ge 0` of TDS.
        ngram: :math:`n` of distinct-n.

    Shape:
        rewards ``(B,)``; output ``(B / group_size,)``, one score per prompt.

    Example:
        >>> import torch
        >>> from losslab.functional import variance_promotion_score
        >>> r = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
        >>> variance_promotion_score(r, 4)      # P = 1/2 and P = 1
        tensor([0.2500, 0.0000])

    References:
        Leng et al., "MMR1: Enhancing Multimodal Reasoning with Variance-Aware Sampling and
        Open Resources", 2025, https://arxiv.org/abs/2509.21268 (code:
        https://github.com/LengSicong/MMR1).
    """
    check_hyperparameters(variance_promotion_score, dict(alpha=alpha, beta=beta, ngram=ngram))
    _check_rewards(rewards)
    _check_group_size(group_size, rewards.shape[0])
    r = upcast(rewards.detach())
    p = r.view(-1, group_size).mean(1)
    score = alpha * p * (1.0 - p)
    if completion_ids is None:
        return score
    check_tensor(completion_ids, "completion_ids")
    if completion_ids.dim() != 2 or completion_ids.shape[0] != rewards.shape[0]:
        raise ValueError(f"completion_ids must be (B, T) with B = {rewards.shape[0]}, "
                         f"got {tuple(completion_ids.shape)}")
    mask = completion_mask
    if mask is not None and mask.shape != completion_ids.shape:
        raise ValueError(f"completion_mask must have the shape of completion_ids {tuple(completion_ids.shape)}, "
                         f"got {tuple(mask.shape)}")
    ids = completion_ids.tolist()
    keep = None if mask is None else mask.bool().tolist()
    seqs = [s if keep is None else [t for t, k in zip(s, kk) if k] for s, kk in zip(ids, keep or ids)]
    tds = [_distinct_n(seqs[g:g + group_size], ngram) for g in range(0, len(seqs), group_size)]
    return score + beta * torch.tensor(tds, dtype=score.dtype, device=score.device)
