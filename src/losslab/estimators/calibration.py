"""Streaming calibration error with O(n_bins) state, mergeable and synchronized across ranks."""
from __future__ import annotations

import torch

from .._checks import check_choice
from ..functional.calibration import (
    CA_PAPER,
    NAEINI,
    NORMS,
    _confidence_accuracy,
    bin_sums,
    check_calibration_inputs,
    check_n_bins,
    error_from_bins,
    uniform_bin_index,
)
from ..registry import Example, register

__all__ = ["CalibrationError"]


def _example(gen: torch.Generator):
    p = torch.softmax(torch.randn(32, 4, generator=gen, dtype=torch.float64), -1)
    return (p, torch.randint(0, 4, (32,), generator=gen)), {}


@register(
    "CalibrationError",
    family="estimators",
    reference=NAEINI,
    seed=CA_PAPER.title,
    example=Example(make=_example),
    tags=("calibration", "ECE", "MCE", "streaming", "metric", "distributed"),
    module_required=False,
    differentiable=False,
    streaming=True,
)
class CalibrationError(torch.nn.Module):
    r"""Streaming binned calibration error (ECE, RMS-CE, MCE) with O(``n_bins``) memory.

    The state is three float64 buffers of ``n_bins`` entries: per bin, the sample count,
    the sum of confidences and the sum of accuracies. ``update`` adds a batch's sums,
    ``compute`` turns the sums into the error, ``merge`` adds another instance's sums and
    ``reset`` zeroes them. Memory does not grow with the number of samples (torchmetrics'
    ``MulticlassCalibrationError`` keeps every confidence and accuracy: about 43 MiB after
    10^6 samples), and the value equals
    :func:`losslab.functional.expected_calibration_error` (``binning="uniform"``,
    ``classwise=False``) on the concatenated data, up to float64 summation order: the bins
    are the same (``[k/n, (k+1)/n)``, the top bin closed, so a confidence of exactly 1.0 is
    counted) and

    .. math:: \mathrm{ECE} = \sum_b \frac{|A_b - S_b|}{N},\quad
        \mathrm{RMSCE} = \Big(\sum_b \frac{(A_b - S_b)^2}{n_b N}\Big)^{1/2},\quad
        \mathrm{MCE} = \max_{n_b > 0} \frac{|A_b - S_b|}{n_b},

    with :math:`n_b`, :math:`S_b`, :math:`A_b` the count, confidence sum and accuracy sum.

    Distributed: when a ``torch.distributed`` process group is initialized, ``compute()``
    all-reduces (sums) a copy of the three buffers over ``group``, so every rank gets the
    global value and the local state is left as it was (calling ``compute`` twice does not
    double count). Every rank must call ``compute`` (a collective). ``sync=False`` gives the
    local value.

    The buffers are in ``state_dict`` and follow ``.to()``; ``update`` works on any device.

    Args:
        n_bins: number of equal-width bins, ``>= 1``.
        norm: ``"l1"`` (ECE), ``"l2"`` (RMS calibration error) or ``"max"`` (MCE).

    Shape:
        ``update(probs, target)``: probs ``(*, C)`` with class indices ``(*)`` (top-label
        confidence), or binary ``(*)`` positive-class probabilities with 0/1 targets;
        ``compute()`` returns a 0-dim float64 tensor.

    Example:
        >>> import torch
        >>> from losslab.estimators import CalibrationError
        >>> from losslab.functional import expected_calibration_error
        >>> probs = torch.softmax(torch.randn(100, 3, generator=torch.Generator().manual_seed(0)), -1)
        >>> target = torch.arange(100) % 3
        >>> metric = CalibrationError(n_bins=10)
        >>> for i in range(0, 100, 30):
        ...     _ = metric.update(probs[i:i + 30], target[i:i + 30])
        >>> torch.allclose(metric.compute().float(), expected_calibration_error(probs, target, n_bins=10))
        True

    References:
        Naeini, Cooper, Hauskrecht, "Obtaining Well Calibrated Probabilities Using Bayesian
        Binning", AAAI 2015, https://ojs.aaai.org/index.php/AAAI/article/view/9602;
        Guo et al., "On Calibration of Modern Neural Networks", ICML 2017,
        https://arxiv.org/abs/1706.04599.
    """

    count: torch.Tensor
    conf_sum: torch.Tensor
    acc_sum: torch.Tensor

    def __init__(self, n_bins: int = 15, norm: str = "l1") -> None:
        super().__init__()
        check_n_bins(n_bins)
        check_choice(norm, "norm", NORMS)
        self.n_bins = n_bins
        self.norm = norm
        for name in ("count", "conf_sum", "acc_sum"):
            self.register_buffer(name, torch.zeros(n_bins, dtype=torch.float64))

    def extra_repr(self) -> str:
        return f"n_bins={self.n_bins}, norm={self.norm!r}"

    def reset(self) -> CalibrationError:
        """Zero the state."""
        for t in (self.count, self.conf_sum, self.acc_sum):
            t.zero_()
        return self

    @torch.no_grad()
    def update(self, probs: torch.Tensor, target: torch.Tensor) -> CalibrationError:
        """Add a batch: ``probs (*, C)`` with class indices, or binary ``(*)`` with 0/1 targets."""
        target = check_calibration_inputs(probs, target)
        p = probs.detach()
        if p.dtype in (torch.float16, torch.bfloat16):
            p = p.float()
        conf, acc = _confidence_accuracy(p, target, classwise=False)
        count, conf_sum, acc_sum = bin_sums(conf, acc, uniform_bin_index(conf, self.n_bins), self.n_bins)
        self.count += count.to(self.count.device)
        self.conf_sum += conf_sum.to(self.count.device)
        self.acc_sum += acc_sum.to(self.count.device)
        return self

    @torch.no_grad()
    def merge(self, other: CalibrationError) -> CalibrationError:
        """Add ``other``'s state (same ``n_bins``): the metric of the union of both streams."""
        if not isinstance(other, CalibrationError):
            raise TypeError(f"other must be a CalibrationError, got {type(other).__name__}")
        if other.n_bins != self.n_bins:
            raise ValueError(f"other has n_bins={other.n_bins}, this metric has n_bins={self.n_bins}")
        self.count += other.count.to(self.count.device)
        self.conf_sum += other.conf_sum.to(self.count.device)
        self.acc_sum += other.acc_sum.to(self.count.device)
        return self

    @torch.no_grad()
    def compute(self, *, sync: bool = True, group=None) -> torch.Tensor:
        """The calibration error of everything seen (on every rank, when a process group exists)."""
        state = torch.stack([self.count, self.conf_sum, self.acc_sum])
        if sync and torch.distributed.is_available() and torch.distributed.is_initialized():
            state = state.clone()
            torch.distributed.all_reduce(state, op=torch.distributed.ReduceOp.SUM, group=group)
        return error_from_bins(state[0], state[1], state[2], self.norm)
