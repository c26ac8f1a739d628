"""Stateful classification Modules: state in buffers, exact resume, rank-identical state."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from losslab import functional as LF
from losslab import nn as LN


def _batches(seed=0, steps=4, n=6, c=4, size=20):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, c, generator=g), torch.randint(0, c, (n,), generator=g),
             torch.randperm(size, generator=g)[:n]) for _ in range(steps)]


def test_aldr_module_state_dict_round_trip_continues_identically():
    batches = _batches()
    a = LN.AdaptiveLDRKLLoss(num_samples=20)
    for x, t, i in batches[:2]:
        a(x, t, i)
    b = LN.AdaptiveLDRKLLoss(num_samples=20)
    b.load_state_dict(a.state_dict())
    for x, t, i in batches[2:]:
        assert torch.equal(a(x, t, i), b(x, t, i))
        assert torch.equal(a.lam, b.lam)


def test_aldr_module_update_rule_and_eval_mode():
    crit = LN.AdaptiveLDRKLLoss(num_samples=20, lam0=10.0, alpha=2.0)
    x, t, i = _batches()[0]
    expected_lam = LF.aldr_kl_update(x, torch.full((6,), 10.0), lam0=10.0, alpha=2.0)
    loss = crit(x, t, i)
    torch.testing.assert_close(crit.lam[i].float(), expected_lam)
    torch.testing.assert_close(loss, LF.aldr_kl_loss(x, t, expected_lam))
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[i] = False
    assert (crit.lam[untouched] == 10.0).all()
    crit.eval()
    before = crit.lam.clone()
    crit(*_batches(seed=1)[0])
    assert torch.equal(crit.lam, before)


def test_aldr_module_index_errors():
    crit = LN.AdaptiveLDRKLLoss(num_samples=5)
    x, t = torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=r"index must have shape \(3,\)"):
        crit(x, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"outside \[0, 5\)"):
        crit(x, t, torch.tensor([0, 1, 5]))
    with pytest.raises(TypeError, match="integer"):
        crit(x, t, torch.tensor([0.0, 1.0, 2.0]))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _aldr_rank(rank, world, port, batches, sizes, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        crit = LN.AdaptiveLDRKLLoss(num_samples=20)
        for x, t, i in batches:
            lo = sum(sizes[:rank])
            sl = slice(lo, lo + sizes[rank])
            crit(x[sl], t[sl], i[sl])
        out[rank] = crit.lam.clone()
    finally:
        dist.destroy_process_group()


def test_aldr_module_state_identical_across_ranks_and_equal_to_single_process():
    """2 gloo processes with uneven shards (4 + 2) end with the single-process state on every rank."""
    batches = _batches(steps=3)
    single = LN.AdaptiveLDRKLLoss(num_samples=20)
    for x, t, i in batches:
        single(x, t, i)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_aldr_rank, args=(2, _free_port(), batches, [4, 2], out), nprocs=2, join=True,
                           start_method="spawn")
        states = [out[0], out[1]]
    assert torch.equal(states[0], states[1])
    torch.testing.assert_close(states[0], single.lam, rtol=0, atol=1e-7)


def test_adaptive_logit_adjusted_update_rule_and_state_dict():
    crit = LN.AdaptiveLogitAdjustedLoss(3, class_counts=torch.tensor([60.0, 30.0, 10.0]))
    torch.testing.assert_close(crit.status, torch.tensor([1.0, 0.5, 1 / 6]))
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.4, 0.4], [0.5, 0.5, 0.0]])
    target = torch.tensor([0, 0, 1, 1])  # class 2 has no validation sample: keeps its status
    crit.update(probs, target)
    # class means of the true-class probability: 0.7, 0.45; class 2 keeps 1/6; then / max
    torch.testing.assert_close(crit.status, torch.tensor([1.0, 0.45 / 0.7, (1 / 6) / 0.7]))
    x, t = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    torch.testing.assert_close(crit(x, t), LF.logit_adjusted_cross_entropy(x, t, prior=crit.status))
    clone = LN.AdaptiveLogitAdjustedLoss(3)
    clone.load_state_dict(crit.state_dict())
    assert torch.equal(clone(x, t), crit(x, t))


def test_normalized_softmax_module_owns_learnable_proxies():
    crit = LN.NormalizedSoftmaxLoss(num_classes=4, embedding_size=6, temperature=0.1)
    emb, labels = torch.randn(5, 6), torch.tensor([0, 1, 2, 3, 0])
    loss = crit(emb, labels)
    torch.testing.assert_close(loss, LF.normalized_softmax_loss(emb, labels, crit.proxies, temperature=0.1))
    loss.backward()
    assert crit.proxies.grad is not None and "proxies" in crit.state_dict()
