"""SogCLRLoss / ISogCLRLoss: update rules, exact state_dict round trips, index checks, 2-rank state identity."""
from __future__ import annotations

import io
import math

import pytest
import torch
from _spawn import spawn

import losslab
from losslab.functional import robust_contrastive_loss
from losslab.nn import ISogCLRLoss, SogCLRLoss

N = 20  # dataset size


def _batch(step, b=6, d=5):
    g = torch.Generator().manual_seed(100 + step)
    z1 = torch.randn(b, d, generator=g)
    z2 = torch.randn(b, d, generator=g)
    index = torch.randperm(N, generator=g)[:b]
    return z1, z2, index


def _make(kind):
    return SogCLRLoss(N, temperature=0.2, gamma=0.7) if kind == "sog" else ISogCLRLoss(N, temperature=0.2, gamma=0.7, eta=0.05)


def test_sogclr_state_follows_the_moving_average_rule():
    crit = _make("sog")
    u = {}  # manual u per (sample, direction) from the function's own g on every batch
    for step in range(3):
        z1, z2, idx = _batch(step)
        fresh = robust_contrastive_loss(z1, z2, temperature=0.2, return_state=True)  # log_u = log g of this batch
        crit(z1, z2, idx)
        g = fresh.log_u.double().exp()
        for r, i in enumerate(idx.tolist()):
            for k in range(2):
                u[(i, k)] = g[r, k].item() if (i, k) not in u else 0.3 * u[(i, k)] + 0.7 * g[r, k].item()
    for (i, k), v in u.items():
        assert crit.log_u[i, k].item() == pytest.approx(math.log(v), rel=1e-5, abs=1e-5)
    seen = {i for i, _ in u}
    assert all(torch.isneginf(crit.log_u[i]).all() for i in range(N) if i not in seen)


def test_isogclr_temperature_update_rule():
    crit = _make("isog")
    z1, z2, idx = _batch(0)
    crit(z1, z2, idx)  # first step: momentum m = beta * grad, tau = clamp(0.2 - eta * m)
    ref = robust_contrastive_loss(z1, z2, temperature=0.2, rho=0.3, gamma=0.7, return_state=True)
    m = 0.9 * ref.tau_grad
    torch.testing.assert_close(crit.tau_momentum[idx], m)
    torch.testing.assert_close(crit.tau[idx], (0.2 - 0.05 * m).clamp(0.05, 0.7))
    z1, z2, idx2 = _batch(1)
    tau_before, m_before, lu_before = crit.tau[idx2].clone(), crit.tau_momentum[idx2].clone(), crit.log_u[idx2].clone()
    crit(z1, z2, idx2)
    ref = robust_contrastive_loss(z1, z2, temperature=tau_before, log_u=lu_before, rho=0.3, gamma=0.7, return_state=True)
    m = 0.1 * m_before + 0.9 * ref.tau_grad
    torch.testing.assert_close(crit.tau_momentum[idx2], m)
    torch.testing.assert_close(crit.tau[idx2], (tau_before - 0.05 * m).clamp(0.05, 0.7))
    assert bool(((crit.tau >= 0.05) & (crit.tau <= 0.7)).all())


@pytest.mark.parametrize("kind", ["sog", "isog"])
def test_state_dict_round_trip_is_exact(kind):
    torch.manual_seed(0)
    enc = torch.nn.Linear(5, 4)
    crit = _make(kind)
    for step in range(2):
        z1, z2, idx = _batch(step)
        crit(enc(z1), enc(z2), idx).backward()
    buf = io.BytesIO()
    torch.save(crit.state_dict(), buf)
    buf.seek(0)
    resumed = _make(kind)
    resumed.load_state_dict(torch.load(buf))
    z1, z2, idx = _batch(2)
    x1, x2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    y1, y2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    a, b = crit(x1, x2, idx), resumed(y1, y2, idx)
    assert torch.equal(a, b)
    a.backward()
    b.backward()
    assert torch.equal(x1.grad, y1.grad) and torch.equal(x2.grad, y2.grad)
    for (name, t), (_, s) in zip(crit.named_buffers(), resumed.named_buffers()):
        assert torch.equal(t, s), name
    # a fresh module (no state) gives a different gradient: the state matters
    c1 = z1.clone().requires_grad_(True)
    _make(kind)(c1, z2, idx).backward()
    assert not torch.equal(c1.grad, x1.grad)


