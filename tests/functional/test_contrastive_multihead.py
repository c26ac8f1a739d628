"""multi_head_contrastive_loss (AMCL, Eq. (2.1)) against a per-sample, per-head Python loop; the Module.

The reference below is written from the paper's Eq. (2.1) (Table 2 of Wang et al., ECCV 2024)
with the regularizer Omega(tau) = d'/2 log tau + 1/tau: for each anchor (both views), each head,
it scans the 2B - 2 negatives with Python comparisons, calls the temperature on single pairs,
and adds the four terms.
"""
from __future__ import annotations

import io
import math

import pytest
import torch
from _spawn import spawn

import losslab
from losslab.functional.contrastive_multihead import _example_temperature, multi_head_contrastive_loss
from losslab.nn.contrastive_multihead import AdaptiveMultiHeadContrastiveLoss


def _views(seed, b=5, c=3, d=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, d, generator=g, dtype=dtype), torch.randn(b, c, d, generator=g, dtype=dtype)


def _loop(z1, z2, tau, beta):
    """Per anchor: sum over heads of -s+/tau+ + s-/tau- + beta*Omega(tau+) - beta*Omega(tau-), hardest negative."""
    b, c, d = z1.shape
    views = [z1, z2]
    out = []
    for v in (0, 1):  # view-1 anchors first, then view-2 anchors
        for i in range(b):
            total = 0.0
            for h in range(c):
                unit = lambda x: x / torch.sqrt((x * x).sum())  # noqa: E731
                anchor = unit(views[v][i, h])
                positive = unit(views[1 - v][i, h])
                best, best_s = None, -math.inf
                for w in (0, 1):
                    for j in range(b):
                        if j == i:
                            continue  # the anchor itself (w == v) and its positive (w != v)
                        cand = unit(views[w][j, h])
                        s = float((anchor * cand).sum().detach())
                        if s > best_s:
                            best, best_s = cand, s
                s_pos, s_neg = (anchor * positive).sum(), (anchor * best).sum()
                t_pos, t_neg = tau(anchor, positive), tau(anchor, best)
                omega = lambda t: d / 2 * torch.log(t) + 1 / t  # noqa: E731
                total = total - s_pos / t_pos + s_neg / t_neg + beta * omega(t_pos) - beta * omega(t_neg)
            out.append(total)
    return torch.stack(out)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize("kind", ["adaptive", "constant"])
