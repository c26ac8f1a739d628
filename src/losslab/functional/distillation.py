r"""Knowledge distillation: a student matches a teacher's outputs or features.

Conventions shared by the family:

- ``student_logits, teacher_logits`` have the class dimension last, with any leading
  dimensions (samples, tokens, pixels); student and teacher class counts must match.
- The teacher never receives a gradient: teacher tensors are detached inside.
- Divergences come from the f-divergence table (:func:`~losslab.functional.f_divergence`,
  :func:`~losslab.functional.kl_divergence`) with the **teacher as P** and the student as
  Q, so ``"kl"`` is Hinton et al.'s forward KL(teacher‖student); the optimal transport of
  SinKD is :func:`~losslab.functional.sinkhorn`.
- Half-precision inputs are computed in float32 and the loss is float32.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._checks import (
    check_class_target,
    check_floating,
    check_in_range,
    check_integer,
    check_ndim,
    check_nonnegative,
    check_positive,
    hyperparameter_checks,
    validation_enabled,
)
from .._numerics import compute_dtype, upcast
from .._reduction import Reduction, reduce
from ..registry import Example, Reference, register
from ._examples import IGNORE, randint, randn
from .classification import cross_entropy
from .divergences import kl_divergence
from .divergences_f import _check_divergence, f_divergence
from .transport import sinkhorn

__all__ = [
    "kd_loss",
    "sinkhorn_kd_loss",
    "nd_loss",
    "dual_head_kd_loss",
    "boundary_kd_loss",
]

HINTON_PAPER = Reference(
    title="Distilling the Knowledge in a Neural Network",
    authors="Geoffrey Hinton, Oriol Vinyals, Jeff Dean",
    year=2015,
    url="https://arxiv.org/abs/1503.02531",
)
SINKD_GRAPH_BREAKS = ("the Sinkhorn solver stops on a convergence test read on the host; it runs eagerly "
                      "under torch.compile and the transport cost around it is compiled")
SINKD_PAPER = Reference(
    title="Sinkhorn Distance Minimization for Knowledge Distillation",
    authors="Xiao Cui, Yulei Qin, Yuting Gao, Enwei Zhang, Zihan Xu, Tong Wu, Ke Li, Xing Sun, Wengang Zhou, "
            "Houqiang Li",
    year=2024,
    url="https://arxiv.org/abs/2402.17110",
)
ND_PAPER = Reference(
    title="Improving Knowledge Distillation via Regularizing Feature Norm and Direction",
    authors="Yuzhu Wang, Lechao Cheng, Manni Duan, Yongheng Wang, Zunlei Feng, Shu Kong",
    year=2023,
    url="https://arxiv.org/abs/2305.17007",
)
DHKD_PAPER = Reference(
    title="Dual-Head Knowledge Distillation: Enhancing Logits Utilization with an Auxiliary Head",
    authors="Penghui Yang, Chen-Chen Zong, Sheng-Jun Huang, Lei Feng, Bo An",
    year=2024,
    url="https://arxiv.org/abs/2411.08937",
)
MTARD_PAPER = Reference(
    title="Mitigating the Accuracy-Robustness Trade-off via Multi-Teacher Adversarial Distillation",
    authors="Shiji Zhao, Xizhe Wang, Xingxing Wei",
    year=2023,
    url="https://arxiv.org/abs/2306.16170",
)
BPKD_PAPER = Reference(
    title="BPKD: Boundary Privileged Knowledge Distillation For Semantic Segmentation",
    authors="Liyang Liu, Zihan Wang, Minh Hieu Phan, Bowen Zhang, Jinchao Ge, Yifan Liu",
    year=2023,
    url="https://arxiv.org/abs/2306.08075",
)
SAF_PAPER = Reference(
    title="Sharpness-Aware Training for Free",
    authors="Jiawei Du, Daquan Zhou, Jiashi Feng, Vincent Y. F. Tan, Joey Tianyi Zhou",
    year=2022,
    url="https://arxiv.org/abs/2205.14083",
)


# --------------------------------------------------------------------------- shared checks
def _check_pair(student: torch.Tensor, teacher: torch.Tensor, names=("student_logits", "teacher_logits"),
                ndim=tuple(range(1, 9))) -> None:
    check_floating(student, names[0])
    check_floating(teacher, names[1])
    check_ndim(student, names[0], ndim)
    if teacher.shape[-1:] != student.shape[-1:]:
        raise ValueError(f"{names[1]} must have the class count of {names[0]} ({student.shape[-1]}), got "
                         f"{names[1]} {tuple(teacher.shape)} and {names[0]} {tuple(student.shape)}")
    if teacher.shape != student.shape:
        raise ValueError(f"{names[1]} must have the shape of {names[0]} {tuple(student.shape)}, got "
                         f"{tuple(teacher.shape)}")


def _kept_mean(none: torch.Tensor, args: tuple, kwargs: dict, target: torch.Tensor | None = None) -> torch.Tensor:
    """The documented ``"mean"``: over samples whose target is not ``ignore_index``."""
    if target is None:
        target = kwargs.get("target")
    if target is None:
        return none.mean()
    k = (target != kwargs.get("ignore_index", IGNORE)).sum()
    return none.sum() / k if k > 0 else none.sum() * 0


# --------------------------------------------------------------------------- kd_loss
def _check_kd(*, temperature=1.0, divergence="kl", alpha=0.5, ce_weight=0.0, **_) -> None:
    check_positive(temperature, "temperature")
    _check_divergence(divergence=divergence, alpha=alpha)
    check_in_range(ce_weight, "ce_weight", 0.0, 1.0)


def _kd_example() -> Example:
    def make(gen):
        return (randn(gen, 6, 5), randn(gen, 6, 5)), {"temperature": 2.0}

    def mismatch(gen):
        return (randn(gen, 6, 5), randn(gen, 6, 4)), {}

    def tokens(gen):  # (B, T, V) with an ignored token, CE mixed in, another divergence
        t = randint(gen, 5, 2, 3)
        t[0, 1] = IGNORE
        return (randn(gen, 2, 3, 5), randn(gen, 2, 3, 5)), {"target": t, "ce_weight": 0.3, "divergence": "js"}

    def ignored(gen):
        t = randint(gen, 5, 7)
        t[::3] = IGNORE
        return (randn(gen, 7, 5), randn(gen, 7, 5)), {"target": t, "ce_weight": 0.5, "temperature": 3.0,
                                                      "divergence": "reverse_kl"}

    def empty(gen):
        return (randn(gen, 6, 5), randn(gen, 6, 5)), {"target": torch.full((6,), IGNORE), "ce_weight": 0.5}

    return Example(make=make, mismatch=mismatch, mismatch_match="teacher_logits", extreme=(0, 1), grad=(0,),
                   mean_rule=_kept_mean, variants=(tokens, ignored), empty=empty)


@register("kd_loss", family="distillation", reference=HINTON_PAPER, seed=SINKD_PAPER.title, example=_kd_example(),
          input_kind="logits", tags=("knowledge distillation", "distillation", "teacher", "student", "kd",
                                     "soft targets", "f-divergence", "reverse kl", "token-level"))
@hyperparameter_checks(_check_kd)
def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    divergence: str = "kl",
    alpha: float = 0.5,
    target: torch.Tensor | None = None,
    ce_weight: float = 0.0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Logit distillation with any f-divergence, T² scaling and an optional cross-entropy mix.

    .. math::
        \ell_i = (1 - w)\, T^2\, D\big(\operatorname{softmax}(t_i/T)\,\|\,\operatorname{softmax}(s_i/T)\big)
                 + w\, \mathrm{CE}(s_i, y_i),

    with :math:`w` = ``ce_weight``, :math:`s` the student's and :math:`t` the teacher's
    logits. :math:`D` is :func:`~losslab.functional.f_divergence` with the **teacher as P**:
    ``"kl"`` (default) is Hinton et al.'s forward KL(teacher‖student), ``"reverse_kl"``
    KL(student‖teacher) (mode seeking), and every other name of the table works (``"js"``,
    ``"total_variation"``, ``"hellinger"``, ``"chi2"``, ``"jeffreys"``, ``"alpha"`` with
    ``alpha``). The :math:`T^2` factor keeps the gradient's scale independent of
    :math:`T` (Hinton et al.); the cross-entropy is at temperature 1. The teacher is
    detached (no gradient).

    Token-level use: ``(B, T, V)`` logits with a ``(B, T)`` ``target``; tokens whose target
    is ``ignore_index`` are dropped from both terms and from the mean (so ``target`` may be
    given with ``ce_weight=0`` just to mask padding). Without ``target``, ``ce_weight``
    must be 0 and every sample counts.

    Args:
        student_logits: ``(*, C)`` the student's logits (the model).
        teacher_logits: ``(*, C)`` the teacher's logits, same shape (detached inside).
        temperature: :math:`T > 0`, divides both logits in the divergence term.
        divergence: a name of the f-divergence table (see above).
        alpha: the α of ``divergence="alpha"`` (Cichocki–Amari: α → 1 is forward KL here).
        target: optional ``(*)`` class indices (per batch: a ``forward`` argument of the Module).
        ce_weight: :math:`w \in [0, 1]`, weight of the cross-entropy (needs ``target``).
        ignore_index: target value whose samples are dropped.
        reduction: ``"mean"`` over kept samples, ``"sum"`` or ``"none"`` (``(*)``, 0 where ignored).

    Shape:
        logits ``(*, C)``, target ``(*)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import kd_loss, kl_divergence
        >>> s, t = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
        >>> torch.allclose(kd_loss(s, t, temperature=2.0), 4 * kl_divergence(t, s, temperature=2.0))
        True
        >>> y = torch.tensor([1])
        >>> kd_loss(s, t, target=y, ce_weight=1.0)  # pure cross-entropy
        tensor(2.1698)

    References:
        Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015,
        https://arxiv.org/abs/1503.02531; Cui et al., "Sinkhorn Distance Minimization for
        Knowledge Distillation", 2024, https://arxiv.org/abs/2402.17110 (KL, reverse KL and
        JS as KD divergences).
    """
    _check_pair(student_logits, teacher_logits)
    _check_kd(temperature=temperature, divergence=divergence, alpha=alpha, ce_weight=ce_weight)
    keep = None
    if target is not None:
        target = check_class_target(target, student_logits, ignore_index=ignore_index, logits_name="student_logits")
        keep = target != ignore_index
    elif ce_weight > 0:
        raise ValueError(f"target is required when ce_weight > 0 (got ce_weight={ce_weight!r} and no target)")
    loss = f_divergence(teacher_logits.detach(), student_logits, divergence=divergence, alpha=alpha,
                        temperature=temperature, reduction="none")
    loss = (1.0 - ce_weight) * temperature ** 2 * loss
    if ce_weight > 0:
        loss = loss + ce_weight * cross_entropy(student_logits, target, ignore_index=ignore_index, reduction="none")
    return reduce(loss, reduction, mask=keep)


