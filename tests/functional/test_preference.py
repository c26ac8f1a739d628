"""Preference alignment and unlearning: every objective against a loop over its paper's formula.

The references below are written here with Python's ``math`` on floats, one pair at a
time, from the papers' loss definitions (DPO, IPO, robust DPO of Chowdhury et al., cDPO,
SLiC's hinge, NPO, SimPO, ORPO, CPO) and TRL 1.x's f-DPO scores as its DPOTrainer writes
them (constants dropped: they cancel in Δ).
"""
from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab.functional import (
    cpo_loss,
    dpo_loss,
    dpo_rewards,
    f_divergence_generator,
    npo_loss,
    orpo_loss,
    simpo_loss,
)

LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust", "conservative")
DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _trl_score(r: float, divergence: str, alpha: float) -> float:
    """TRL 1.x DPOTrainer's f-DPO scores (trl/trainer/dpo_trainer.py, 1.10.0.dev0)."""
    if divergence == "reverse_kl":
        return r
    if divergence == "forward_kl":
        return -math.exp(-r)
    if divergence == "js":
        return _logsig(r)
    if alpha == 1:
        return r
    return math.exp((alpha - 1) * r) / (alpha - 1)


def _dpo_ref(pc, pr, rc, rr, *, beta, loss_type, divergence, alpha=0.5, eps=0.0):
    out = []
    for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist()):
        delta = _trl_score(a - c, divergence, alpha) - _trl_score(b - d, divergence, alpha)
        x = beta * delta
        if loss_type == "sigmoid":
            out.append(-_logsig(x))
        elif loss_type == "hinge":
            out.append(max(0.0, 1 - x))
        elif loss_type == "ipo":
            out.append((delta - 1 / (2 * beta)) ** 2)
        elif loss_type == "robust":
            out.append((-(1 - eps) * _logsig(x) + eps * _logsig(-x)) / (1 - 2 * eps))
        else:
            out.append(-(1 - eps) * _logsig(x) - eps * _logsig(-x))
    return torch.tensor(out, dtype=torch.float64)


def _logps(n=9, seed=0, k=4, scale=6.0):
    g = torch.Generator().manual_seed(seed)
    return tuple(-(torch.rand(n, generator=g, dtype=torch.float64) * scale + 0.2) for _ in range(k))


# --------------------------------------------------------------------------- DPO
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_dpo_matches_the_formula(loss_type, divergence):
    args = _logps()
    eps = 0.15 if loss_type in ("robust", "conservative") else 0.0
    for alpha in ((0.5, -1.5, 2.0) if divergence == "alpha" else (0.5,)):
        for beta in (0.1, 1.3):
            got = dpo_loss(*args, beta=beta, loss_type=loss_type, divergence=divergence, alpha=alpha,
                           label_smoothing=eps, reduction="none")
            ref = _dpo_ref(*args, beta=beta, loss_type=loss_type, divergence=divergence, alpha=alpha, eps=eps)
            torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    assert dpo_loss(*args, loss_type=loss_type, divergence=divergence, label_smoothing=eps).item() == \
        pytest.approx(dpo_loss(*args, loss_type=loss_type, divergence=divergence, label_smoothing=eps,
                               reduction="none").mean().item(), rel=1e-14)


