"""The conformance checklist (CONTRIBUTING.md, "Testing"), run for every registered objective.

A new objective gets every check here by registering with an :class:`losslab.registry.Example`.
What each test proves is the contract stated in CONTRIBUTING.md:

* documentation, export and Module of every objective;
* the reduction contract (``"sum" == "none".sum()``, ``"mean"`` equals the documented rule
  computed from ``"none"``, on the plain inputs and on variants with class weights,
  ``ignore_index`` and extra leading dimensions; a batch with nothing kept gives 0 with
  zero gradients); single-number objectives are ``batch_level`` and return a scalar;
* bad input raises ``ValueError`` whose message names the argument;
* float64 gradcheck, float32 agreement, half precision values *and* gradients;
* extreme inputs (every input kind scaled to magnitude 1e4) stay finite or raise a clear
  ``ValueError``; a NaN input never gives a finite loss;
* Modules take per-batch tensors in ``forward``, check hyperparameters at construction,
  and stateful ones round-trip ``state_dict``;
* ``torch.compile`` (``aot_eager``, full graph unless the registry records a graph break)
  equals eager in values and gradients.
"""
from __future__ import annotations

import inspect

import pytest
import torch

import losslab
from losslab.registry import LossInfo

NAMES = losslab.list_losses()
HALF = [torch.bfloat16, torch.float16]


# --------------------------------------------------------------------------- helpers
def _info(name: str) -> LossInfo:
    info = losslab.info(name)
    assert info.example is not None, f"{name} is registered without an Example input factory"
    return info


def _namespace(info: LossInfo):
    """Where a registered name is exported: estimators from losslab.estimators, the rest from functional."""
    return losslab.estimators if info.family == "estimators" else losslab.functional


def _tensor_info(name: str) -> LossInfo:
    """The info of an objective called as ``f(*tensors) -> tensor``; streaming estimators
    (classes with update/compute, registered ``streaming=True``) are tested in their family's tests."""
    info = _info(name)
    if info.properties.get("streaming"):
        pytest.skip("a streaming estimator (update/compute): tested in its family's tests")
    if info.properties.get("returns") == "float":
        pytest.skip("a fitting procedure returning a Python float: tested in its family's tests")
    return info


def _make(info: LossInfo, seed: int = 0, factory=None):
    gen = torch.Generator().manual_seed(seed)
    return (factory or info.example.make)(gen)


def _factories(info: LossInfo):
    return [info.example.make, *info.example.variants]


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


def _floating(args):
    return tuple(i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point())


def _grad_positions(info: LossInfo, args):
    if info.example.grad is not None:
        return tuple(info.example.grad)
    return _floating(args)


def _with_grad(args, positions):
    args = list(args)
    for i in positions:
        args[i] = args[i].detach().clone().requires_grad_(True)
    return args


def _grads(out, args, positions):
    grads = torch.autograd.grad(out.sum(), [args[i] for i in positions], allow_unused=True)
    return [torch.zeros_like(args[i]) if g is None else g for g, i in zip(grads, positions)]


def _params(info: LossInfo):
    return inspect.signature(info.function).parameters


def _needs_grad(info: LossInfo, args) -> tuple[int, ...]:
    return _grad_positions(info, args) if info.differentiable else ()


# --------------------------------------------------------------------------- registry and docs
@pytest.mark.parametrize("name", NAMES)
def test_registered_and_documented(name):
    info = _info(name)
    assert info.reference.title and info.reference.year and info.reference.url.startswith("http")
    ns = _namespace(info)
    assert getattr(ns, name) is info.function, f"{name} is not exported from {ns.__name__}"
    assert name in ns.__all__
    doc = inspect.getdoc(info.function) or ""
    for section in ("Args:", "Shape:", "Example:", "References:"):
        assert section in doc, f"{name}'s docstring lacks a {section!r} section"
    assert ">>>" in doc, f"{name}'s docstring has no runnable example"
    for private in ("CATALOG.md", "DESIGN.md", "FORMULAS.md"):
        assert private not in doc, f"{name}'s docstring points to {private}, which users do not have"
    if info.properties.get("module_required", True):
        assert info.module is not None, f"{name} has no nn.Module wrapper"
    for module in info.modules:
        assert getattr(losslab.nn, module.__name__) is module


