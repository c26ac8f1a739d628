"""Property tests of the contract: shapes and special values drawn, not only a seed.

For every registered objective of the form ``f(logits, target, ...)`` with integer class
targets, hypothesis draws the batch shape (including extra leading dimensions and a batch
of one), ties between logits, ``-inf`` logits of classes that are not the target (a class
with probability zero, legal input), ignored targets and zero class weights where the
objective accepts them. Whatever is drawn, the loss and its gradient are finite and the
reduction contract holds.
"""
from __future__ import annotations

import inspect

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import losslab
from losslab.functional._examples import class_weighted_mean


def _class_target_objectives() -> list[str]:
    out = []
    for name in losslab.list_losses():
        info = losslab.info(name)
        params = list(inspect.signature(info.function).parameters.values())
        if len(params) >= 2 and params[0].name == "logits" and params[1].name == "target" \
                and params[1].default is inspect.Parameter.empty and info.supports_reduction \
                and not any(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in params[2:]) \
                and info.properties.get("input_kind") == "logits" and info.example is not None:
            out.append(name)
    return out


CLASS_TARGET = _class_target_objectives()


def test_the_property_suite_covers_the_classification_losses():
    for name in ("cross_entropy", "focal_loss", "generalized_cross_entropy", "comp_sum_loss", "ldr_kl_loss"):
        assert name in CLASS_TARGET


@st.composite
def _batches(draw, accepts_weight: bool, accepts_ignore: bool):
    lead = draw(st.sampled_from([(1,), (4,), (2, 3)]))
    c = draw(st.integers(2, 6))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
    # Small integer logits make ties common (equal logits in a row, equal rows).
    logits = torch.randint(-2, 3, (*lead, c), generator=gen).double() * draw(st.sampled_from([0.5, 1.0, 3.0]))
    target = torch.randint(0, c, lead, generator=gen)
    if draw(st.booleans()):
        # -inf on one class that is never a target: a zero-probability class.
        dead = draw(st.integers(0, c - 1))
        target = torch.where(target == dead, (dead + 1) % c, target)
        logits[..., dead] = float("-inf")
    kwargs = {}
    if accepts_ignore and draw(st.booleans()):
        target = target.clone()
        target.view(-1)[0] = -100
    if accepts_weight and draw(st.booleans()):
        w = torch.rand(c, generator=gen, dtype=torch.float64) + 0.1
        if draw(st.booleans()):
            w[draw(st.integers(0, c - 1))] = 0.0  # zero class weight
        kwargs["weight"] = w
    return logits, target, kwargs


@pytest.mark.parametrize("name", CLASS_TARGET)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_drawn_batches_keep_the_contract(name, data):
    info = losslab.info(name)
    params = inspect.signature(info.function).parameters
    (logits0, *_), base_kwargs = info.example.make(torch.Generator().manual_seed(0))
    logits, target, extra = data.draw(_batches("weight" in params, "ignore_index" in params))
    c0, c = logits0.shape[-1], logits.shape[-1]
    # Per-class constants of the example (a prior) are redrawn for the drawn class count:
    # positive and normalized, so they are valid for any objective that takes one.
    base_kwargs = {
        k: (torch.linspace(1.0, 2.0, c, dtype=v.dtype) / torch.linspace(1.0, 2.0, c, dtype=v.dtype).sum()
            if isinstance(v, torch.Tensor) and v.shape == (c0,) else v)
        for k, v in base_kwargs.items() if k != "weight"
    }
    if info.properties.get("neg_inf_unsupported") and torch.isinf(logits).any():
        return
    kwargs = {**base_kwargs, **extra}
    x = logits.clone().requires_grad_(True)
    none = info.function(x, target, **kwargs, reduction="none")
    total = info.function(x, target, **kwargs, reduction="sum")
    mean = info.function(x, target, **kwargs, reduction="mean")
    assert torch.isfinite(none).all(), f"non-finite per-sample loss {none}"
    torch.testing.assert_close(total, none.sum(), rtol=1e-10, atol=1e-12)
    rule = info.example.mean_rule
    expected = class_weighted_mean(none, (x, target), kwargs) if rule is None and "ignore_index" in params \
        else (rule(none, (x, target), kwargs) if rule is not None else none.mean())
    torch.testing.assert_close(mean, expected, rtol=1e-10, atol=1e-12)
    (g,) = torch.autograd.grad(mean, x)
    finite_logit = torch.isfinite(logits)
    assert torch.isfinite(g[finite_logit]).all(), "gradient not finite"
    assert not g[~finite_logit].isnan().any(), "NaN gradient on a -inf logit"
