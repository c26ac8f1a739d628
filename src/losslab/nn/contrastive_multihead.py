"""AMCL's loss with its learnable temperature network (parameters, so in ``state_dict``)."""
from __future__ import annotations

import torch

from .._checks import check_hyperparameters, check_positive
from ..functional.contrastive_multihead import _bounded_temperature, multi_head_contrastive_loss
from ..registry import register_module

__all__ = ["AdaptiveMultiHeadContrastiveLoss"]


@register_module("multi_head_contrastive_loss")
class AdaptiveMultiHeadContrastiveLoss(torch.nn.Module):
    r"""AMCL: :func:`losslab.functional.multi_head_contrastive_loss` with a learned, pair-adaptive temperature.

    The module owns the temperature network, one MLP :math:`\phi` shared by all heads and
    separate from the projection heads (the paper's figure, as captioned in the authors'
    README: "the shared MLP layer for learning the temperature parameters"). For a pair of unit
    head features :math:`(u, v)`,

    .. math::
        r = \langle \phi(u), \phi(v)\rangle, \qquad
        \tau(u, v) = \sigma(r) = \frac{\iota}{1 + e^{r}} + \eta,
        \quad \eta = \tau_{min},\ \iota = \tau_{max} - \tau_{min},

    so every temperature lies in :math:`[\tau_{min}, \tau_{max}]` (a higher pair score gives a
    lower temperature) and the loss stays bounded below. ``forward(query, key)`` is one call to
    the function with ``temperature=self.temperature``. The form of :math:`r` (inner product
    of the two :math:`\phi` outputs), :math:`\phi` = Linear–ReLU–Linear :math:`D \to h \to D`
    and the bounds :math:`[10^{-5}, 2]` follow the authors' code; the paper's text defining
    them could not be read here (pass ``phi`` to use another network).

    The temperature network is trained with the model: give ``loss.parameters()`` to the
    optimizer together with the model's. Its weights are parameters, so they are in
    ``state_dict``, follow ``.to()``/``.double()``, and a reloaded module gives identical
    temperatures. Inputs are cast to the network's dtype and the temperatures back to the
    compute dtype (bfloat16 inputs work with a float32 network).

    Args:
        dim: feature size :math:`D` of each head's output.
        hidden_dim: hidden width :math:`h` of the default :math:`\phi` (default ``dim``).
        phi: a module mapping ``(..., D)`` features to ``(..., D')`` (replaces the default MLP).
        tau_min, tau_max: temperature bounds, :math:`0 < \tau_{min} < \tau_{max}`.
        beta: regularizer weight :math:`\beta \ge 0` (:math:`10^{-4}`).
        gather, group: negatives from every rank (see the function; the loss is then this
            rank's share: log :func:`losslab.distributed.global_value` of it).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        query, key ``(B, C, D)``; output ``(2B,)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.nn import AdaptiveMultiHeadContrastiveLoss
        >>> crit = AdaptiveMultiHeadContrastiveLoss(16)
        >>> query, key = torch.randn(8, 3, 16), torch.randn(8, 3, 16)   # 8 samples, 3 heads
        >>> crit(query, key).shape
        torch.Size([])
        >>> tau = crit.temperature(query, key)
        >>> bool(((tau >= 1e-5) & (tau <= 2.0)).all())
        True
    """

    def __init__(self, dim: int, *, hidden_dim: int | None = None, phi: torch.nn.Module | None = None,
                 tau_min: float = 1e-5, tau_max: float = 2.0, beta: float = 1e-4, gather: bool = False,
                 group=None, reduction: str = "mean") -> None:
        super().__init__()
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be a positive int (the feature size of each head), got {dim!r}")
        hidden = dim if hidden_dim is None else hidden_dim
        if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
            raise ValueError(f"hidden_dim must be a positive int, got {hidden_dim!r}")
        check_positive(tau_min, "tau_min")
        check_positive(tau_max, "tau_max")
        if not tau_min < tau_max:
            raise ValueError(f"tau_min must be < tau_max, got tau_min={tau_min} and tau_max={tau_max}")
        # The function's own checks (vocabulary + beta, gather), at construction.
        check_hyperparameters(multi_head_contrastive_loss,
                              dict(temperature=self.temperature, beta=beta, gather=gather, reduction=reduction))
        if phi is not None and not isinstance(phi, torch.nn.Module):
            raise ValueError(f"phi must be a torch.nn.Module, got {type(phi).__name__}")
        self.dim, self.tau_min, self.tau_max, self.beta = dim, float(tau_min), float(tau_max), float(beta)
        self.gather, self.group, self.reduction = gather, group, reduction
        self.phi = phi if phi is not None else torch.nn.Sequential(
            torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, dim)
        )

    def temperature(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        r"""Temperatures :math:`\tau(u, v)` of the pairs ``(u[..., :], v[..., :])``: ``(..., D)`` -> ``(...)``."""
        p = next(self.phi.parameters(), None)
        dtype = p.dtype if p is not None else u.dtype
        r = (self.phi(u.to(dtype)) * self.phi(v.to(dtype))).sum(-1)
        return _bounded_temperature(r, self.tau_min, self.tau_max).to(u.dtype)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        if query.dim() == 3 and query.shape[-1] != self.dim:
            raise ValueError(f"query must have feature size {self.dim} (the module's dim) in its last dimension, "
                             f"got shape {tuple(query.shape)}")
        return multi_head_contrastive_loss(query, key, temperature=self.temperature, beta=self.beta,
                                           gather=self.gather, group=self.group, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, tau_min={self.tau_min}, tau_max={self.tau_max}, beta={self.beta}"