# --------------------------------------------------------------------------- SinKD
def _check_sinkd(*, temperature=2.0, epsilon=0.1, max_iter=1000, tol=1e-6, **_) -> None:
    check_positive(temperature, "temperature")
    check_positive(epsilon, "epsilon")
    check_positive(tol, "tol")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")


def _l1_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """W_ij = ||x_i - y_j||_1 for (…, n, C) and (…, m, C)."""
    return (x.unsqueeze(-2) - y.unsqueeze(-3)).abs().sum(-1)


def _sinkd_example() -> Example:
    def make(gen):
        return (randn(gen, 6, 4, scale=2.0), randn(gen, 6, 4, scale=2.0)), {"tol": 1e-12, "max_iter": 5000}

    def mismatch(gen):
        return (randn(gen, 6, 4), randn(gen, 6, 5)), {}

    # grad=(): the gradient is by design the plan contracted with dW (the plan held fixed),
    # not the derivative of <P*, W>; tests/functional/test_distillation.py checks it.
    return Example(make=make, mismatch=mismatch, mismatch_match="teacher_logits", extreme=(0, 1), grad=())


@register("sinkhorn_kd_loss", family="distillation", reference=SINKD_PAPER, seed=SINKD_PAPER.title,
          example=_sinkd_example(), input_kind="logits", batch_level=True, graph_breaks=SINKD_GRAPH_BREAKS,
          tags=("knowledge distillation", "distillation", "sinkhorn", "optimal transport", "wasserstein", "sinkd"))
