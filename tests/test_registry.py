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


def test_cli_and_info_suggest_the_same_names():
    from losslab.cli.main import main

    with pytest.raises(KeyError) as exc:
        losslab.info("crossentropy")
    assert "'cross_entropy'" in str(exc.value)
    assert losslab.registry.suggest("crossentropy")[0] == "cross_entropy"
    assert losslab.registry.suggest("sinkhorn_div")[0] == "sinkhorn_divergence"
    assert main(["info", "crossentropy"]) == 2


@pytest.mark.parametrize("pattern, expected", [
    ("*noisy*", {"generalized_cross_entropy", "comp_sum_loss", "ldr_kl_loss"}),
    ("*long*tail*", {"logit_adjusted_cross_entropy"}),
    ("*distribut*", {"sinkhorn_divergence", "mmd"}),
])
def test_list_searches_summaries_titles_and_tags(pattern, expected):
    """A user searching by what they need ("noisy labels", "long-tailed") finds the objectives
    whose summaries, papers or tags say so, not only those whose names do."""
    found = set(losslab.list_losses(pattern))
    assert expected <= found, f"{pattern!r} misses {sorted(expected - found)}"


def test_noise_robust_tag_is_consistent():
    """Every objective marked noise_robust=True is found by '*noisy*'."""
    robust = {n for n in losslab.list_losses() if losslab.info(n).properties.get("noise_robust")}
    assert robust and robust <= set(losslab.list_losses("*noisy*"))


def test_module_checks_hyperparameters_at_construction():
    with pytest.raises(ValueError, match="label_smoothing"):
        losslab.nn.CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="reduction"):
        losslab.nn.CrossEntropyLoss(reduction="avg")


def test_module_rejects_per_batch_tensors_in_init():
    with pytest.raises(TypeError, match="mask"):
        losslab.nn.KLDivergence(mask=torch.ones(3, dtype=torch.bool))
    p, q = torch.randn(3, 4), torch.randn(3, 4)
    m = torch.tensor([True, False, True])
    torch.testing.assert_close(losslab.nn.KLDivergence()(p, q, mask=m),
                               losslab.functional.kl_divergence(p, q, mask=m))
