"""Streaming CalibrationError: equals expected_calibration_error on the concatenated data
(itself tested against torchmetrics and loops in tests/functional/test_calibration.py),
O(n_bins) state, merge/reset/state_dict, and the all-reduce on 2 gloo processes with uneven
shards (tests/_spawn.py)."""
from __future__ import annotations

import pytest
import torch
from _spawn import spawn

from losslab.estimators import CalibrationError
from losslab.functional import expected_calibration_error


def _data(n=1000, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * 2
    logits[torch.arange(n), target] += 1.0
    probs = torch.softmax(logits, -1)
    probs[:5] = torch.nn.functional.one_hot(target[:5] * 0, c).double()  # confidences of exactly 1.0
    return probs, target


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_streaming_equals_functional_on_the_concatenation(norm, n_bins):
    probs, target = _data()
    metric = CalibrationError(n_bins=n_bins, norm=norm)
    for start, stop in [(0, 1), (1, 333), (333, 333), (333, 1000)]:  # uneven and empty batches
        metric.update(probs[start:stop], target[start:stop])
    ref = expected_calibration_error(probs, target, n_bins=n_bins, norm=norm)
    torch.testing.assert_close(metric.compute(), ref, rtol=1e-13, atol=1e-15)


def test_state_is_o_n_bins_and_float64_whatever_the_stream():
    metric = CalibrationError(n_bins=15)
    before = {k: (v.shape, v.dtype) for k, v in metric.state_dict().items()}
    for seed in range(3):
        p, t = _data(n=5000, seed=seed)
        metric.update(p.float(), t)
    after = {k: (v.shape, v.dtype) for k, v in metric.state_dict().items()}
    assert before == after == {k: (torch.Size([15]), torch.float64) for k in ("count", "conf_sum", "acc_sum")}
    assert float(metric.count.sum()) == 15000


def test_merge_reset_state_dict_and_binary_and_half():
    probs, target = _data(n=600, seed=3)
    a, b = CalibrationError(n_bins=12, norm="l2"), CalibrationError(n_bins=12, norm="l2")
    a.update(probs[:200], target[:200])
    b.update(probs[200:], target[200:])
    a.merge(b)
    torch.testing.assert_close(a.compute(), expected_calibration_error(probs, target, n_bins=12, norm="l2"))
    c = CalibrationError(n_bins=12, norm="l2")
    c.load_state_dict(a.state_dict())
    torch.testing.assert_close(c.compute(), a.compute(), rtol=0, atol=0)
    a.reset()
    assert float(a.compute()) == 0.0 and not a.count.any()
    with pytest.raises(ValueError, match="n_bins"):
        a.merge(CalibrationError(n_bins=3))
    # binary positive-class probabilities
    p1, y1 = probs[:, 0], (target == 0).long()
    m = CalibrationError(n_bins=8)
    m.update(p1[:300], y1[:300]).update(p1[300:], y1[300:])
    torch.testing.assert_close(m.compute(), expected_calibration_error(p1, y1, n_bins=8))
    # bfloat16 probabilities are binned as their (exact) float32 values
    pb = torch.tensor([[0.5, 0.25, 0.25], [0.125, 0.75, 0.125], [0.875, 0.0625, 0.0625]])
    yb = torch.tensor([0, 2, 0])
    m = CalibrationError(n_bins=8)
    m.update(pb.bfloat16(), yb)
    torch.testing.assert_close(m.compute().float(), expected_calibration_error(pb, yb, n_bins=8))


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_bins"):
        CalibrationError(n_bins=0)
    with pytest.raises(ValueError, match="norm"):
        CalibrationError(norm="l3")
    with pytest.raises(ValueError, match="probs"):
        CalibrationError().update(torch.full((2, 2), 0.7), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        CalibrationError().update(torch.full((2, 2), 0.5), torch.zeros(3, dtype=torch.long))


def _worker(rank, world_size, out):
    from losslab.estimators import CalibrationError

    probs, target = _data(n=1001, seed=7)
    cut = 300  # uneven shards: 300 and 701 samples
    lo, hi = (0, cut) if rank == 0 else (cut, 1001)
    res = {}
    for norm in ("l1", "l2", "max"):
        metric = CalibrationError(n_bins=10, norm=norm)
        metric.update(probs[lo:hi], target[lo:hi])
        first = metric.compute()
        second = metric.compute()  # compute does not double count
        res[norm] = (float(first), float(second), float(metric.compute(sync=False)), float(metric.count.sum()))
    out[rank] = res


def test_two_processes_all_reduce_to_the_global_value():
    out = spawn(_worker)
    probs, target = _data(n=1001, seed=7)
    for norm in ("l1", "l2", "max"):
        ref = float(expected_calibration_error(probs, target, n_bins=10, norm=norm))
        local0 = float(expected_calibration_error(probs[:300], target[:300], n_bins=10, norm=norm))
        for rank in (0, 1):
            first, second, local, count = out[rank][norm]
            assert first == pytest.approx(ref, rel=1e-12) and second == first
            assert count == (300 if rank == 0 else 701)  # the local state is unchanged
        assert out[0][norm][2] == pytest.approx(local0, rel=1e-12)
