"""gather=True on 2 gloo processes with uneven shards equals single-process training on the concatenation.

One spawn of 2 CPU processes (loopback only, ``tests/_spawn.py``) runs every case; the parent
compares with single-process results. The rule under test (losslab.distributed): each rank
returns its share (W times its anchors' values; "sum" == "none".sum() on every rank), the
mean over ranks of the returned losses is the single-process loss (``global_value`` gives
it on every rank), and the gradient reaching each rank's local shard is W times the
single-process gradient of that shard, so that DDP's averaging over W ranks gives exactly
the single-process parameter gradient (checked with a real DistributedDataParallel model
as well).
"""
import pytest
import torch
from _spawn import spawn

from losslab import distributed as D
from losslab import functional as LF

SIZES = [5, 3]
W = len(SIZES)


def _data():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(8, 4, generator=g, dtype=torch.float64)
    z2 = torch.randn(8, 4, generator=g, dtype=torch.float64)
    neg = torch.randn(3, 4, generator=g, dtype=torch.float64)
    # rank 0 holds labels [0, 1, 2, 0, 1], rank 1 [2, 3, 0]: class 2's positives are on the
    # other rank, class 3 has none (an anchor without positive), class 0 spans both.
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 0])
    return z1, z2, neg, labels


CASES = {
    "info_nce": lambda a, b, y, n, **kw: LF.info_nce(a, b, temperature=0.3, **kw),
    "info_nce_one_way": lambda a, b, y, n, **kw: LF.info_nce(a, b, temperature=0.3, symmetric=False, **kw),
    "info_nce_negatives": lambda a, b, y, n, **kw: LF.info_nce(a, b, temperature=0.3, negatives=n, **kw),
    "info_nce_sum": lambda a, b, y, n, **kw: LF.info_nce(a, b, temperature=0.3, reduction="sum", **kw),
    "nt_xent": lambda a, b, y, n, **kw: LF.nt_xent(a, b, temperature=0.3, **kw),
    "supcon": lambda a, b, y, n, **kw: LF.supcon_loss(a, y, temperature=0.3, **kw),
    "supcon_sum": lambda a, b, y, n, **kw: LF.supcon_loss(a, y, temperature=0.3, reduction="sum", **kw),
    "robust": lambda a, b, y, n, **kw: LF.robust_contrastive_loss(a, b, temperature=0.3, **kw),
    "robust_sum": lambda a, b, y, n, **kw: LF.robust_contrastive_loss(a, b, temperature=0.3, reduction="sum", **kw),
}


def _shard(x, rank, sizes=SIZES):
    lo = sum(sizes[:rank])
    return x[lo : lo + sizes[rank]]


def _encoder():
    torch.manual_seed(3)
    return torch.nn.Linear(4, 3).double()


def _ddp_step(model, x1, x2, y, name, **kw):
    z = model(torch.cat([x1, x2]))  # one forward per step (DDP marks each parameter ready once)
    z1, z2 = z[: x1.shape[0]], z[x1.shape[0]:]
    loss = CASES[name](z1, z2, y, None, **kw)
    loss.backward()
    return loss.item()