def test_scores_are_the_shared_tables_f_prime():
    """s(r) = c (f'(e^r) - f'(1)) with f' from f_divergence_generator (c = 2 for JS, TRL's scale)."""
    from losslab.functional.preference import _scores

    r = torch.linspace(-13, 13, 53, dtype=torch.float64)  # |(α - 1) r| < 40: below the exponent clamp
    for ours, table, c, alpha in (("reverse_kl", "kl", 1, 0.5), ("forward_kl", "reverse_kl", 1, 0.5),
                                  ("js", "js", 2, 0.5), ("alpha", "alpha", 1, 0.3), ("alpha", "alpha", 1, -2.0)):
        gen = f_divergence_generator(table, alpha=alpha)
        one = torch.ones((), dtype=torch.float64)
        want = c * (gen.f_prime(torch.exp(r)) - gen.f_prime(one))
        torch.testing.assert_close(_scores(r, ours, alpha), want, rtol=1e-10, atol=1e-10)
    # The loss's Δ (computed without the constants) is the difference of these scores.
    from losslab.functional.preference import _score_delta

    pc, pr, rc, rr = _logps(seed=21, scale=12.0)
    for ours, alpha in (("reverse_kl", 0.5), ("forward_kl", 0.5), ("js", 0.5), ("alpha", 0.3), ("alpha", -2.0),
                        ("alpha", 1.0), ("alpha", 0.0)):
        torch.testing.assert_close(_score_delta(pc, pr, rc, rr, ours, alpha),
                                   _scores(pc - rc, ours, alpha) - _scores(pr - rr, ours, alpha), rtol=1e-12, atol=1e-12)
    # Beyond the clamp the exponential scores are constant, at most e^40 in magnitude.
    far = torch.tensor([-1e4, -5e3, -4e3], dtype=torch.float64)
    for div, alpha in (("forward_kl", 0.5), ("alpha", -2.0), ("alpha", 0.99), ("alpha", 3.0)):
        s = _scores(far if div == "forward_kl" or alpha < 1 else -far, div, alpha)
        assert (s.abs() <= math.exp(40) * (1 + 1e-12)).all() and torch.unique(s).numel() == 1, (div, alpha, s)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_alpha_limits_are_reverse_and_forward_kl(dtype):
    """α → 1 gives plain DPO (reverse KL), α → 0 forward KL; α = 1 and 0 give them exactly."""
    args = tuple(a.to(dtype) for a in _logps(seed=3))
    h = 1e-7 if dtype == torch.float64 else 1e-4
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float64 else dict(rtol=2e-3, atol=1e-4)
    for loss_type in ("sigmoid", "ipo"):
        plain = dpo_loss(*args, loss_type=loss_type, beta=0.5, reduction="none")
        fwd = dpo_loss(*args, loss_type=loss_type, beta=0.5, divergence="forward_kl", reduction="none")
        assert not torch.allclose(plain, fwd)  # the limits are different losses
        torch.testing.assert_close(dpo_loss(*args, loss_type=loss_type, beta=0.5, divergence="alpha", alpha=1.0,
                                            reduction="none"), plain, rtol=0, atol=0)
        torch.testing.assert_close(dpo_loss(*args, loss_type=loss_type, beta=0.5, divergence="alpha", alpha=0.0,
                                            reduction="none"), fwd, rtol=0, atol=0)
        for a in (1 - h, 1 + h):
            torch.testing.assert_close(dpo_loss(*args, loss_type=loss_type, beta=0.5, divergence="alpha", alpha=a,
                                                reduction="none"), plain, **tol)
        for a in (-h, h):
            torch.testing.assert_close(dpo_loss(*args, loss_type=loss_type, beta=0.5, divergence="alpha", alpha=a,
                                                reduction="none"), fwd, **tol)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_finite_values_and_gradients_for_log_ratios_of_1e4(divergence):
    base = torch.tensor([1e4, -1e4, 1e4, -1e4, 0.0, 3.0, 1e4, -1e4])
    other = torch.tensor([-1e4, 1e4, 1e4, -1e4, -1e4, 1e4, 0.0, 0.0])
    for loss_type in LOSS_TYPES:
        for alpha in ((0.5, -3.0, 4.0, 1 - 1e-6) if divergence == "alpha" else (0.5,)):
            for dtype in (torch.float32, torch.bfloat16):
                xs = [t.to(dtype).requires_grad_(True) for t in (base, other, other.flip(0), base.flip(0))]
                eps = 0.2 if loss_type in ("robust", "conservative") else 0.0
                out = dpo_loss(*xs, loss_type=loss_type, divergence=divergence, alpha=alpha, label_smoothing=eps,
                               reduction="sum")
                assert out.dtype == torch.float32 and torch.isfinite(out), (loss_type, alpha, dtype, out)
                for g in torch.autograd.grad(out, xs):
                    assert torch.isfinite(g).all(), (loss_type, alpha, dtype)
    for fn, n in ((npo_loss, 2), (simpo_loss, 2), (cpo_loss, 2), (orpo_loss, 2)):
        # ORPO's average log-probs are < 0 (0 is a certain sequence: infinite odds).
        xs = [(-t.abs() - 0.5).requires_grad_(True) if fn is orpo_loss else t.clone().requires_grad_(True)
              for t in (base, other)[:n]]
        out = fn(*xs)
        assert torch.isfinite(out)
        assert all(torch.isfinite(g).all() for g in torch.autograd.grad(out, xs))


