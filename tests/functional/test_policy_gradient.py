"""Policy-gradient objectives: group_advantages, grpo_loss, variance_promotion_score, and the
per-token log-probabilities / entropies of linear_token_logprobs.

References used here (none reuses the code under test):
* a per-token Python loop over the formulas (math.exp, explicit sums);
* TRL's loss, transcribed from ``trl/trainer/grpo_trainer.py`` (``GRPOTrainer._compute_loss``) of
  trl 1.16.0 (the PyPI release) — see ``_trl_loss``;
* NumPy's ``std(ddof=1)`` for TRL's ``nanstd`` (Bessel-corrected, ``trl/trainer/utils.py``);
* materialized ``log_softmax`` in float64 for linear_token_logprobs.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import losslab
from losslab.functional import (
    group_advantages,
    grpo_loss,
    linear_token_logprobs,
    sequence_logprobs,
    variance_promotion_score,
)
from losslab.functional import large_vocab_token as LVT

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _spawn import spawn  # noqa: E402

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo")
F64 = torch.float64


# --------------------------------------------------------------------------- group advantages
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_against_numpy(scale):
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 3, (12,), generator=g).to(F64)
    out = group_advantages(r, 4, scale=scale)
    x = r.numpy().reshape(3, 4)
    adv = (x - x.mean(1, keepdims=True)).reshape(-1)
    if scale == "group":
        adv = adv / (np.repeat(x.std(1, ddof=1), 4) + 1e-4)
    elif scale == "batch":
        adv = adv / (r.numpy().std(ddof=1) + 1e-4)
    np.testing.assert_allclose(out.numpy(), adv, rtol=1e-12)
    assert not out.requires_grad


def test_group_advantages_zero_variance_group_and_single_completion():
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    out = group_advantages(r, 3)
    assert torch.equal(out[:3], torch.zeros(3))  # every completion right: no signal, no NaN
    assert torch.equal(group_advantages(r, 1), torch.zeros(6))  # TRL: std 0 for one completion
    assert group_advantages(r.bfloat16(), 3).dtype == torch.float32
    assert group_advantages(r.requires_grad_(), 3).requires_grad is False


def test_group_advantages_bad_input():
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(7), 2)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(4), 2, scale="global")
    with pytest.raises(ValueError, match="rewards"):
        group_advantages(torch.zeros(4, 1), 2)


# --------------------------------------------------------------------------- grpo_loss references
def _loop_loss(pol, old, adv, mask, ref, beta, eps, eps_high, loss_type, level, max_len, num_items):
    """The loss written token by token from the formulas (Python floats)."""
    b, t = pol.shape
    adv = adv if adv.dim() == 2 else adv[:, None].expand(b, t)
    eh = eps if eps_high is None else eps_high
    seq_ratio = []
    for i in range(b):
        toks = [j for j in range(t) if mask[i, j]]
        lr = sum(float(pol[i, j] - old[i, j]) for j in toks) / max(1, len(toks))
        seq_ratio.append(math.exp(lr))
    per = [[0.0] * t for _ in range(b)]
    for i in range(b):
        for j in range(t):
            if not mask[i, j]:
                continue
            r = math.exp(float(pol[i, j] - old[i, j])) if level == "token" else seq_ratio[i]
            a = float(adv[i, j])
            if loss_type == "cispo":
                v = -min(r, eh) * a * float(pol[i, j])
            else:
                v = -min(r * a, min(max(r, 1 - eps), 1 + eh) * a)
            if beta > 0:
                d = float(ref[i, j] - pol[i, j])
                v += beta * (math.exp(d) - d - 1)
            per[i][j] = v
    tokens = [sum(1 for j in range(t) if mask[i, j]) for i in range(b)]
    total = sum(sum(row) for row in per)
    if loss_type == "grpo":
        return sum(sum(per[i]) / max(1, tokens[i]) for i in range(b)) / b
    if loss_type == "bnpo":
        return total / max(1, sum(tokens))
    if loss_type == "dr_grpo":
        return total / (b * max_len)
    return total / max(1, sum(tokens) if num_items is None else num_items)


def _trl_loss(pol, old, adv, mask, ref, beta, eps, eps_high, loss_type, level, max_len, num_items, *,
              num_processes=1, use_bias_correction_kl=False):
    """TRL 1.16.0's GRPOTrainer._compute_loss (trl/trainer/grpo_trainer.py, lines 3083-3173 of the PyPI
    release), transcribed for the loss types grpo, bnpo, dr_grpo, dapo and cispo, in training mode without
    gradient accumulation (current_gradient_accumulation_steps = steps_per_generation = 1: every accumulation
    factor of the normalizers is 1).
    ``num_processes`` is accelerator.num_processes; ``num_items`` is inputs["num_items_in_batch"] (TRL:
    gather(mask.sum()).sum(), the mask's tokens over all processes; here the local mask's when None).
    ``use_bias_correction_kl`` is TRL's option of that name (its 1.16 default is True, losslab's KL is the
    option False: see grpo_loss's docstring). The mask is a float tensor, as TRL's completion_mask; delta
    (two-sided clipping), the off-policy mask, the entropy mask and vLLM's importance sampling are off."""
    mask = mask.to(pol.dtype)
    advantages = adv.unsqueeze(1) if adv.dim() == 1 else adv
    epsilon_low, epsilon_high = eps, (eps_high if eps_high is not None else eps)
    log_ratio = pol - old
    if level == "token":
        log_importance_weights = log_ratio
    else:
        log_importance_weights = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        log_importance_weights = log_importance_weights.unsqueeze(-1)
    coef_1 = torch.exp(log_importance_weights)
    if beta != 0.0:
        per_token_kl = torch.exp(ref - pol) - (ref - pol) - 1
        if use_bias_correction_kl:
            per_token_kl = per_token_kl * coef_1
    if loss_type == "cispo":
        clamped_ratios = torch.clamp(coef_1, max=epsilon_high).detach()
        per_token_loss = -clamped_ratios * advantages * pol
    else:
        coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
        per_token_loss1 = coef_1 * advantages
        per_token_loss2 = coef_2 * advantages
        per_token_loss = -torch.min(per_token_loss1, per_token_loss2)
    if beta != 0.0:
        per_token_loss = per_token_loss + beta * per_token_kl
    if loss_type == "grpo":
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_len)
    # dapo / cispo
    num_items_in_batch = mask.sum() if num_items is None else torch.tensor(float(num_items), dtype=pol.dtype)
    normalizer = num_items_in_batch.clamp(min=1.0) / num_processes
    return (per_token_loss * mask).sum() / normalizer