def _run(rank, world_size, out):
    import torch.distributed as dist

    z1, z2, neg, labels = _data()
    for name, fn in CASES.items():
        a = _shard(z1, rank).clone().requires_grad_(True)
        b = _shard(z2, rank).clone().requires_grad_(True)
        n = neg.clone().requires_grad_(True) if name == "info_nce_negatives" else None
        loss = fn(a, b, _shard(labels, rank), n, gather=True)
        loss.backward()
        out[(name, rank)] = (loss.item(), a.grad.clone(), None if b.grad is None else b.grad.clone(),
                             None if n is None else n.grad.clone(), D.global_value(loss).item())
        if name in ("info_nce", "supcon", "nt_xent", "robust"):
            with torch.no_grad():
                args = (_shard(z1, rank), _shard(z2, rank), _shard(labels, rank), None)
                out[(name, "none", rank)] = fn(*args, gather=True, reduction="none")
                out[(name, "sum", rank)] = fn(*args, gather=True, reduction="sum")
    # A rank with an empty shard still takes part (8 + 0).
    sizes = [8, 0]
    a = _shard(z1, rank, sizes).clone().requires_grad_(True)
    b = _shard(z2, rank, sizes).clone().requires_grad_(True)
    loss = LF.nt_xent(a, b, temperature=0.3, gather=True)
    loss.backward()
    out[("empty", rank)] = (loss.item(), a.grad.clone())
    # Real DistributedDataParallel: averaged parameter gradients = single-process gradients.
    model = torch.nn.parallel.DistributedDataParallel(_encoder())
    for name in ("nt_xent", "info_nce", "supcon"):
        model.zero_grad()
        value = _ddp_step(model, _shard(z1, rank), _shard(z2, rank), _shard(labels, rank), name, gather=True)
        out[("ddp", name, rank)] = (value, [p.grad.clone() for p in model.parameters()])
    out[("offset", rank)] = D.local_offset(SIZES[rank])
    out[("layout", rank)] = D.shard_layout(torch.zeros(SIZES[rank], 2))
    # The metadata exchange follows the tensors' device, not the backend's name: with
    # get_backend unavailable (or naming an unknown backend) gathering still works.
    real = dist.get_backend
    dist.get_backend = lambda group=None: (_ for _ in ()).throw(AssertionError("backend name consulted"))
    try:
        out[("no_backend_name", rank)] = D.gather_no_grad(torch.full((SIZES[rank],), float(rank))).tolist()
    finally:
        dist.get_backend = real
    # Disagreeing shapes / dtypes across ranks raise on every rank instead of hanging.
    bad = torch.randn(2, 4 if rank == 0 else 5, dtype=torch.float64)
    for key, call in {
        "mismatch": lambda: LF.nt_xent(bad, bad, gather=True),
        "dtype": lambda: D.gather(torch.zeros(2, 3, dtype=(torch.float32, torch.float64)[rank])),
        "ndim": lambda: D.gather_no_grad(torch.zeros((2, 3) if rank == 0 else (2, 3, 1))),
    }.items():
        try:
            call()
            out[(key, rank)] = "no error"
        except ValueError as exc:
            out[(key, rank)] = str(exc)
    out[("done", rank)] = True


@pytest.fixture(scope="module")
def results():
    return spawn(_run)


def _single(name, z1, z2, neg, labels, **kw):
    leaves = [t.clone().requires_grad_(True) for t in (z1, z2, neg)]
    loss = CASES[name](leaves[0], leaves[1], labels, leaves[2] if name == "info_nce_negatives" else None, **kw)
    loss.backward()
    return loss, [t.grad for t in leaves]


@pytest.mark.parametrize("name", list(CASES))
def test_gathered_loss_and_gradients_equal_single_process(results, name):
    z1, z2, neg, labels = _data()
    single, (g1, g2, gn) = _single(name, z1, z2, neg, labels)
    losses = [results[(name, r)][0] for r in range(W)]
    assert sum(losses) / W == pytest.approx(single.item(), rel=1e-12)
    for r in range(W):
        _, ga, gb, _, global_value = results[(name, r)]
        # what users log: the single-process value, on every rank
        assert global_value == pytest.approx(single.item(), rel=1e-12)
        # each rank's local gradient is W x the single-process gradient of its shard
        torch.testing.assert_close(ga / W, _shard(g1, r), rtol=1e-10, atol=1e-12)
        if g2 is not None:
            torch.testing.assert_close(gb / W, _shard(g2, r), rtol=1e-10, atol=1e-12)
    if name == "info_nce_negatives":
        # Each rank has its own copy of `negatives` (not gathered), used by its own anchors:
        # averaging those copies' gradients over ranks (DDP) gives the single-process gradient.
        torch.testing.assert_close(sum(results[(name, r)][3] for r in range(W)) / W, gn, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["info_nce", "supcon", "nt_xent", "robust"])