def test_robust_dpo_is_unbiased_under_label_flips():
    """Chowdhury et al.'s unbiasedness: the robust loss averaged over a label flip of probability ε is the clean loss."""
    pc, pr, rc, rr = _logps(seed=5)
    for eps in (0.1, 0.3, 0.45):
        keep = dpo_loss(pc, pr, rc, rr, loss_type="robust", label_smoothing=eps, beta=0.7, reduction="none")
        flip = dpo_loss(pr, pc, rr, rc, loss_type="robust", label_smoothing=eps, beta=0.7, reduction="none")
        clean = dpo_loss(pc, pr, rc, rr, beta=0.7, reduction="none")
        torch.testing.assert_close((1 - eps) * keep + eps * flip, clean, rtol=1e-12, atol=1e-12)
    # ε = 0 is plain DPO for both smoothed loss types.
    for lt in ("robust", "conservative"):
        torch.testing.assert_close(dpo_loss(pc, pr, rc, rr, loss_type=lt), dpo_loss(pc, pr, rc, rr), rtol=0, atol=0)


def test_dpo_bad_input():
    a = _logps(n=4)
    short = torch.zeros(3, dtype=torch.float64)
    for i, name in enumerate(("policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps"), start=1):
        args = list(a)
        args[i] = short
        with pytest.raises(ValueError, match=name):
            dpo_loss(*args)
    for kw, match in (({"beta": 0.0}, "beta"), ({"beta": -1.0}, "beta"), ({"loss_type": "kto"}, "loss_type"),
                      ({"divergence": "kl"}, "divergence.*reverse_kl"), ({"divergence": "js_divergence"}, "divergence"),
                      ({"loss_type": "robust", "label_smoothing": 0.5}, "label_smoothing"),
                      ({"loss_type": "robust", "label_smoothing": -0.1}, "label_smoothing"),
                      ({"loss_type": "sigmoid", "label_smoothing": 0.1}, "label_smoothing"),
                      ({"loss_type": "ipo", "label_smoothing": 0.1}, "label_smoothing"),
                      ({"divergence": "alpha", "alpha": float("nan")}, "alpha")):
        with pytest.raises(ValueError, match=match):
            dpo_loss(*a, **kw)
        with pytest.raises(ValueError, match=match):
            losslab.nn.DPOLoss(**kw)  # at construction
    with pytest.raises(TypeError, match="policy_chosen_logps"):
        dpo_loss(torch.zeros(4, dtype=torch.long), *a[1:])


def test_nan_propagates_through_every_loss_type_and_score():
    a = list(_logps(n=3))
    a[0] = a[0].clone()
    a[0][1] = float("nan")
    for lt in LOSS_TYPES:
        for div in DIVERGENCES:
            eps = 0.1 if lt in ("robust", "conservative") else 0.0
            out = dpo_loss(*a, loss_type=lt, divergence=div, label_smoothing=eps, reduction="none")
            assert out[1].isnan() and torch.isfinite(out[[0, 2]]).all(), (lt, div)