def _inputs(seed=0, b=5, t=6, per_token_adv=False):
    g = torch.Generator().manual_seed(seed)
    pol = torch.randn(b, t, generator=g, dtype=F64) * 0.4 - 1.5
    old = pol + torch.randn(b, t, generator=g, dtype=F64) * 0.3  # ratios on both sides of the clip range
    ref = pol + torch.randn(b, t, generator=g, dtype=F64) * 0.3
    adv = torch.randn(b, t, generator=g, dtype=F64) if per_token_adv else torch.randn(b, generator=g, dtype=F64)
    lengths = torch.randint(0, t + 1, (b,), generator=g)
    lengths[0] = t
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return pol, old, adv, mask, ref


CASES = [(lt, lvl, beta, eh, pta) for lt in LOSS_TYPES for lvl in ("token", "sequence") for beta in (0.0, 0.05)
         for eh in (None, 0.28) for pta in (False, True)]


@pytest.mark.parametrize("loss_type,level,beta,eps_high,per_token_adv", CASES)
def test_grpo_loss_against_loop_and_trl(loss_type, level, beta, eps_high, per_token_adv):
    if loss_type == "cispo":
        eps_high = 5.0 if eps_high is None else 1.1  # an absolute cap; 1.1 caps some ratios
    pol, old, adv, mask, ref = _inputs(per_token_adv=per_token_adv)
    kw = dict(ref_logps=ref, beta=beta, epsilon=0.2, epsilon_high=eps_high, loss_type=loss_type,
              importance_sampling_level=level, max_completion_length=8)
    out = grpo_loss(pol, old, adv, mask, **kw)
    loop = _loop_loss(pol, old, adv, mask, ref, beta, 0.2, eps_high, loss_type, level, 8, None)
    trl = _trl_loss(pol, old, adv, mask, ref, beta, 0.2, eps_high, loss_type, level, 8, None)
    assert out.dtype == F64
    assert float(out) == pytest.approx(loop, rel=1e-12, abs=1e-14)
    torch.testing.assert_close(out, trl, rtol=1e-12, atol=1e-14)
    # gradients: same as TRL's transcription
    p1 = pol.clone().requires_grad_()
    p2 = pol.clone().requires_grad_()
    grpo_loss(p1, old, adv, mask, **kw).backward()
    _trl_loss(p2, old, adv, mask, ref, beta, 0.2, eps_high, loss_type, level, 8, None).backward()
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-12, atol=1e-14)


