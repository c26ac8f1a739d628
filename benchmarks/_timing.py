"""Shared timing and memory helpers for the benchmark scripts (not part of the package).

Speed: median wall time of repeated runs after warm-up. Memory: peak RSS of a fresh
Python subprocess minus its RSS just before the measured call, so each figure starts
from a clean allocator.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import torch


def machine() -> str:
    return f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def median_time(fn: Callable[[], object], *, warmup: int = 2, repeat: int = 7, max_seconds: float = 60.0) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs after ``warmup`` runs (fewer if slow)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > max_seconds and len(times) >= 3:
            break
    return statistics.median(times)


def peak_rss_mib(setup: str, call: str, *, timeout: float = 600.0) -> float | None:
    """Extra peak RSS (MiB) of ``call`` in a fresh interpreter after running ``setup``.

    Returns None if the subprocess fails (e.g. runs out of memory).
    """
    code = textwrap.dedent(
        f"""
        import json, gc
        import torch
        torch.set_num_threads({torch.get_num_threads()})
        {textwrap.indent(textwrap.dedent(setup), '        ').strip()}
        gc.collect()
        def _rss(key='VmRSS:'):
            with open('/proc/self/status') as f:
                for line in f:
                    if line.startswith(key):
                        return int(line.split()[1]) / 1024
        with open('/proc/self/clear_refs', 'w') as f:  # reset the high-water mark after setup
            f.write('5')
        before = _rss()
        {textwrap.indent(textwrap.dedent(call), '        ').strip()}
        print(json.dumps({{"extra": _rss('VmHWM:') - before}}))
        """
    )
    # VmHWM (reset above) is this process's own peak; ru_maxrss is not: a child forked from a
    # large parent starts with the parent's peak.
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["extra"]


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v: object) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def interleaved_medians(steps, *, repeat: int, warmup: int = 2, clock: Callable[[], float] = time.perf_counter,
                        max_seconds: float = 120.0, min_repeat: int = 3):
    """Median time of each step, timed in alternating order so that a load change on the
    shared machine hits every competitor alike.

    ``steps`` is a list of callables (returns a list of medians) or a dict name -> callable
    (returns a dict). Stops early after ``max_seconds`` once ``min_repeat`` rounds are done.
    """
    named = isinstance(steps, dict)
    fns = list(steps.values()) if named else list(steps)
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    for r in range(repeat):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            t0 = clock()
            fns[i]()
            times[i].append(clock() - t0)
        if time.perf_counter() - start > max_seconds and r + 1 >= min_repeat:
            break
    medians = [statistics.median(t) for t in times]
    return dict(zip(steps, medians)) if named else medians
