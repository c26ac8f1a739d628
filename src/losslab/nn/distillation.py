"""Module forms of the distillation objectives, and the stateful MTARD and SAF losses."""
from __future__ import annotations

import math

import torch

from .. import functional as F
from .._checks import check_floating, check_hyperparameters, check_index, check_ndim, check_positive
from .._numerics import compute_dtype
from .._reduction import reduce
from ..functional.distillation import _check_pair
from ..functional.distillation_stateful import _teacher_kl
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["KDLoss", "SinkhornKDLoss", "NDLoss", "DualHeadKDLoss", "BoundaryKDLoss", "MultiTeacherKDLoss",
           "TrajectoryLoss"]


@register_module("kd_loss")
class KDLoss(FunctionalLoss, function=F.kd_loss):
    """Module form of :func:`losslab.functional.kd_loss` (``target`` goes to ``forward``)."""


@register_module("sinkhorn_kd_loss")
class SinkhornKDLoss(FunctionalLoss, function=F.sinkhorn_kd_loss):
    """Module form of :func:`losslab.functional.sinkhorn_kd_loss`."""


@register_module("nd_loss")
class NDLoss(FunctionalLoss, function=F.nd_loss):
    """Module form of :func:`losslab.functional.nd_loss` (``class_means`` goes to ``forward``)."""


@register_module("dual_head_kd_loss")
class DualHeadKDLoss(FunctionalLoss, function=F.dual_head_kd_loss):
    """Module form of :func:`losslab.functional.dual_head_kd_loss`."""


@register_module("boundary_kd_loss")
class BoundaryKDLoss(FunctionalLoss, function=F.boundary_kd_loss):
    """Module form of :func:`losslab.functional.boundary_kd_loss`."""


