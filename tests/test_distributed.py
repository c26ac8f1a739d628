"""gather=True on 2 gloo processes with uneven shards equals single-process training on the concatenation."""
import socket

import pytest
import torch
import torch.multiprocessing as mp

from losslab import functional as LF

SIZES = [5, 3]
W = len(SIZES)


def _data():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(8, 4, generator=g, dtype=torch.float64)
    z2 = torch.randn(8, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 0])
    return z1, z2, labels


CASES = {
    "info_nce": lambda a, b, y, **kw: LF.info_nce(a, b, temperature=0.3, **kw),
    "info_nce_one_way": lambda a, b, y, **kw: LF.info_nce(a, b, temperature=0.3, symmetric=False, **kw),
    "nt_xent": lambda a, b, y, **kw: LF.nt_xent(a, b, temperature=0.3, **kw),
    "supcon": lambda a, b, y, **kw: LF.supcon_loss(a, y, temperature=0.3, **kw),
    "supcon_sum": lambda a, b, y, **kw: LF.supcon_loss(a, y, temperature=0.3, reduction="sum", **kw),
}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, out):
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=W,
                            timeout=datetime.timedelta(seconds=60))
    try:
        z1, z2, labels = _data()
        lo = sum(SIZES[:rank])
        sl = slice(lo, lo + SIZES[rank])
        for name, fn in CASES.items():
            a = z1[sl].clone().requires_grad_(True)
            b = z2[sl].clone().requires_grad_(True)
            loss = fn(a, b, labels[sl], gather=True)
            loss.backward()
            out[(name, rank)] = (loss.item(), a.grad.clone(), None if b.grad is None else b.grad.clone())
        # A shape mismatch across ranks raises on every rank instead of hanging.
        bad = torch.randn(2, 4 if rank == 0 else 5, dtype=torch.float64)
        try:
            LF.nt_xent(bad, bad, gather=True)
            out[("mismatch", rank)] = "no error"
        except ValueError as exc:
            out[("mismatch", rank)] = str(exc)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_worker, args=(_free_port(), out), nprocs=W, join=True, start_method="spawn")
        return dict(out)


@pytest.mark.parametrize("name", list(CASES))
def test_gathered_loss_and_gradients_equal_single_process(results, name):
    z1, z2, labels = _data()
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    single = CASES[name](a, b, labels)
    single.backward()
    losses = [results[(name, r)][0] for r in range(W)]
    assert sum(losses) / W == pytest.approx(single.item(), rel=1e-12)
    for r in range(W):
        lo = sum(SIZES[:r])
        sl = slice(lo, lo + SIZES[r])
        _, ga, gb = results[(name, r)]
        # DDP averages gradients over the W ranks.
        torch.testing.assert_close(ga / W, a.grad[sl], rtol=1e-10, atol=1e-12)
        if b.grad is not None:
            torch.testing.assert_close(gb / W, b.grad[sl], rtol=1e-10, atol=1e-12)


def test_mismatched_shapes_raise_on_every_rank(results):
    for r in range(W):
        assert "same shape except dim 0" in results[("mismatch", r)]
