"""Distillation objectives whose Modules carry state: MTARD's multi-teacher loss and SAF's trajectory loss.

Part of the distillation family (conventions in :mod:`losslab.functional.distillation`); the
balancing state and the ring buffer of past logits live in :class:`losslab.nn.MultiTeacherKDLoss`
and :class:`losslab.nn.TrajectoryLoss`.
"""
from __future__ import annotations

import math

import torch

from .._checks import check_floating, check_nonnegative, check_positive, validation_enabled
from .._numerics import compute_dtype, upcast
from .._reduction import Reduction, reduce
from ..registry import Example, register
from ._examples import F64, randn
from .distillation import MTARD_PAPER, SAF_PAPER, _check_pair
from .divergences import kl_divergence

__all__ = ["multi_teacher_kd_loss", "trajectory_loss"]


# --------------------------------------------------------------------------- MTARD
def _teacher_kl(student_logits, teacher_logits, temperature, dtype):
    """Per-teacher per-sample KL(softmax(t_k / tau_k) || softmax(s_k)) ``(K, *)`` and teacher log-probs."""
    k = student_logits.shape[0]
    tau = torch.as_tensor(temperature, dtype=dtype, device=student_logits.device).reshape(-1)
    tau = tau.expand(k) if tau.numel() == 1 else tau
    shape = (k,) + (1,) * (student_logits.dim() - 1)
    log_t = torch.log_softmax(upcast(teacher_logits.detach(), dtype) / tau.reshape(shape), dim=-1)
    log_s = torch.log_softmax(upcast(student_logits, dtype), dim=-1)
    return kl_divergence(log_t, log_s, log_probs=True, reduction="none"), log_t


def _check_teacher_vector(value, name: str, k: int, positive: bool) -> None:
    if value is None:
        return
    if isinstance(value, torch.Tensor):
        check_floating(value, name)
        if value.shape not in ((k,), ()):
            raise ValueError(f"{name} must have shape ({k},) (one per teacher) or be a number, "
                             f"got {tuple(value.shape)}")
        if validation_enabled() and value.numel() > 0:
            lo = float(value.min())
            if not (lo > 0 if positive else lo >= 0) or math.isnan(lo):
                raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, found {lo:.4g}")
    elif positive:
        check_positive(value, name)
    else:
        check_nonnegative(value, name)


def _mtard_example() -> Example:
    def make(gen):
        return (randn(gen, 2, 6, 5), randn(gen, 2, 6, 5)), {"temperature": torch.tensor([1.5, 3.0], dtype=F64),
                                                          "teacher_weight": torch.tensor([0.3, 0.7], dtype=F64)}

    def mismatch(gen):
        return (randn(gen, 2, 6, 5), randn(gen, 2, 6, 4)), {}

    def tokens(gen):
        return (randn(gen, 3, 2, 4, 5), randn(gen, 3, 2, 4, 5)), {"temperature": 2.0}

    def module(gen):
        from ..nn.distillation import MultiTeacherKDLoss

        m = MultiTeacherKDLoss(2, temperature_lr=0.1)
        return m, (randn(gen, 2, 6, 5), randn(gen, 2, 6, 5, scale=3.0)), {}

    return Example(make=make, mismatch=mismatch, mismatch_match="teacher_logits", extreme=(0, 1), grad=(0,),
                   variants=(tokens,), module=module)


@register("multi_teacher_kd_loss", family="distillation", reference=MTARD_PAPER, seed=MTARD_PAPER.title,
          example=_mtard_example(), input_kind="logits",
          tags=("knowledge distillation", "distillation", "multi-teacher", "adversarial robustness",
                "adversarial training", "mtard", "loss balancing"))
