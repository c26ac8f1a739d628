"""Stateful and parameter-owning classification Modules: state in buffers, exact resume, rank-identical state.

AdaptiveLDRKLLoss (per-sample lambda, indexed by dataset index), AdaptiveLogitAdjustedLoss
(per-class learning status), NormalizedSoftmaxLoss (learnable proxies) and EnsLoss (its own
random stream). The distributed checks run in one 2-process spawn (tests/_spawn.py).
"""
import pytest
import torch
from _spawn import spawn

from losslab import functional as LF
from losslab import nn as LN


def _batches(seed=0, steps=4, n=6, c=4, size=20):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, c, generator=g), torch.randint(0, c, (n,), generator=g),
             torch.randperm(size, generator=g)[:n]) for _ in range(steps)]


# --------------------------------------------------------------------------- AdaptiveLDRKLLoss
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


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_aldr_module_integer_target_and_index_of_any_dtype(dtype):
    """A uint8 index must be read as indices, not as a boolean mask; targets of any integer dtype."""
    x, t, i = _batches()[0]
    a, b = LN.AdaptiveLDRKLLoss(num_samples=20), LN.AdaptiveLDRKLLoss(num_samples=20)
    assert torch.equal(a(x, t, i), b(x, t.to(dtype), i.to(dtype)))
    assert torch.equal(a.lam, b.lam)


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


def test_aldr_nan_logits_give_nan_loss_and_lambda():
    """A NaN row gives a NaN loss and a NaN stored lambda (not the finite lam0 (1 - 1/alpha) that dropping
    NaN probabilities from the KL would give)."""
    crit = LN.AdaptiveLDRKLLoss(num_samples=5)
    x = torch.randn(2, 4)
    x[0, 1] = float("nan")
    none = LN.AdaptiveLDRKLLoss(num_samples=5, reduction="none")(x, torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert torch.isnan(none[0]) and torch.isfinite(none[1])
    crit(x, torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert torch.isnan(crit.lam[0]) and torch.isfinite(crit.lam[1:]).all()


# --------------------------------------------------------------------------- AdaptiveLogitAdjustedLoss
def _status_loop(status, probs, target, floor):
    """PromptMRG's update, one class at a time: mean true-class probability, previous value if absent, / max."""
    c = len(status)
    new = []
    for k in range(c):
        vals = [probs[i][k] for i in range(len(target)) if target[i] == k]
        new.append(sum(vals) / len(vals) if vals else status[k])
    m = max(new)
    return [max(v / m, floor) for v in new]


def test_adaptive_logit_adjusted_update_rule_against_loop():
    crit = LN.AdaptiveLogitAdjustedLoss(4, class_counts=torch.tensor([80, 40, 20, 10]))
    torch.testing.assert_close(crit.status, torch.tensor([1.0, 0.5, 0.25, 0.125]))
    g = torch.Generator().manual_seed(13)
    status = crit.status.tolist()
    for _ in range(3):
        probs = torch.softmax(torch.randn(12, 4, generator=g) * 2, -1)
        target = torch.randint(0, 3, (12,), generator=g)  # class 3 never appears: keeps its value
        crit.update(probs, target)
        status = _status_loop(status, probs.double().tolist(), target.tolist(), 1e-4)
        torch.testing.assert_close(crit.status, torch.tensor(status, dtype=torch.float32), rtol=1e-6, atol=0)
        assert crit.status.max().item() == 1.0
    # A hand-computed case: class means of the true-class probability 0.7 and 0.45; class 2 keeps 1/6; / 0.7.
    hand = LN.AdaptiveLogitAdjustedLoss(3, class_counts=torch.tensor([60.0, 30.0, 10.0]))
    hand.update(torch.tensor([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.4, 0.4], [0.5, 0.5, 0.0]]),
                torch.tensor([0, 0, 1, 1]))
    torch.testing.assert_close(hand.status, torch.tensor([1.0, 0.45 / 0.7, (1 / 6) / 0.7]))
    x, t = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 3, -100, 1])
    torch.testing.assert_close(crit(x, t), LF.logit_adjusted_cross_entropy(x, t, prior=crit.status))
    none = LN.AdaptiveLogitAdjustedLoss(4, tau=0.5, reduction="none")
    torch.testing.assert_close(none(x, t), LF.cross_entropy(x, t, reduction="none"))  # all-ones status: plain CE
    # floor: a class predicted with probability 0 keeps log b finite
    crit.update(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]), torch.tensor([0, 1]))
    assert crit.status[1].item() == pytest.approx(1e-4)
    assert torch.isfinite(crit(x, t))
    # integer targets of any dtype, in forward and in update
    torch.testing.assert_close(crit(x, t.to(torch.int32)), crit(x, t), rtol=0, atol=0)
    other = LN.AdaptiveLogitAdjustedLoss(4)
    other.load_state_dict(crit.state_dict())
    probs = torch.softmax(torch.randn(5, 4, generator=g), -1)
    crit.update(probs, torch.tensor([0, 1, 2, 3, 0]))
    other.update(probs, torch.tensor([0, 1, 2, 3, 0], dtype=torch.uint8))
    assert torch.equal(crit.status, other.status)