def test_eval_mode_does_not_update_state():
    crit = _make("isog").eval()
    z1, z2, idx = _batch(0)
    crit(z1, z2, idx)
    assert torch.isneginf(crit.log_u).all() and bool((crit.tau == 0.2).all())


def test_index_and_hyperparameter_checks():
    crit = _make("sog")
    z1, z2, idx = _batch(0)
    with pytest.raises(ValueError, match="index"):
        crit(z1, z2, idx[:4])
    with pytest.raises(ValueError, match="outside"):
        crit(z1, z2, torch.tensor([0, 1, 2, 3, 4, N]))
    with pytest.raises(ValueError, match="outside"):
        crit(z1, z2, torch.tensor([0, 1, 2, 3, 4, -1]))
    with pytest.raises(TypeError):
        crit(z1, z2, idx.float())
    with pytest.raises(ValueError, match="temperature"):
        SogCLRLoss(N, temperature=0.0)
    with pytest.raises(ValueError, match="num_samples"):
        SogCLRLoss(0)
    with pytest.raises(ValueError, match="gamma"):
        SogCLRLoss(N, gamma=1.5)
    with pytest.raises(ValueError, match="tau_min"):
        ISogCLRLoss(N, tau_min=0.5, tau_max=0.1)
    with pytest.raises(ValueError, match="reduction"):
        SogCLRLoss(N, reduction="avg")
    with pytest.raises(ValueError, match="reduction"):
        ISogCLRLoss(N, reduction="avg")
    with pytest.raises(TypeError, match="gather"):
        SogCLRLoss(N, gather="yes")
    with pytest.raises(ValueError, match="rho"):
        ISogCLRLoss(N, rho=-0.1)
    with pytest.raises(ValueError, match="gamma"):
        ISogCLRLoss(N, gamma=0.0)


@pytest.mark.parametrize("kind", ["sog", "isog"])
def test_duplicate_indices_in_a_batch_raise(kind):
    """The documented precondition (unique dataset indices per batch) is checked: a duplicate
    would make the state write depend on the scatter order."""
    crit = _make(kind)
    z1, z2, _ = _batch(0)
    with pytest.raises(ValueError, match="duplicate"):
        crit(z1, z2, torch.tensor([0, 1, 2, 3, 4, 2]))
    assert torch.isneginf(crit.log_u).all()  # nothing written
    crit.eval()(z1, z2, torch.tensor([0, 1, 2, 3, 4, 2]))  # eval mode writes no state: allowed
    with losslab.validation(False):
        crit.train()(z1, z2, torch.tensor([0, 1, 2, 3, 4, 2]))  # the check reads values: off with validation


def test_isogclr_is_reachable_from_the_registry():
    assert losslab.info("robust_contrastive_loss").modules == [SogCLRLoss, ISogCLRLoss]


def test_state_follows_to_and_float64_inputs():
    crit = _make("isog").double()
    assert crit.log_u.dtype == torch.float64 and crit.tau.dtype == torch.float64
    z1, z2, idx = _batch(0)
    loss = crit(z1.double(), z2.double(), idx)
    assert loss.dtype == torch.float64 and torch.isfinite(crit.log_u[idx]).all()


# ----------------------------------------------------------------------------- two ranks
SIZES = [4, 2]
W = len(SIZES)


def _global(step):
    g = torch.Generator().manual_seed(7 + step)
    n = sum(SIZES)
    return (torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randn(n, 5, generator=g, dtype=torch.float64),
            torch.randperm(N, generator=g)[:n])


def _shard(x, rank):
    lo = sum(SIZES[:rank])
    return x[lo : lo + SIZES[rank]]


def _state(crit):
    return {k: v.clone() for k, v in crit.state_dict().items()}


