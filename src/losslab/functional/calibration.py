"""Calibration: binned calibration errors, the Brier score, temperature scaling, and the
post-hoc calibration objectives CA (correctness-aware) and h-calibration.

Inputs are probabilities ``probs (*, C)`` with class targets ``target (*)`` (or logits for
the objectives that take logits); a ``(*)`` ``probs`` with a ``(*)`` 0/1 ``target`` is the
binary case (the probability of the positive class).

Bins (shared with the streaming :class:`losslab.estimators.CalibrationError`): with ``n_bins``
equal-width bins, bin ``k`` holds the confidences in ``[k/n, (k+1)/n)`` and the top bin is
closed, ``[(n-1)/n, 1]``: a confidence of exactly 1.0 belongs to the top bin. (torchmetrics
uses the same half-open bins but gives 1.0 an extra ``(n+1)``-th bin of its own.)
"""
from __future__ import annotations

import torch

from .._checks import (
    check_choice,
    check_class_target,
    check_floating,
    check_integer,
    check_nonnegative,
    check_positive,
    check_probabilities,
    hyperparameter_checks,
    probability_sum_atol,
    validation_enabled,
)
from .._numerics import upcast
from .._reduction import reduce
from ..registry import Example, Reference, register
from ._examples import F64, randint, randn
from .classification import _check_logits

__all__ = [
    "expected_calibration_error",
    "brier_score",
    "fit_temperature",
    "correctness_aware_loss",
    "h_calibration_loss",
]

GUO = Reference(
    title="On Calibration of Modern Neural Networks",
    authors="Chuan Guo, Geoff Pleiss, Yu Sun, Kilian Q. Weinberger",
    year=2017,
    url="https://arxiv.org/abs/1706.04599",
)
NAEINI = Reference(
    title="Obtaining Well Calibrated Probabilities Using Bayesian Binning",
    authors="Mahdi Pakdaman Naeini, Gregory F. Cooper, Milos Hauskrecht",
    year=2015,
    url="https://ojs.aaai.org/index.php/AAAI/article/view/9602",
)
BRIER = Reference(
    title="Verification of Forecasts Expressed in Terms of Probability",
    authors="Glenn W. Brier",
    year=1950,
    url="https://doi.org/10.1175/1520-0493(1950)078%3C0001:VOFEIT%3E2.0.CO;2",
)
CA_PAPER = Reference(
    title="Optimizing Calibration by Gaining Aware of Prediction Correctness",
    authors="Yuchi Liu, Lei Wang, Yuli Zou, James Zou, Liang Zheng",
    year=2024,
    url="https://arxiv.org/abs/2404.13016",
)
H_PAPER = Reference(
    title="h-calibration: Rethinking Classifier Recalibration with Probabilistic Error-Bounded Objective",
    authors="Wenjian Huang, Guiping Cao, Jiahao Xia, Jingkun Chen, Hao Wang, Jianguo Zhang",
    year=2025,
    url="https://arxiv.org/abs/2506.17968",
)

NORMS = ("l1", "l2", "max")
BINNINGS = ("uniform", "quantile")


# --------------------------------------------------------------------------- shared binning
def check_n_bins(n_bins: object) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")


