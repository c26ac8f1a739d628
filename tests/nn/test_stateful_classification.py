"""Stateful classification Modules: state in buffers, exact resume, rank-identical state."""
import socket
import time

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
    """Train two steps, save, load into a new Module: the following losses and buffers are bit-identical."""
    batches = _batches(steps=5)
    a = LN.AdaptiveLDRKLLoss(num_samples=20)
    for x, t, i in batches[:2]:
        a(x, t, i)
    assert "lam" in a.state_dict() and not torch.equal(a.lam, torch.full((20,), 10.0))
    b = LN.AdaptiveLDRKLLoss(num_samples=20)
    b.load_state_dict(a.state_dict())
    for x, t, i in batches[2:]:
        assert torch.equal(a(x, t, i), b(x, t, i))
        assert torch.equal(a.lam, b.lam)


def test_aldr_module_update_rule_and_eval_mode():
    crit = LN.AdaptiveLDRKLLoss(num_samples=20, lam0=10.0, alpha=2.0, margin=0.1)
    x, t, i = _batches()[0]
    stored = torch.full((6,), 10.0)
    expected_lam = LF.aldr_kl_update(x, stored, lam0=10.0, alpha=2.0)
    loss = crit(x, t, i)
    torch.testing.assert_close(crit.lam[i], expected_lam, rtol=0, atol=0)
    torch.testing.assert_close(loss, LF.aldr_kl_loss(x, t, stored), rtol=0, atol=0)
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[i] = False
    assert (crit.lam[untouched] == 10.0).all()
    # The second visit starts from the stored value.
    x2 = torch.randn(6, 4, generator=torch.Generator().manual_seed(9))
    expected2 = LF.aldr_kl_update(x2, crit.lam[i].clone())
    crit(x2, t, i)
    torch.testing.assert_close(crit.lam[i], expected2, rtol=0, atol=0)
    crit.eval()
    before = crit.lam.clone()
    crit(*_batches(seed=1)[0])
    assert torch.equal(crit.lam, before)


def test_aldr_module_ignore_index_keeps_lambda_and_follows_to():
    crit = LN.AdaptiveLDRKLLoss(num_samples=10, logit_transform="normalize")
    x = torch.randn(3, 4, dtype=torch.float64) * 5
    crit(x, torch.tensor([1, -100, 2]), torch.tensor([0, 1, 2]))
    assert crit.lam[1] == 10.0 and crit.lam[0] < 10.0 and crit.lam[2] < 10.0
    torch.testing.assert_close(crit.lam[[0, 2]],
                               LF.aldr_kl_update(x[[0, 2]], torch.full((2,), 10.0), logit_transform="normalize").float())
    assert crit.double().lam.dtype == torch.float64
    assert "num_samples=10" in repr(crit)


def test_aldr_module_bad_input():
    crit = LN.AdaptiveLDRKLLoss(num_samples=5)
    x, t = torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=r"index must have shape \(3,\)"):
        crit(x, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"outside \[0, 5\)"):
        crit(x, t, torch.tensor([0, 1, 5]))
    with pytest.raises(TypeError, match="integer"):
        crit(x, t, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="logits"):
        crit(torch.randn(3), t, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="num_samples"):
        LN.AdaptiveLDRKLLoss(num_samples=0)
    with pytest.raises(ValueError, match="alpha"):
        LN.AdaptiveLDRKLLoss(num_samples=5, alpha=0.5)
    with pytest.raises(ValueError, match="reduction"):
        LN.AdaptiveLDRKLLoss(num_samples=5, reduction="avg")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _aldr_rank(rank, world, port, batches, sizes, out):
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=45))
    try:
        crit = LN.AdaptiveLDRKLLoss(num_samples=20)
        losses = []
        for x, t, i in batches:
            lo = sum(sizes[:rank])
            sl = slice(lo, lo + sizes[rank])
            losses.append(crit(x[sl], t[sl], i[sl]))
        out[rank] = (crit.lam.clone(), torch.stack(losses))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(90)
def test_aldr_module_state_identical_across_ranks_and_equal_to_single_process():
    """2 gloo processes with uneven shards (4 + 2) end with the single-process state on every rank.

    About 8 s on 2 cores, nearly all of it spawning the workers (importing torch); the
    hang guard allows 60 s because a loaded CI machine can take several times longer.
    """
    batches = _batches(steps=3)
    single = LN.AdaptiveLDRKLLoss(num_samples=20)
    single_losses = [single(x, t, i) for x, t, i in batches]
    with mp.Manager() as manager:
        out = manager.dict()
        ctx = mp.start_processes(_aldr_rank, args=(2, _free_port(), batches, [4, 2], out), nprocs=2, join=False,
                                 start_method="spawn")
        deadline = time.monotonic() + 60
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                pytest.fail("distributed workers did not finish within 60 s (hang)")
        (lam0, loss0), (lam1, loss1) = out[0], out[1]
    assert torch.equal(lam0, lam1)
    assert torch.equal(lam0, single.lam)
    # Each rank's loss is the mean over its own shard; the weighted mean is the single-process loss.
    torch.testing.assert_close((4 * loss0 + 2 * loss1) / 6, torch.stack(single_losses))


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


def test_ensloss_module_owns_a_reproducible_stream_saved_in_state_dict():
    x = torch.randn(16, dtype=torch.float64)
    t = torch.randint(0, 2, (16,))
    a = LN.EnsLoss(seed=4, reduction="none")
    first = a(x, t)
    # The first call equals the function with the same seed; later calls draw new derivatives.
    torch.testing.assert_close(first, LF.ensloss(x, t, seed=4, reduction="none"), rtol=0, atol=0)
    second = a(x, t)
    assert not torch.equal(first, second)
    state = a.state_dict()
    b = LN.EnsLoss(reduction="none")
    b.load_state_dict(state)
    for _ in range(3):
        assert torch.equal(a(x, t), b(x, t))
    with pytest.raises(TypeError, match="seed"):
        LN.EnsLoss(seed=1.5)
