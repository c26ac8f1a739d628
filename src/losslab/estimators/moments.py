r"""Streaming moments: count, mean, variance, skewness and excess kurtosis of a stream of batches.

The state is the count :math:`n`, the mean :math:`\bar x` and the central sums
:math:`M_p = \sum_i (x_i - \bar x)^p` for :math:`p = 2, 3, 4`. A batch is summarized by a
two-pass computation (its own mean first, then the central sums of the deviations) and
combined with the running state by the pairwise update of Chan, Golub and LeVeque for
:math:`M_2` and of Pébay (2008) for :math:`M_3, M_4`. Neither step ever forms
:math:`\sum x^2`, so values near :math:`10^8` with variance 1 keep their variance to
about 8 digits in float64, where the textbook :math:`\sum x^2/n - \bar x^2` loses every
digit (it subtracts two numbers near :math:`10^{16}` whose spacing is 2).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .._checks import check_tensor
from ..registry import Example, Reference, register

__all__ = ["RunningMoments"]

PEBAY = Reference(
    title="Formulas for Robust, One-Pass Parallel Computation of Covariances and Arbitrary-Order Statistical Moments",
    authors="Philippe Pébay",
    year=2008,
    url="https://doi.org/10.2172/1028931",
)
LAYER_NORM = "Layer Normalization"


def _example(gen: torch.Generator):
    return (torch.randn(16, 3, generator=gen, dtype=torch.float64),), {}


def _merge_stats(na, ma, m2a, m3a, m4a, nb, mb, m2b, m3b, m4b):
    """Pébay's pairwise combination of (count, mean, M2, M3, M4); counts are float tensors/numbers.

    An empty side contributes nothing (every correction term carries a factor of its count),
    and ``n = 0`` on both sides returns the (empty) left side unchanged.
    """
    n = na + nb
    if isinstance(n, torch.Tensor):
        safe = torch.where(n > 0, n, torch.ones_like(n))
    else:
        safe = n if n > 0 else 1.0
    delta = mb - ma
    d_n = delta / safe
    mean = ma + d_n * nb
    m2 = m2a + m2b + delta * d_n * na * nb
    m3 = (m3a + m3b + delta * d_n * d_n * na * nb * (na - nb)
          + 3.0 * d_n * (na * m2b - nb * m2a))
    m4 = (m4a + m4b + delta * d_n * d_n * d_n * na * nb * (na * na - na * nb + nb * nb)
          + 6.0 * d_n * d_n * (na * na * m2b + nb * nb * m2a) + 4.0 * d_n * (na * m3b - nb * m3a))
    return n, mean, m2, m3, m4


@register(
    "RunningMoments",
    family="estimators",
    reference=PEBAY,
    seed=LAYER_NORM,
    example=Example(make=_example),
    tags=("moments", "variance", "skewness", "kurtosis", "Welford", "streaming", "batch statistics"),
    module_required=False,
    differentiable=False,
    streaming=True,
)
class RunningMoments(torch.nn.Module):
    r"""Streaming count, mean, variance, skewness and excess kurtosis, mergeable across batches and ranks.

    ``update(x)`` adds the rows of ``x`` (shape ``(N, *shape)``): statistics are taken over
    dim 0, separately for every element of ``shape``. With :math:`n` values seen, mean
    :math:`\bar x` and central sums :math:`M_p = \sum_i (x_i - \bar x)^p`,

    .. math::
        \mathrm{var} = \frac{M_2}{n - 1},\quad
        \mathrm{var\_population} = \frac{M_2}{n},\quad
        \mathrm{skewness} = \frac{M_3/n}{(M_2/n)^{3/2}},\quad
        \mathrm{kurtosis} = \frac{M_4/n}{(M_2/n)^{2}} - 3.

    ``var`` uses ``ddof=1`` like ``torch.var`` (unbiased for the variance);
    ``var_population`` uses ``ddof=0`` (the maximum-likelihood estimate under a Gaussian).
    ``skewness`` and ``kurtosis`` are the plug-in (biased, consistent) moment ratios, equal
    to ``scipy.stats.skew(bias=True)`` and ``scipy.stats.kurtosis(fisher=True, bias=True)``
    on the concatenation of every batch. The mean's standard error is
    ``sqrt(var / count)`` (:attr:`stderr`).

    Update rule: each batch is reduced by two passes (its mean, then the central sums of its
    deviations) and merged into the state by the pairwise formulas of Chan, Golub and
    LeVeque (:math:`M_2`) and Pébay (:math:`M_3`, :math:`M_4`), in the accumulator
    ``dtype`` (float64 by default; half-precision and float32 inputs are converted to it
    first). The result does not depend on how the stream is cut into batches or in which
    order partial states are merged, up to round-off. A NaN in ``x`` propagates to every
    statistic of its element. With fewer values than a statistic needs (``count <= 1`` for
    ``var``, ``count == 0`` for ``var_population``) or zero variance (skewness, kurtosis) the
    statistic is NaN, as in NumPy/SciPy; the ``mean`` buffer of an empty accumulator reads 0
    (check ``count``).

    The state (``count``, ``mean``, ``m2``, ``m3``, ``m4``) lives in registered buffers:
    it is in ``state_dict()`` and follows ``.to()``. Under ``torch.distributed``,
    :meth:`all_reduce` replaces every rank's state by the statistics of the union of all
    ranks' data (uneven shards allowed).

    Args:
        shape: the shape of one value (``()`` for scalars; ``(D,)`` for per-feature moments).
        dtype: accumulator dtype, ``torch.float64`` (default) or ``torch.float32``.

    Shape:
        ``update(x)`` takes ``x`` of shape ``(N, *shape)`` (``N`` may be 0); every statistic has
        shape ``shape``.

    Example:
        >>> import torch
        >>> from losslab.estimators import RunningMoments
        >>> m = RunningMoments()
        >>> m.update(torch.tensor([1.0, 2.0])).update(torch.tensor([3.0, 4.0, 10.0]))
        RunningMoments(shape=(), dtype=torch.float64, count=5)
        >>> m.mean, m.var
        (tensor(4., dtype=torch.float64), tensor(12.5000, dtype=torch.float64))
        >>> a, b = RunningMoments(), RunningMoments()
        >>> _ = a.update(torch.tensor([1.0, 2.0, 3.0])), b.update(torch.tensor([4.0, 10.0]))
        >>> torch.allclose(a.merge(b).var, m.var)
        True

    References:
        Pébay, "Formulas for Robust, One-Pass Parallel Computation of Covariances and
        Arbitrary-Order Statistical Moments", Sandia report SAND2008-6212, 2008,
        https://doi.org/10.2172/1028931. Chan, Golub, LeVeque, "Updating formulae and a
        pairwise algorithm for computing sample variances", 1979,
        http://i.stanford.edu/pub/cstr/reports/cs/tr/79/773/CS-TR-79-773.pdf. Welford,
        "Note on a method for calculating corrected sums of squares and products", 1962,
        https://doi.org/10.1080/00401706.1962.10490022.
    """

    count: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor
    m3: torch.Tensor
    m4: torch.Tensor

    def __init__(self, shape: Sequence[int] | int = (), *, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        if isinstance(shape, int):
            shape = (shape,)
        try:
            shape = tuple(int(s) for s in shape)
        except TypeError:
            raise TypeError(f"shape must be a tuple of ints, got {shape!r}") from None
        if any(s < 0 for s in shape):
            raise ValueError(f"shape must have non-negative sizes, got {shape}")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float64 or torch.float32 (the accumulator dtype), got {dtype}")
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        for name in ("mean", "m2", "m3", "m4"):
            self.register_buffer(name, torch.zeros(shape, dtype=dtype))

    # ------------------------------------------------------------------ state
    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one value (and of every statistic)."""
        return tuple(self.mean.shape)

    @property
    def dtype(self) -> torch.dtype:
        """The accumulator dtype."""
        return self.mean.dtype

    def extra_repr(self) -> str:
        return f"shape={self.shape}, dtype={self.dtype}, count={int(self.count)}"

    def __repr__(self) -> str:  # one line: there are no submodules
        return f"{type(self).__name__}({self.extra_repr()})"

    def reset(self) -> RunningMoments:
        """Forget every value seen (count 0)."""
        for buf in (self.count, self.mean, self.m2, self.m3, self.m4):
            buf.zero_()
        return self

    def _assign(self, n, mean, m2, m3, m4) -> None:
        self.count.copy_(n)
        self.mean.copy_(mean)
        self.m2.copy_(m2)
        self.m3.copy_(m3)
        self.m4.copy_(m4)

    def _n(self) -> torch.Tensor:
        return self.count.to(self.dtype)

    # ------------------------------------------------------------------ updates
    @torch.no_grad()
    def update(self, x: torch.Tensor) -> RunningMoments:
        """Add the rows of ``x`` (shape ``(N, *shape)``); returns ``self``."""
        check_tensor(x, "x")
        if x.is_complex():
            raise TypeError(f"x must be a real tensor, got dtype {x.dtype}")
        if x.dim() != len(self.shape) + 1 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(
                f"x must have shape (N, *{self.shape}) (a batch of values of this RunningMoments' shape), "
                f"got {tuple(x.shape)}"
            )
        nb = x.shape[0]
        if nb == 0:
            return self
        x = x.to(device=self.mean.device, dtype=self.dtype)
        # Two passes over the batch: centring on the batch's own mean first keeps the
        # deviations small, so their powers carry no cancellation (values near 1e8 with
        # variance 1 keep their variance to round-off).
        mb = x.mean(0)
        d = x - mb
        d2 = d * d
        m2b, m3b, m4b = d2.sum(0), (d2 * d).sum(0), (d2 * d2).sum(0)
        n, mean, m2, m3, m4 = _merge_stats(self._n(), self.mean, self.m2, self.m3, self.m4,
                                           float(nb), mb, m2b, m3b, m4b)
        self._assign(self.count + nb, mean, m2, m3, m4)
        return self

    @torch.no_grad()
    def merge(self, other: RunningMoments) -> RunningMoments:
        """Add the values summarized by ``other`` (Chan/Pébay pairwise update); returns ``self``."""
        if not isinstance(other, RunningMoments):
            raise TypeError(f"other must be a RunningMoments, got {type(other).__name__}")
        if other.shape != self.shape:
            raise ValueError(f"other must have the same shape as this RunningMoments {self.shape}, got {other.shape}")
        o = [t.to(device=self.mean.device, dtype=self.dtype) for t in (other.mean, other.m2, other.m3, other.m4)]
        n_other = other.count.to(self.count.device)
        _, mean, m2, m3, m4 = _merge_stats(self._n(), self.mean, self.m2, self.m3, self.m4, n_other.to(self.dtype), *o)
        self._assign(self.count + n_other, mean, m2, m3, m4)
        return self

    @torch.no_grad()
    def all_reduce(self, group=None) -> RunningMoments:
        """Replace the state on every rank by the statistics of the union of all ranks' values.

        A collective: call it on every rank of ``group`` (default: the world). Shards may hold
        different counts (also 0). Each rank's state is gathered and merged in rank order,
        so every rank ends with bit-identical statistics. Calling it twice counts every value
        twice (the state already is the union after the first call). The identity without a
        process group. Returns ``self``.
        """
        from .. import distributed

        if not distributed.is_distributed(group):
            return self
        # Counts travel as int64 (exact), the sums as float64; both gathers check on every
        # rank that the shapes agree (a ValueError on every rank, never a hang).
        counts = distributed.gather_no_grad(self.count.reshape(1), group=group)
        local = torch.stack([t.to(torch.float64) for t in (self.mean, self.m2, self.m3, self.m4)])
        rows = distributed.gather_no_grad(local.unsqueeze(0), group=group)
        zero = torch.zeros(self.shape, dtype=torch.float64, device=rows.device)
        acc = (torch.zeros((), dtype=torch.float64, device=rows.device), zero, zero, zero, zero)
        for r in range(rows.shape[0]):  # rank order: the same arithmetic, hence the same bits, on every rank
            acc = _merge_stats(*acc, counts[r].to(torch.float64), *rows[r].unbind(0))
        self._assign(counts.sum(), *(t.to(self.dtype) for t in acc[1:]))
        return self

    # ------------------------------------------------------------------ statistics
    @property
    def var(self) -> torch.Tensor:
        """Sample variance ``M2 / (n - 1)`` (``ddof=1``, like ``torch.var``; unbiased)."""
        # clamp: with count 0 the denominator is 0 (NaN, as for count 1), not -1 (a -0 variance)
        return self.m2 / (self._n() - 1).clamp_min(0)

    @property
    def var_population(self) -> torch.Tensor:
        """Population variance ``M2 / n`` (``ddof=0``)."""
        return self.m2 / self._n()

    @property
    def std(self) -> torch.Tensor:
        """``sqrt(var)`` (``ddof=1``)."""
        return self.var.sqrt()

    @property
    def stderr(self) -> torch.Tensor:
        """Standard error of :attr:`mean`, ``sqrt(var / n)``."""
        return (self.var / self._n()).sqrt()

    @property
    def skewness(self) -> torch.Tensor:
        """``(M3/n) / (M2/n)^{3/2}``: ``scipy.stats.skew(bias=True)``; NaN for zero variance."""
        n = self._n()
        return (self.m3 / n) / (self.m2 / n) ** 1.5

    @property
    def kurtosis(self) -> torch.Tensor:
        """Excess kurtosis ``(M4/n) / (M2/n)^2 - 3``: ``scipy.stats.kurtosis`` (Fisher, ``bias=True``)."""
        n = self._n()
        return (self.m4 / n) / (self.m2 / n) ** 2 - 3.0
