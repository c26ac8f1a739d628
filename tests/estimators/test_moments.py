"""RunningMoments against NumPy/SciPy on the concatenation of the batches it saw.

References: ``numpy.mean``/``numpy.var`` (ddof 0 and 1), ``scipy.stats.skew(bias=True)`` and
``scipy.stats.kurtosis(fisher=True, bias=True)``, all two-pass on the whole concatenated
array; merges in every order; 2 gloo processes with uneven shards (tests/_spawn.py).
"""
import itertools

import numpy as np
import pytest
import torch
from _spawn import spawn

from losslab.estimators import RunningMoments

st = pytest.importorskip("scipy.stats")


def _data(seed=0, n=200, shape=(3,)):
    rng = np.random.default_rng(seed)
    # skewed and heavy-tailed columns so that skewness and kurtosis are far from 0
    return rng.standard_normal((n, *shape)) ** 3 + rng.exponential(size=(n, *shape))


def _assert_matches(m, x):
    np.testing.assert_allclose(int(m.count), x.shape[0])
    np.testing.assert_allclose(m.mean.numpy(), x.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.var.numpy(), x.var(0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(m.var_population.numpy(), x.var(0, ddof=0), rtol=1e-12)
    np.testing.assert_allclose(m.std.numpy(), x.std(0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(m.stderr.numpy(), x.std(0, ddof=1) / np.sqrt(x.shape[0]), rtol=1e-12)
    np.testing.assert_allclose(m.skewness.numpy(), st.skew(x, axis=0, bias=True), rtol=1e-10)
    np.testing.assert_allclose(m.kurtosis.numpy(), st.kurtosis(x, axis=0, fisher=True, bias=True), rtol=1e-10)


@pytest.mark.parametrize("shape", [(), (3,), (2, 2)])
@pytest.mark.parametrize("cuts", [[200], [1, 199], [50, 0, 37, 1, 112], [7] * 28 + [4]])
def test_streaming_equals_scipy_on_the_concatenation(shape, cuts):
    x = _data(shape=shape)
    m = RunningMoments(shape)
    start = 0
    for c in cuts:
        m.update(torch.from_numpy(x[start:start + c]))
        start += c
    assert start == x.shape[0]
    _assert_matches(m, x)
    assert m.mean.shape == shape and m.kurtosis.dtype == torch.float64


def test_merge_in_any_order_and_any_tree_equals_the_concatenation():
    x = _data(seed=1)
    parts = np.split(x, [13, 90, 91, 150])  # uneven, one of size 1
    for order in itertools.permutations(range(len(parts))):
        ms = [RunningMoments(3).update(torch.from_numpy(parts[i])) for i in order]
        left = ms[0]
        for other in ms[1:]:
            left.merge(other)
        _assert_matches(left, np.concatenate([parts[i] for i in order]))
    # a balanced tree ((0 1) (2 (3 4))) with an empty accumulator merged in between
    ms = [RunningMoments(3).update(torch.from_numpy(p)) for p in parts]
    tree = ms[0].merge(ms[1]).merge(RunningMoments(3)).merge(ms[2].merge(ms[3].merge(ms[4])))
    _assert_matches(tree, x)
    # merging into an empty accumulator copies the other's statistics
    _assert_matches(RunningMoments(3).merge(RunningMoments(3).update(torch.from_numpy(x))), x)


def test_variance_of_values_near_1e8_keeps_six_digits_where_the_naive_formula_fails():
    """The issue's stability claim: values near 1e8 with variance 1."""
    rng = np.random.default_rng(2)
    x = 1e8 + rng.standard_normal(10_000)
    # Exact reference: x - 1e8 is computed without rounding (Sterbenz: both operands are within a
    # factor 2), and the shifted values have mean ~0, where the two-pass variance is exact to round-off.
    exact = np.var(x - 1e8, ddof=1)
    m = RunningMoments()
    for chunk in np.array_split(x, 17):
        m.update(torch.from_numpy(chunk))
    # the issue asks for 6 digits; the README states 8 (observed: 5e-10 relative error)
    assert abs(float(m.var) - exact) / exact < 1e-8
    one_batch = RunningMoments().update(torch.from_numpy(x))
    assert abs(float(one_batch.var) - exact) / exact < 1e-8
    # the textbook one-pass formula on the same float64 data loses every digit
    t = torch.from_numpy(x)
    naive = float(((t * t).sum() - t.sum() ** 2 / t.numel()) / (t.numel() - 1))
    assert abs(naive - exact) / exact > 0.5


def test_low_precision_and_integer_inputs_accumulate_in_the_accumulator_dtype():
    x = torch.from_numpy(_data(seed=3)).to(torch.bfloat16)
    m = RunningMoments(3).update(x)
    _assert_matches(m, x.double().numpy())
    i = torch.arange(10).reshape(10, 1)
    np.testing.assert_allclose(RunningMoments(1).update(i).var.numpy(), [np.var(np.arange(10), ddof=1)])
    m32 = RunningMoments(3, dtype=torch.float32).update(torch.from_numpy(_data(seed=3)))
    assert m32.var.dtype == torch.float32
    np.testing.assert_allclose(m32.var.numpy(), _data(seed=3).var(0, ddof=1), rtol=1e-5)


def test_degenerate_counts_give_nan_like_numpy():
    m = RunningMoments()
    assert int(m.count) == 0 and torch.isnan(m.var_population) and torch.isnan(m.var) and torch.isnan(m.stderr)
    m.update(torch.tensor([3.0]))
    assert float(m.mean) == 3.0 and float(m.var_population) == 0.0 and torch.isnan(m.var)
    m.update(torch.tensor([3.0, 3.0]))
    assert float(m.var) == 0.0 and torch.isnan(m.skewness) and torch.isnan(m.kurtosis)


def test_nan_propagates_to_its_element_only():
    x = torch.from_numpy(_data(seed=4))
    x[5, 1] = float("nan")
    m = RunningMoments(3).update(x)
    assert torch.isnan(m.mean[1]) and torch.isnan(m.var[1]) and torch.isfinite(m.var[[0, 2]]).all()


def test_bad_input_names_the_argument():
    m = RunningMoments(3)
    with pytest.raises(ValueError, match="x must have shape"):
        m.update(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="x must have shape"):
        m.update(torch.zeros(3))
    with pytest.raises(ValueError, match="other"):
        m.merge(RunningMoments(2))
    with pytest.raises(TypeError, match="other"):
        m.merge(torch.zeros(3))
    with pytest.raises(TypeError, match="dtype"):
        RunningMoments(dtype=torch.float16)
    with pytest.raises(TypeError, match="x"):
        m.update([1.0, 2.0])


def test_state_dict_round_trip_resumes_exactly():
    x = torch.from_numpy(_data(seed=5))
    a = RunningMoments(3).update(x[:70])
    b = RunningMoments(3)
    b.load_state_dict({k: v.clone() for k, v in a.state_dict().items()})
    assert set(a.state_dict()) == {"count", "mean", "m2", "m3", "m4"}
    a.update(x[70:])
    b.update(x[70:])
    for k in a.state_dict():
        torch.testing.assert_close(b.state_dict()[k], a.state_dict()[k], rtol=0, atol=0)
    a.reset()
    assert int(a.count) == 0 and not a.m2.any()
    # the state is in buffers: it follows .to() with the module
    assert a.to(torch.float32).mean.dtype == torch.float32


def test_all_reduce_is_the_identity_without_a_process_group():
    x = torch.from_numpy(_data(seed=6))
    m = RunningMoments(3).update(x)
    _assert_matches(m.all_reduce(), x.numpy())


SHARDS = {0: (0, 23), 1: (23, 200)}  # uneven shards of _data(seed=7)


def _worker(rank, world, out):
    x = torch.from_numpy(_data(seed=7))
    lo, hi = SHARDS[rank]
    m = RunningMoments(3)
    for chunk in torch.split(x[lo:hi], 10):
        m.update(chunk)
    m.all_reduce()
    out[f"state{rank}"] = {k: v.clone() for k, v in m.state_dict().items()}
    # one shard empty: rank 1 holds nothing
    e = RunningMoments(3)
    if rank == 0:
        e.update(x)
    out[f"empty{rank}"] = {k: v.clone() for k, v in e.all_reduce().state_dict().items()}
    # a shape disagreement raises on every rank (no hang)
    try:
        RunningMoments(3 if rank == 0 else 2).all_reduce()
        out[f"mismatch{rank}"] = "no error"
    except ValueError as exc:
        out[f"mismatch{rank}"] = str(exc)


def test_all_reduce_on_two_gloo_processes_with_uneven_shards():
    out = spawn(_worker)
    x = _data(seed=7)
    for key in ("state", "empty"):
        s0, s1 = out[f"{key}0"], out[f"{key}1"]
        for k in s0:  # every rank ends with bit-identical statistics
            torch.testing.assert_close(s1[k], s0[k], rtol=0, atol=0)
        m = RunningMoments(3)
        m.load_state_dict(s0)
        _assert_matches(m, x)
    assert "same shape" in out["mismatch0"] and "same shape" in out["mismatch1"]