def _worker(rank, world_size, out):
    import torch.distributed as dist

    from losslab.distributed import global_value

    for kind in ("sog", "isog"):
        for gather in (True, False):
            crit = _make(kind).double()
            crit.gather = gather
            losses, grads, shares = [], [], []
            for step in range(3):
                if step == 2 and not gather:
                    # Resume from rank 0's checkpoint on every rank: it must hold every rank's rows.
                    saved = [_state(crit) if rank == 0 else None]
                    dist.broadcast_object_list(saved, src=0)
                    resumed = _make(kind).double()
                    resumed.load_state_dict(saved[0])
                z1, z2, idx = _global(step)
                a = _shard(z1, rank).clone().requires_grad_(True)
                loss = crit(a, _shard(z2, rank), _shard(idx, rank))
                loss.backward()
                losses.append(loss.item())
                grads.append(a.grad.clone())
                shares.append(global_value(loss).item())
                if step == 2 and not gather:
                    b = _shard(z1, rank).clone().requires_grad_(True)
                    again = resumed(b, _shard(z2, rank), _shard(idx, rank))
                    again.backward()
                    out[(kind, "resumed", rank)] = (again.item(), b.grad.clone(), _state(resumed))
            out[(kind, gather, rank)] = (losses, grads, _state(crit), shares)
    # Duplicate indices across the ranks' batches: every rank raises (no rank left waiting).
    crit = _make("sog")
    z1, z2, _ = _global(0)
    idx = torch.tensor([0, 1, 2, 3, 3, 4])
    try:
        crit(_shard(z1, rank).float(), _shard(z2, rank).float(), _shard(idx, rank))
        out[("duplicate", rank)] = "no error"
    except ValueError as exc:
        out[("duplicate", rank)] = str(exc)


@pytest.fixture(scope="module")
def two_ranks():
    return spawn(_worker)


@pytest.mark.parametrize("kind", ["sog", "isog"])
def test_two_ranks_gather_state_identical_and_equal_to_single_process(two_ranks, kind):
    single = _make(kind).double()
    for step in range(3):
        z1, z2, idx = _global(step)
        a = z1.clone().requires_grad_(True)
        loss = single(a, z2, idx)
        loss.backward()
        ranks = [two_ranks[(kind, True, r)] for r in range(W)]
        # mean of the per-rank values = single-process loss = global_value on every rank;
        # local gradient = W x single-process shard gradient
        assert sum(r[0][step] for r in ranks) / W == pytest.approx(loss.item(), rel=1e-12)
        for r in range(W):
            assert ranks[r][3][step] == pytest.approx(loss.item(), rel=1e-12)
            torch.testing.assert_close(ranks[r][1][step] / W, _shard(a.grad, r), rtol=1e-10, atol=1e-12)
    states = [two_ranks[(kind, True, r)][2] for r in range(W)]
    for name, t in single.state_dict().items():
        assert torch.equal(states[0][name], states[1][name]), f"{name} differs between ranks"
        torch.testing.assert_close(states[0][name], t, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["sog", "isog"])
def test_two_ranks_without_gather_keep_identical_state(two_ranks, kind):
    """Regression: without gather each rank used to write only its own rows, so the state differed
    between ranks and a checkpoint saved on rank 0 lost rank 1's samples. Now every rank writes the
    global batch; each rank's u still comes from its local negatives, i.e. the same updates as a
    single process that sees the ranks' shards one after the other."""
    single = _make(kind).double()
    for step in range(3):
        z1, z2, idx = _global(step)
        for r in range(W):
            local = single(_shard(z1, r), _shard(z2, r), _shard(idx, r))
            # no gather: each rank's loss is its ordinary local loss
            assert two_ranks[(kind, False, r)][0][step] == pytest.approx(local.item(), rel=1e-12)
    states = [two_ranks[(kind, False, r)][2] for r in range(W)]
    for name, t in single.state_dict().items():
        assert torch.equal(states[0][name], states[1][name]), f"{name} differs between ranks"
        torch.testing.assert_close(states[0][name], t, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["sog", "isog"])
def test_two_ranks_resume_from_rank0_checkpoint_equals_uninterrupted(two_ranks, kind):
    for r in range(W):
        losses, grads, state, _ = two_ranks[(kind, False, r)]
        value, grad, resumed_state = two_ranks[(kind, "resumed", r)]
        assert value == losses[2]
        assert torch.equal(grad, grads[2])
        for name, t in state.items():
            assert torch.equal(resumed_state[name], t), name


def test_two_ranks_duplicate_indices_raise_on_every_rank(two_ranks):
    for r in range(W):
        assert "duplicate values across the ranks' batches" in two_ranks[("duplicate", r)]
