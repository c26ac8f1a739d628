"""The conformance checklist (DESIGN.md, "Testing"), run for every registered objective.

A new objective gets every check here by registering with an :class:`losslab.Example`.
"""
from __future__ import annotations

import inspect

import pytest
import torch

import losslab
from losslab.registry import LossInfo

NAMES = losslab.list_losses()


def _info(name: str) -> LossInfo:
    info = losslab.info(name)
    assert info.example is not None, f"{name} is registered without an Example input factory"
    return info


def _make(info: LossInfo, seed: int = 0, mismatch: bool = False):
    gen = torch.Generator().manual_seed(seed)
    factory = info.example.mismatch if mismatch else info.example.make
    return factory(gen)


def _cast(args, dtype, positions=None):
    out = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor) and a.is_floating_point() and (positions is None or i in positions):
            a = a.to(dtype)
        out.append(a)
    return tuple(out)


def _loss(info: LossInfo, value):
    return info.example.output(value) if info.example.output is not None else value


def _call(info: LossInfo, args, kwargs, **extra):
    return _loss(info, info.function(*args, **{**kwargs, **extra}))


def _float_positions(info: LossInfo, args):
    if info.example.grad is not None:
        return tuple(info.example.grad)
    return tuple(i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point())


@pytest.mark.parametrize("name", NAMES)
def test_registered_and_documented(name):
    info = _info(name)
    assert info.reference.title and info.reference.year and info.reference.url.startswith("http")
    assert getattr(losslab.functional, name) is info.function, f"{name} is not exported from losslab.functional"
    assert name in losslab.functional.__all__
    doc = inspect.getdoc(info.function) or ""
    for section in ("Args:", "Shape:", "Example:", "References:"):
        assert section in doc, f"{name}'s docstring lacks a {section!r} section"
    assert ">>>" in doc, f"{name}'s docstring has no runnable example"
    if info.properties.get("module_required", True):
        assert info.module is not None, f"{name} has no nn.Module wrapper"
        assert getattr(losslab.nn, info.module.__name__) is info.module


@pytest.mark.parametrize("name", NAMES)
def test_smoke_and_shapes(name):
    info = _info(name)
    args, kwargs = _make(info)
    out = _call(info, args, kwargs)
    assert isinstance(out, torch.Tensor)
    assert torch.isfinite(out).all()
    if not info.supports_reduction:
        return
    assert out.dim() == 0, "default reduction must give a scalar"
    none = _call(info, args, kwargs, reduction="none")
    total = _call(info, args, kwargs, reduction="sum")
    mean = _call(info, args, kwargs, reduction="mean")
    assert none.dim() >= 1, "reduction='none' must keep the per-sample / per-element dimension"
    assert total.dim() == 0 and mean.dim() == 0
    torch.testing.assert_close(total, none.sum(), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="reduction"):
        _call(info, args, kwargs, reduction="average")


@pytest.mark.parametrize("name", NAMES)
def test_module_equals_function(name):
    info = _info(name)
    if info.module is None or any(
        info.properties.get(k) for k in ("needs_index", "stateful_module", "module_owns_parameters")
    ):
        pytest.skip("no stateless module (stateful / parameter-owning modules are tested in their family's tests)")
    args, kwargs = _make(info)
    mkw = info.example.module_kwargs(kwargs) if info.example.module_kwargs else kwargs
    module = info.module(**mkw)
    assert isinstance(module, torch.nn.Module)
    torch.testing.assert_close(_loss(info, module(*args)), _call(info, args, kwargs), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    info = _info(name)
    if not info.differentiable:
        pytest.skip("not differentiable (documented)")
    args, kwargs = _make(info)
    positions = _float_positions(info, args)
    if not positions:
        pytest.skip("no differentiable inputs")
    inputs = [args[i].detach().clone().requires_grad_(True) for i in positions]

    def fn(*xs):
        full = list(args)
        for i, x in zip(positions, xs):
            full[i] = x
        return _call(info, full, kwargs)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_float32_matches_float64(name):
    info = _info(name)
    args, kwargs = _make(info)
    out64 = _call(info, args, kwargs)
    out32 = _call(info, _cast(args, torch.float32), kwargs)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_computed_in_float32(name, low):
    """Half inputs give a finite float32 loss equal to the float32 loss of the same (rounded) inputs."""
    info = _info(name)
    args, kwargs = _make(info)
    low_args = _cast(args, low)
    out_low = _call(info, low_args, kwargs)
    assert out_low.dtype == torch.float32, f"{low} input must give a float32 loss, got {out_low.dtype}"
    assert torch.isfinite(out_low).all()
    out32 = _call(info, _cast(low_args, torch.float32), kwargs)
    torch.testing.assert_close(out_low, out32, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_extreme_logits_stay_finite(name):
    info = _info(name)
    if not info.example.logits:
        pytest.skip("no logit-like inputs")
    args, kwargs = _make(info)
    args = list(_cast(args, torch.float32))
    for i in info.example.logits:
        a = args[i]
        args[i] = (a / a.abs().max().clamp_min(1e-12) * 1e4).detach().requires_grad_(info.differentiable)
    out = _call(info, args, kwargs)
    assert torch.isfinite(out).all(), f"loss not finite for logits of magnitude 1e4: {out}"
    if info.differentiable:
        grads = torch.autograd.grad(out.sum(), [args[i] for i in info.example.logits], allow_unused=True)
        for g in grads:
            assert g is None or torch.isfinite(g).all(), "gradient not finite for logits of magnitude 1e4"


@pytest.mark.parametrize("name", NAMES)
def test_shape_mismatch_raises_value_error(name):
    info = _info(name)
    if info.example.mismatch is None:
        pytest.fail(f"{name}'s Example has no mismatch factory")
    args, kwargs = _make(info, mismatch=True)
    with pytest.raises(ValueError):
        _call(info, args, kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_validation_off_gives_same_value(name):
    info = _info(name)
    args, kwargs = _make(info)
    ref = _call(info, args, kwargs)
    with losslab.validation(False):
        out = _call(info, args, kwargs)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