def _int_at_least(value, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@register_module("multi_teacher_kd_loss")
class MultiTeacherKDLoss(torch.nn.Module):
    r"""MTARD with its balancing state: entropy-balanced teacher temperatures and normalized-loss weights.

    ``forward(student_logits, teacher_logits)`` with ``(K, *, C)`` inputs (row k: the
    student and teacher k on teacher k's inputs) returns
    :func:`losslab.functional.multi_teacher_kd_loss` at the current state. In training mode
    each call first updates the state from the batch's (detached) statistics
    :math:`L_k` = mean over samples of teacher k's KL and :math:`H_k` = mean entropy of
    :math:`\operatorname{softmax}(t_k/\tau_k)` (both at the current temperatures), in the
    order of the authors' B-MTARD code:

    1. weights (used by this step's loss): :math:`\hat L_k = L_k / L_k^{(0)}` (the first
       step's values; a first value of 0 counts as 1), :math:`r_k = \hat L_k / \operatorname{mean}_j \hat L_j`,
       :math:`w_k \leftarrow w_k - \eta_w\,(w_k - r_k / \sum_j r_j)`, clipped at 0 and
       renormalized to sum 1 (a teacher that the student has learnt less of, relative to
       the start, gets more weight);
    2. the loss :math:`\sum_k w_k \mathrm{KL}_k` at the current temperatures;
    3. temperatures (used from the next step): :math:`\tau_k \leftarrow
       \operatorname{clip}(\tau_k - \eta_\tau \operatorname{sign}(H_k - \bar H),\ \tau_{\min}, \tau_{\max})`,
       :math:`\bar H` the mean over teachers (for two teachers the authors' test
       :math:`\operatorname{sign}(H_k/H_{\text{other}} - 1)`): a teacher whose
       distributions are flatter than the others' is sharpened, and vice versa.

    ``.eval()`` uses the state without changing it. The learning rates are per step; the
    authors divide them by 10 at each learning-rate decay of the student (set the
    attributes ``weight_lr`` / ``temperature_lr``, which are not state).

    State (buffers, float64; in ``state_dict()``, resumes exactly): ``temperature`` (K,),
    ``teacher_weight`` (K,), ``initial_loss`` (K,), ``num_steps`` ().

    Distributed: with ``torch.distributed`` initialized, :math:`L_k` and :math:`H_k` are
    all-reduced (sums and counts) before the update, so the state is the same on every rank
    and equals single-process training on the concatenated batch. All ranks must call
    ``forward`` in training mode together.

    Args:
        num_teachers: K.
        temperature_lr: :math:`\eta_\tau` (0.001 in the authors' code).
        weight_lr: :math:`\eta_w` (0.025).
        initial_temperature: starting :math:`\tau_k` (1).
        min_temperature, max_temperature: the clip range (1, 10).
        reduction: as in the function.

    Example:
        >>> import torch
        >>> from losslab.nn import MultiTeacherKDLoss
        >>> crit = MultiTeacherKDLoss(2)
        >>> s = torch.zeros(2, 4, 3, requires_grad=True)
        >>> t = torch.stack([torch.randn(4, 3), 5 * torch.randn(4, 3)])
        >>> crit(s, t).backward()
        >>> crit.teacher_weight.sum().item(), int(crit.num_steps)
        (1.0, 1)

    References:
        Zhao, Wang, Wei, https://arxiv.org/abs/2306.16170 (MTARD, ICCV 2023) and B-MTARD
        (IEEE TPAMI 2024).
    """

    temperature: torch.Tensor
    teacher_weight: torch.Tensor
    initial_loss: torch.Tensor
    num_steps: torch.Tensor

    def __init__(self, num_teachers: int, *, temperature_lr: float = 0.001, weight_lr: float = 0.025,
                 initial_temperature: float = 1.0, min_temperature: float = 1.0, max_temperature: float = 10.0,
                 reduction: str = "mean") -> None:
        super().__init__()
        _int_at_least(num_teachers, "num_teachers", 1)
        for name, v in (("temperature_lr", temperature_lr), ("weight_lr", weight_lr)):
            if not (isinstance(v, (int, float)) and 0 <= v <= 1 and math.isfinite(v)):
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        for name, v in (("initial_temperature", initial_temperature), ("min_temperature", min_temperature),
                        ("max_temperature", max_temperature)):
            check_positive(v, name)
        if not min_temperature <= initial_temperature <= max_temperature:
            raise ValueError(f"initial_temperature must lie in [min_temperature, max_temperature] = "
                             f"[{min_temperature}, {max_temperature}], got {initial_temperature!r}")
        check_hyperparameters(F.multi_teacher_kd_loss, {"reduction": reduction})
        self.temperature_lr, self.weight_lr = float(temperature_lr), float(weight_lr)
        self.min_temperature, self.max_temperature = float(min_temperature), float(max_temperature)
        self.reduction = reduction
        k = num_teachers
        f64 = torch.float64
        self.register_buffer("temperature", torch.full((k,), float(initial_temperature), dtype=f64))
        self.register_buffer("teacher_weight", torch.full((k,), 1.0 / k, dtype=f64))
        self.register_buffer("initial_loss", torch.zeros(k, dtype=f64))
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))

    @property
    def num_teachers(self) -> int:
        return self.temperature.shape[0]

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        _check_pair(student_logits, teacher_logits, ndim=tuple(range(2, 9)))
        if student_logits.shape[0] != self.num_teachers:
            raise ValueError(f"student_logits must have num_teachers={self.num_teachers} rows in dimension 0 "
                             f"(one per teacher), got shape {tuple(student_logits.shape)}")
        if not self.training:
            return F.multi_teacher_kd_loss(student_logits, teacher_logits, temperature=self.temperature,
                                           teacher_weight=self.teacher_weight, reduction=self.reduction)
        dtype = compute_dtype(student_logits, teacher_logits)
        tau = self.temperature.to(device=student_logits.device, dtype=dtype)
        kl, log_t = _teacher_kl(student_logits, teacher_logits, tau, dtype)
        self._update_weights(kl.detach(), log_t)
        k = self.num_teachers
        w = self.teacher_weight.to(device=kl.device, dtype=dtype)
        loss = (w.reshape((k,) + (1,) * (kl.dim() - 1)) * kl).sum(0)
        return reduce(loss, self.reduction)

    @torch.no_grad()
    def _update_weights(self, kl: torch.Tensor, log_t: torch.Tensor) -> None:
        k = self.num_teachers
        # Sums over samples and the count, all-reduced under torch.distributed.
        ent = -(log_t.exp() * torch.where(torch.isneginf(log_t), torch.zeros_like(log_t), log_t)).sum(-1)
        stats = torch.cat([kl.reshape(k, -1).sum(1), ent.reshape(k, -1).sum(1),
                           torch.tensor([kl[0].numel()], dtype=kl.dtype, device=kl.device)]).double()
        if _distributed():
            torch.distributed.all_reduce(stats)
        stats = stats.to(self.temperature.device)
        count = stats[-1].clamp_min(1)
        loss, entropy = stats[:k] / count, stats[k:2 * k] / count
        if int(self.num_steps) == 0:
            self.initial_loss.copy_(loss)
        init = torch.where(self.initial_loss == 0, torch.ones_like(loss), self.initial_loss)
        lhat = loss / init
        mean = lhat.mean()
        r = lhat / mean if float(mean) > 0 else torch.ones_like(lhat)
        w = self.teacher_weight - self.weight_lr * (self.teacher_weight - r / r.sum())
        w = w.clamp_min(0)
        total = w.sum()
        self.teacher_weight.copy_(w / total if float(total) > 0 else torch.full_like(w, 1.0 / k))
        # Temperatures for the next step (this step's loss used the current ones).
        step = self.temperature_lr * torch.sign(entropy - entropy.mean())
        self.temperature.copy_((self.temperature - step).clamp(self.min_temperature, self.max_temperature))
        self.num_steps += 1

    def extra_repr(self) -> str:
        return (f"num_teachers={self.num_teachers}, temperature_lr={self.temperature_lr}, weight_lr={self.weight_lr}, "
                f"temperature range=[{self.min_temperature}, {self.max_temperature}]")