def multi_teacher_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 1.0,
    teacher_weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Multi-teacher distillation (MTARD): a weighted sum of KLs to K teachers at per-teacher temperatures.

    .. math::
        \ell_i = \sum_{k=1}^{K} w_k\,
                 \mathrm{KL}\big(\operatorname{softmax}(t_{k,i}/\tau_k)\,\|\,\operatorname{softmax}(s_{k,i})\big),

    the stateless loss of MTARD, whose balancing rules (entropy-balanced temperatures
    :math:`\tau_k`, normalized-loss weights :math:`w_k`) live in
    :class:`losslab.nn.MultiTeacherKDLoss`, which calls this with its current state. Row
    :math:`k` of ``student_logits`` is the student's output on teacher :math:`k`'s inputs
    (MTARD: the clean teacher on natural images, the robust teacher on adversarial ones;
    pass ``s.expand(K, *s.shape)`` when all teachers see the same inputs). As in the
    authors' code the temperature divides the **teacher's** logits only (the student is at
    temperature 1) and there is no :math:`\tau^2` factor. The authors average the KL terms
    over samples *and classes* (their value is this one divided by C; the balancing rules
    use ratios, where C cancels); here each KL is summed over classes, as a KL is. Teachers
    are detached.

    Args:
        student_logits: ``(K, *, C)`` the student's logits, one row per teacher.
        teacher_logits: ``(K, *, C)`` the K teachers' logits (detached inside).
        temperature: :math:`\tau_k > 0`, a number or a ``(K,)`` tensor.
        teacher_weight: ``(K,)`` non-negative weights :math:`w_k` (default :math:`1/K` each).
        reduction: ``"mean"`` over samples, ``"sum"`` or ``"none"`` (``(*)``).

    Shape:
        inputs ``(K, *, C)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import multi_teacher_kd_loss, kl_divergence
        >>> s, t = torch.zeros(2, 1, 3), torch.tensor([[[2.0, 0.0, 0.0]], [[0.0, 0.0, 4.0]]])
        >>> w = torch.tensor([0.25, 0.75])
        >>> value = multi_teacher_kd_loss(s, t, temperature=torch.tensor([1.0, 2.0]), teacher_weight=w)
        >>> torch.allclose(value, 0.25 * kl_divergence(t[0], s[0]) + 0.75 * kl_divergence(t[1] / 2, s[1]))
        True

    References:
        Zhao, Wang, Wei, "Mitigating the Accuracy-Robustness Trade-off via Multi-Teacher
        Adversarial Distillation", 2023, https://arxiv.org/abs/2306.16170 (and its balanced
        extension B-MTARD, IEEE TPAMI 2024, which adds the entropy-balanced temperatures).
    """
    _check_pair(student_logits, teacher_logits, ndim=tuple(range(2, 9)))
    k = student_logits.shape[0]
    _check_teacher_vector(temperature, "temperature", k, positive=True)
    _check_teacher_vector(teacher_weight, "teacher_weight", k, positive=False)
    dtype = compute_dtype(student_logits, teacher_logits)
    kl, _ = _teacher_kl(student_logits, teacher_logits, temperature, dtype)
    if teacher_weight is None:
        w = torch.full((k,), 1.0 / k, dtype=dtype, device=kl.device)
    else:
        w = upcast(teacher_weight, dtype).to(kl.device).reshape(-1).expand(k)
    loss = (w.reshape((k,) + (1,) * (kl.dim() - 1)) * kl).sum(0)
    return reduce(loss, reduction)


# --------------------------------------------------------------------------- SAF
def _saf_example() -> Example:
    def make(gen):
        return (randn(gen, 6, 5), randn(gen, 6, 5)), {}

    def mismatch(gen):
        return (randn(gen, 6, 5), randn(gen, 6, 4)), {}

    def masked(gen):
        m = torch.tensor([[True, False, True], [False, True, True]])
        return (randn(gen, 2, 3, 5), randn(gen, 2, 3, 5)), {"mask": m, "temperature": 2.0}

    def empty(gen):
        return (randn(gen, 6, 5), randn(gen, 6, 5)), {"mask": torch.zeros(6, dtype=torch.bool)}

    def kept_mean(none, args, kw):
        m = kw.get("mask")
        if m is None:
            return none.mean()
        k = m.sum()
        return none.sum() / k if k > 0 else none.sum() * 0

    def module(gen):
        from ..nn.distillation import TrajectoryLoss

        m = TrajectoryLoss(8, 5, lag_epochs=1, temperature=2.0)
        return m, (randn(gen, 4, 5), torch.tensor([0, 3, 5, 7])), {}

    return Example(make=make, mismatch=mismatch, mismatch_match="past_logits", extreme=(0, 1), grad=(0,),
                   mean_rule=kept_mean, variants=(masked,), empty=empty, module=module)


@register("trajectory_loss", family="distillation", reference=SAF_PAPER, seed=SAF_PAPER.title,
          example=_saf_example(), input_kind="logits", needs_index=True,
          tags=("sharpness-aware", "sam", "saf", "flat minima", "self-distillation", "trajectory", "generalization"))
def trajectory_loss(
    logits: torch.Tensor,
    past_logits: torch.Tensor,
    *,
    temperature: float = 5.0,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""SAF's trajectory loss: KL from a sample's logits of earlier epochs to its current logits.

    .. math::
        \ell_i = T^2\,\mathrm{KL}\big(\operatorname{softmax}(z_i^{(e-\tilde E)}/T)\,\|\,
                 \operatorname{softmax}(z_i^{(e)}/T)\big),

    with :math:`z^{(e)}` the current logits and :math:`z^{(e-\tilde E)}` the same sample's
    logits stored :math:`\tilde E` epochs earlier (detached). Sharpness-Aware training for
    Free adds :math:`\lambda` times this to the training loss: penalizing fast changes of
    the outputs along the trajectory stands in for SAM's sharpness term at no extra
    forward-backward pass. :class:`losslab.nn.TrajectoryLoss` keeps the per-sample ring
    buffer of past logits and passes ``mask`` (samples that have a past yet).

    Args:
        logits: ``(*, C)`` the current logits (the model).
        past_logits: ``(*, C)`` the logits of the same samples from earlier weights (detached).
        temperature: :math:`T > 0` (5 in the paper).
        mask: optional bool ``(*)``, per batch; False samples are left out (and of the mean).
        reduction: ``"mean"`` over the kept samples, ``"sum"`` or ``"none"``.

    Shape:
        inputs ``(*, C)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import trajectory_loss, kl_divergence
        >>> z, past = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
        >>> torch.allclose(trajectory_loss(z, past), 25 * kl_divergence(past, z, temperature=5.0))
        True

    References:
        Du, Zhou, Feng, Tan, Zhou, "Sharpness-Aware Training for Free", NeurIPS 2022,
        https://arxiv.org/abs/2205.14083.
    """
    _check_pair(logits, past_logits, ("logits", "past_logits"))
    check_positive(temperature, "temperature")
    value = kl_divergence(past_logits.detach(), logits, temperature=temperature, mask=mask, reduction="none")
    return reduce(temperature ** 2 * value, reduction, mask=mask)

