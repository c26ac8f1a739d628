"""Stateful robust contrastive losses (SogCLR, iSogCLR: per-sample state in buffers) and the soft-label Module."""
from __future__ import annotations

import torch

from .._checks import check_in_range, check_index, check_nonnegative, check_positive, check_reduction
from .._reduction import reduce
from ..functional.contrastive_robust import _robust, soft_label_contrastive_loss
from ..registry import register_module
from ._base import FunctionalLoss

__all__ = ["SogCLRLoss", "ISogCLRLoss", "SoftLabelContrastiveLoss"]


class _StatefulContrastive(torch.nn.Module):
    """Shared state handling: ``log_u`` buffer ``(num_samples, 2)``, index checks, DDP-synchronised updates."""

    def __init__(self, num_samples: int, *, gamma: float, gather: bool, group, reduction: str) -> None:
        super().__init__()
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int (the dataset size), got {num_samples!r}")
        check_in_range(gamma, "gamma", 0.0, 1.0, low_inclusive=False)
        check_reduction(reduction)
        self.num_samples, self.gamma, self.gather, self.group, self.reduction = num_samples, float(gamma), gather, group, reduction
        # log u_i per sample and direction; -inf = not seen yet (u_i starts at the first g_i).
        self.register_buffer("log_u", torch.full((num_samples, 2), float("-inf")))

    def _temperature(self, index: torch.Tensor):
        raise NotImplementedError

    def _update_extra(self, index: torch.Tensor, tau_grad: torch.Tensor) -> None:
        pass

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        check_index(index, "index", length=z1.shape[0], size=self.num_samples)
        index = index.to(self.log_u.device).long()
        loss, log_u, tau_grad, world, total = _robust(
            z1, z2, self._temperature(index), self.log_u[index], self.gamma, self.gather, self.group
        )
        if self.training:
            self._update(index, log_u, tau_grad, world)
        if world > 1:
            if self.reduction == "none":
                return loss
            out = loss.sum() * world
            return out / total if self.reduction == "mean" else out
        return reduce(loss, self.reduction)

    @torch.no_grad()
    def _update(self, index, log_u, tau_grad, world) -> None:
        if world > 1:
            # Every rank applies the same update of the gathered batch: state stays identical.
            from ..distributed import gather_no_grad

            index = gather_no_grad(index, group=self.group)
            log_u = gather_no_grad(log_u.to(self.log_u.dtype), group=self.group)
            tau_grad = gather_no_grad(tau_grad.to(self.log_u.dtype), group=self.group)
        self.log_u[index] = log_u.to(self.log_u.dtype)
        self._update_extra(index, tau_grad.to(self.log_u.dtype))


@register_module("robust_contrastive_loss")
class SogCLRLoss(_StatefulContrastive):
    r"""SogCLR: global contrastive loss with per-sample moving-average denominators (state in buffers).

    ``forward(z1, z2, index)`` computes :func:`losslab.functional.robust_contrastive_loss` with a
    fixed ``temperature`` and this module's :math:`\log u` rows for ``index`` (the dataset
    indices of the batch, ``(B,)`` int in ``[0, num_samples)``), then, in training mode, stores
    the updated rows: :math:`u_i \leftarrow (1-\gamma)u_i + \gamma g_i` (first visit:
    :math:`u_i = g_i`). The state is the buffer ``log_u`` ``(num_samples, 2)``, so it is in
    ``state_dict`` (a resumed run continues exactly), follows ``.to()``, and is not updated
    in ``eval()`` mode. With ``gather=True`` (or a ``group``) under ``torch.distributed``, the
    views of every rank are negatives, the loss follows the exact rule of
    :mod:`losslab.distributed`, and the state rows of the *gathered* batch are written on every
    rank (identical state everywhere). Indices must be unique within a (global) batch.

    Args:
        num_samples: dataset size :math:`n`.
        temperature: :math:`\tau > 0` (0.1).
        gamma: moving-average weight :math:`\gamma \in (0, 1]` (0.9).
        gather, group: distributed negatives and state synchronisation.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> from losslab.nn import SogCLRLoss
        >>> crit = SogCLRLoss(100, temperature=0.2)
        >>> z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
        >>> loss = crit(z1, z2, torch.arange(8))
        >>> bool(torch.isfinite(crit.log_u[:8]).all()), bool(torch.isinf(crit.log_u[8:]).all())
        (True, True)
    """

    def __init__(self, num_samples: int, *, temperature: float = 0.1, gamma: float = 0.9, gather: bool = False,
                 group=None, reduction: str = "mean") -> None:
        super().__init__(num_samples, gamma=gamma, gather=gather, group=group, reduction=reduction)
        check_positive(temperature, "temperature")
        self.temperature = float(temperature)

    def _temperature(self, index):
        return self.temperature

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, temperature={self.temperature}, gamma={self.gamma}"


class ISogCLRLoss(_StatefulContrastive):
    r"""iSogCLR: SogCLR with individualized temperatures learned by the paper's DRO update (state in buffers).

    Per sample :math:`i` the module keeps :math:`\log u_i` (per direction), a temperature
    :math:`\tau_i` (buffer ``tau``, initialised to ``temperature``) and a momentum :math:`m_i`
    (buffer ``tau_momentum``). ``forward(z1, z2, index)`` computes
    :func:`losslab.functional.robust_contrastive_loss` with :math:`\tau_i` and, in training mode,
    applies (Qiu et al. 2023, Algorithm 1):

    .. math::
        u_i &\leftarrow (1-\gamma)u_i + \gamma g_i(w, \tau_i), \\
        m_i &\leftarrow (1-\beta)\,m_i + \beta\,\partial_{\tau_i}, \\
        \tau_i &\leftarrow \Pi_{[\tau_{min}, \tau_{max}]}(\tau_i - \eta\, m_i),

    with :math:`\partial_{\tau_i}` the stochastic gradient of :math:`\tau_i\log u_i + \tau_i\rho`
    returned by the function (mean of both directions). Defaults are LibAUC's unimodal ones
    (:math:`\rho=0.3, \eta=0.01, \beta=0.9, \tau\in[0.05, 0.7]`). Everything is in
    ``state_dict``; under ``torch.distributed`` with ``gather=True`` the update uses the
    gathered batch, identically on every rank. Indices must be unique within a (global) batch.

    Args:
        num_samples: dataset size :math:`n`.
        temperature: initial :math:`\tau_i` (0.1).
        gamma: moving-average weight :math:`\gamma \in (0, 1]` (0.9).
        rho: DRO radius :math:`\rho \ge 0` (0.3).
        eta: temperature step size :math:`\eta > 0` (0.01).
        beta: momentum weight :math:`\beta \in (0, 1]` (0.9).
        tau_min, tau_max: projection interval, :math:`0 < \tau_{min} \le \tau_{max}`.
        gather, group: distributed negatives and state synchronisation.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

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
        super().__init__(num_samples, gamma=gamma, gather=gather, group=group, reduction=reduction)
        check_positive(temperature, "temperature")
        check_nonnegative(rho, "rho")
        check_positive(eta, "eta")
        check_in_range(beta, "beta", 0.0, 1.0, low_inclusive=False)
        check_positive(tau_min, "tau_min")
        check_positive(tau_max, "tau_max")
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
