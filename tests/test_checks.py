import pytest
import torch

import losslab
from losslab import _checks as C


def test_messages_name_argument_and_values():
    with pytest.raises(ValueError, match=r"logits and target must have the same shape, got logits \(2, 3\) and target \(3,\)"):
        C.check_same_shape(torch.zeros(2, 3), torch.zeros(3), ("logits", "target"))
    with pytest.raises(TypeError, match="logits must be a floating-point tensor, got dtype torch.int64"):
        C.check_floating(torch.zeros(2, dtype=torch.long), "logits")
    with pytest.raises(ValueError, match=r"class index 5 outside \[0, 3\)"):
        C.check_class_target(torch.tensor([0, 5]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"q must be a finite number > 0, got 0"):
        C.check_positive(0, "q")
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0.0, 1.0\], got 1.5"):
        C.check_in_range(1.5, "label_smoothing", 0.0, 1.0)
    with pytest.raises(ValueError, match="must sum to 1"):
        C.check_probabilities(torch.tensor([[0.5, 0.6]]), "target")
    with pytest.raises(ValueError, match="non-negative"):
        C.check_probabilities(torch.tensor([[1.5, -0.5]]), "target")


def test_ignore_index_is_allowed_in_target():
    C.check_class_target(torch.tensor([0, -100, 2]), torch.zeros(3, 3), ignore_index=-100)


def test_value_checks_can_be_switched_off():
    bad = torch.tensor([0, 7])
    with losslab.validation(False):
        assert not losslab.validation_enabled()
        C.check_class_target(bad, torch.zeros(2, 3))  # no value check, no raise
    assert losslab.validation_enabled()
    losslab.set_validation(False)
    C.check_probabilities(torch.tensor([[2.0, 2.0]]), "p")
    losslab.set_validation(True)
    with pytest.raises(ValueError):
        C.check_probabilities(torch.tensor([[2.0, 2.0]]), "p")


def test_index_check():
    with pytest.raises(ValueError, match=r"index must have shape \(3,\)"):
        C.check_index(torch.tensor([0, 1]), "index", length=3, size=10)
    with pytest.raises(ValueError, match=r"value 10 outside \[0, 10\)"):
        C.check_index(torch.tensor([0, 1, 10]), "index", length=3, size=10)


def test_bfloat16_softmax_rows_pass_the_probability_checks_and_a_wrong_row_does_not():
    from losslab._checks import check_probabilities, probability_sum_atol
    from losslab.estimators import CalibrationError
    from losslab.functional import expected_calibration_error

    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(4000, 7, generator=gen), -1).bfloat16()
    err = float((probs.double().sum(-1) - 1).abs().max())
    assert 1e-3 < err <= probability_sum_atol(torch.bfloat16, 7)  # rounding alone exceeds the old 1e-3
    target = torch.randint(0, 7, (4000,), generator=gen)
    check_probabilities(probs, "probs")
    metric = CalibrationError()
    metric.update(probs, target)
    torch.testing.assert_close(metric.compute().float(), expected_calibration_error(probs, target), atol=1e-6, rtol=0)
    bad = probs.clone()
    bad[0] = bad[0] * 1.05
    with pytest.raises(ValueError, match="sum to 1"):
        expected_calibration_error(bad, target)
    with pytest.raises(ValueError, match="sum to 1"):
        check_probabilities(bad, "probs")