def test_adaptive_logit_adjusted_state_dict_round_trip_continues_identically():
    g = torch.Generator().manual_seed(14)
    a = LN.AdaptiveLogitAdjustedLoss(3, class_counts=torch.tensor([5.0, 3.0, 1.0]), tau=1.5)
    a.update(torch.softmax(torch.randn(9, 3, generator=g), -1), torch.randint(0, 3, (9,), generator=g))
    b = LN.AdaptiveLogitAdjustedLoss(3, tau=1.5)
    b.load_state_dict(a.state_dict())
    assert "status" in a.state_dict()
    for _ in range(2):
        x, t = torch.randn(5, 3, generator=g), torch.randint(0, 3, (5,), generator=g)
        assert torch.equal(a(x, t), b(x, t))
        probs, vt = torch.softmax(torch.randn(9, 3, generator=g), -1), torch.randint(0, 3, (9,), generator=g)
        a.update(probs, vt)
        b.update(probs, vt)
        assert torch.equal(a.status, b.status)
    b.set_class_counts(torch.tensor([2.0, 4.0, 1.0]))
    torch.testing.assert_close(b.status, torch.tensor([0.5, 1.0, 0.25]))


def test_adaptive_logit_adjusted_bad_input():
    with pytest.raises(ValueError, match="num_classes"):
        LN.AdaptiveLogitAdjustedLoss(1)
    with pytest.raises(ValueError, match="class_counts"):
        LN.AdaptiveLogitAdjustedLoss(3, class_counts=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="class_counts"):
        LN.AdaptiveLogitAdjustedLoss(3, class_counts=torch.tensor([1.0, -2.0, 1.0]))
    with pytest.raises(ValueError, match="class_counts"):
        LN.AdaptiveLogitAdjustedLoss(3, class_counts=torch.tensor([1.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match="reduction"):
        LN.AdaptiveLogitAdjustedLoss(3, reduction="avg")
    with pytest.raises(ValueError, match="tau"):
        LN.AdaptiveLogitAdjustedLoss(3, tau=-1.0)
    crit = LN.AdaptiveLogitAdjustedLoss(3)
    with pytest.raises(ValueError, match=r"probs must have shape \(N, 3\)"):
        crit.update(torch.rand(4, 2), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="class index 3"):
        crit.update(torch.full((2, 3), 1 / 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="target must have shape"):
        crit.update(torch.full((2, 3), 1 / 3), torch.tensor([0]))
    with pytest.raises(TypeError, match="class indices must be integers"):
        crit.update(torch.full((2, 3), 1 / 3), torch.tensor([0.0, 1.0]))


# --------------------------------------------------------------------------- NormalizedSoftmaxLoss, EnsLoss
def test_normalized_softmax_module_owns_learnable_proxies():
    crit = LN.NormalizedSoftmaxLoss(num_classes=4, embedding_size=6, temperature=0.1)
    emb, labels = torch.randn(5, 6), torch.tensor([0, 1, 2, 3, 0])
    loss = crit(emb, labels)
    torch.testing.assert_close(loss, LF.normalized_softmax_loss(emb, labels, crit.proxies, temperature=0.1))
    loss.backward()
    assert crit.proxies.grad is not None and "proxies" in crit.state_dict()
    clone = LN.NormalizedSoftmaxLoss(num_classes=4, embedding_size=6, temperature=0.1)
    clone.load_state_dict(crit.state_dict())
    assert torch.equal(clone(emb, labels), crit(emb, labels))


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


# --------------------------------------------------------------------------- distributed (one spawn)
def _stateful_worker(rank, world, out, batches, ldr_sizes, probs, target, val_sizes):
    lo = sum(ldr_sizes[:rank])
    sl = slice(lo, lo + ldr_sizes[rank])
    aldr = LN.AdaptiveLDRKLLoss(num_samples=20)
    losses = torch.stack([aldr(x[sl], t[sl], i[sl]) for x, t, i in batches])
    adaptive = LN.AdaptiveLogitAdjustedLoss(3, class_counts=torch.tensor([3.0, 2.0, 1.0]))
    lo = sum(val_sizes[:rank])
    adaptive.update(probs[lo:lo + val_sizes[rank]], target[lo:lo + val_sizes[rank]])
    out[rank] = (aldr.lam.clone(), losses, adaptive.status.clone())


def test_stateful_modules_identical_across_ranks_and_equal_to_single_process():
    """2 gloo ranks with uneven shards: ALDR-KL's lambdas (batches of 4 + 2) and the adaptive logit
    adjustment's status (validation shards of 5 + 2) end equal on every rank and to one process seeing
    the concatenated batches."""
    batches = _batches(steps=3)
    single = LN.AdaptiveLDRKLLoss(num_samples=20)
    single_losses = torch.stack([single(x, t, i) for x, t, i in batches])
    g = torch.Generator().manual_seed(15)
    probs = torch.softmax(torch.randn(7, 3, generator=g), -1)
    target = torch.tensor([0, 0, 1, 0, 1, 1, 0])  # class 2 absent everywhere, class 1 split over ranks
    single_status = LN.AdaptiveLogitAdjustedLoss(3, class_counts=torch.tensor([3.0, 2.0, 1.0]))
    single_status.update(probs, target)

    out = spawn(_stateful_worker, (batches, [4, 2], probs, target, [5, 2]))
    (lam0, loss0, status0), (lam1, loss1, status1) = out[0], out[1]
    assert torch.equal(lam0, lam1) and torch.equal(lam0, single.lam)
    # Each rank's loss is the mean over its own shard; the weighted mean is the single-process loss.
    torch.testing.assert_close((4 * loss0 + 2 * loss1) / 6, single_losses)
    assert torch.equal(status0, status1)
    torch.testing.assert_close(status0, single_status.status, rtol=0, atol=1e-7)