def test_every_public_module_is_reachable_from_the_registry():
    attached = {m for n in NAMES for m in losslab.info(n).modules}
    public = {getattr(losslab.nn, n) for n in losslab.nn.__all__}
    public = {m for m in public if isinstance(m, type) and issubclass(m, torch.nn.Module)
              and m is not losslab.nn.FunctionalLoss}
    missing = sorted(m.__name__ for m in public - attached)
    assert not missing, f"nn classes not attached to any registered objective: {missing}"


# --------------------------------------------------------------------------- reductions
@pytest.mark.parametrize("name", NAMES)
def test_reduction_contract(name):
    """sum == none.sum(); mean == the documented rule from none; on every variant of the inputs."""
    info = _tensor_info(name)
    if not info.supports_reduction and info.properties.get("inference_only"):
        pytest.skip("an inference-time transform returning adjusted logits, not a loss")
    if not info.supports_reduction and not info.batch_level and \
            (info.family == "estimators" or info.properties.get("returns") == "weights"):
        pytest.skip("per-sample weights or an Estimate, not a loss to reduce")
    if not info.supports_reduction:
        assert info.batch_level, f"{name} takes no `reduction`, so it must be registered batch_level=True"
        out = _call(info, *_make(info))
        assert isinstance(out, torch.Tensor) and out.dim() == 0, "a batch-level objective returns one number"
        assert torch.isfinite(out)
        return
    declared = _params(info)["reduction"].default
    # Losses default to "mean" (torch's rule); a per-sequence quantity used as a building
    # block (sequence_logprobs) may default to "none" and says so in its docstring.
    assert declared in ("mean", "none", "sum"), declared
    if declared != "mean":
        assert "default" in (inspect.getdoc(info.function) or "").split("reduction:")[-1][:400], \
            f"{name} defaults to reduction='none': its docstring must say why"
    for k, factory in enumerate(_factories(info)):
        args, kwargs = _make(info, factory=factory)
        default = _call(info, args, kwargs)
        none = _call(info, args, kwargs, reduction="none")
        total = _call(info, args, kwargs, reduction="sum")
        mean = _call(info, args, kwargs, reduction="mean")
        if k == 0:  # the main example is batched; a variant may be one unbatched item (0-dim "none")
            assert none.dim() >= 1, "reduction='none' must keep the per-sample / per-element dimension"
        assert torch.isfinite(none).all()
        assert total.dim() == 0 and mean.dim() == 0
        torch.testing.assert_close(default, {"mean": mean, "none": none, "sum": total}[declared], rtol=0, atol=0)
        torch.testing.assert_close(total, none.sum(), rtol=1e-10, atol=1e-12)
        rule = info.example.mean_rule
        expected = rule(none, args, kwargs) if rule is not None else none.mean()
        torch.testing.assert_close(mean, expected.to(mean.dtype), rtol=1e-10, atol=1e-12,
                                   msg=lambda m: f"reduction='mean' does not follow the documented rule: {m}")
    with pytest.raises(ValueError, match="reduction"):
        _call(info, *_make(info), reduction="average")


@pytest.mark.parametrize("name", NAMES)
def test_nothing_kept_gives_zero_and_zero_gradients(name):
    info = _tensor_info(name)
    params = _params(info)
    if "ignore_index" not in params and "mask" not in params:
        pytest.skip("the objective keeps every element")
    assert info.example.empty is not None, f"{name} takes ignore_index/mask: its Example needs an `empty` factory"
    args, kwargs = _make(info, factory=info.example.empty)
    positions = _needs_grad(info, args)
    args = _with_grad(args, positions)
    if "reduction" in params:
        none = _call(info, args, kwargs, reduction="none")
        assert torch.isfinite(none).all() and not none.any(), "elements that are not kept must be 0 in 'none'"
    out = _call(info, args, kwargs, **({"reduction": "mean"} if "reduction" in params else {}))
    assert out.dim() == 0 and float(out) == 0.0
    for g in _grads(out, args, positions) if positions else []:
        assert torch.isfinite(g).all() and not g.any()


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", NAMES)
def test_bad_input_error_names_the_argument(name):
    info = _tensor_info(name)
    assert info.example.mismatch is not None, f"{name}'s Example has no mismatch factory"
    assert info.example.mismatch_match, f"{name}'s Example has no mismatch_match (the argument the message names)"
    args, kwargs = _make(info, factory=info.example.mismatch)
    with pytest.raises(ValueError, match=info.example.mismatch_match):
        _call(info, args, kwargs)