def test_dpo_rewards():
    pc, pr, rc, rr = _logps(seed=7)
    out = dpo_rewards(pc, pr, rc, rr, beta=0.3)
    assert out._fields == ("chosen_rewards", "rejected_rewards", "reward_accuracy")
    cw = [0.3 * (a - c) for a, c in zip(pc.tolist(), rc.tolist())]
    rl = [0.3 * (b - d) for b, d in zip(pr.tolist(), rr.tolist())]
    torch.testing.assert_close(out.chosen_rewards, torch.tensor(cw, dtype=torch.float64), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(out.rejected_rewards, torch.tensor(rl, dtype=torch.float64), rtol=1e-14, atol=1e-14)
    assert out.reward_accuracy.dim() == 0
    assert out.reward_accuracy.item() == pytest.approx(sum(c > r for c, r in zip(cw, rl)) / len(cw))
    # Ties are not counted as correct (TRL's strict comparison); an empty batch gives 0.
    z = torch.zeros(4)
    assert dpo_rewards(z, z, z, z).reward_accuracy.item() == 0.0
    e = torch.zeros(0)
    assert dpo_rewards(e, e, e, e).reward_accuracy.item() == 0.0
    low = dpo_rewards(*(t.bfloat16() for t in (pc, pr, rc, rr)))
    assert low.chosen_rewards.dtype == torch.float32 and low.reward_accuracy.dtype == torch.float32
    with pytest.raises(ValueError, match="ref_rejected_logps"):
        dpo_rewards(pc, pr, rc, rr[:3])
    with pytest.raises(ValueError, match="beta"):
        dpo_rewards(pc, pr, rc, rr, beta=0)


# --------------------------------------------------------------------------- NPO
def test_npo_matches_the_formula():
    p, r = _logps(k=2, seed=11)
    for beta in (0.1, 1.0, 4.0):
        ref = [-(2 / beta) * _logsig(-beta * (a - b)) for a, b in zip(p.tolist(), r.tolist())]
        torch.testing.assert_close(npo_loss(p, r, beta=beta, reduction="none"),
                                   torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_npo_small_beta_is_gradient_ascent():
    """β → 0: ∇ NPO → ∇ mean log π, the gradient of gradient ascent on the NLL (as the NPO paper states)."""
    p, r = _logps(k=2, seed=12)
    p.requires_grad_(True)
    ga = torch.autograd.grad(p.mean(), p)[0]  # the GA loss -NLL = log π
    # 2 σ(β r) - 1 = tanh(β r / 2), and |r| < 6 here: relative error below 3 β.
    for beta, tol in ((1e-2, 3e-2), (1e-5, 3e-5)):
        g = torch.autograd.grad(npo_loss(p, r, beta=beta), p)[0]
        torch.testing.assert_close(g, ga, rtol=tol, atol=0)
    # and not at larger β: the forgotten samples (r << 0) stop contributing
    g = torch.autograd.grad(npo_loss(p, r + 20, beta=1.0), p)[0]
    assert (g < 1e-6 * ga).all()
    with pytest.raises(ValueError, match="ref_logps"):
        npo_loss(p, r[:2])
    with pytest.raises(ValueError, match="beta"):
        losslab.nn.NPOLoss(beta=0.0)


# --------------------------------------------------------------------------- reference-free
def test_simpo_matches_the_formula():
    c, r = _logps(k=2, seed=13, scale=2.0)
    for beta, gamma, eps in ((2.0, 1.0, 0.0), (10.0, 3.0, 0.2), (2.5, 0.0, 0.1)):
        ref = []
        for a, b in zip(c.tolist(), r.tolist()):
            x = beta * (a - b) - gamma
            ref.append(-(1 - eps) * _logsig(x) - eps * _logsig(-x))
        torch.testing.assert_close(simpo_loss(c, r, beta=beta, gamma=gamma, label_smoothing=eps, reduction="none"),
                                   torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    # The defaults are the paper's γ/β = 0.5 at β = 2.
    x = 2.0 * (c - r) - 1.0
    torch.testing.assert_close(simpo_loss(c, r), -torch.nn.functional.logsigmoid(x).mean())
    for kw, m in (({"beta": 0}, "beta"), ({"label_smoothing": 0.5}, "label_smoothing"), ({"gamma": math.inf}, "gamma")):
        with pytest.raises(ValueError, match=m):
            losslab.nn.SimPOLoss(**kw)


def test_orpo_matches_the_formula():
    c, r = _logps(k=2, seed=14, scale=3.0)
    c = torch.cat([c, torch.tensor([-1e-9, -40.0], dtype=torch.float64)])  # near-certain and near-impossible
    r = torch.cat([r, torch.tensor([-0.5, -1e-12], dtype=torch.float64)])
    nll = torch.rand(c.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def log_odds(l):
        return l - math.log(-math.expm1(l))  # log(p / (1 - p)) with p = e^l

    for beta in (0.1, 1.0):
        ref = [-beta * _logsig(log_odds(a) - log_odds(b)) for a, b in zip(c.tolist(), r.tolist())]
        ref = torch.tensor(ref, dtype=torch.float64)
        torch.testing.assert_close(orpo_loss(c, r, beta=beta, reduction="none"), ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(orpo_loss(c, r, beta=beta, chosen_nll=nll, reduction="none"), ref + nll,
                                   rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="policy_chosen_logps.*<= 0"):
        orpo_loss(torch.tensor([0.1]), torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="chosen_nll"):
        orpo_loss(c, r, chosen_nll=nll[:2])
    with losslab.validation(False):  # the value check can be switched off
        assert orpo_loss(torch.tensor([0.1]), torch.tensor([-1.0])).isnan()
    # float64 chosen_nll does not promote a float32 / bfloat16 loss
    assert orpo_loss(c.float(), r.bfloat16(), chosen_nll=nll).dtype == torch.float32


def test_cpo_matches_the_formula():
    c, r = _logps(k=2, seed=15)
    nll = torch.rand(c.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for beta, eps, w in ((0.1, 0.0, 1.0), (0.5, 0.2, 0.3), (2.0, 0.1, 0.0)):
        ref = []
        for a, b, n in zip(c.tolist(), r.tolist(), nll.tolist()):
            x = beta * (a - b)
            ref.append(-(1 - eps) * _logsig(x) - eps * _logsig(-x) + w * n)
        torch.testing.assert_close(cpo_loss(c, r, beta=beta, label_smoothing=eps, chosen_nll=nll, nll_weight=w,
                                            reduction="none"), torch.tensor(ref, dtype=torch.float64),
                                   rtol=1e-12, atol=1e-12)
    # Without chosen_nll: DPO's sigmoid loss with π_ref = uniform (zero reference log-ratios).
    z = torch.zeros_like(c)
    torch.testing.assert_close(cpo_loss(c, r, beta=0.4), dpo_loss(c, r, z, z, beta=0.4), rtol=1e-14, atol=0)
    for kw, m in (({"nll_weight": -1.0}, "nll_weight"), ({"label_smoothing": 0.7}, "label_smoothing")):
        with pytest.raises(ValueError, match=m):
            losslab.nn.CPOLoss(**kw)


def test_modules_equal_functions():
    pc, pr, rc, rr = _logps(seed=16)
    nll = -pc
    m = losslab.nn.DPOLoss(beta=0.2, loss_type="conservative", label_smoothing=0.1, divergence="js")
    torch.testing.assert_close(m(pc, pr, rc, rr), dpo_loss(pc, pr, rc, rr, beta=0.2, loss_type="conservative",
                                                           label_smoothing=0.1, divergence="js"), rtol=0, atol=0)
    torch.testing.assert_close(losslab.nn.ORPOLoss(beta=0.3)(pc / 10, pr / 10, chosen_nll=nll),
                               orpo_loss(pc / 10, pr / 10, beta=0.3, chosen_nll=nll), rtol=0, atol=0)
    with pytest.raises(TypeError, match="chosen_nll"):
        losslab.nn.CPOLoss(chosen_nll=nll)


# --------------------------------------------------------------------------- per-call overhead (issue 9)
def _graph(t: torch.Tensor) -> list[str]:
    """The autograd node types reachable from ``t``, in a fixed (depth-first) order."""
    out, stack, seen = [], [t.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        out.append(type(fn).__name__)
        stack.extend(f for f, _ in reversed(fn.next_functions))
    return out


def test_dpo_graph_has_the_hand_written_expressions_nodes():
    """Regression (issue 9): ``-logsigmoid`` negated every element before the mean (a node and
    two passes more than ``-F.logsigmoid(x).mean()``); the forward-KL exponent cap was a
    clamp (a three-kernel backward). Now plain DPO builds exactly the hand-written graph, and
    forward-KL f-DPO has a one-kernel cap in place of the hand-written negation."""
    pc, pr, rc, rr = (t.float() for t in _logps(seed=8))
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    F = torch.nn.functional
    hand = -F.logsigmoid(0.1 * ((pc - rc) - (pr - rr))).mean()
    assert _graph(dpo_loss(pc, pr, rc, rr, beta=0.1)) == _graph(hand)
    hand_fkl = -F.logsigmoid(0.1 * (torch.exp(-(pr - rr)) - torch.exp(-(pc - rc)))).mean()
    ours_fkl = _graph(dpo_loss(pc, pr, rc, rr, beta=0.1, divergence="forward_kl"))
    assert ours_fkl == [n.replace("NegBackward0", "HardtanhBackward0") if i > 0 else n
                        for i, n in enumerate(_graph(hand_fkl))]


def test_dpo_input_checks_around_the_common_case():
    """The usual call (four float32 tensors of one shape) skips the general checks; every
    other call still gets them: mixed precisions promote, half precision is upcast, a
    non-tensor or another shape raises naming the argument."""
    pc, pr, rc, rr = (t.float() for t in _logps(seed=9))
    f64 = dpo_loss(pc, pr, rc.double(), rr, reduction="none")
    assert f64.dtype == torch.float64
    torch.testing.assert_close(f64.float(), dpo_loss(pc, pr, rc, rr, reduction="none"))
    assert dpo_loss(pc.bfloat16(), pr.bfloat16(), rc.bfloat16(), rr.bfloat16()).dtype == torch.float32
    with pytest.raises(TypeError, match="ref_rejected_logps"):
        dpo_loss(pc, pr, rc, rr.tolist())
    with pytest.raises(ValueError, match="policy_rejected_logps"):
        dpo_loss(pc, pr[:-1], rc, rr)
    with pytest.raises(ValueError, match="ref_chosen_logps"):
        dpo_loss(pc, pr, rc.reshape(1, -1), rr)