@hyperparameter_checks(_check_sinkd)
def sinkhorn_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 2.0,
    epsilon: float = 0.1,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> torch.Tensor:
    r"""SinKD: the Sinkhorn transport cost between the batch's student and teacher distributions.

    With :math:`p_s^i = \operatorname{softmax}(s_i/T)`, :math:`p_t^j = \operatorname{softmax}(t_j/T)`
    over the batch's :math:`B` samples and the cost :math:`W_{ij} = \|p_s^i - p_t^j\|_1`,

    .. math::
        \mathcal L = \langle P^\star, W\rangle = \sum_{ij} P^\star_{ij} W_{ij}, \qquad
        P^\star = \arg\min_{P\,\in\,\Pi(\frac1B\mathbf 1,\,\frac1B\mathbf 1)}
                  \langle P, W\rangle - \varepsilon H(P),

    the entropic plan between **uniform** marginals :math:`1/B`, solved by
    :func:`~losslab.functional.sinkhorn` on the cost :math:`W` (to ``tol``). The plan is held
    fixed: no gradient flows through the iterations, so the gradient is
    :math:`\sum_{ij} P^\star_{ij}\,\nabla W_{ij}` (which is also the exact gradient of the
    entropic OT value at convergence, by the envelope theorem). The teacher is detached.

    Marginal convention: the authors' code normalizes with all-ones marginals (rows and
    columns summing to 1, so the plan sums to :math:`B`) and runs 20 fixed iterations; at
    convergence its value is :math:`B` times this one (scaling both marginals by :math:`B`
    scales the entropic plan by :math:`B`). Here the value is a transport cost between two
    probability measures, in :math:`[0, 2]`, independent of the batch size. Multiply by a
    weight λ outside, as the paper does.

    A batch-level objective (one number for the batch; no ``reduction``). The solver stops
    on a convergence test read on the host: under ``torch.compile`` it runs eagerly (a graph
    break). A NaN input raises ``ValueError`` while validation is on (the solver's check).

    Args:
        student_logits: ``(B, C)`` the student's logits.
        teacher_logits: ``(B, C)`` the teacher's logits (detached inside).
        temperature: :math:`T > 0` (2 in the paper).
        epsilon: entropic regularization :math:`\varepsilon > 0` in units of the L1 cost (0.1).
        max_iter: iteration cap of the solver.
        tol: tolerance on the plan's L1 marginal error.

    Shape:
        inputs ``(B, C)``; output a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import sinkhorn_kd_loss
        >>> s = torch.tensor([[3.0, 0.0], [0.0, 3.0]])
        >>> sinkhorn_kd_loss(s, s.flip(0), epsilon=0.01) < 1e-3   # same distributions, rows swapped
        tensor(True)

    References:
        Cui et al., "Sinkhorn Distance Minimization for Knowledge Distillation", LREC-COLING
        2024, https://arxiv.org/abs/2402.17110; Cuturi, "Sinkhorn Distances", NeurIPS 2013,
        https://arxiv.org/abs/1306.0895.
    """
    _check_pair(student_logits, teacher_logits, ndim=2)
    _check_sinkd(temperature=temperature, epsilon=epsilon, max_iter=max_iter, tol=tol)
    dtype = compute_dtype(student_logits, teacher_logits)
    p_s = torch.softmax(upcast(student_logits, dtype) / temperature, dim=-1)
    p_t = torch.softmax(upcast(teacher_logits.detach(), dtype) / temperature, dim=-1)
    # The plan is solved without autograd on the detached distributions (held fixed).
    with torch.no_grad():
        plan = sinkhorn(p_s.detach(), p_t, epsilon=epsilon, cost=_l1_cost, max_iter=max_iter, tol=tol,
                        return_plan=True).plan
    return (plan * _l1_cost(p_s, p_t)).sum()