def uniform_bin_index(conf: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin of each confidence: ``floor(n_bins * conf)`` in float64, the top bin closed.

    That is ``[k/n, (k+1)/n)`` up to the rounding of ``n * conf`` at the edges, with 1.0 in
    bin ``n - 1``. In float64 a value lands in the same bin whatever its dtype (float32 ->
    float64 is exact). A floor is ~30x cheaper than ``bucketize`` on CPU. NaN lands in bin 0
    (and makes that bin's sums NaN).
    """
    return (conf.to(torch.float64) * n_bins).floor_().long().clamp_(0, n_bins - 1)


def bin_sums(conf: torch.Tensor, acc: torch.Tensor, idx: torch.Tensor, size: int):
    """Per-bin ``(count, confidence sum, accuracy sum)`` in float64 (flat ``idx`` in ``[0, size)``)."""
    c = conf.reshape(-1).to(torch.float64)
    vals = torch.stack([torch.ones_like(c), c, acc.reshape(-1).to(torch.float64)])  # (3, N)
    sums = torch.zeros(3, size, dtype=torch.float64, device=conf.device)
    sums.scatter_add_(1, idx.reshape(1, -1).expand(3, -1), vals)  # one pass for the three sums
    return sums[0], sums[1], sums[2]


def error_from_bins(count: torch.Tensor, conf_sum: torch.Tensor, acc_sum: torch.Tensor, norm: str) -> torch.Tensor:
    """The calibration error of per-bin sums over the last dimension (float64).

    ``l1``: ``sum_b |acc_b - conf_b| n_b / N``; ``l2``: ``sqrt(sum_b (acc_b - conf_b)^2 n_b / N)``;
    ``max``: ``max_b |acc_b - conf_b|`` over non-empty bins (0 when there is no sample).
    """
    total = count.sum(-1)
    total = torch.where(total > 0, total, torch.ones_like(total))
    gap_sum = acc_sum - conf_sum  # n_b * (acc_b - conf_b)
    if norm == "l1":
        return gap_sum.abs().sum(-1) / total
    nonempty = count > 0
    safe = torch.where(nonempty, count, torch.ones_like(count))
    gap = gap_sum / safe  # empty bins: 0 / 1 = 0
    if norm == "l2":
        return torch.sqrt((gap * gap_sum).sum(-1) / total)
    # max over non-empty bins; empty bins have gap 0 and |gap| >= 0, so they never win, and a
    # NaN gap propagates through amax.
    return gap.abs().amax(-1)


def _confidence_accuracy(probs: torch.Tensor, target: torch.Tensor, classwise: bool):
    """``(conf, acc)`` as ``(N, K)`` float tensors: K = 1 (top label or binary) or C (classwise)."""
    if probs.dim() == target.dim():  # binary: probability of the positive class
        p = probs.reshape(-1, 1)
        y = target.reshape(-1, 1).to(p.dtype)
        if classwise:  # both classes: [1 - p, p] against [1 - y, y]
            return torch.cat([1 - p, p], 1), torch.cat([1 - y, y], 1)
        return p, y
    c = probs.shape[-1]
    p = probs.reshape(-1, c)
    y = target.reshape(-1)
    if classwise:
        onehot = torch.nn.functional.one_hot(y, c).to(p.dtype)
        return p, onehot
    conf, pred = p.max(-1)
    return conf.unsqueeze(1), (pred == y).to(p.dtype).unsqueeze(1)


def check_calibration_inputs(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``probs (*, C)`` rows on the simplex with class indices ``(*)``, or binary ``(*)`` with 0/1 targets."""
    check_floating(probs, "probs")
    if probs.dim() >= 1 and target.dim() == probs.dim():
        check_integer(target, "target")
        if target.shape != probs.shape:
            raise ValueError(f"target must have the shape of the binary probs {tuple(probs.shape)}, "
                             f"got {tuple(target.shape)}")
        if validation_enabled() and probs.numel() > 0:
            lo, hi = float(probs.min()), float(probs.max())
            if not (0.0 <= lo and hi <= 1.0):  # also catches NaN
                raise ValueError(f"probs (binary) must be probabilities in [0, 1], found values in [{lo:.4g}, {hi:.4g}]")
            tlo, thi = int(target.min()), int(target.max())
            if tlo < 0 or thi > 1:
                raise ValueError(f"target (binary) must be 0 or 1, found {tlo if tlo < 0 else thi}")
        return target.long()
    if probs.dim() < 1:
        raise ValueError(f"probs must have at least 1 dimension, got shape {tuple(probs.shape)}")
    target = check_class_target(target, probs, logits_name="probs")
    _check_simplex(probs)
    return target


def _check_simplex(probs: torch.Tensor) -> None:
    """Rows of ``probs`` in [0, 1] summing to 1 (the tolerance of ``_checks.check_probabilities``).

    Two passes and one host sync (min/max, row sums in the input's precision, float32 for
    half) instead of a float64 copy: a metric fed 10^7 samples should not spend more on the
    check than on the binning. NaN fails the comparisons and is reported.
    """
    if not validation_enabled() or probs.numel() == 0:
        return
    atol = probability_sum_atol(probs.dtype, probs.shape[-1])
    lo, hi = torch.aminmax(probs)
    err = (upcast(probs).sum(-1) - 1).abs().max()
    lo, hi, err = torch.stack([lo.float(), hi.float(), err.float()]).tolist()
    if not lo >= 0:
        raise ValueError(f"probs must be non-negative probabilities, found {lo:.4g}")
    if not err <= atol:
        raise ValueError(f"probs must sum to 1 along dim -1, found a sum off by {err:.4g}")


def _check_ece(*, n_bins=15, norm="l1", binning="uniform", classwise=False, **_) -> None:
    check_n_bins(n_bins)
    check_choice(norm, "norm", NORMS)
    check_choice(binning, "binning", BINNINGS)
    if not isinstance(classwise, bool):
        raise TypeError(f"classwise must be a bool, got {classwise!r}")


def _probs_example(n: int = 9, c: int = 4, **kwargs):
    """Dyadic probabilities (k / 64): exactly representable in bfloat16, so half-precision
    inputs stay on the simplex."""

    def make(gen):
        counts = torch.rand(n, c, generator=gen, dtype=F64) + 0.05
        p = torch.round(counts / counts.sum(-1, keepdim=True) * 64)
        p[:, 0] += 64 - p.sum(-1)
        return (p / 64, randint(gen, c, n)), dict(kwargs)

    def mismatch(gen):
        (p, t), kw = make(gen)
        return (p, t[:-2]), kw

    return make, mismatch


# --------------------------------------------------------------------------- ECE
def _ece_example() -> Example:
    make, mismatch = _probs_example(n=40, c=4, n_bins=5)
    return Example(make=make, mismatch=mismatch, mismatch_match="target")


@register(
    "expected_calibration_error",
    family="calibration",
    reference=NAEINI,
    seed=CA_PAPER.title,
    example=_ece_example(),
    tags=("calibration", "ECE", "MCE", "RMS calibration error", "reliability", "metric"),
    input_kind="probabilities",
    batch_level=True,
    differentiable=False,
    module_required=False,
)
@hyperparameter_checks(_check_ece)
def expected_calibration_error(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    n_bins: int = 15,
    norm: str = "l1",
    binning: str = "uniform",
    classwise: bool = False,
) -> torch.Tensor:
    r"""Binned calibration error: ECE (l1), RMS calibration error (l2) or MCE (max).

    With bins :math:`B_b` of the confidences, :math:`n_b = |B_b|`, accuracy
    :math:`\mathrm{acc}_b` and mean confidence :math:`\mathrm{conf}_b` in bin :math:`b`,

    .. math::
        \mathrm{ECE} = \sum_b \frac{n_b}{N} |\mathrm{acc}_b - \mathrm{conf}_b|, \quad
        \mathrm{RMSCE} = \Big(\sum_b \frac{n_b}{N} (\mathrm{acc}_b - \mathrm{conf}_b)^2\Big)^{1/2},
        \quad \mathrm{MCE} = \max_{b: n_b > 0} |\mathrm{acc}_b - \mathrm{conf}_b|.

    The confidence is the top probability and "accurate" means its class is the target
    (top-label calibration); for binary ``probs (*)`` the confidence is the positive-class
    probability and the accuracy is the 0/1 target (torchmetrics' ``BinaryCalibrationError``).
    ``classwise=True`` computes the one-vs-rest error of every class (confidence
    :math:`p_c`, accuracy :math:`1[y = c]`) and averages over classes; binary inputs then use
    both classes :math:`[1-p, p]`.

    ``binning="uniform"``: bin :math:`k` is :math:`[k/n, (k+1)/n)` (computed as
    :math:`\lfloor n p\rfloor` in float64), the top bin closed, so a confidence of exactly 1.0
    is pooled with its neighbours (torchmetrics 1.9 gives 1.0 an extra ``(n+1)``-th bin of its
    own, so an over-confident 1.0 is not averaged with the confidences just below it there;
    away from 1.0 the two agree, ``l2`` being torchmetrics' definition).
    ``binning="quantile"``: equal-mass bins whose edges are the confidences' quantiles
    (linear interpolation, as ``numpy.percentile``), a value equal to an inner edge going to
    the lower bin, as in ``sklearn.calibration.calibration_curve(strategy="quantile")``.

    Not differentiable (bin membership and accuracy are step functions): a metric, not a
    training objective. Sums are accumulated in float64. The streaming form with
    O(``n_bins``) memory is :class:`losslab.estimators.CalibrationError`.

    Args:
        probs: ``(*, C)`` probabilities (rows on the simplex, checked when validation is
            on), or ``(*)`` positive-class probabilities.
        target: ``(*)`` class indices, or 0/1 labels for binary ``probs``.
        n_bins: number of bins, ``>= 1``.
        norm: ``"l1"`` (ECE), ``"l2"`` (RMS calibration error) or ``"max"`` (MCE).
        binning: ``"uniform"`` (equal width) or ``"quantile"`` (equal mass).
        classwise: average the one-vs-rest errors over classes.

    Shape:
        probs ``(*, C)`` or ``(*)``, target ``(*)``; output a scalar.

    Returns:
        A 0-dim tensor (float32 for float32/half input, float64 for float64).

    Example:
        >>> import torch
        >>> from losslab.functional import expected_calibration_error
        >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [1.0, 0.0]])
        >>> target = torch.tensor([0, 1, 1, 0])
        >>> expected_calibration_error(probs, target, n_bins=2)  # bin [0.5, 1]: conf 0.85, acc 0.75
        tensor(0.1000)

    References:
        Naeini, Cooper, Hauskrecht, "Obtaining Well Calibrated Probabilities Using Bayesian
        Binning", AAAI 2015; Guo et al., "On Calibration of Modern Neural Networks", ICML
        2017, https://arxiv.org/abs/1706.04599; Kull et al. 2019 (classwise ECE),
        https://arxiv.org/abs/1910.12656.
    """
    _check_ece(n_bins=n_bins, norm=norm, binning=binning, classwise=classwise)
    target = check_calibration_inputs(probs, target)
    out_dtype = upcast(probs).dtype
    conf, acc = _confidence_accuracy(upcast(probs), target, classwise)  # (N, K)
    n, k = conf.shape
    if binning == "uniform":
        idx = uniform_bin_index(conf, n_bins)
    else:
        c64 = conf.to(torch.float64)
        if n == 0:
            idx = torch.zeros_like(c64, dtype=torch.long)
        else:
            q = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=conf.device)
            edges = torch.quantile(c64, q, dim=0).T.contiguous()  # (K, n_bins + 1)
            idx = torch.searchsorted(edges[:, 1:-1].contiguous(), c64.T.contiguous(), right=False).T
    offset = torch.arange(k, device=conf.device) * n_bins
    count, conf_sum, acc_sum = bin_sums(conf, acc, idx + offset, k * n_bins)
    per_class = error_from_bins(count.view(k, n_bins), conf_sum.view(k, n_bins), acc_sum.view(k, n_bins), norm)
    return per_class.mean().to(out_dtype)


# --------------------------------------------------------------------------- Brier
def _brier_example() -> Example:
    make, mismatch = _probs_example()
    return Example(make=make, mismatch=mismatch, mismatch_match="target",
                   extreme_skip="probs are a distribution: scaled to 1e4 they leave the simplex (ValueError)")


@register(
    "brier_score",
    family="calibration",
    reference=BRIER,
    example=_brier_example(),
    tags=("calibration", "proper scoring rule", "squared error", "Brier"),
    input_kind="probabilities",
    bounded=True,
)
def brier_score(probs: torch.Tensor, target: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    r"""Multi-class Brier score :math:`\sum_c (p_c - 1[c = y])^2` per sample.

    .. math:: \ell = \sum_{c=1}^{C} (p_c - t_c)^2,

    with :math:`t` the one-hot target (or a target distribution of the same shape as
    ``probs``). A strictly proper scoring rule with values in :math:`[0, 2]`. This is Brier's
    original multi-class sum; for a binary problem written as ``(N, 2)`` it is twice the
    common binary :math:`(p - y)^2`.

    Args:
        probs: ``(*, C)`` probabilities (rows on the simplex, checked when validation is on).
        target: ``(*)`` class indices or ``(*, C)`` probabilities.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        probs ``(*, C)``, target ``(*)`` or ``(*, C)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import brier_score
        >>> brier_score(torch.tensor([[0.7, 0.2, 0.1]]), torch.tensor([0]))  # 0.09 + 0.04 + 0.01
        tensor(0.1400)

    References:
        Brier, "Verification of Forecasts Expressed in Terms of Probability", Monthly
        Weather Review 78(1), 1950, https://doi.org/10.1175/1520-0493(1950)078%3C0001:VOFEIT%3E2.0.CO;2.
    """
    check_floating(probs, "probs")
    if probs.dim() < 1:
        raise ValueError(f"probs must have shape (*, C), got {tuple(probs.shape)}")
    p = upcast(probs)
    if isinstance(target, torch.Tensor) and target.is_floating_point() and target.shape == probs.shape:
        check_probabilities(target, "target")
        t = upcast(target, p.dtype)
    else:
        target = check_class_target(target, probs, logits_name="probs")
        t = torch.nn.functional.one_hot(target, probs.shape[-1]).to(p.dtype)
    check_probabilities(probs, "probs")
    return reduce((p - t).pow(2).sum(-1), reduction)


# --------------------------------------------------------------------------- temperature scaling
def _fit_example() -> Example:
    def make(gen):
        n, c = 12, 4
        target = randint(gen, c, n)
        logits = randn(gen, n, c) + 1.5 * torch.nn.functional.one_hot(target, c).to(F64)
        logits[0, target[0]] -= 6.0  # at least one mistake: the NLL has a finite minimizer
        return (logits, target), {}

    def mismatch(gen):
        (x, t), kw = make(gen)
        return (x, t[:-1]), kw

    return Example(make=make, mismatch=mismatch, mismatch_match="target")


@torch.compiler.disable
def _solve_inverse_temperature(z: torch.Tensor, y: torch.Tensor, max_iter: int) -> float:
    """β = 1/T minimizing the mean NLL of ``softmax(β z)``: a root of the increasing f'(β)."""
    finite = torch.isfinite(z)
    zf = torch.where(finite, z, torch.zeros((), dtype=z.dtype))  # -inf classes have p = 0
    z_y = zf.gather(-1, y.unsqueeze(-1)).squeeze(-1)

    def derivatives(beta: float):
        p = torch.softmax(beta * z, -1)
        mean_z = (p * zf).sum(-1)
        var_z = (p * zf * zf).sum(-1) - mean_z ** 2
        return float((mean_z - z_y).mean()), float(var_z.clamp_min(0).mean())

    # f'(0+) = mean(uniform mean of z - z_y); f'(inf) = mean(max z - z_y) >= 0.
    n_finite = finite.sum(-1).to(z.dtype)
    g0 = float((zf.sum(-1) / n_finite - z_y).mean())
    g_inf = float((zf.amax(-1) - z_y).mean()) if z.numel() else 0.0
    if not g_inf > 0:
        raise ValueError("logits: every sample's target has the largest logit, so the NLL keeps falling as the "
                         "temperature goes to 0 and has no finite minimizer")
    if not g0 < 0:
        raise ValueError("logits: the target logits are no larger than the class average, so the NLL keeps "
                         "falling as the temperature goes to infinity and has no finite minimizer")
    lo, hi = 0.0, 1.0
    while derivatives(hi)[0] < 0:  # f' increases to g_inf > 0: a finite bracket exists
        lo, hi = hi, 2.0 * hi
    beta = 0.5 * (lo + hi)
    for _ in range(max_iter):
        g, h = derivatives(beta)
        if g == 0:
            break
        if g < 0:
            lo = beta
        else:
            hi = beta
        step = beta - g / h if h > 0 else None
        # Newton inside the bracket (quadratic convergence), bisection otherwise.
        beta = step if step is not None and lo < step < hi else 0.5 * (lo + hi)
        if hi - lo <= 1e-15 * hi:
            break
    return beta


def _check_fit(*, max_iter=100, **_) -> None:
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")


@register(
    "fit_temperature",
    family="calibration",
    reference=GUO,
    example=_fit_example(),
    tags=("calibration", "temperature scaling", "post-hoc calibration"),
    input_kind="logits",
    batch_level=True,
    differentiable=False,
    module_required=False,
    returns="float",
    graph_breaks="a root-finding loop with a data-dependent stopping test (host syncs); run eagerly",
)
@hyperparameter_checks(_check_fit)
def fit_temperature(logits: torch.Tensor, target: torch.Tensor, *, max_iter: int = 100) -> float:
    r"""Temperature scaling: the T > 0 minimizing the NLL of ``softmax(logits / T)``.

    .. math:: T^\star = \arg\min_{T > 0} \frac1N \sum_i
        \Big[\log\sum_c e^{z_{ic}/T} - z_{i y_i}/T\Big].

    A fitting procedure rather than an objective. The NLL is convex in
    :math:`\beta = 1/T` (a log-sum-exp minus a linear term), so its derivative
    :math:`f'(\beta) = \frac1N\sum_i (\mathbb{E}_{\mathrm{softmax}(\beta z_i)}[z_i] - z_{iy_i})`
    increases; the optimum is its root, found by Newton's method safeguarded by bisection
    (deterministic, float64, to relative precision 1e-15 in β or ``max_iter`` steps). This
    is the same optimum as Guo et al.'s LBFGS over T, and T stays positive by construction.
    When the NLL has no finite minimizer a ``ValueError`` says so: every target is the top
    logit (T → 0), or the targets' logits are on average below the class mean (T → ∞).
    ``-inf`` logits are classes of probability 0; NaN or ``+inf`` logits give a NaN temperature.

    A fitting procedure, not an objective: it returns a Python ``float`` (registered with
    ``returns="float"``; the tensor checks of the conformance suite do not apply, its
    tests are in ``tests/functional/test_calibration.py``).

    Args:
        logits: ``(*, C)`` validation logits.
        target: ``(*)`` class indices.
        max_iter: maximum number of Newton/bisection steps after bracketing.

    Shape:
        logits ``(*, C)``, target ``(*)``; output a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import fit_temperature
        >>> logits = torch.tensor([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0], [4.0, 0.0]])
        >>> T = fit_temperature(logits, torch.tensor([0, 1, 0, 1]))  # one mistake in four
        >>> torch.allclose(torch.softmax(logits / T, -1).max(-1).values, torch.tensor(0.75))
        True

    References:
        Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks", ICML 2017,
        https://arxiv.org/abs/1706.04599.
    """
    _check_fit(max_iter=max_iter)
    _check_logits(logits)
    target = check_class_target(target, logits)
    z = logits.detach().to(torch.float64).reshape(-1, logits.shape[-1])
    y = target.reshape(-1)
    if bool(torch.isnan(z).any()) or bool((z == float("inf")).any()):
        return float("nan")
    if y.numel() == 0:
        raise ValueError("logits: no sample to fit a temperature on")
    beta = _solve_inverse_temperature(z, y, max_iter)
    return float(1.0 / beta)


# --------------------------------------------------------------------------- CA loss
def _ca_weights(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Correctness ``c`` and the reference code's weights: 1 - acc for correct, acc for wrong."""
    correct = (logits.argmax(-1) == target).to(logits.dtype)
    acc = correct.mean() if correct.numel() else correct.sum()
    return correct, torch.where(correct > 0, 1 - acc, acc)


def _ca_mean_rule(none, args, kwargs):
    if not kwargs.get("reweight"):
        return none.mean()
    logits, target = args
    correct = logits.argmax(-1) == target
    acc = correct.double().mean()
    w = torch.where(correct, 1 - acc, acc)
    return none.sum() / w.sum() if w.sum() > 0 else none.sum() * 0


def _ca_example() -> Example:
    def make(gen, **kw):
        return (randn(gen, 8, 5, scale=2.0), randint(gen, 5, 8)), {"temperature": 1.5, **kw}

    def reweighted(gen):
        return make(gen, reweight=True)

    def leading(gen):
        return (randn(gen, 2, 3, 5), randint(gen, 5, 2, 3)), {"reweight": True}

    def mismatch(gen):
        return (randn(gen, 8, 5), randint(gen, 5, 6)), {}

    return Example(make=make, mismatch=mismatch, mismatch_match="target", extreme=(0,),
                   mean_rule=_ca_mean_rule, variants=(reweighted, leading))


def _check_ca(*, temperature=1.0, reweight=False, **_) -> None:
    check_positive(temperature, "temperature")
    if not isinstance(reweight, bool):
        raise TypeError(f"reweight must be a bool, got {reweight!r}")


@register(
    "correctness_aware_loss",
    family="calibration",
    reference=CA_PAPER,
    seed=CA_PAPER.title,
    example=_ca_example(),
    tags=("calibration", "post-hoc calibration", "correctness", "CA loss", "confidence"),
    input_kind="logits",
    bounded=True,
)
@hyperparameter_checks(_check_ca)
def correctness_aware_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = 1.0,
    reweight: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Correctness-aware (CA) calibration loss: squared gap between confidence and correctness.

    .. math:: \ell_i = \big(\max_c \mathrm{softmax}(z_i / T)_c - c_i\big)^2, \qquad
        c_i = 1[\arg\max_c z_{ic} = y_i].

    A calibrator trained with it raises the confidence of correctly predicted samples and
    lowers that of wrong ones (the CE loss instead raises the target class even on a
    misclassified sample). The correctness is a constant (no gradient); the gradient flows
    through the confidence. ``logits`` are the calibrator's output (for temperature scaling
    the argmax, hence :math:`c_i`, does not depend on the temperature).

    ``reweight=True`` is the authors' training code: correct samples are weighted by
    :math:`1 - \bar a` and wrong ones by :math:`\bar a`, with :math:`\bar a` the batch
    accuracy (a constant), so both groups count equally. ``"none"`` then returns
    :math:`w_i \ell_i` and ``"mean"`` is :math:`\sum_i w_i\ell_i / \sum_i w_i` (the code's
    normalization; 0 when every sample is correct or every one is wrong, where all weights
    vanish and the code would divide 0 by 0).

    Args:
        logits: ``(*, C)``.
        target: ``(*)`` class indices.
        temperature: divisor of the logits, ``> 0``.
        reweight: balance correct and wrong samples by the batch accuracy.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        logits ``(*, C)``, target ``(*)``; output ``(*)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import correctness_aware_loss
        >>> z = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
        >>> conf = torch.softmax(z[0], -1)[0]
        >>> loss = correctness_aware_loss(z, torch.tensor([0, 1]), reduction="none")
        >>> torch.allclose(loss, torch.stack([(conf - 1) ** 2, conf ** 2]))
        True

    References:
        Liu, Wang, Zou, Zou, Zheng, "Optimizing Calibration by Gaining Aware of Prediction
        Correctness", 2024, https://arxiv.org/abs/2404.13016.
    """
    _check_logits(logits)
    _check_ca(temperature=temperature, reweight=reweight)
    target = check_class_target(target, logits)
    x = upcast(logits)
    # max softmax = exp(max log_softmax): finite for -inf classes and logits of any size.
    conf = torch.log_softmax(x / temperature, -1).amax(-1).exp()
    correct, w = _ca_weights(x.detach(), target)
    loss = (conf - correct) ** 2
    return reduce(loss, reduction, weight=w if reweight else None)


# --------------------------------------------------------------------------- h-calibration
def _h_example() -> Example:
    def make(gen):
        # Distinct multiples of 1/256 (exact in bfloat16, so half inputs stay on the simplex;
        # no ties, which would make the sorted order jump under gradcheck's perturbation).
        p1 = (torch.randperm(255, generator=gen)[:12] + 1).to(F64) / 256
        return (torch.stack([1 - p1, p1], -1), randint(gen, 2, 12)), {"window": 4, "epsilon": 0.01}

    def mismatch(gen):
        (p, t), kw = make(gen)
        return (p, t[:-2]), kw

    return Example(make=make, mismatch=mismatch, mismatch_match="target",
                   extreme_skip="probs are a distribution: scaled to 1e4 they leave the simplex (ValueError)")


def _check_h(*, window=200, epsilon=0.0, **_) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"window must be an integer >= 0, got {window!r}")
    check_nonnegative(epsilon, "epsilon")


@register(
    "h_calibration_loss",
    family="calibration",
    reference=H_PAPER,
    seed=H_PAPER.title,
    example=_h_example(),
    tags=("calibration", "post-hoc calibration", "canonical calibration", "error bound"),
    input_kind="probabilities",
)
@hyperparameter_checks(_check_h)
def h_calibration_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    window: int = 200,
    epsilon: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""h-calibration objective: windowed calibration gaps of sorted class probabilities.

    For each class :math:`c`, sort the pairs :math:`(p_{ic}, 1[y_i = c])` by :math:`p_{ic}`;
    with :math:`h = \lfloor \text{window}/2 \rfloor` and :math:`d_j = p_{(j)} - y_{(j)}` in
    that order,

    .. math:: \ell_{jc} = \Big(\Big|\frac{1}{2h+1}\sum_{k=j-h}^{j+h} d_k\Big| - \epsilon\Big)_+,

    with :math:`d_k = 0` outside :math:`1..N` (zero padding, divisor always :math:`2h+1`).
    The windowed mean of :math:`p - y` is the local calibration gap around probability
    :math:`p_{(j)}`; the objective bounds it by :math:`\epsilon` for every event (canonical,
    class-wise calibration).

    This is a code-level reading of the authors' public implementation, not of a closed form
    in the paper: its per-event sort, zero-padded moving average of width ``window + 1``
    (``window=200`` there) and ``relu(|.| - epsilon)`` with the unweighted average, applied to
    each class's one-vs-rest events. Not included: the code's default k-means bin weighting
    (non-differentiable, stochastic), its leave-one-class-out subsets and its constant loss
    scale (1e5). The window should be well below N: with zero padding, windows near the ends
    (and every window when N < window) are shrunk towards 0.

    ``"none"`` returns :math:`\ell` as ``(*, C)``: entry :math:`(i, c)` is the term of the
    window centred on sample :math:`i` in class :math:`c`'s order; ``"mean"`` averages over
    all of them (each class's mean, averaged over classes).

    Args:
        probs: ``(*, C)`` probabilities (the calibrated model's output).
        target: ``(*)`` class indices.
        window: the code's ``veclen``: the window holds ``2 * (window // 2) + 1`` events.
        epsilon: tolerated gap :math:`\epsilon \ge 0`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        probs ``(*, C)``, target ``(*)``; output ``(*, C)`` for ``"none"``, else a scalar.

    Example:
        >>> import torch
        >>> from losslab.functional import h_calibration_loss
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
        >>> h_calibration_loss(probs, torch.tensor([0, 1, 1]), window=0)  # |p - y| per event
        tensor(0.3000)

    References:
        Huang et al., "h-calibration: Rethinking Classifier Recalibration with
        Probabilistic Error-Bounded Objective", 2025, https://arxiv.org/abs/2506.17968.
    """
    _check_h(window=window, epsilon=epsilon)
    check_floating(probs, "probs")
    if probs.dim() < 1:
        raise ValueError(f"probs must have shape (*, C), got {tuple(probs.shape)}")
    target = check_class_target(target, probs, logits_name="probs")
    check_probabilities(probs, "probs")
    c = probs.shape[-1]
    p = upcast(probs).reshape(-1, c)
    y = torch.nn.functional.one_hot(target.reshape(-1), c).to(p.dtype)
    n = p.shape[0]
    half = window // 2
    order = torch.sort(p.detach(), dim=0, stable=True).indices  # (N, C)
    d = (p - y).gather(0, order).T.unsqueeze(1)  # (C, 1, N) in sorted order
    if n > 0:
        # Zero padding and a fixed divisor: avg_pool1d with count_include_pad (the code's
        # conv1d with a ones/(window+1) kernel). Padding beyond N handled by explicit zeros.
        padded = torch.nn.functional.pad(d, (half, half))
        windowed = padded.unfold(-1, 2 * half + 1, 1).sum(-1) / (2 * half + 1)  # (C, 1, N)
    else:
        windowed = d
    term_sorted = torch.relu(windowed.squeeze(1).abs() - epsilon).T  # (N, C), sorted order
    term = torch.empty_like(term_sorted).scatter(0, order, term_sorted)
    return reduce(term.reshape(probs.shape), reduction)