# --------------------------------------------------------------------------- precision
@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    info = _tensor_info(name)
    if not info.differentiable:
        pytest.skip("not differentiable (documented)")
    args, kwargs = _make(info)
    positions = _grad_positions(info, args)
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
    info = _tensor_info(name)
    args, kwargs = _make(info)
    out64 = _call(info, args, kwargs)
    out32 = _call(info, _cast(args, torch.float32), kwargs)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("low", HALF, ids=["bf16", "fp16"])
def test_half_precision_values_and_gradients(name, low):
    """Half inputs give a finite float32 loss equal to the float32 loss of the same (rounded)
    inputs, and finite gradients equal to the float32 ones up to the half dtype's rounding."""
    info = _tensor_info(name)
    args, kwargs = _make(info)
    low_args = _cast(args, low)
    positions = _needs_grad(info, args)
    la = _with_grad(low_args, positions)
    fa = _with_grad(_cast(low_args, torch.float32), positions)
    out_low = _call(info, la, kwargs)
    out32 = _call(info, fa, kwargs)
    assert out_low.dtype == torch.float32, f"{low} input must give a float32 loss, got {out_low.dtype}"
    assert torch.isfinite(out_low).all()
    torch.testing.assert_close(out_low, out32, rtol=1e-5, atol=1e-6)
    if not positions:
        return
    rtol = 2 ** -7 if low is torch.bfloat16 else 2 ** -10  # two units in the last place of the half dtype
    for g_low, g32 in zip(_grads(out_low, la, positions), _grads(out32, fa, positions)):
        assert torch.isfinite(g_low).all(), f"{low} gradient not finite"
        scale = float(g32.abs().max()) if g32.numel() else 0.0
        torch.testing.assert_close(g_low.float(), g32, rtol=rtol, atol=rtol * scale + 1e-6)


# --------------------------------------------------------------------------- non-finite and extreme inputs
@pytest.mark.parametrize("name", NAMES)
def test_extreme_inputs_stay_finite(name):
    """Every input kind (logits, point clouds, embeddings) scaled to magnitude 1e4 in float32:
    finite values and gradients, or a clear ValueError; never NaN."""
    info = _tensor_info(name)
    args, kwargs = _make(info)
    positions = info.example.extreme
    if positions is None:
        positions = _floating(args)
    if not positions:
        assert info.example.extreme_skip, f"{name} skips the extreme-input test without a reason (extreme_skip)"
        pytest.skip(info.example.extreme_skip)
    args = list(_cast(args, torch.float32))
    for i in positions:
        a = args[i]
        args[i] = (a / a.abs().max().clamp_min(1e-12) * 1e4).detach()
    grad_pos = tuple(i for i in _needs_grad(info, args) if args[i].is_floating_point())
    args = _with_grad(args, grad_pos)
    try:
        out = _call(info, args, kwargs)
    except ValueError as exc:
        assert str(exc), "the ValueError must say what is wrong"
        return
    assert torch.isfinite(out).all(), f"loss not finite for inputs of magnitude 1e4: {out}"
    if grad_pos:
        for g in _grads(out, args, grad_pos):
            assert torch.isfinite(g).all(), "gradient not finite for inputs of magnitude 1e4"


@pytest.mark.parametrize("name", NAMES)
def test_nan_input_never_gives_a_finite_loss(name):
    """A NaN in a kept input element propagates (NaN loss) or raises ValueError; it is never
    turned into a finite loss."""
    info = _tensor_info(name)
    args, kwargs = _make(info)
    positions = _floating(args)
    assert positions, "no floating input"
    for i in positions:
        bad = list(args)
        x = bad[i].clone()
        x.view(-1)[0] = float("nan")
        bad[i] = x
        try:
            out = _call(info, bad, kwargs)
        except ValueError:
            continue
        assert not torch.isfinite(out).all(), f"a NaN in input {i} gave a finite loss {out}"


# --------------------------------------------------------------------------- modules
def _module_split(info: LossInfo, kwargs: dict) -> tuple[dict, dict]:
    batch = set(getattr(info.module, "_batch_names", ()))
    return {k: v for k, v in kwargs.items() if k not in batch}, {k: v for k, v in kwargs.items() if k in batch}


def _is_thin(info: LossInfo) -> bool:
    return info.module is not None and issubclass(info.module, losslab.nn.FunctionalLoss)


