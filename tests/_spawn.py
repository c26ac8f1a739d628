"""One helper for the tests that run on 2 CPU processes (gloo backend, loopback only).

``spawn(worker, args)`` starts ``nprocs`` processes, initializes a gloo process group in
each, calls ``worker(rank, world_size, out, *args)`` and returns ``dict(out)``, where
``out`` is a shared dict the workers write their results into. A hang fails the test
after ``timeout`` seconds instead of blocking CI; an exception in a worker fails it with
the worker's traceback.
"""
from __future__ import annotations

import datetime
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch.multiprocessing as mp

TIMEOUT = 120  # seconds for one spawn (importing torch twice dominates on a loaded 2-core CI machine)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, worker: Callable[..., None], world: int, port: int, out: Any, args: tuple) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        worker(rank, world, out, *args)
    finally:
        dist.destroy_process_group()


def spawn(worker: Callable[..., None], args: tuple = (), *, nprocs: int = 2, timeout: float = TIMEOUT) -> dict:
    """Run ``worker(rank, world_size, out, *args)`` on ``nprocs`` gloo processes; return ``dict(out)``."""
    with mp.Manager() as manager:
        out = manager.dict()
        ctx = mp.start_processes(_entry, args=(worker, nprocs, free_port(), out, args), nprocs=nprocs,
                                 join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=0.5):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                pytest.fail(f"{nprocs} workers did not finish within {timeout} s (hang)")
        return dict(out)
