import pytest
import torch

from losslab._reduction import reduce


def test_reductions_plain():
    x = torch.tensor([1.0, 2.0, 6.0])
    assert reduce(x, "none") is x
    assert reduce(x, "sum").item() == 9.0
    assert reduce(x, "mean").item() == 3.0


def test_weighted_mean_is_torch_rule():
    x = torch.tensor([1.0, 2.0, 6.0])
    w = torch.tensor([1.0, 0.0, 3.0])
    # sum(w * x) / sum(w) = (1 + 18) / 4
    assert reduce(x, "mean", weight=w).item() == pytest.approx(19 / 4)
    assert reduce(x, "sum", weight=w).item() == pytest.approx(19.0)
    torch.testing.assert_close(reduce(x, "none", weight=w), w * x)


def test_mask_drops_nan_and_denominator():
    x = torch.tensor([1.0, float("nan"), 3.0])
    m = torch.tensor([True, False, True])
    assert reduce(x, "mean", mask=m).item() == 2.0
    assert reduce(x, "none", mask=m).tolist() == [1.0, 0.0, 3.0]


def test_normalizer_overrides_weight_denominator():
    x = torch.tensor([2.0, 4.0])
    assert reduce(x, "mean", normalizer=torch.tensor([1.0, 3.0])).item() == pytest.approx(6 / 4)


def test_nothing_kept_gives_zero_and_zero_grad():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    out = reduce(x * 3, "mean", mask=torch.tensor([False, False]))
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(x.grad, torch.zeros(2))
    assert reduce(torch.zeros(0), "mean").item() == 0.0


def test_unknown_reduction():
    with pytest.raises(ValueError, match="reduction must be one of"):
        reduce(torch.ones(2), "batchmean")
