"""The stateful distillation Modules: MTARD's balancing state and SAF's ring buffer.

The MTARD update is checked against the authors' B-MTARD training step for two teachers,
rewritten here with Python scalars (their order: weights updated before the loss, temperatures
after it; their KL and entropy are means over samples *and classes*, which changes no ratio).
The distributed checks run in one 2-process spawn (tests/_spawn.py).
"""
from __future__ import annotations

import math

import pytest
import torch
from _spawn import spawn

from losslab import nn as LN

F64 = torch.float64


def _softmax(row, T=1.0):
    m = max(row)
    e = [math.exp((x - m) / T) for x in row]
    s = sum(e)
    return [v / s for v in e]


def _mtard_reference(batches, t_lr, w_lr, tmin=1.0, tmax=10.0):
    """B-MTARD (two teachers: 'adv' = 0, 'nat' = 1) with scalar state, one entry per step."""
    temp = [1.0, 1.0]
    weight = [0.5, 0.5]
    init = None
    history = []
    for s, t in batches:
        n, c = s.shape[1], s.shape[2]
        kl, ent = [0.0, 0.0], [0.0, 0.0]
        for k in range(2):
            for i in range(n):
                p = _softmax(t[k, i].tolist(), temp[k])
                q = _softmax(s[k, i].tolist())
                kl[k] += sum(pk * math.log(pk / qk) for pk, qk in zip(p, q)) / (n * c)   # their mean over N x C
                ent[k] += sum(pk * math.log(pk) for pk in p) / (n * c)                   # their "entropy_value"
        new_temp = [temp[0] - t_lr * math.copysign(1, ent[0] / ent[1] - 1) if ent[0] != ent[1] else temp[0],
                    temp[1] - t_lr * math.copysign(1, ent[1] / ent[0] - 1) if ent[0] != ent[1] else temp[1]]
        new_temp = [max(min(tmax, v), tmin) for v in new_temp]
        if init is None:
            init = list(kl)
        lhat = [kl[0] / init[0], kl[1] / init[1]]
        avg = sum(lhat) / 2
        inv = [lhat[0] / avg, lhat[1] / avg]
        weight = [weight[k] - w_lr * (weight[k] - inv[k] / (inv[0] + inv[1])) for k in range(2)]
        weight = [max(v, 0.0) for v in weight]
        coef = 1.0 / sum(weight)
        weight = [v * coef for v in weight]
        loss = c * (weight[0] * kl[0] + weight[1] * kl[1])   # ours sums the KL over classes
        history.append((loss, list(weight), list(temp)))
        temp = new_temp
    return history, temp


def _teacher_batches(steps=5, n=6, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        s = torch.randn(2, n, c, generator=g, dtype=F64)
        t = torch.stack([torch.randn(n, c, generator=g, dtype=F64) * 4, torch.randn(n, c, generator=g, dtype=F64)])
        out.append((s, t))
    return out


def test_mtard_module_follows_the_authors_update():
    batches = _teacher_batches()
    history, final_temp = _mtard_reference(batches, t_lr=0.2, w_lr=0.3)
    crit = LN.MultiTeacherKDLoss(2, temperature_lr=0.2, weight_lr=0.3)
    for (s, t), (loss, weight, temp) in zip(batches, history):
        assert crit.temperature.tolist() == pytest.approx(temp, rel=1e-12)   # the temperatures this step used
        out = crit(s, t)
        assert out.item() == pytest.approx(loss, rel=1e-10)
        assert crit.teacher_weight.tolist() == pytest.approx(weight, rel=1e-10)
    assert crit.temperature.tolist() == pytest.approx(final_temp, rel=1e-12)
    assert int(crit.num_steps) == len(batches)


def test_mtard_module_resumes_exactly_and_eval_freezes_the_state():
    batches = _teacher_batches(steps=6, seed=1)
    a = LN.MultiTeacherKDLoss(2, temperature_lr=0.05)
    for s, t in batches[:3]:
        a(s, t)
    b = LN.MultiTeacherKDLoss(2, temperature_lr=0.05)
    b.load_state_dict(a.state_dict())
    for s, t in batches[3:]:
        assert torch.equal(a(s, t), b(s, t))
        for k in ("temperature", "teacher_weight", "initial_loss", "num_steps"):
            assert torch.equal(getattr(a, k), getattr(b, k))
    state = {k: v.clone() for k, v in a.state_dict().items()}
    a.eval()
    a(*batches[0])
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in state.items())


def test_mtard_module_bad_input():
    with pytest.raises(ValueError, match="num_teachers"):
        LN.MultiTeacherKDLoss(0)
    with pytest.raises(ValueError, match="reduction"):
        LN.MultiTeacherKDLoss(2, reduction="avg")
    with pytest.raises(ValueError, match="initial_temperature"):
        LN.MultiTeacherKDLoss(2, initial_temperature=20.0)
    with pytest.raises(ValueError, match="num_teachers"):
        LN.MultiTeacherKDLoss(3)(torch.randn(2, 4, 3), torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="teacher_logits"):
        LN.MultiTeacherKDLoss(2)(torch.randn(2, 4, 3), torch.randn(2, 4, 5))


