import pytest
import torch

import losslab
from losslab.registry import Reference, register, register_module

REF = Reference("A title", "Someone", 2020, "https://example.org/paper")


def test_get_info_list():
    assert losslab.get("cross_entropy") is losslab.functional.cross_entropy
    info = losslab.info("cross_entropy")
    assert info.family == "classification" and info.module is losslab.nn.CrossEntropyLoss
    assert "cross_entropy" in losslab.list_losses("*entropy*")
    assert losslab.list_losses("*entropy*", family="no-such-family") == []
    assert "classification" in losslab.families()


def test_unknown_name_suggests():
    with pytest.raises(KeyError, match="no objective named 'entropy_cross'"):
        losslab.get("entropy_cross")
    with pytest.raises(KeyError, match="did you mean"):
        losslab.info("cross")


def test_duplicate_name_raises():
    with pytest.raises(ValueError, match="already registered"):
        register("cross_entropy", family="x", reference=REF)(lambda x: x)


def test_register_module_needs_known_objective():
    with pytest.raises(ValueError, match="no objective named"):
        register_module("not_registered_anywhere")(type("M", (torch.nn.Module,), {}))


def test_registering_changes_no_behaviour():
    def f(x):
        return x * 2

    g = register("_test_identity_objective", family="test", reference=REF)(f)
    try:
        assert g is f
    finally:
        from losslab.registry import _REGISTRY

        del _REGISTRY["_test_identity_objective"]


def test_module_rejects_unknown_hyperparameter():
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        losslab.nn.CrossEntropyLoss(smoothing=0.1)


def test_module_weight_is_buffer_and_in_state_dict():
    m = losslab.nn.CrossEntropyLoss(weight=torch.ones(3), label_smoothing=0.1)
    assert "weight" in m.state_dict()
    assert "label_smoothing=0.1" in repr(m)