def test_reduction_none_is_the_share_of_each_local_anchor(results, name):
    """Each rank's "none" holds W x its anchors' values: "sum" == "none".sum() on every rank (the
    regression: "sum" used to be W x the sum of an unscaled "none"), and the ranks' "none" outputs
    concatenated and divided by W give the single-process "none"."""
    z1, z2, neg, labels = _data()
    single = CASES[name](z1, z2, labels, None, reduction="none")
    for r in range(W):
        torch.testing.assert_close(results[(name, "sum", r)], results[(name, "none", r)].sum(), rtol=1e-12, atol=1e-12)
    parts = [results[(name, "none", r)] / W for r in range(W)]
    if name == "nt_xent":  # per rank: local query anchors, then local key anchors
        b = z1.shape[0]
        parts = [torch.cat([p[: SIZES[r]] for r, p in enumerate(parts)]),
                 torch.cat([p[SIZES[r]:] for r, p in enumerate(parts)])]
        torch.testing.assert_close(torch.cat(parts), single, rtol=1e-12, atol=1e-12)
        assert single.shape == (2 * b,)
    else:
        torch.testing.assert_close(torch.cat(parts), single, rtol=1e-12, atol=1e-12)


def test_empty_shard_takes_part(results):
    z1, z2, neg, labels = _data()
    single, (g1, _, _) = _single("nt_xent", z1, z2, neg, labels)
    assert (results[("empty", 0)][0] + results[("empty", 1)][0]) / W == pytest.approx(single.item(), rel=1e-12)
    torch.testing.assert_close(results[("empty", 0)][1] / W, g1, rtol=1e-10, atol=1e-12)
    assert results[("empty", 1)][1].shape == (0, 4)


@pytest.mark.parametrize("name", ["nt_xent", "info_nce", "supcon"])
def test_ddp_parameter_gradients_equal_single_process(results, name):
    z1, z2, neg, labels = _data()
    model = _encoder()
    single = _ddp_step(model, z1, z2, labels, name)
    for r in range(W):
        value, grads = results[("ddp", name, r)]
        for g, p in zip(grads, model.parameters()):  # DDP already averaged: identical on every rank
            torch.testing.assert_close(g, p.grad, rtol=1e-10, atol=1e-12)
    assert sum(results[("ddp", name, r)][0] for r in range(W)) / W == pytest.approx(single, rel=1e-12)


def test_local_offset(results):
    assert results[("offset", 0)] == (0, 8) and results[("offset", 1)] == (5, 8)
    assert results[("layout", 0)] == (2, 0, 8) and results[("layout", 1)] == (2, 5, 8)


def test_exchange_does_not_depend_on_the_backend_name(results):
    for r in range(W):
        assert results[("no_backend_name", r)] == [0.0] * 5 + [1.0] * 3


@pytest.mark.parametrize("key", ["mismatch", "dtype", "ndim"])
def test_disagreeing_ranks_raise_on_every_rank(results, key):
    for r in range(W):
        assert "every rank must pass the same dtype and the same shape except dim 0" in results[(key, r)]
    assert results[("done", 0)] and results[("done", 1)]


def test_single_process_is_identity():
    x = torch.randn(3, 2, requires_grad=True)
    assert D.gather(x) is x and not D.is_distributed()
    assert torch.equal(D.gather_no_grad(x), x) and not D.gather_no_grad(x).requires_grad
    assert D.local_offset(3) == (0, 3) and D.rank_and_world() == (0, 1)
    assert D.shard_layout(x) == (1, 0, 3)
    loss = (x ** 2).sum()
    value = D.global_value(loss)
    assert torch.equal(value, loss.detach()) and not value.requires_grad


def test_reduce_gathered_rule():
    v = torch.tensor([1.0, 2.0, 4.0])
    assert torch.equal(D.reduce_gathered(v, "none", world=2), 2 * v)
    assert D.reduce_gathered(v, "sum", world=2).item() == 14.0
    assert D.reduce_gathered(v, "mean", world=2, count=7).item() == 2.0
    assert D.reduce_gathered(v, "mean", world=1).item() == pytest.approx(7 / 3)
    assert D.reduce_gathered(v * 0, "mean", world=2, count=0).item() == 0.0
    assert D.reduce_gathered(v * 0, "mean", world=2, count=torch.tensor(0)).item() == 0.0
    with pytest.raises(ValueError, match="reduction"):
        D.reduce_gathered(v, "avg", world=2)