# --------------------------------------------------------------------------- TrajectoryLoss
def _epochs(num_epochs=4, n=6, c=3, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_epochs, n, c, generator=g, dtype=F64)
    order = [torch.randperm(n, generator=g) for _ in range(num_epochs)]
    return logits, [[o[i:i + batch] for i in range(0, n, batch)] for o in order]


def _kl(p_logits, q_logits, T):
    p, q = _softmax(p_logits.tolist(), T), _softmax(q_logits.tolist(), T)
    return T * T * sum(pk * math.log(pk / qk) for pk, qk in zip(p, q))


def test_trajectory_module_compares_with_the_logits_lag_epochs_earlier():
    logits, batches = _epochs()
    crit = LN.TrajectoryLoss(6, 3, lag_epochs=2, temperature=2.0)
    for e, epoch in enumerate(batches):
        for idx in epoch:
            x = logits[e, idx].clone().requires_grad_(True)
            out = crit(x, idx)
            if e < 2:
                assert out.item() == 0.0     # no past yet: 0 with zero gradient
                out.backward()
                assert not x.grad.any()
            else:
                ref = sum(_kl(logits[e - 2, i].float().double(), logits[e, i], 2.0) for i in idx.tolist()) / len(idx)
                assert out.item() == pytest.approx(ref, rel=1e-6)   # the past is stored in float32
    assert crit.visits.tolist() == [4] * 6


def test_trajectory_module_resumes_exactly_and_checks_its_input():
    logits, batches = _epochs(num_epochs=3, seed=2)
    flat = [(e, idx) for e, ep in enumerate(batches) for idx in ep]
    a = LN.TrajectoryLoss(6, 3, lag_epochs=1)
    for e, idx in flat[:4]:
        a(logits[e, idx], idx)
    b = LN.TrajectoryLoss(6, 3, lag_epochs=1)
    b.load_state_dict(a.state_dict())
    for e, idx in flat[4:]:
        assert torch.equal(a(logits[e, idx], idx), b(logits[e, idx], idx))
    assert torch.equal(a.past, b.past) and torch.equal(a.visits, b.visits)
    with pytest.raises(ValueError, match="index"):
        a(torch.randn(2, 3), torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="num_classes"):
        a(torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="lag_epochs"):
        LN.TrajectoryLoss(6, 3, lag_epochs=0)
    with pytest.raises(ValueError, match="temperature"):
        LN.TrajectoryLoss(6, 3, temperature=0.0)


# --------------------------------------------------------------------------- distributed (one spawn)
def _worker(rank, world, out, mt_batches, tr_logits, tr_batches, sizes):
    lo = sum(sizes[:rank])
    sl = slice(lo, lo + sizes[rank])
    mt = LN.MultiTeacherKDLoss(2, temperature_lr=0.2, weight_lr=0.3)
    for s, t in mt_batches:
        mt(s[:, sl], t[:, sl])
    tr = LN.TrajectoryLoss(6, 3, lag_epochs=1)
    for e, epoch in enumerate(tr_batches):
        for idx in epoch:
            part = idx[: 2] if rank == 0 else idx[2:]
            tr(tr_logits[e, part], part)
    out[rank] = (mt.temperature.clone(), mt.teacher_weight.clone(), tr.past.clone(), tr.visits.clone())


def test_stateful_distillation_modules_identical_across_ranks_and_equal_to_single_process():
    """2 gloo ranks with uneven shards (4 + 2 samples): the MTARD state and the SAF buffer end
    equal on every rank and to one process seeing the concatenated batches."""
    mt_batches = _teacher_batches(steps=3, n=6, seed=3)
    single = LN.MultiTeacherKDLoss(2, temperature_lr=0.2, weight_lr=0.3)
    for s, t in mt_batches:
        single(s, t)
    logits, batches = _epochs(num_epochs=2, n=6, batch=3, seed=4)
    tr_single = LN.TrajectoryLoss(6, 3, lag_epochs=1)
    for e, epoch in enumerate(batches):
        for idx in epoch:
            tr_single(logits[e, idx], idx)
    out = spawn(_worker, (mt_batches, logits, batches, [4, 2]))
    for r in (0, 1):
        temp, weight, past, visits = out[r]
        torch.testing.assert_close(temp, single.temperature, rtol=1e-12, atol=0)
        torch.testing.assert_close(weight, single.teacher_weight, rtol=1e-12, atol=1e-15)
        assert torch.equal(past, tr_single.past) and torch.equal(visits, tr_single.visits)