# --------------------------------------------------------------------------- ND
def _nd_example() -> Example:
    def make(gen):
        return (randn(gen, 6, 4), randn(gen, 6, 4), torch.arange(6) % 3, randn(gen, 3, 4)), {}

    def mismatch(gen):
        return (randn(gen, 6, 4), randn(gen, 6, 5), torch.arange(6) % 3, randn(gen, 3, 4)), {}

    return Example(make=make, mismatch=mismatch, mismatch_match="teacher_features", extreme=(0, 1, 3), grad=(0,))


@register("nd_loss", family="distillation", reference=ND_PAPER, seed=ND_PAPER.title, example=_nd_example(),
          input_kind="embeddings", tags=("knowledge distillation", "distillation", "feature distillation",
                                         "feature norm", "class mean", "embeddings"))
def nd_loss(
    student_features: torch.Tensor,
    teacher_features: torch.Tensor,
    target: torch.Tensor,
    class_means: torch.Tensor,
    *,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""ND loss: push the student's features along the teacher's class mean, with a large norm.

    .. math::
        \ell_i = 1 - \frac{\langle s_i,\ c_{y_i}/\|c_{y_i}\|\rangle}{\max(\|s_i\|,\ \|t_i\|)},

    with :math:`s_i` the student's and :math:`t_i` the teacher's embedding of sample
    :math:`i` and :math:`c_y` the teacher's mean embedding of class :math:`y` over the
    training set (precomputed, fixed). The projection of :math:`s_i` on the class direction
    is rewarded up to the larger of the two norms: the student is encouraged to produce
    features at least as large as the teacher's, pointing at the class mean. The paper
    multiplies this by a weight λ and adds it to a logit-distillation loss. Teacher features
    and class means are detached. Norms are floored at the smallest normal float (a zero
    feature vector gives a finite loss).

    Args:
        student_features: ``(N, D)`` the student's embeddings (after a projection to the
            teacher's width when they differ, as in the paper).
        teacher_features: ``(N, D)`` the teacher's embeddings (detached inside).
        target: ``(N,)`` class indices in ``[0, C)``.
        class_means: ``(C, D)`` the teacher's per-class mean embedding (detached inside).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        features ``(N, D)``, target ``(N,)``, class_means ``(C, D)``; output ``(N,)`` for
        ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import nd_loss
        >>> c = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> s, t = torch.tensor([[3.0, 0.0]]), torch.tensor([[1.0, 1.0]])
        >>> nd_loss(s, t, torch.tensor([0]), c)   # aligned and longer than the teacher: 0
        tensor(0.)

    References:
        Wang et al., "Improving Knowledge Distillation via Regularizing Feature Norm and
        Direction", 2023, https://arxiv.org/abs/2305.17007.
    """
    _check_pair(student_features, teacher_features, ("student_features", "teacher_features"), ndim=2)
    check_floating(class_means, "class_means")
    check_ndim(class_means, "class_means", 2)
    if class_means.shape[1] != student_features.shape[1]:
        raise ValueError(f"class_means must have the feature dimension of student_features "
                         f"({student_features.shape[1]}), got class_means {tuple(class_means.shape)}")
    check_integer(target, "target")
    if target.shape != student_features.shape[:1]:
        raise ValueError(f"target must have shape ({student_features.shape[0]},) (one class per sample), "
                         f"got {tuple(target.shape)}")
    num_classes = class_means.shape[0]
    if validation_enabled() and target.numel() > 0:
        lo, hi = int(target.min()), int(target.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"target has class index {lo if lo < 0 else hi} outside [0, {num_classes}) "
                             f"(the rows of class_means)")
    dtype = compute_dtype(student_features, teacher_features, class_means)
    s = upcast(student_features, dtype)
    t = upcast(teacher_features.detach(), dtype)
    c = upcast(class_means.detach(), dtype)[target.long()]
    tiny = torch.finfo(dtype).tiny
    # Norms from a max-rescaled vector: ||x|| = m ||x / m|| never overflows the square
    # (features of 1e20 in float32); the floor keeps 0 / 0 out of a zero vector.
    direction = c / torch.linalg.vector_norm(c, dim=-1, keepdim=True).clamp_min(tiny)
    norm = torch.maximum(torch.linalg.vector_norm(s, dim=-1), torch.linalg.vector_norm(t, dim=-1)).clamp_min(tiny)
    loss = 1.0 - (s * direction).sum(-1) / norm
    return reduce(loss, reduction)


# --------------------------------------------------------------------------- DHKD
def _log_cosh(x: torch.Tensor) -> torch.Tensor:
    """log cosh x = logaddexp(x, -x) - log 2: no overflow of cosh, derivative exactly tanh x."""
    return torch.logaddexp(x, -x) - math.log(2.0)


def _dhkd_example() -> Example:
    def make(gen):
        return (randn(gen, 6, 5), randn(gen, 6, 5), randn(gen, 6, 5), randint(gen, 5, 6)), {}

    def mismatch(gen):
        return (randn(gen, 6, 5), randn(gen, 6, 5), randn(gen, 6, 4), randint(gen, 5, 6)), {}

    def ignored(gen):
        t = randint(gen, 5, 2, 3)
        t[0, 1] = IGNORE
        return (randn(gen, 2, 3, 5), randn(gen, 2, 3, 5), randn(gen, 2, 3, 5), t), {"temperature": 4.0}

    def empty(gen):
        return (randn(gen, 6, 5), randn(gen, 6, 5), randn(gen, 6, 5), torch.full((6,), IGNORE)), {}

    def mean_rule(none, args, kwargs):
        return _kept_mean(none, args, kwargs, target=args[3])

    return Example(make=make, mismatch=mismatch, mismatch_match="teacher_logits", extreme=(0, 1, 2), grad=(0, 1),
                   mean_rule=mean_rule, variants=(ignored,), empty=empty)


@register("dual_head_kd_loss", family="distillation", reference=DHKD_PAPER, seed=DHKD_PAPER.title,
          example=_dhkd_example(), input_kind="logits",
          tags=("knowledge distillation", "distillation", "dual head", "auxiliary head", "logit matching", "dhkd"))
def dual_head_kd_loss(
    head1_logits: torch.Tensor,
    head2_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = 2.0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Dual-head KD: cross-entropy on head 1, a logit-level loss to the teacher on head 2.

    .. math::
        \ell_i = \mathrm{CE}(z^{(1)}_i, y_i)
                 + T^2 \sum_c \log\cosh\frac{z^{(2)}_{ic} - t_{ic}}{2T},

    with :math:`z^{(1)}, z^{(2)}` the logits of the student's two linear heads on a shared
    backbone and :math:`t` the teacher's logits (detached). Per class,
    :math:`\log\cosh(d/2) = \mathrm{KL}\big(\mathrm{Bern}(\tfrac12)\,\|\,\mathrm{Bern}(\sigma(d))\big)`:
    the authors' ``BinaryKLNorm``, a logit-level loss that matches logits up to a common
    shift only softly and, applied to the classifier that also carries the cross-entropy,
    harms it — hence the second head. **Only head 1 is used at test time**; head 2 exists
    to pass the logit-level signal into the backbone. Computed as
    :math:`\operatorname{logaddexp}(x, -x) - \log 2` (no overflow of cosh, gradient
    :math:`\tanh`). Samples whose target is ``ignore_index`` are dropped from both terms
    and from the mean.

    Args:
        head1_logits: ``(*, C)`` logits of head 1 (cross-entropy; the test-time head).
        head2_logits: ``(*, C)`` logits of head 2 (logit-level distillation).
        teacher_logits: ``(*, C)`` the teacher's logits (detached inside).
        target: ``(*)`` class indices.
        temperature: :math:`T > 0` (2 in the paper).
        ignore_index: target value whose samples are dropped.
        reduction: ``"mean"`` over kept samples, ``"sum"`` or ``"none"``.

    Shape:
        logits ``(*, C)``, target ``(*)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import dual_head_kd_loss, cross_entropy
        >>> z1, t, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([0])
        >>> logit_level = 4 * 3 * torch.log(torch.cosh(torch.tensor(5.0 / 4)))  # T² Σ_c log cosh(d / 2T), d = 5
        >>> torch.allclose(dual_head_kd_loss(z1, t + 5.0, t, y), cross_entropy(z1, y) + logit_level)
        True

    References:
        Yang, Zong, Huang, Feng, An, "Dual-Head Knowledge Distillation: Enhancing Logits
        Utilization with an Auxiliary Head", 2024, https://arxiv.org/abs/2411.08937.
    """
    _check_pair(head1_logits, head2_logits, ("head1_logits", "head2_logits"))
    _check_pair(head1_logits, teacher_logits, ("head1_logits", "teacher_logits"))
    check_positive(temperature, "temperature")
    target = check_class_target(target, head1_logits, ignore_index=ignore_index, logits_name="head1_logits")
    keep = target != ignore_index
    ce = cross_entropy(head1_logits, target, ignore_index=ignore_index, reduction="none")
    dtype = compute_dtype(head2_logits, teacher_logits)
    d = (upcast(head2_logits, dtype) - upcast(teacher_logits.detach(), dtype)) / (2.0 * temperature)
    logit_level = temperature ** 2 * _log_cosh(d).sum(-1)
    return reduce(ce + logit_level, reduction, mask=keep)


# --------------------------------------------------------------------------- BPKD
def _check_bpkd(*, radius=3, temperature=1.0, edge_weight=1.0, body_weight=1.0, **_) -> None:
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
        raise ValueError(f"radius must be an integer >= 0, got {radius!r}")
    check_positive(temperature, "temperature")
    check_nonnegative(edge_weight, "edge_weight")
    check_nonnegative(body_weight, "body_weight")


def boundary_band(target: torch.Tensor, num_classes: int, radius: int) -> torch.Tensor:
    """``(N, H, W)`` bool: pixels within ``radius`` (Chebyshev) of a label boundary.

    Per class, the one-hot label map's max-pool dilation minus its erosion (both with a
    ``(2r + 1)²`` window; the image border is not a boundary), any class.
    """
    if radius == 0 or target.numel() == 0:
        return torch.zeros(target.shape, dtype=torch.bool, device=target.device)
    onehot = F.one_hot(target.clamp(0, num_classes - 1), num_classes).movedim(-1, 1).float()
    k = 2 * radius + 1
    dilated = F.max_pool2d(onehot, k, stride=1, padding=radius)
    eroded = -F.max_pool2d(-onehot, k, stride=1, padding=radius)
    return ((dilated - eroded) > 0).any(1)


def _bpkd_example() -> Example:
    def labels(gen, n=2, h=6, w=7):
        t = torch.zeros(n, h, w, dtype=torch.long)
        t[:, :, 4:] = 1
        t[0, 3:, :] = 2
        return t

    def make(gen):
        return (randn(gen, 2, 6, 7, 3), randn(gen, 2, 6, 7, 3), labels(gen)), {"radius": 1, "temperature": 2.0}

    def mismatch(gen):
        return (randn(gen, 2, 6, 7, 3), randn(gen, 2, 6, 7, 4), labels(gen)), {}

    def all_edge(gen):  # radius 3 covers every pixel of sample 1's checkerboard-like labels
        t = labels(gen)
        t[1] = (torch.arange(6).unsqueeze(1) + torch.arange(7)) % 3
        return (randn(gen, 2, 6, 7, 3), randn(gen, 2, 6, 7, 3), t), {"radius": 3, "edge_weight": 0.5}

    return Example(make=make, mismatch=mismatch, mismatch_match="teacher_logits", extreme=(0, 1), grad=(0,),
                   variants=(all_edge,))


@register("boundary_kd_loss", family="distillation", reference=BPKD_PAPER, seed=BPKD_PAPER.title,
          example=_bpkd_example(), input_kind="logits",
          tags=("knowledge distillation", "distillation", "semantic segmentation", "boundary", "edge",
                "channel-wise distillation", "bpkd", "dense prediction"))
@hyperparameter_checks(_check_bpkd)
def boundary_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    radius: int = 3,
    temperature: float = 1.0,
    edge_weight: float = 1.0,
    body_weight: float = 1.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""BPKD: segmentation distillation split into a boundary band (edge loss) and the rest (body loss).

    For image :math:`n` with edge band :math:`E` (pixels within ``radius`` of a label
    boundary, from the one-hot labels' max-pool dilation minus erosion) and body
    :math:`B` (the other pixels),

    .. math::
        \ell_n = \lambda_e \frac{T^2}{|E|} \sum_{u \in E}
                 \mathrm{KL}\big(\operatorname{softmax}_c(t_u/T)\,\|\,\operatorname{softmax}_c(s_u/T)\big)
               + \lambda_b \frac{T^2}{C} \sum_{c=1}^{C}
                 \mathrm{KL}\big(\operatorname{softmax}_{u\in B}(t_{u,c}/T)\,\|\,
                 \operatorname{softmax}_{u\in B}(s_{u,c}/T)\big):

    a pixel-wise KL over classes on the edge band and a channel-wise KL over the body's
    spatial positions (channel-wise distillation restricted to the body). An empty band or
    body contributes 0. Teacher detached.

    Unverified details (no official training code was available): the band's definition
    and width, the :math:`T^2` factors and the normalizations (per edge pixel; per channel)
    follow the paper's description as read, and the weights :math:`\lambda_e, \lambda_b`
    default to 1. The target must be at the logits' resolution (down-sample the labels, or
    up-sample the logits, before the call); the paper's soft down-sampled mask is not
    reproduced. Layout: losslab puts the class dimension last, ``(N, H, W, C)``; for
    torch's ``(N, C, H, W)`` pass ``logits.movedim(1, -1)``.

    Args:
        student_logits: ``(N, H, W, C)`` the student's segmentation logits.
        teacher_logits: ``(N, H, W, C)`` the teacher's (detached inside).
        target: ``(N, H, W)`` ground-truth class indices (they define the boundary).
        radius: half-width of the band in pixels (3); 0 makes every pixel body.
        temperature: :math:`T > 0`.
        edge_weight, body_weight: :math:`\lambda_e, \lambda_b \ge 0`.
        reduction: ``"mean"`` over images, ``"sum"`` or ``"none"`` (``(N,)``).

    Shape:
        logits ``(N, H, W, C)``, target ``(N, H, W)``; output ``(N,)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import boundary_kd_loss
        >>> t = torch.zeros(1, 4, 4, dtype=torch.long); t[:, :, 2:] = 1
        >>> x = torch.randn(1, 4, 4, 2)
        >>> boundary_kd_loss(x, x, t, radius=1)   # student equals teacher
        tensor(0.)

    References:
        Liu et al., "BPKD: Boundary Privileged Knowledge Distillation For Semantic
        Segmentation", WACV 2024, https://arxiv.org/abs/2306.08075; Shu et al.,
        "Channel-wise Knowledge Distillation for Dense Prediction", ICCV 2021,
        https://arxiv.org/abs/2011.13256.
    """
    _check_pair(student_logits, teacher_logits, ndim=4)
    _check_bpkd(radius=radius, temperature=temperature, edge_weight=edge_weight, body_weight=body_weight)
    target = check_class_target(target, student_logits, logits_name="student_logits")
    n, h, w, c = student_logits.shape
    dtype = compute_dtype(student_logits, teacher_logits)
    s = upcast(student_logits, dtype)
    t = upcast(teacher_logits.detach(), dtype)
    with torch.no_grad():
        edge = boundary_band(target, c, radius)
    zero = torch.zeros((), dtype=dtype, device=s.device)
    t2 = temperature ** 2
    # Edge: pixel-wise KL over classes, averaged over the band's pixels.
    pix = kl_divergence(t, s, temperature=temperature, reduction="none")  # (N, H, W)
    n_edge = edge.sum((1, 2))
    edge_loss = torch.where(edge, pix, zero).sum((1, 2)) / n_edge.clamp_min(1).to(dtype)
    # Body: per channel, a distribution over the body's pixels (-inf outside the body).
    body = (~edge).reshape(n, 1, h * w)
    has_body = body.any(-1)  # (N, 1)
    ninf = torch.full((), -math.inf, dtype=dtype, device=s.device)

    def spatial(x):
        x = torch.where(body, (x / temperature).reshape(n, h * w, c).transpose(1, 2), ninf)
        # An image without body pixels: a row of zeros instead of all -inf (log_softmax would
        # give NaN); its value is replaced by 0 below.
        return torch.log_softmax(torch.where(has_body.unsqueeze(-1), x, zero), dim=-1)

    chan = kl_divergence(spatial(t), spatial(s), log_probs=True, reduction="none")  # (N, C)
    body_loss = torch.where(has_body, chan, zero).mean(-1) if c > 0 else zero.expand(n)
    return reduce(t2 * (edge_weight * edge_loss + body_weight * body_loss), reduction)
