"""Stateful robust contrastive losses (SogCLR, iSogCLR: per-sample state in buffers) and the soft-label Module."""
from __future__ import annotations

import torch

from .._checks import (
    check_hyperparameters,
    check_in_range,
    check_integer,
    check_nonnegative,
    check_positive,
    validation_enabled,
)
from .._reduction import reduce
from ..distributed import gather_no_grad, is_distributed, reduce_gathered
from ..functional.contrastive_robust import _robust, robust_contrastive_loss, soft_label_contrastive_loss
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["SogCLRLoss", "ISogCLRLoss", "SoftLabelContrastiveLoss"]


class _StatefulContrastive(torch.nn.Module):
    """Shared state handling: ``log_u`` buffer ``(num_samples, 2)``, index checks, rank-synchronised updates."""

    def __init__(self, num_samples: int, *, temperature: float, gamma: float, rho: float, gather: bool, group,
                 reduction: str) -> None:
        super().__init__()
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int (the dataset size), got {num_samples!r}")
        # The function's own checks (vocabulary + gamma, rho, gather), at construction.
        check_hyperparameters(robust_contrastive_loss, dict(
            temperature=temperature, gamma=gamma, rho=rho, gather=gather, reduction=reduction, return_state=False))
        self.num_samples, self.gamma, self.gather, self.group, self.reduction = num_samples, float(gamma), gather, group, reduction
        # log u_i per sample and direction; -inf = not seen yet (u_i starts at the first g_i).
        self.register_buffer("log_u", torch.full((num_samples, 2), float("-inf")))

    def _temperature(self, index: torch.Tensor):
        raise NotImplementedError

    def _update_extra(self, index: torch.Tensor, tau_grad: torch.Tensor) -> None:
        pass

    def _batch_index(self, index: torch.Tensor, length: int, sync: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(local, batch)`` int64 indices; ``batch`` is the global batch's (every rank's, rank order) when ``sync``.

        Value checks (range, uniqueness) read the global batch's indices, which every rank
        holds identically, so a bad index raises on every rank rather than leaving the others
        waiting in a collective.
        """
        check_integer(index, "index")
        if index.shape != (length,):
            raise ValueError(f"index must have shape ({length},) (one dataset index per sample), got {tuple(index.shape)}")
        index = index.to(self.log_u.device).long()
        batch = gather_no_grad(index, group=self.group) if sync else index
        if validation_enabled() and batch.numel() > 0:
            lo, hi = int(batch.min()), int(batch.max())
            if lo < 0 or hi >= self.num_samples:
                raise ValueError(f"index has value {lo if lo < 0 else hi} outside [0, {self.num_samples}) "
                                 f"(num_samples={self.num_samples})")
            if self.training and torch.unique(batch).numel() != batch.numel():
                where = "across the ranks' batches" if sync else "in the batch"
                raise ValueError(f"index has duplicate values {where}: each sample's state row is written once per "
                                 f"step, so the dataset indices of a (global) batch must be unique")
        return index, batch

    def forward(self, query: torch.Tensor, key: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        # Under torch.distributed a training step writes the rows of every rank's batch on every
        # rank (also with gather=False), so that the state is identical everywhere.
        sync = self.training and is_distributed(self.group)
        index, batch_index = self._batch_index(index, query.shape[0], sync)
        loss, log_u, tau_grad, world, total = _robust(
            query, key, self._temperature(index), self.log_u[index], self.gamma, self.gather, self.group
        )
        if self.training:
            self._update(batch_index, log_u, tau_grad, sync)
        if world > 1:
            return reduce_gathered(loss, self.reduction, world=world, count=total)
        return reduce(loss, self.reduction)

    @torch.no_grad()
    def _update(self, index, log_u, tau_grad, sync: bool) -> None:
        log_u, tau_grad = log_u.to(self.log_u.dtype), tau_grad.to(self.log_u.dtype)
        if sync:
            # Every rank applies the same update of the global batch: state stays identical.
            log_u = gather_no_grad(log_u, group=self.group)
            tau_grad = gather_no_grad(tau_grad, group=self.group)
        self.log_u[index] = log_u
        self._update_extra(index, tau_grad)


@register_module("robust_contrastive_loss")
class SogCLRLoss(_StatefulContrastive):
    r"""SogCLR: global contrastive loss with per-sample moving-average denominators (state in buffers).

    ``forward(query, key, index)`` computes :func:`losslab.functional.robust_contrastive_loss`
    with a fixed ``temperature`` and this module's :math:`\log u` rows for ``index`` (the
    dataset indices of the batch, ``(B,)`` int in ``[0, num_samples)``, unique within the
    batch), then, in training mode, stores the updated rows:
    :math:`u_i \leftarrow (1-\gamma)u_i + \gamma g_i` (first visit: :math:`u_i = g_i`). The
    state is the buffer ``log_u`` ``(num_samples, 2)``, so it is in ``state_dict`` (a resumed
    run continues exactly), follows ``.to()``, and is not updated in ``eval()`` mode.

    Distributed: under ``torch.distributed``, a training-mode call gathers every rank's
    ``(index, u)`` and writes the rows of the whole global batch on every rank, with or
    without ``gather``, so the state is identical on every rank and a checkpoint saved by
    one rank holds every sample's state. Every rank must therefore call ``forward`` in
    training mode the same number of times (as DDP requires). With ``gather=True`` (or a
    ``group``) the views of every rank are also negatives and the loss is this rank's
    *share* (the rule of :mod:`losslab.distributed`): log
    :func:`losslab.distributed.global_value` of it. Without ``gather`` each rank's
    :math:`u` comes from its local negatives. Indices must be unique within the global
    batch: checked while validation is on (``ValueError`` on every rank).

    Args:
        num_samples: dataset size :math:`n`.
        temperature: :math:`\tau > 0` (0.1).
        gamma: moving-average weight :math:`\gamma \in (0, 1]` (0.9).
        gather, group: distributed negatives (and the process group of the state updates).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        query, key ``(B, D)``, index ``(B,)``; output ``(B,)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.nn import SogCLRLoss
        >>> crit = SogCLRLoss(100, temperature=0.2)
        >>> query, key = torch.randn(8, 16), torch.randn(8, 16)
        >>> loss = crit(query, key, torch.arange(8))
        >>> bool(torch.isfinite(crit.log_u[:8]).all()), bool(torch.isinf(crit.log_u[8:]).all())
        (True, True)
    """

    def __init__(self, num_samples: int, *, temperature: float = 0.1, gamma: float = 0.9, gather: bool = False,
                 group=None, reduction: str = "mean") -> None:
        super().__init__(num_samples, temperature=temperature, gamma=gamma, rho=0.0, gather=gather, group=group,
                         reduction=reduction)
        self.temperature = float(temperature)

    def _temperature(self, index):
        return self.temperature

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, temperature={self.temperature}, gamma={self.gamma}"


@register_module("robust_contrastive_loss")
class ISogCLRLoss(_StatefulContrastive):
    r"""iSogCLR: SogCLR with individualized temperatures learned by the paper's DRO update (state in buffers).

    Per sample :math:`i` the module keeps :math:`\log u_i` (per direction), a temperature
    :math:`\tau_i` (buffer ``tau``, initialised to ``temperature``) and a momentum :math:`m_i`
    (buffer ``tau_momentum``). ``forward(query, key, index)`` computes
    :func:`losslab.functional.robust_contrastive_loss` with :math:`\tau_i` and, in training mode,
    applies (Qiu et al. 2023, Algorithm 1):

    .. math::
        u_i &\leftarrow (1-\gamma)u_i + \gamma g_i(w, \tau_i), \\
        m_i &\leftarrow (1-\beta)\,m_i + \beta\,\partial_{\tau_i}, \\
        \tau_i &\leftarrow \Pi_{[\tau_{min}, \tau_{max}]}(\tau_i - \eta\, m_i),

    with :math:`\partial_{\tau_i}` the stochastic gradient of :math:`\tau_i\log u_i + \tau_i\rho`
    returned by the function (mean of both directions). Defaults are LibAUC's unimodal ones
    (:math:`\rho=0.3, \eta=0.01, \beta=0.9, \tau\in[0.05, 0.7]`). Everything is in
    ``state_dict``. Distributed: as :class:`SogCLRLoss`, a training-mode call under
    ``torch.distributed`` applies the update of the whole global batch on every rank (with or
    without ``gather``), so all three buffers are identical on every rank; with ``gather=True``
    the loss is this rank's share (log :func:`losslab.distributed.global_value`). Indices
    must be unique within the global batch (checked while validation is on).

    Args:
        num_samples: dataset size :math:`n`.
        temperature: initial :math:`\tau_i` (0.1).
        gamma: moving-average weight :math:`\gamma \in (0, 1]` (0.9).
        rho: DRO radius :math:`\rho \ge 0` (0.3).
        eta: temperature step size :math:`\eta > 0` (0.01).
        beta: momentum weight :math:`\beta \in (0, 1]` (0.9).
        tau_min, tau_max: projection interval, :math:`0 < \tau_{min} \le \tau_{max}`.
        gather, group: distributed negatives (and the process group of the state updates).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        query, key ``(B, D)``, index ``(B,)``; output ``(B,)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.nn import ISogCLRLoss
        >>> crit = ISogCLRLoss(100, temperature=0.3)
        >>> loss = crit(torch.randn(8, 16), torch.randn(8, 16), torch.arange(8))
        >>> bool((crit.tau[:8] != 0.3).all()), bool((crit.tau[8:] == 0.3).all())
        (True, True)
    """

    def __init__(self, num_samples: int, *, temperature: float = 0.1, gamma: float = 0.9, rho: float = 0.3,
                 eta: float = 0.01, beta: float = 0.9, tau_min: float = 0.05, tau_max: float = 0.7,
                 gather: bool = False, group=None, reduction: str = "mean") -> None:
        super().__init__(num_samples, temperature=temperature, gamma=gamma, rho=rho, gather=gather, group=group,
                         reduction=reduction)
        check_positive(eta, "eta")
        check_in_range(beta, "beta", 0.0, 1.0, low_inclusive=False)
        check_positive(tau_min, "tau_min")
        check_positive(tau_max, "tau_max")
        check_nonnegative(rho, "rho")
        if tau_min > tau_max:
            raise ValueError(f"tau_min must be <= tau_max, got {tau_min} > {tau_max}")
        self.rho, self.eta, self.beta, self.tau_min, self.tau_max = float(rho), float(eta), float(beta), float(tau_min), float(tau_max)
        self.register_buffer("tau", torch.full((num_samples,), float(temperature)).clamp(tau_min, tau_max))
        self.register_buffer("tau_momentum", torch.zeros(num_samples))

    def _temperature(self, index):
        return self.tau[index]

    def _update_extra(self, index, tau_grad) -> None:
        m = (1 - self.beta) * self.tau_momentum[index] + self.beta * (tau_grad + self.rho)
        self.tau_momentum[index] = m
        self.tau[index] = (self.tau[index] - self.eta * m).clamp(self.tau_min, self.tau_max)

    def extra_repr(self) -> str:
        return (f"num_samples={self.num_samples}, gamma={self.gamma}, rho={self.rho}, eta={self.eta}, "
                f"beta={self.beta}, tau_min={self.tau_min}, tau_max={self.tau_max}")


@register_module("soft_label_contrastive_loss")
class SoftLabelContrastiveLoss(FunctionalLoss, function=soft_label_contrastive_loss):
    """Module form of :func:`losslab.functional.soft_label_contrastive_loss`."""