@register_module("trajectory_loss")
class TrajectoryLoss(torch.nn.Module):
    r"""SAF's trajectory loss with a per-sample ring buffer of past logits.

    ``forward(logits, index)``, with ``index`` the dataset indices of the batch's samples:

    1. a sample visited :math:`v` times before has a past when :math:`v \ge` ``lag_epochs``:
       its logits from ``lag_epochs`` visits earlier, read from slot
       :math:`v \bmod` ``lag_epochs`` of the ring buffer (each sample is seen once per
       epoch, so that is ``lag_epochs`` epochs earlier);
    2. returns :func:`losslab.functional.trajectory_loss` over the samples that have a past
       (``mask``; ``"mean"`` averages over them; 0 with zero gradient while none has one);
    3. in training mode, writes the batch's detached logits into that slot and counts the
       visit (``.eval()`` reads without writing).

    State (buffers; in ``state_dict()``, follows ``.to()``, resumes exactly): ``past``
    ``(lag_epochs, num_samples, num_classes)`` float32 and ``visits`` ``(num_samples,)``
    int64 — memory ``4 · lag_epochs · num_samples · num_classes`` bytes. Indices within
    one step should be distinct (one of the values of a repeated index is stored).

    Distributed: when ``torch.distributed`` is initialized, the batch's ``(index, logits)``
    of every rank are gathered (no gradient; uneven batches allowed) and written on every
    rank, so the buffer is identical everywhere and equal to single-process training on
    the concatenated batch. All ranks must call ``forward`` in training mode together.

    Args:
        num_samples: size of the training set (indices lie in ``[0, num_samples)``).
        num_classes: C.
        lag_epochs: :math:`\tilde E \ge 1` (3).
        temperature: :math:`T > 0` (5).
        reduction: as in the function.

    Example:
        >>> import torch
        >>> from losslab.nn import TrajectoryLoss
        >>> crit = TrajectoryLoss(num_samples=10, num_classes=3, lag_epochs=1)
        >>> idx = torch.tensor([2, 7])
        >>> crit(torch.zeros(2, 3), idx)          # no past yet
        tensor(0.)
        >>> crit(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), idx) > 0   # next epoch
        tensor(True)

    References:
        Du et al., "Sharpness-Aware Training for Free", NeurIPS 2022,
        https://arxiv.org/abs/2205.14083.
    """

    past: torch.Tensor
    visits: torch.Tensor

    def __init__(self, num_samples: int, num_classes: int, *, lag_epochs: int = 3, temperature: float = 5.0,
                 reduction: str = "mean") -> None:
        super().__init__()
        _int_at_least(num_samples, "num_samples", 1)
        _int_at_least(num_classes, "num_classes", 1)
        _int_at_least(lag_epochs, "lag_epochs", 1)
        check_hyperparameters(F.trajectory_loss, {"temperature": temperature, "reduction": reduction})
        self.temperature, self.reduction = float(temperature), reduction
        self.register_buffer("past", torch.zeros(lag_epochs, num_samples, num_classes, dtype=torch.float32))
        self.register_buffer("visits", torch.zeros(num_samples, dtype=torch.long))

    @property
    def lag_epochs(self) -> int:
        return self.past.shape[0]

    @property
    def num_samples(self) -> int:
        return self.past.shape[1]

    @property
    def num_classes(self) -> int:
        return self.past.shape[2]

    def forward(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        check_floating(logits, "logits")
        check_ndim(logits, "logits", 2)
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have num_classes={self.num_classes} columns, "
                             f"got shape {tuple(logits.shape)}")
        check_index(index, "index", length=logits.shape[0], size=self.num_samples)
        index = index.to(device=self.visits.device, dtype=torch.long)
        visits = self.visits[index]
        slot = visits % self.lag_epochs
        has_past = (visits >= self.lag_epochs).to(logits.device)
        past = self.past[slot, index].to(logits.device)
        loss = F.trajectory_loss(logits, past, temperature=self.temperature, mask=has_past, reduction=self.reduction)
        if self.training:
            self._store(index, logits.detach())
        return loss

    @torch.no_grad()
    def _store(self, index: torch.Tensor, logits: torch.Tensor) -> None:
        logits = logits.to(device=self.past.device, dtype=self.past.dtype)
        if _distributed():
            from ..distributed import gather_no_grad

            index = gather_no_grad(index)
            logits = gather_no_grad(logits)
        self.past[self.visits[index] % self.lag_epochs, index] = logits
        self.visits[index] += 1

    def extra_repr(self) -> str:
        return (f"num_samples={self.num_samples}, num_classes={self.num_classes}, lag_epochs={self.lag_epochs}, "
                f"temperature={self.temperature}")