def test_value_and_gradient_equal_loop(seed, heads, kind):
    z1, z2 = _views(seed, c=heads)
    if kind == "adaptive":
        tau, beta, temperature = _example_temperature, 0.3, _example_temperature
    else:
        tau, beta, temperature = (lambda a, b: torch.tensor(0.7, dtype=a.dtype)), 0.3, 0.7
    x1, x2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    ref = _loop(x1, x2, tau, beta)
    r1, r2 = torch.autograd.grad(ref.mean(), [x1, x2])
    y1, y2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    out = multi_head_contrastive_loss(y1, y2, temperature=temperature, beta=beta, reduction="none")
    o1, o2 = torch.autograd.grad(out.mean(), [y1, y2])
    torch.testing.assert_close(out, ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(o1, r1, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(o2, r2, rtol=1e-10, atol=1e-12)


def _phi_from_weights(crit, x):
    """The default phi (Linear-ReLU-Linear) written out from the module's weights: W2 relu(W1 x + b1) + b2."""
    w1, b1, w2, b2 = crit.phi[0].weight, crit.phi[0].bias, crit.phi[2].weight, crit.phi[2].bias
    return torch.relu(x @ w1.T + b1) @ w2.T + b2


def _tau_from_formula(crit, tau_min, tau_max):
    """The temperature of the module's docstring, computed here: iota / (1 + e^r) + eta, r = <phi(u), phi(v)>."""
    def tau(u, v):
        r = (_phi_from_weights(crit, u) * _phi_from_weights(crit, v)).sum(-1)
        return (tau_max - tau_min) / (1 + torch.exp(r)) + tau_min

    return tau


def test_module_equals_loop_with_its_network():
    """Reference independent of the module's code: temperatures from the formula and the raw weights."""
    torch.manual_seed(3)
    crit = AdaptiveMultiHeadContrastiveLoss(4, hidden_dim=6, beta=0.05, tau_min=0.05, tau_max=1.5).double()
    z1, z2 = _views(5)
    ref = _loop(z1, z2, _tau_from_formula(crit, 0.05, 1.5), 0.05)
    torch.testing.assert_close(crit(z1, z2), ref.mean(), rtol=1e-12, atol=1e-12)


def test_constant_temperature_is_hardest_negative_margin_over_tau():
    # With one temperature the two Omega terms cancel: l = sum_c (max s- - s+) / tau, whatever beta.
    z1, z2 = _views(1)
    a = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=-1)  # (2B, C, D)
    p = torch.nn.functional.normalize(torch.cat([z2, z1]), dim=-1)
    s = torch.einsum("icd,jcd->cij", a, a)  # (C, 2B, 2B)
    n = z1.shape[0]
    eye = torch.eye(2 * n, dtype=torch.bool)
    s = s.masked_fill(eye | eye.roll(n, 1), float("-inf"))  # self and positive are not negatives
    ref = ((s.max(-1).values.T - (a * p).sum(-1)) / 0.25).sum(-1)
    for beta in (0.0, 1e-4, 10.0):
        out = multi_head_contrastive_loss(z1, z2, temperature=0.25, beta=beta, reduction="none")
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_blocked_hardest_negative_search_equals_one_block(monkeypatch):
    import losslab.functional.contrastive_multihead as mod

    z1, z2 = _views(13, b=7)
    ref = multi_head_contrastive_loss(z1, z2, temperature=_example_temperature, beta=0.2, reduction="none")
    monkeypatch.setattr(mod, "_BLOCK_ELEMS", 2 * 14 * 3 + 1)  # two anchor rows per block: 7 blocks
    out = multi_head_contrastive_loss(z1, z2, temperature=_example_temperature, beta=0.2, reduction="none")
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_heads_are_summed():
    z1, z2 = _views(2, c=1)
    one = multi_head_contrastive_loss(z1, z2, temperature=_example_temperature, beta=0.2, reduction="none")
    two = multi_head_contrastive_loss(z1.repeat(1, 2, 1), z2.repeat(1, 2, 1), temperature=_example_temperature,
                                      beta=0.2, reduction="none")
    torch.testing.assert_close(two, 2 * one, rtol=1e-12, atol=1e-12)


def test_docstring_value_orthogonal_samples():
    z = torch.eye(4, dtype=torch.float64).unsqueeze(1) * 3.0  # sim+ = 1, every negative has sim 0
    out = multi_head_contrastive_loss(z, z, temperature=0.5, reduction="none")
    torch.testing.assert_close(out, torch.full((8,), -2.0, dtype=torch.float64))


def test_gradcheck_float64():
    z1, z2 = _views(7, b=3, c=2, d=3)
    z1, z2 = z1.requires_grad_(True), z2.requires_grad_(True)
    fn = lambda a, b: multi_head_contrastive_loss(a, b, temperature=_example_temperature, beta=0.4)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (z1, z2), eps=1e-6, atol=1e-6, rtol=1e-5)
    fn_none = lambda a, b: multi_head_contrastive_loss(a, b, temperature=0.3, reduction="none")  # noqa: E731
    assert torch.autograd.gradcheck(fn_none, (z1, z2), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_through_the_temperature_network():
    torch.manual_seed(1)
    crit = AdaptiveMultiHeadContrastiveLoss(3, hidden_dim=4, beta=0.5, tau_min=0.1, tau_max=1.0).double()
    z1, z2 = _views(8, b=3, c=2, d=3)
    names = [n for n, _ in crit.named_parameters()]

    def fn(*ps):
        return torch.func.functional_call(crit, dict(zip(names, ps)), (z1, z2))

    params = [p.detach().clone().requires_grad_(True) for p in crit.parameters()]
    assert torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_reductions_consistent():
    z1, z2 = _views(4)
    none = multi_head_contrastive_loss(z1, z2, temperature=_example_temperature, beta=0.1, reduction="none")
    assert none.shape == (10,)
    total = multi_head_contrastive_loss(z1, z2, temperature=_example_temperature, beta=0.1, reduction="sum")
    mean = multi_head_contrastive_loss(z1, z2, temperature=_example_temperature, beta=0.1)
    torch.testing.assert_close(total, none.sum(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mean, none.mean(), rtol=1e-12, atol=1e-12)
    assert total.dim() == 0 and mean.dim() == 0


def test_bfloat16_gives_float32_close_to_float32():
    z1, z2 = _views(6, b=8, c=3, d=16, dtype=torch.float32)
    crit = AdaptiveMultiHeadContrastiveLoss(16)
    for fn in (lambda a, b: multi_head_contrastive_loss(a, b, temperature=_example_temperature, beta=0.1),
               lambda a, b: crit(a, b)):
        h1, h2 = z1.bfloat16(), z2.bfloat16()
        out = fn(h1, h2)
        assert out.dtype == torch.float32 and torch.isfinite(out)
        # computed in float32: identical to the float32 loss of the same (rounded) inputs
        torch.testing.assert_close(out, fn(h1.float(), h2.float()), rtol=1e-6, atol=1e-6)
        # and close to the float32 loss of the unrounded inputs (bfloat16 keeps ~3 significant digits)
        torch.testing.assert_close(out, fn(z1, z2), rtol=2e-2, atol=2e-2)


def test_float64_stays_float64_and_large_inputs_stay_finite():
    z1, z2 = _views(9)
    assert multi_head_contrastive_loss(z1, z2, temperature=0.5).dtype == torch.float64
    a = (z1.float() * 1e4).requires_grad_(True)
    out = multi_head_contrastive_loss(a, z2.float() * 1e-4, temperature=_example_temperature, beta=1.0)
    (g,) = torch.autograd.grad(out, [a])
    assert torch.isfinite(out) and torch.isfinite(g).all()
    tiny = multi_head_contrastive_loss(z1.float(), z2.float(), temperature=1e-6, beta=1.0)  # s / tau ~ 1e6, no exp
    assert torch.isfinite(tiny)


def test_bad_inputs_raise_value_error_naming_the_argument():
    z1, z2 = _views(0)
    with pytest.raises(ValueError, match="query and key"):
        multi_head_contrastive_loss(z1, z2[:-1], temperature=0.5)
    with pytest.raises(ValueError, match="query and key"):
        multi_head_contrastive_loss(z1, z2[:, :2], temperature=0.5)
    with pytest.raises(ValueError, match="query"):
        multi_head_contrastive_loss(z1[:, 0], z2[:, 0], temperature=0.5)  # (B, D): the head dimension is required
    with pytest.raises(ValueError, match="query and key need at least 2"):
        multi_head_contrastive_loss(z1[:1], z2[:1], temperature=0.5)
    for bad in (0.0, -0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            multi_head_contrastive_loss(z1, z2, temperature=bad)
    with pytest.raises(ValueError, match="temperature"):
        multi_head_contrastive_loss(z1, z2, temperature=lambda a, b: -_example_temperature(a, b))
    with pytest.raises(ValueError, match="temperature"):
        multi_head_contrastive_loss(z1, z2, temperature=lambda a, b: _example_temperature(a, b)[:, :1])
    with pytest.raises(ValueError, match="temperature"):
        multi_head_contrastive_loss(z1, z2, temperature=lambda a, b: (a * b).sum(-1) > 0)
    with pytest.raises(ValueError, match="beta"):
        multi_head_contrastive_loss(z1, z2, temperature=0.5, beta=-1e-3)
    with pytest.raises(ValueError, match="reduction"):
        multi_head_contrastive_loss(z1, z2, temperature=0.5, reduction="batchmean")
    with pytest.raises(TypeError, match="key"):
        multi_head_contrastive_loss(z1, z2.long(), temperature=0.5)
    with pytest.raises(TypeError, match="gather"):
        multi_head_contrastive_loss(z1, z2, temperature=0.5, gather="yes")
    with losslab.validation(False):  # value checks off: the callable's output is not inspected
        multi_head_contrastive_loss(z1, z2, temperature=lambda a, b: -_example_temperature(a, b))


def test_module_bad_arguments():
    for kw, name in ((dict(dim=0), "dim"), (dict(dim=4, hidden_dim=0), "hidden_dim"), (dict(dim=4, tau_min=0.0), "tau_min"),
                     (dict(dim=4, tau_min=2.0, tau_max=1.0), "tau_min"), (dict(dim=4, beta=-1.0), "beta"),
                     (dict(dim=4, reduction="avg"), "reduction"), (dict(dim=4, phi=lambda x: x), "phi")):
        with pytest.raises(ValueError, match=name):
            AdaptiveMultiHeadContrastiveLoss(**kw)
    with pytest.raises(TypeError, match="gather"):
        AdaptiveMultiHeadContrastiveLoss(4, gather=1)
    crit = AdaptiveMultiHeadContrastiveLoss(4)
    z1, z2 = _views(0, d=5, dtype=torch.float32)
    with pytest.raises(ValueError, match="query"):
        crit(z1, z2)


def test_module_equals_function_and_temperature_rule():
    torch.manual_seed(0)
    crit = AdaptiveMultiHeadContrastiveLoss(4, beta=0.2, tau_min=0.05, tau_max=1.5, reduction="none").double()
    z1, z2 = _views(11)
    out = crit(z1, z2)
    ref = multi_head_contrastive_loss(z1, z2, temperature=crit.temperature, beta=0.2, reduction="none")
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    u, v = torch.nn.functional.normalize(z1, dim=-1), torch.nn.functional.normalize(z2, dim=-1)
    r = (_phi_from_weights(crit, u) * _phi_from_weights(crit, v)).sum(-1)
    tau = crit.temperature(u, v)
    torch.testing.assert_close(tau, 1.45 / (1 + torch.exp(r)) + 0.05, rtol=1e-12, atol=1e-12)  # iota/(1+e^r)+eta
    assert tau.shape == (5, 3) and bool(((tau >= 0.05) & (tau <= 1.5)).all())


def test_custom_phi_and_float32_network_with_float64_inputs():
    crit = AdaptiveMultiHeadContrastiveLoss(4, phi=torch.nn.Identity(), tau_min=0.2, tau_max=1.0, beta=0.1)
    z1, z2 = _views(12)
    ref = multi_head_contrastive_loss(
        z1, z2, temperature=lambda a, b: 0.2 + 0.8 * torch.sigmoid(-(a * b).sum(-1)), beta=0.1)
    torch.testing.assert_close(crit(z1, z2), ref, rtol=1e-12, atol=1e-12)
    crit32 = AdaptiveMultiHeadContrastiveLoss(4)  # float32 network, float64 inputs: temperatures cast back
    assert crit32(z1, z2).dtype == torch.float64


def test_temperature_network_learns_and_state_dict_round_trip_is_exact():
    torch.manual_seed(0)
    crit = AdaptiveMultiHeadContrastiveLoss(4, hidden_dim=8, beta=1e-2, tau_min=0.05, tau_max=2.0)
    opt = torch.optim.SGD(crit.parameters(), lr=0.1)
    before = [p.detach().clone() for p in crit.parameters()]
    for step in range(3):
        z1, z2 = _views(step, dtype=torch.float32)
        opt.zero_grad()
        crit(z1, z2).backward()
        opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, crit.parameters())), "the temperature network did not move"
    buf = io.BytesIO()
    torch.save(crit.state_dict(), buf)
    buf.seek(0)
    fresh = AdaptiveMultiHeadContrastiveLoss(4, hidden_dim=8, beta=1e-2, tau_min=0.05, tau_max=2.0)
    fresh.load_state_dict(torch.load(buf))
    z1, z2 = _views(9, dtype=torch.float32)
    torch.testing.assert_close(fresh(z1, z2), crit(z1, z2), rtol=0, atol=0)
    torch.testing.assert_close(fresh.temperature(z1, z2), crit.temperature(z1, z2), rtol=0, atol=0)
    assert set(crit.state_dict()) == {"phi.0.weight", "phi.0.bias", "phi.2.weight", "phi.2.bias"}


# ----------------------------------------------------------------------------- two ranks
SIZES = [3, 2]  # uneven shards
W = len(SIZES)


def _global():
    g = torch.Generator().manual_seed(21)
    n = sum(SIZES)
    return torch.randn(n, 2, 4, generator=g, dtype=torch.float64), torch.randn(n, 2, 4, generator=g, dtype=torch.float64)


def _shard(x, rank):
    lo = sum(SIZES[:rank])
    return x[lo : lo + SIZES[rank]]


def _worker(rank, world_size, out):
    from losslab.distributed import global_value

    z1, z2 = _global()
    a, b = _shard(z1, rank).clone().requires_grad_(True), _shard(z2, rank).clone().requires_grad_(True)
    loss = multi_head_contrastive_loss(a, b, temperature=_example_temperature, beta=0.3, gather=True)
    loss.backward()
    kw = dict(temperature=_example_temperature, beta=0.3, gather=True)
    none = multi_head_contrastive_loss(a.detach(), b.detach(), reduction="none", **kw)
    total = multi_head_contrastive_loss(a.detach(), b.detach(), reduction="sum", **kw)
    out[rank] = (loss.item(), a.grad.clone(), b.grad.clone(), none.clone(), total.item(), global_value(loss).item())


def test_two_ranks_equal_single_process():
    out = spawn(_worker)
    ranks = [out[r] for r in range(W)]
    z1, z2 = _global()
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    single = multi_head_contrastive_loss(a, b, temperature=_example_temperature, beta=0.3)
    single.backward()
    none = multi_head_contrastive_loss(z1, z2, temperature=_example_temperature, beta=0.3, reduction="none")
    n = sum(SIZES)
    # mean of the per-rank values = single-process loss (= global_value on every rank);
    # local gradients = W x the single-process shard gradients
    assert sum(r[0] for r in ranks) / W == pytest.approx(single.item(), rel=1e-12)
    for r in range(W):
        assert ranks[r][5] == pytest.approx(single.item(), rel=1e-12)
        torch.testing.assert_close(ranks[r][1] / W, _shard(a.grad, r), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ranks[r][2] / W, _shard(b.grad, r), rtol=1e-10, atol=1e-12)
        # "none": W x (this rank's query anchors, then its key anchors); "sum" == "none".sum() on the rank
        torch.testing.assert_close(ranks[r][3] / W, torch.cat([_shard(none[:n], r), _shard(none[n:], r)]),
                                   rtol=1e-12, atol=1e-12)
        assert ranks[r][4] == pytest.approx(float(ranks[r][3].sum()), rel=1e-12)