@pytest.mark.parametrize("name", NAMES)
def test_module_takes_per_batch_tensors_in_forward(name):
    info = _tensor_info(name)
    if not _is_thin(info):
        pytest.skip("no thin Module (stateful / parameter-owning modules: test_stateful_module_round_trips)")
    module_cls = info.module
    fwd = inspect.signature(module_cls.forward).parameters
    for p in _params(info).values():
        if p.kind is inspect.Parameter.KEYWORD_ONLY and "Tensor" in str(p.annotation) \
                and p.name not in module_cls._constant_names:
            assert p.name in fwd, f"{module_cls.__name__}.forward lacks the per-batch argument {p.name!r}"
    for factory in _factories(info):
        args, kwargs = _make(info, factory=factory)
        hyper, batch = _module_split(info, kwargs)
        module = module_cls(**hyper)
        torch.testing.assert_close(_loss(info, module(*args, **batch)), _call(info, args, kwargs), rtol=0, atol=0)
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                with pytest.raises(TypeError, match=k):
                    module_cls(**hyper, **{k: v})


@pytest.mark.parametrize("name", NAMES)
def test_module_checks_hyperparameters_at_construction(name):
    info = _tensor_info(name)
    if info.module is None:
        pytest.skip("no Module")
    if "reduction" not in inspect.signature(info.module.__init__).parameters:
        pytest.skip("the Module takes no reduction")
    args, kwargs = _make(info)
    hyper = _module_split(info, kwargs)[0] if _is_thin(info) else {}
    if not _is_thin(info):
        pytest.skip("hand-written Module: checked in its family's tests")
    with pytest.raises(ValueError, match="reduction"):
        info.module(**{**hyper, "reduction": "avg"})


@pytest.mark.parametrize("name", NAMES)
def test_stateful_module_round_trips(name):
    info = _tensor_info(name)
    if info.module is None or _is_thin(info):
        pytest.skip("no hand-written Module")
    assert info.example.module is not None, f"{name}'s hand-written Module needs an Example.module factory"
    m1, args, kw = info.example.module(torch.Generator().manual_seed(0))
    m1(*args, **kw)  # one step: the state moves
    state = {k: v.clone() for k, v in m1.state_dict().items()}
    m2, _, _ = info.example.module(torch.Generator().manual_seed(0))
    m2.load_state_dict(state)
    out1, out2 = m1(*args, **kw), m2(*args, **kw)
    torch.testing.assert_close(_loss(info, out2), _loss(info, out1), rtol=0, atol=0)
    for (k, v1), (_, v2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        torch.testing.assert_close(v2, v1, rtol=0, atol=0, msg=f"state {k!r} differs after a resumed step")


# --------------------------------------------------------------------------- compile and validation
@pytest.mark.parametrize("name", NAMES)
def test_compiled_equals_eager(name):
    """``torch.compile(backend="aot_eager")`` with validation off: same values and gradients;
    the whole objective is one graph unless the registry records why it breaks."""
    info = _tensor_info(name)
    args, kwargs = _make(info)
    positions = _needs_grad(info, args)
    torch._dynamo.reset()

    def fn(*xs):
        return _call(info, xs, kwargs)

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=info.graph_breaks is None)
    with losslab.validation(False):
        ea = _with_grad(args, positions)
        eager = fn(*ea)
        ca = _with_grad(args, positions)
        comp = compiled(*ca)
    torch.testing.assert_close(comp, eager, rtol=1e-9, atol=1e-12)
    if positions:
        for gc, ge in zip(_grads(comp, ca, positions), _grads(eager, ea, positions)):
            torch.testing.assert_close(gc, ge, rtol=1e-9, atol=1e-12)


def test_compile_with_default_validation_has_no_graph_break():
    """Validation is on by default; value checks are skipped while tracing, so a compiled step
    with a checked loss is still one graph."""
    logits = torch.randn(8, 5)
    target = torch.randint(0, 5, (8,))
    fn = torch.compile(lambda x, t: losslab.functional.cross_entropy(x, t, label_smoothing=0.1),
                       backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(fn(logits, target), losslab.functional.cross_entropy(logits, target, label_smoothing=0.1))


@pytest.mark.parametrize("name", NAMES)
def test_validation_off_gives_same_value(name):
    info = _tensor_info(name)
    args, kwargs = _make(info)
    ref = _call(info, args, kwargs)
    with losslab.validation(False):
        out = _call(info, args, kwargs)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