def test_num_items_is_the_dapo_denominator():
    pol, old, adv, mask, ref = _inputs()
    for lt, eh in (("dapo", None), ("cispo", 5.0)):
        out = grpo_loss(pol, old, adv, mask, loss_type=lt, epsilon_high=eh, num_items=57)
        ref_v = _trl_loss(pol, old, adv, mask, ref, 0.0, 0.2, eh, lt, "token", None, 57)
        torch.testing.assert_close(out, ref_v, rtol=1e-12, atol=0)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_on_policy_gradient_is_the_plain_policy_gradient(loss_type):
    """old_logps = policy_logps.detach(): ratio 1, gradient -A M / norm for every loss type."""
    pol, _, adv, mask, _ = _inputs(1)
    p = pol.clone().requires_grad_()
    kw = dict(loss_type=loss_type, max_completion_length=8, epsilon_high=5.0 if loss_type == "cispo" else None)
    grpo_loss(p, p.detach(), adv, mask, **kw).backward()
    b, t = pol.shape
    m = mask.to(F64)
    norm = {"grpo": b * m.sum(1, keepdim=True).clamp_min(1), "bnpo": m.sum(), "dr_grpo": b * 8.0,
            "dapo": m.sum(), "cispo": m.sum()}[loss_type]
    torch.testing.assert_close(p.grad, -adv[:, None] * m / norm, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_no_completion_token_gives_zero_and_zero_gradients(loss_type, level):
    pol, old, adv, mask, ref = _inputs(2)
    p = pol.clone().requires_grad_()
    out = grpo_loss(p, old, adv, torch.zeros_like(mask), ref_logps=ref, beta=0.1, loss_type=loss_type,
                    importance_sampling_level=level, max_completion_length=8,
                    epsilon_high=5.0 if loss_type == "cispo" else None)
    out.backward()
    assert float(out.detach()) == 0.0 and torch.equal(p.grad, torch.zeros_like(pol))


def test_padding_never_counts_and_nan_in_a_kept_token_propagates():
    pol, old, adv, mask, ref = _inputs(3)
    mask[1, -1] = False
    bad = pol.clone()
    bad[~mask] = float("nan")
    ref_bad = ref.clone()
    ref_bad[~mask] = float("inf")
    for lt in LOSS_TYPES:
        kw = dict(beta=0.1, loss_type=lt, max_completion_length=8, epsilon_high=5.0 if lt == "cispo" else None)
        torch.testing.assert_close(grpo_loss(bad, old, adv, mask, ref_logps=ref_bad, **kw),
                                   grpo_loss(pol, old, adv, mask, ref_logps=ref, **kw), rtol=0, atol=0)
    bad = pol.clone()
    bad[0, 0] = float("nan")
    assert torch.isnan(grpo_loss(bad, old, adv, mask))


def test_trl_bias_corrected_kl_differs_only_in_the_gradient_on_policy():
    """TRL 1.16's default KL (use_bias_correction_kl=True) is k3 times the differentiable ratio; grpo_loss's
    is k3 (the docstring's deliberate difference). On-policy the values agree and the gradients differ by
    beta * k3 * d(ratio)/d(logp) = beta * k3 per token, over the normalizer."""
    pol, _, adv, mask, ref = _inputs(4)
    p1, p2 = pol.clone().requires_grad_(), pol.clone().requires_grad_()
    ours = grpo_loss(p1, p1.detach(), adv, mask, ref_logps=ref, beta=0.1, loss_type="bnpo")
    trl = _trl_loss(p2, p2.detach(), adv, mask, ref, 0.1, 0.2, None, "bnpo", "token", None, None,
                    use_bias_correction_kl=True)
    torch.testing.assert_close(ours, trl, rtol=1e-12, atol=1e-14)
    ours.backward()
    trl.backward()
    m = mask.to(F64)
    k3 = (ref - pol).exp() - (ref - pol) - 1
    torch.testing.assert_close(p2.grad - p1.grad, 0.1 * k3 * m / m.sum(), rtol=1e-10, atol=1e-14)
    assert (p2.grad - p1.grad).abs().max() > 1e-4


def test_grpo_loss_bad_input():
    pol, old, adv, mask, ref = _inputs()
    with pytest.raises(ValueError, match="old_logps"):
        grpo_loss(pol, old[:, 1:], adv, mask)
    with pytest.raises(ValueError, match="mask"):
        grpo_loss(pol, old, adv, mask[:, 1:])
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(pol, old, adv, mask, ref_logps=ref[1:], beta=0.1)
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(pol, old, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(pol, old, adv[1:], mask)
    with pytest.raises(ValueError, match="epsilon"):
        grpo_loss(pol, old, adv, mask, epsilon=0.0)
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(pol, old, adv, mask, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(pol, old, adv, mask, loss_type="ppo")
    with pytest.raises(ValueError, match="importance_sampling_level"):
        grpo_loss(pol, old, adv, mask, importance_sampling_level="group")
    with pytest.raises(ValueError, match="epsilon_high"):
        grpo_loss(pol, old, adv, mask, loss_type="cispo")
    with pytest.raises(ValueError, match="epsilon"):
        losslab.nn.GRPOLoss(epsilon=-1.0)


def test_module_matches_function():
    pol, old, adv, mask, ref = _inputs()
    mod = losslab.nn.GRPOLoss(beta=0.04, loss_type="dapo")
    torch.testing.assert_close(mod(pol, old, adv, mask, ref_logps=ref, num_items=40),
                               grpo_loss(pol, old, adv, mask, ref_logps=ref, beta=0.04, loss_type="dapo",
                                         num_items=40), rtol=0, atol=0)


# --------------------------------------------------------------------------- two processes
def _shards():
    """Two ranks with uneven rows and very uneven token counts."""
    pol, old, adv, mask, ref = _inputs(7, b=6, t=7)
    mask[:3] = torch.arange(7)[None, :] < torch.tensor([[7], [6], [7]])
    mask[3:] = torch.arange(7)[None, :] < torch.tensor([[1], [0], [2]])
    return pol, old, adv, mask, ref, [slice(0, 3), slice(3, 6)]


def _kw(loss_type):
    return dict(beta=0.05, loss_type=loss_type, max_completion_length=8,
                epsilon_high=5.0 if loss_type == "cispo" else 0.28)


def _per_rank_worker(rank, world, out, loss_types):
    pol, old, adv, mask, ref, sl = _shards()
    s = sl[rank]
    for loss_type in loss_types:
        theta = torch.tensor(1.0, dtype=F64, requires_grad=True)  # a shared parameter, as DDP sees it
        loss = grpo_loss(theta * pol[s], old[s], adv[s], mask[s], ref_logps=ref[s], **_kw(loss_type))
        loss.backward()
        out[(rank, loss_type)] = (float(loss), float(theta.grad), float(losslab.distributed.global_value(loss)))


def test_two_processes_uneven_tokens_follow_the_distributed_rule():
    """"dapo" and "bnpo" (and every other type): the mean of the ranks' values is the single-process
    loss and DDP's averaged gradient the single-process gradient, with very uneven token counts."""
    types = ("dapo", "bnpo", "grpo", "dr_grpo", "cispo")
    out = spawn(_per_rank_worker, (types,))
    pol, old, adv, mask, ref, shards = _shards()
    for loss_type in types:
        theta = torch.tensor(1.0, dtype=F64, requires_grad=True)
        single = grpo_loss(theta * pol, old, adv, mask, ref_logps=ref, **_kw(loss_type))
        single.backward()
        values = [out[(r, loss_type)][0] for r in (0, 1)]
        grads = [out[(r, loss_type)][1] for r in (0, 1)]
        assert sum(values) / 2 == pytest.approx(float(single), rel=1e-12), loss_type  # mean over ranks
        assert sum(grads) / 2 == pytest.approx(float(theta.grad), rel=1e-12), loss_type  # DDP's average
        assert out[(0, loss_type)][2] == pytest.approx(float(single), rel=1e-12)  # global_value logs it
    # TRL 1.16's "dapo"/"cispo" on each rank (num_items_in_batch: the global token count, divided by
    # num_processes) gives the same per-rank values
    total = int(mask.sum())
    for loss_type in ("dapo", "cispo"):
        k = _kw(loss_type)
        for r, s in enumerate(shards):
            trl = _trl_loss(pol[s], old[s], adv[s], mask[s], ref[s], k["beta"], 0.2, k["epsilon_high"], loss_type,
                            "token", 8, total, num_processes=2)
            assert out[(r, loss_type)][0] == pytest.approx(float(trl), rel=1e-12), (loss_type, r)
    # the local-count rule (TRL's "bnpo") is not the single-process loss with these uneven shards
    single = float(grpo_loss(pol, old, adv, mask, ref_logps=ref, **_kw("bnpo")))
    local = [float(_trl_loss(pol[s], old[s], adv[s], mask[s], ref[s], 0.05, 0.2, 0.28, "bnpo", "token", 8, None))
             for s in shards]
    assert abs(sum(local) / 2 - single) > 1e-3


# --------------------------------------------------------------------------- variance promotion score
def test_variance_promotion_score_against_the_definition():
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [5, 6, 7, 0], [1, 2, 3, 9],
                        [1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 2, 2], [1, 2, 1, 2]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[2, 3] = False
    out = variance_promotion_score(r, 4, ids, completion_mask=mask, alpha=2.0, beta=0.5, ngram=3)
    # group 0: P = 3/4; trigrams (123,234),(123,234),(567),(123,239): 7 in all, unique {123,234,567,239} = 4
    # group 1: P = 0; trigrams (111,111)x2,(222,222),(121,212): 8 in all, unique {111,222,121,212} = 4
    expected = torch.tensor([2.0 * 0.75 * 0.25 + 0.5 * 4 / 7, 0.0 + 0.5 * 4 / 8])
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(variance_promotion_score(r, 4), torch.tensor([0.1875, 0.0]))
    with pytest.raises(ValueError, match="group_size"):
        variance_promotion_score(r, 3)
    with pytest.raises(ValueError, match="completion_ids"):
        variance_promotion_score(r, 4, ids[:, None])


# --------------------------------------------------------------------------- linear_token_logprobs
def _materialized(h, w, t, b, temperature):
    x = h @ w.T
    if b is not None:
        x = x + b
    logp = torch.log_softmax(x / temperature, -1)
    keep = t != -100
    lp = logp.gather(-1, t.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    return torch.where(keep, lp, 0), torch.where(keep, ent, 0)


@pytest.fixture(params=["default", "small"])
def tiles(request, monkeypatch):
    """The default tiles (one vocabulary block at these sizes) or 4-row vocabulary blocks and 4-token
    tiles, so that the block merge, the ragged last block and the per-block target gather run."""
    if request.param == "small":
        monkeypatch.setattr(LVT, "TILE_VOCAB", 4)
        monkeypatch.setattr(LVT, "TILE_BYTES", 2 * 8 * 4 * 4)
    return request.param


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk", [None, 3])
def test_linear_token_logprobs_against_materialized_float64(temperature, with_bias, chunk, tiles):
    g = torch.Generator().manual_seed(4)
    h = torch.randn(3, 5, 6, generator=g, dtype=F64) * 2
    w = torch.randn(29, 6, generator=g, dtype=F64)
    b = torch.randn(29, generator=g, dtype=F64) if with_bias else None
    t = torch.randint(0, 29, (3, 5), generator=g)
    t[1, 2:] = -100
    up_l = torch.randn(3, 5, generator=g, dtype=F64)
    up_e = torch.randn(3, 5, generator=g, dtype=F64)
    leaves = [h, w] + ([b] if b is not None else [])
    a = [x.clone().requires_grad_() for x in leaves]
    out = linear_token_logprobs(a[0], a[1], t, bias=a[2] if b is not None else None, temperature=temperature,
                                return_entropy=True, chunk_size=chunk)
    c = [x.clone().requires_grad_() for x in leaves]
    lp, ent = _materialized(c[0], c[1], t, c[2] if b is not None else None, temperature)
    torch.testing.assert_close(out.logps, lp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.entropy, ent, rtol=1e-12, atol=1e-12)
    ga = torch.autograd.grad((out.logps * up_l + out.entropy * up_e).sum(), a)
    gc = torch.autograd.grad((lp * up_l + ent * up_e).sum(), c, retain_graph=True)
    for x, y in zip(ga, gc):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    # log-probs alone (the cross-entropy path) and each output's gradient alone
    a2 = [x.clone().requires_grad_() for x in leaves]
    only = linear_token_logprobs(a2[0], a2[1], t, bias=a2[2] if b is not None else None, temperature=temperature,
                                 chunk_size=chunk)
    torch.testing.assert_close(only, lp, rtol=1e-12, atol=1e-12)
    for x, y in zip(torch.autograd.grad((only * up_l).sum(), a2), torch.autograd.grad((lp * up_l).sum(), c, retain_graph=True)):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    a3 = [x.clone().requires_grad_() for x in leaves]
    e3 = linear_token_logprobs(a3[0], a3[1], t, bias=a3[2] if b is not None else None, temperature=temperature,
                               return_entropy=True, chunk_size=chunk).entropy
    for x, y in zip(torch.autograd.grad(e3.sum(), a3), torch.autograd.grad(ent.sum(), c)):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_linear_token_logprobs_reductions_and_sequence_logprobs():
    g = torch.Generator().manual_seed(5)
    h, w = torch.randn(2, 4, 6, generator=g, dtype=F64), torch.randn(13, 6, generator=g, dtype=F64)
    t = torch.randint(0, 13, (2, 4), generator=g)
    t[0, 3] = -100
    none = linear_token_logprobs(h, w, t, return_entropy=True)
    mean = linear_token_logprobs(h, w, t, return_entropy=True, reduction="mean")
    torch.testing.assert_close(mean.entropy, none.entropy.sum() / 7)
    torch.testing.assert_close(mean.logps, none.logps.sum() / 7)
    # sequence_logprobs is the per-sequence sum of the same log-probabilities
    torch.testing.assert_close(sequence_logprobs(h, w, t), linear_token_logprobs(h, w, t).sum(-1), rtol=1e-14, atol=0)


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_linear_token_logprobs_half_head(low):
    """A half-precision head: logits carried in float32 (large_vocab's two-part product); values
    and gradients close to float32 of the same rounded inputs."""
    g = torch.Generator().manual_seed(6)
    h = torch.randn(40, 16, generator=g).to(low)
    w = (torch.randn(300, 16, generator=g) * 0.5).to(low)
    t = torch.randint(0, 300, (40,), generator=g)
    up = torch.randn(40, generator=g)
    a = [h.clone().requires_grad_(), w.clone().requires_grad_()]
    out = linear_token_logprobs(*a, t, temperature=0.8, return_entropy=True, chunk_size=7)
    c = [h.float().requires_grad_(), w.float().requires_grad_()]
    lp, ent = _materialized(c[0], c[1], t, None, 0.8)
    assert out.logps.dtype == torch.float32
    torch.testing.assert_close(out.logps, lp, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.entropy, ent, rtol=1e-4, atol=1e-4)
    ga = torch.autograd.grad((out.logps * up + out.entropy).sum(), a)
    gc = torch.autograd.grad((lp * up + ent).sum(), c)
    rtol = 2 ** -7 if low is torch.bfloat16 else 2 ** -10
    for x, y in zip(ga, gc):
        assert x.dtype == low
        torch.testing.assert_close(x.float(), y, rtol=rtol, atol=2 * rtol * float(y.abs().max()))


def test_linear_token_logprobs_large_logits_stay_finite():
    h = torch.randn(8, 4) * 1e3
    w = torch.randn(50, 4) * 10
    t = torch.randint(0, 50, (8,))
    hh = h.clone().requires_grad_()
    out = linear_token_logprobs(hh, w, t, return_entropy=True)
    (out.logps.sum() + out.entropy.sum()).backward()
    assert torch.isfinite(out.logps).all() and torch.isfinite(out.entropy).all() and torch.isfinite(hh.grad).all()
    assert (out.entropy >= -1e-6).all()


def test_linear_token_logprobs_peaked_logits_match_float64(tiles):
    """Shifted logits far below the -60 clamp (logits of magnitude ~100s): float64 values and gradients
    of both outputs to round-off, also when whole vocabulary blocks lie below the maximum by more than 60."""
    g = torch.Generator().manual_seed(9)
    h = torch.randn(11, 6, generator=g, dtype=F64) * 40
    w = torch.randn(29, 6, generator=g, dtype=F64)
    t = torch.randint(0, 29, (11,), generator=g)
    up_l, up_e = torch.randn(11, generator=g, dtype=F64), torch.randn(11, generator=g, dtype=F64)
    a = [h.clone().requires_grad_(), w.clone().requires_grad_()]
    out = linear_token_logprobs(*a, t, temperature=0.7, return_entropy=True)
    c = [h.clone().requires_grad_(), w.clone().requires_grad_()]
    lp, ent = _materialized(*c, t, None, 0.7)
    torch.testing.assert_close(out.logps, lp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.entropy, ent, rtol=1e-12, atol=1e-12)
    ga = torch.autograd.grad((out.logps * up_l + out.entropy * up_e).sum(), a)
    gc = torch.autograd.grad((lp * up_l + ent * up_e).sum(), c)
    for x, y in zip(ga, gc):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


def _check_minus_inf_bias(h, w, t, b):
    """Values of both outputs equal the float64 materialized ones (-inf bias as -1e300), finite gradients."""
    out = linear_token_logprobs(h, w, t, bias=b, return_entropy=True)
    (out.logps.sum() + out.entropy.sum()).backward()
    lp, ent = _materialized(h, w.detach(), t, torch.where(torch.isinf(b), -1e300, b), 1.0)
    torch.testing.assert_close(out.logps, lp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.entropy, ent, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(w.grad).all()


def test_linear_token_logprobs_minus_inf_vocabulary_blocks(tiles):
    """-inf bias on whole vocabulary blocks (the first one included, 4-row blocks with the small tiles):
    zero-probability tokens, the float64 values, finite gradients."""
    g = torch.Generator().manual_seed(10)
    h = torch.randn(7, 4, generator=g, dtype=F64)
    w = torch.randn(13, 4, generator=g, dtype=F64).requires_grad_()
    b = torch.zeros(13, dtype=F64)
    b[[0, 1, 2, 3, 8, 9, 10, 11]] = float("-inf")
    t = torch.tensor([4, 5, 6, 7, 12, 4, 12])
    _check_minus_inf_bias(h, w, t, b)


def test_linear_token_logprobs_minus_inf_bias_is_a_zero_probability_token():
    g = torch.Generator().manual_seed(8)
    h = torch.randn(6, 4, generator=g, dtype=F64)
    w = torch.randn(9, 4, generator=g, dtype=F64).requires_grad_()
    b = torch.zeros(9, dtype=F64)
    b[[2, 5]] = float("-inf")
    t = torch.tensor([0, 1, 3, 4, 6, 8])
    _check_minus_inf_bias(h, w, t, b)
