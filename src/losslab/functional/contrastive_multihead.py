"""Adaptive multi-head contrastive learning (AMCL): several projection heads, per-pair temperatures.

The function takes the outputs of ``C`` projection heads for the two views of a batch and a
temperature *strategy*: a number (one constant temperature) or a callable that maps a pair of
head features to the pair's temperature (the paper's adaptive temperature; the Module
:class:`losslab.nn.AdaptiveMultiHeadContrastiveLoss` owns such a network). The hardest
negative of every anchor and head is selected without gradient; the loss is then evaluated on
the selected pairs only, so memory is O(B·C·D) plus one block of similarities at a time.

Sources. The loss is Eq. (2.1) of the paper's Table 2 (SimCLR/MoCo row), read from the copy
of that table the authors publish in their repository (github.com/LeiWangR/cl,
``images/table2.png``). The body of the paper's Section 4 (the definition of the regularizer
:math:`\\Omega` and of the temperature network) was not available to us; where the
implementation relies on the authors' code instead, the docstrings say so.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .._checks import (
    check_floating,
    check_ndim,
    check_nonnegative,
    check_positive,
    check_reduction,
    check_same_shape,
    hyperparameter_checks,
    validation_enabled,
)
from .._numerics import compute_dtype, upcast
from .._reduction import Reduction, reduce
from ..distributed import gather as _gather
from ..distributed import reduce_gathered
from ..registry import Example, Reference, register
from ._examples import randn
from .contrastive import _check_gather, _layout

__all__ = ["multi_head_contrastive_loss"]

AMCL_PAPER = Reference(
    title="Adaptive Multi-head Contrastive Learning",
    authors="Lei Wang, Piotr Koniusz, Tom Gedeon, Liang Zheng",
    year=2024,
    url="https://arxiv.org/abs/2310.05615",
)
AMCL_SEED = "Adaptive Multi-head Contrastive Learning"

Temperature = float | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Rows of anchors per block in the hardest-negative search: one block holds about this many
# similarities (16 MiB in float32), so the 2B x 2B x C similarity tensor is never stored.
_BLOCK_ELEMS = 1 << 22


def _omega(tau: torch.Tensor, dim: int) -> torch.Tensor:
    r""":math:`\Omega(\tau) = \tfrac{d'}{2}\log\tau + 1/\tau` (log form: finite for every :math:`\tau > 0`)."""
    return 0.5 * dim * torch.log(tau) + torch.reciprocal(tau)


def _bounded_temperature(score: torch.Tensor, tau_min: float, tau_max: float) -> torch.Tensor:
    r""":math:`\sigma(r) = \iota/(1 + e^{r}) + \eta` with :math:`\eta = \tau_{min}`, :math:`\iota = \tau_{max} - \tau_{min}`.

    Written as ``tau_min + (tau_max - tau_min) * sigmoid(-r)``: ``sigmoid`` never overflows, so
    the temperature stays in ``[tau_min, tau_max]`` for any score (a higher pair score gives a
    lower temperature).
    """
    return tau_min + (tau_max - tau_min) * torch.sigmoid(-score)


def _pair_temperature(temperature: Temperature, anchors: torch.Tensor, partners: torch.Tensor, what: str) -> torch.Tensor:
    """Temperatures ``(n, C)`` of the pairs (anchors[k, c], partners[k, c]), checked."""
    n, c = anchors.shape[:2]
    if not callable(temperature):
        return anchors.new_full((n, c), float(temperature))
    tau = temperature(anchors, partners)
    if not isinstance(tau, torch.Tensor) or not tau.is_floating_point():
        raise ValueError(f"temperature (a callable) must return a floating-point tensor, got {type(tau).__name__}"
                         + (f" of dtype {tau.dtype}" if isinstance(tau, torch.Tensor) else ""))
    if tau.shape != (n, c):
        raise ValueError(f"temperature (a callable) must return shape ({n}, {c}) (one temperature per anchor and head) "
                         f"for the {what} pairs, got {tuple(tau.shape)}")
    if validation_enabled() and tau.numel() > 0:
        lo = float(tau.detach().min())
        if not (lo > 0 and bool(torch.isfinite(tau.detach()).all())):
            raise ValueError(f"temperature (a callable) must return finite values > 0, found {lo:.4g} for the {what} pairs")
    return upcast(tau, anchors.dtype)


@torch.no_grad()
def _hardest_negatives(anchors: torch.Tensor, cands: torch.Tensor, own: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Index ``(n, C)`` of each anchor's most similar candidate per head, excluding ``own`` and ``pos``.

    ``anchors`` ``(n, C, D)``, ``cands`` ``(m, C, D)``; selection only (no gradient): the loss
    differentiates the selected similarities, which is also what autograd does through a max.
    """
    n, c = anchors.shape[:2]
    m = cands.shape[0]
    a = anchors.transpose(0, 1)  # (C, n, D)
    k = cands.transpose(0, 1)  # (C, m, D)
    out = torch.empty(n, c, dtype=torch.long, device=anchors.device)
    rows = max(1, _BLOCK_ELEMS // max(m * c, 1))
    for i in range(0, n, rows):
        j = min(i + rows, n)
        s = torch.bmm(a[:, i:j], k.transpose(1, 2))  # (C, j - i, m)
        r = torch.arange(j - i, device=anchors.device)
        # The anchor itself and its positive are not negatives: -inf keeps them out of the max.
        s[:, r, own[i:j]] = float("-inf")
        s[:, r, pos[i:j]] = float("-inf")
        out[i:j] = s.argmax(dim=2).T
    return out


def _example(b=5, c=2, d=3, **kw) -> Example:
    def make(gen):
        return (randn(gen, b, c, d), randn(gen, b, c, d)), dict(kw)

    def mismatch(gen):
        return (randn(gen, b, c, d), randn(gen, b - 1, c, d)), dict(kw)

    return Example(make=make, mismatch=mismatch, mismatch_match="query and key", extreme=(0, 1),
                   module=_module_example)


def _module_example(gen):
    """The Module with its temperature network (parameters: the suite round-trips its state_dict)."""
    from ..nn.contrastive_multihead import AdaptiveMultiHeadContrastiveLoss

    module = AdaptiveMultiHeadContrastiveLoss(3, hidden_dim=4, beta=0.1, tau_min=0.1, tau_max=1.0).double()
    with torch.no_grad():  # weights from the generator (not the global RNG): the factory is reproducible
        for p in module.parameters():
            p.copy_(randn(gen, *p.shape, scale=0.5))
    return module, (randn(gen, 5, 2, 3), randn(gen, 5, 2, 3)), {}


def _check_hyperparameters(*, temperature, beta: float, **kw) -> None:
    if not callable(temperature):
        check_positive(temperature, "temperature")
    check_nonnegative(beta, "beta")
    _check_gather(**kw)


def _example_temperature(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A parameter-free adaptive temperature for the conformance suite: bounded map of 2<a, b>."""
    return _bounded_temperature(2.0 * (a * b).sum(-1), 0.2, 1.0)


@register("multi_head_contrastive_loss", family="contrastive", reference=AMCL_PAPER, seed=AMCL_SEED,
          example=_example(temperature=_example_temperature, beta=0.1), input_kind="embeddings",
          module_owns_parameters=True,
          tags=("self-supervised", "multi-head", "adaptive temperature", "learned temperature", "amcl", "distributed"))
@hyperparameter_checks(_check_hyperparameters)
def multi_head_contrastive_loss(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    temperature: Temperature,
    beta: float = 1e-4,
    gather: bool = False,
    group=None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""AMCL: multi-head contrastive loss with per-pair temperatures and the paper's temperature regularizer.

    ``query[:, c]`` and ``key[:, c]`` are the outputs of projection head :math:`c` for the two views
    of a batch of :math:`B` samples, unit-normalized inside (:math:`\mathrm{sim}` is the cosine
    similarity). Both views are anchors (SimCLR's convention): anchor :math:`i` has the other
    view of its sample as positive :math:`z_i^{c+}` and the :math:`2B - 2` views of the other
    samples as negatives :math:`z_{in}^{c-}`. With :math:`n^* = \arg\max_n \mathrm{sim}(z_i^c, z_{in}^{c-})`
    (the hardest negative, chosen per head), Eq. (2.1) of the paper is

    .. math::
        \ell_i = \sum_{c=1}^{C}\Big(-\frac{\mathrm{sim}(z_i^c, z_i^{c+})}{\tau_i^{c+}}
        + \frac{\mathrm{sim}(z_i^c, z_{in^*}^{c-})}{\tau_{in^*}^{c-}}
        + \beta\,\Omega(\tau_i^{c+}) - \beta\,\Omega(\tau_{in^*}^{c-})\Big),
        \qquad \Omega(\tau) = \frac{d'}{2}\log\tau + \frac{1}{\tau},

    where :math:`\tau_i^{c+}` and :math:`\tau_{in^*}^{c-}` are the temperatures of the positive
    pair and of the selected negative pair, and :math:`d' = D` the head's feature size.

    Decisions (the paper is followed where it could be read; the rest is marked):

    - Hardest negative, as in Eq. (2.1): :math:`n^*` maximizes the similarity (not
      similarity / temperature) and only its temperature enters. The authors' later code
      replaces the max by a mean over the top-k negatives (its "Eq. (5)", whose text we could
      not read); their first release scores positives only, with
      :math:`-\log\sigma(2\,\mathrm{sim}/\tau)`. Neither is implemented: we follow Eq. (2.1).
    - :math:`\Omega` is not spelled out in the paper's table; the form above is the one in
      both releases of the authors' code, and it is what the paper's maximum-likelihood view
      gives: :math:`-\log\mathcal N(z^+; z, \tau I_{d'}) = (1 - \mathrm{sim})/\tau + \tfrac{d'}{2}\log\tau + \text{const}`
      for unit vectors. The same :math:`\Omega` is used for negatives, as in the table (the
      later code's SimCLR/MoCo loss drops the :math:`d'/2` factor there). Unverified against
      the paper's text.
    - Heads are summed (:math:`\sum_c`), not averaged; anchors are averaged for ``"mean"``.
    - A number ``temperature`` is the single-temperature special case: both :math:`\Omega`
      terms cancel and :math:`\ell_i = \sum_c(\mathrm{sim}^-_{n^*} - \mathrm{sim}^+)/\tau`.
      A callable gives the adaptive temperatures; it is differentiated (the paper learns it
      jointly). Keep it bounded: the negative term is unbounded below in :math:`\tau^-`
      otherwise. The Module uses :math:`\sigma(r) = \iota/(1+e^r)+\eta \in [\eta, \eta+\iota]`, the
      form of the authors' code (which attributes it to the paper's Eq. (3)).
    - ``beta`` defaults to :math:`10^{-4}`, the SimCLR/MoCo value in the authors' code.

    No exponentials are taken: each term is a similarity over a temperature or a logarithm, so
    the loss is finite for any embedding scale and any positive temperature.

    Args:
        query, key: ``(B, C, D)`` outputs of the ``C`` projection heads for the two views,
            row ``i`` of each from the same sample (normalized inside; one head: ``(B, 1, D)``).
        temperature: a number :math:`\tau > 0`, or a callable ``temperature(anchors, partners)``
            taking two ``(2B, C, D)`` tensors of unit features (row ``k``, head ``c`` is one
            pair) and returning the ``(2B, C)`` temperatures (> 0) of those pairs. It is called
            once for the positive pairs and once for the selected negative pairs.
        beta: weight :math:`\beta \ge 0` of the temperature regularizer.
        gather: take negatives from the views of every rank (exact under DDP, uneven batch
            sizes allowed); ``group``: the process group (implies ``gather``). Each rank then
            returns its *share*: ``W`` times its local anchors' values (``"none"``, ``"sum"``),
            the ``"mean"`` dividing their sum by the global number of anchors 2N, so that the
            mean over the ``W`` ranks is the single-process value. Log
            :func:`losslab.distributed.global_value` of the loss, not a rank's own value (rule
            in :mod:`losslab.distributed`).
        reduction: ``"mean"`` over the 2B anchors, ``"sum"`` or ``"none"``.

    Shape:
        query, key ``(B, C, D)`` with ``B >= 2`` (in the gathered batch); output ``(2B,)`` for
        ``"none"`` (``query`` anchors first, as :func:`nt_xent`), else a scalar.

    Returns:
        The loss, float32 for float16/bfloat16/float32 inputs, float64 for float64 inputs.

    Example:
        >>> import torch
        >>> from losslab.functional import multi_head_contrastive_loss
        >>> z = torch.eye(3).unsqueeze(1)    # 3 samples, 1 head, orthogonal: sim+ = 1, hardest sim- = 0
        >>> multi_head_contrastive_loss(z, z, temperature=0.5)   # (0 - 1) / 0.5
        tensor(-2.)
        >>> tau = lambda a, b: 0.1 + 0.9 * torch.sigmoid(-(a * b).sum(-1))   # adaptive, in (0.1, 1)
        >>> multi_head_contrastive_loss(torch.randn(8, 3, 16), torch.randn(8, 3, 16), temperature=tau).shape
        torch.Size([])

    References:
        Wang, Koniusz, Gedeon, Zheng, "Adaptive Multi-head Contrastive Learning", ECCV 2024,
        https://arxiv.org/abs/2310.05615 (loss: Table 2, Eq. (2.1)); authors' code
        https://github.com/LeiWangR/cl.
    """
    check_reduction(reduction)
    _check_hyperparameters(temperature=temperature, beta=beta, gather=gather)
    for x, name in ((query, "query"), (key, "key")):
        check_floating(x, name)
        check_ndim(x, name, 3)
    check_same_shape(query, key, ("query", "key"))
    b, c, d = query.shape
    dtype = compute_dtype(query, key)
    a1, a2 = F.normalize(upcast(query, dtype), dim=-1), F.normalize(upcast(key, dtype), dim=-1)
    world, offset, total = _layout(a1, gather, group)
    if total < 2:
        raise ValueError(f"query and key need at least 2 samples in the (gathered) batch (one negative per anchor), "
                         f"got {total}")
    if world > 1:
        cands = torch.cat([_gather(a1, group=group), _gather(a2, group=group)])
    else:
        cands = torch.cat([a1, a2])
    anchors, partners = torch.cat([a1, a2]), torch.cat([a2, a1])
    local = torch.arange(b, device=a1.device) + offset
    own = torch.cat([local, local + total])  # each anchor's index among the 2N candidates
    pos = torch.cat([local + total, local])  # ... and its positive's
    idx = _hardest_negatives(anchors.detach(), cands.detach(), own, pos)
    negatives = cands[idx, torch.arange(c, device=a1.device)]  # (2B, C, D): per head, the selected candidate
    s_pos = (anchors * partners).sum(-1)  # (2B, C)
    s_neg = (anchors * negatives).sum(-1)
    tau_pos = _pair_temperature(temperature, anchors, partners, "positive")
    tau_neg = _pair_temperature(temperature, anchors, negatives, "negative")
    per_head = s_neg / tau_neg - s_pos / tau_pos
    if beta > 0:
        per_head = per_head + beta * (_omega(tau_pos, d) - _omega(tau_neg, d))
    loss = per_head.sum(-1)  # sum over heads, Eq. (2.1)
    if world > 1:
        return reduce_gathered(loss, reduction, world=world, count=2 * total)
    return reduce(loss, reduction)
