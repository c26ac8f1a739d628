"""Timing and memory helpers shared by ``losslab bench`` and the ``benchmarks/`` scripts.

Speed: the median wall time of repeated runs after warm-up; competitors are timed in
alternating order (:func:`interleaved_medians`) so that a load change on a shared machine
hits all of them alike.

Memory, two measures of the extra peak resident memory (RSS) of one call:

* :func:`peak_rss_mib`: in a fresh Python interpreter (a subprocess), its peak RSS minus its
  RSS once the inputs exist, so each figure starts from a clean allocator. The benchmark
  scripts use it.
* :func:`peak_extra_mib`: in this process (what ``losslab bench`` uses: no interpreter
  start-up per figure). Before the call, freed heap memory is handed back to the operating
  system (glibc ``malloc_trim``) and the kernel's high-water mark is reset
  (``/proc/self/clear_refs``); the figure is the high-water mark after the call minus the
  RSS before it.

:func:`bench_inputs` scales an objective's registered example to a benchmark size and
:func:`bench` times it against its registered peer (:mod:`losslab.peers`).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import inspect
import json
import math
import os
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["machine", "median_time", "interleaved_medians", "peak_rss_mib", "peak_extra_mib", "print_table",
           "SIZES", "BenchInputs", "bench_inputs", "bench", "BenchError"]

# Rows of the main input (its batch dimension) at each --size.
SIZES = {"small": 64, "medium": 1024, "large": 8192}


# ----------------------------------------------------------------------------- timing
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


# ----------------------------------------------------------------------------- memory
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


def _status_mib(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@functools.lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None  # glibc only


def _malloc_trim() -> None:
    """Hand the allocator's free memory back to the OS (glibc), so it is not reused unseen."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def peak_extra_mib(fn: Callable[[], object]) -> float | None:
    """Extra peak RSS (MiB) of one ``fn()`` measured in this process; None where the kernel
    does not expose it (not Linux, or the high-water mark cannot be reset).

    Run ``fn`` once before (warm-up) so that one-time allocations (thread pools, lazily
    loaded code) are not counted.
    """
    gc.collect(1)  # the young generations: a full collection of a large program costs ~0.5 s
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
            f.write("5")
    except OSError:
        return None
    before = _status_mib("VmRSS:")
    fn()
    peak = _status_mib("VmHWM:")
    if before is None or peak is None:
        return None
    return max(peak - before, 0.0)


# ----------------------------------------------------------------------------- tables
def print_table(rows: list[dict], columns: list[str]) -> None:
    print(format_table(rows, columns))


def format_table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    for r in rows:
        lines.append("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns).rstrip())
    return "\n".join(lines)


def _fmt(v: object) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


# ----------------------------------------------------------------------------- inputs
class BenchError(ValueError):
    """The inputs cannot be built as asked (a --shape the objective cannot take, ...)."""


# Positional inputs that are not indexed by the batch (class tables, projection weights,
# known means): they keep the example's size when the batch grows.
_NOT_BATCHED = {"weight", "student_weight", "teacher_weight", "proxies", "class_means", "g_mean",
                "bag_response", "temperature", "prior", "projections", "bias_b", "bias"}
# A second sample whose size differs from the first's (x (n, d), y (m, d)): it grows too.
_SECOND_SAMPLE = {"y", "query", "query_labels"}
# The batch is not dimension 0 of the main input: multi-teacher inputs are (K, *, C).
_BATCH_DIM = {"multi_teacher_kd_loss": 1}
# Index tensors into another input that grows with the batch: offset per draw.
_INDEX_INTO = {"bag_index": "bag_response"}


@dataclass
class BenchInputs:
    """Inputs for one benchmark: positional ``args``, keyword ``kwargs``, and how they were made."""

    args: tuple
    kwargs: dict
    names: list[str]

    def describe(self) -> str:
        parts = [f"{n} {_shape_text(a)}" for n, a in zip(self.names, self.args) if isinstance(a, torch.Tensor)]
        parts += [f"{k} {_shape_text(v)}" for k, v in self.kwargs.items() if isinstance(v, torch.Tensor)]
        return ", ".join(parts)


def _shape_text(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"


def _positional_names(fn) -> list[str]:
    if isinstance(fn, type):
        fn = fn.update
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"]


def default_kwargs(info, kwargs: dict) -> dict:
    """The example's keyword arguments that a call needs with default hyperparameters: tensors
    (per-batch inputs such as ``mask``, per-class constants such as ``prior``) and arguments
    without a default; every hyperparameter that has a default is left at it."""
    fn = info.function
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return dict(kwargs)
    keep = {}
    for k, v in kwargs.items():
        p = params.get(k)
        if isinstance(v, torch.Tensor) or p is None or p.default is inspect.Parameter.empty:
            keep[k] = v
    return keep


def _main_index(args) -> int:
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor) and a.dim() >= 1:
            return i
    raise BenchError("the registered example has no tensor input to scale")


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(p) for p in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise BenchError(f"--shape must be sizes joined by 'x', e.g. 4096x32000; got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise BenchError(f"--shape sizes must be positive integers, e.g. 4096x32000; got {text!r}")
    return dims


def bench_inputs(name: str, *, size: str = "small", shape: str | tuple[int, ...] | None = None,
                 dtype: torch.dtype = torch.float32, seed: int = 0) -> BenchInputs:
    """Inputs for benchmarking ``name``, scaled from its registered example.

    The batch grows by concatenating independent draws of the example along its batch
    dimension (so integer targets stay valid class indices, probability rows stay on the
    simplex, groups stay whole) until the main input (the first tensor) has at least
    ``SIZES[size]`` rows (a whole number of draws). ``shape`` (``"4096x32000"``) sets the main input's shape instead: its batch size
    as above, then every other dimension of the example's size that changes is resized
    wherever an input has a dimension of that size (the class dimension of logits and of a
    prior, the feature dimension of both views), by repeating the example's entries;
    probability rows are renormalized and covariance matrices kept positive definite.
    Floating inputs are cast to ``dtype``; integer inputs are kept. Hyperparameters are
    losslab's defaults: only the keyword arguments a call needs are kept (:func:`default_kwargs`).

    Raises:
        BenchError: the size or shape cannot be built from the example.
    """
    import losslab

    info = losslab.info(name)
    if info.example is None:
        raise BenchError(f"{name} has no registered example to scale")
    if size not in SIZES:
        raise BenchError(f"--size must be one of {', '.join(SIZES)}; got {size!r}")
    dims = _parse_shape(shape) if isinstance(shape, str) else (tuple(shape) if shape is not None else None)
    make = info.example.make
    args0, kwargs0 = make(torch.Generator().manual_seed(seed))
    names = _positional_names(info.function)
    names = (names + [f"arg{i}" for i in range(len(names), len(args0))])[:len(args0)]
    main = _main_index(args0)
    bdim = _BATCH_DIM.get(name, 0)
    n0 = args0[main].shape[bdim]
    if dims is not None and len(dims) != args0[main].dim():
        raise BenchError(f"--shape {'x'.join(map(str, dims))} has {len(dims)} dimensions but the first input of {name}, "
                         f"{names[main]}, has {args0[main].dim()} (the example's is "
                         f"{'x'.join(map(str, args0[main].shape))})")
    rows = dims[bdim] if dims is not None else SIZES[size]
    draws = max(1, math.ceil(rows / n0))

    def batched_pos(i, a) -> bool:
        if not isinstance(a, torch.Tensor) or a.dim() <= bdim or names[i] in _NOT_BATCHED:
            return False
        return a.shape[bdim] == n0 or names[i] in _SECOND_SAMPLE

    def batched_kw(k, v) -> bool:
        return (isinstance(v, torch.Tensor) and v.dim() > bdim and v.shape[bdim] == n0 and k not in _NOT_BATCHED)

    pos_b = [batched_pos(i, a) for i, a in enumerate(args0)]
    kw_b = {k: batched_kw(k, v) for k, v in kwargs0.items()}
    if draws == 1:
        args, kwargs = list(args0), dict(kwargs0)
    else:
        all_draws = [(args0, kwargs0)] + [make(torch.Generator().manual_seed(seed + j)) for j in range(1, draws)]
        indexed = {_INDEX_INTO[n] for n in names if n in _INDEX_INTO}
        args = []
        for i, a in enumerate(args0):
            parts = [d[0][i] for d in all_draws]
            if names[i] == "kernel" and isinstance(a, torch.Tensor) and a.dim() == 2:
                args.append(torch.block_diag(*parts))  # the kernel of disjoint batches
            elif names[i] in _INDEX_INTO and pos_b[i]:  # indices into an input that grows per draw
                sizes = [d[0][names.index(_INDEX_INTO[names[i]])].shape[0] for d in all_draws]
                offsets = [sum(sizes[:j]) for j in range(len(sizes))]
                args.append(torch.cat([p + o for p, o in zip(parts, offsets)], bdim))
            elif pos_b[i] or names[i] in indexed:
                args.append(torch.cat(parts, bdim))
            else:
                args.append(a)
        kwargs = {k: torch.cat([d[1][k] for d in all_draws], bdim) if kw_b[k] else v for k, v in kwargs0.items()}
    if dims is not None:
        args, kwargs = _reshape(args, kwargs, main, bdim, pos_b, kw_b, args0[main].shape, dims, rows)
    kwargs = default_kwargs(info, kwargs)
    args = tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    kwargs = {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
              for k, v in kwargs.items()}
    return BenchInputs(args=args, kwargs=kwargs, names=names)


def _slice_batch(t: torch.Tensor, dim: int, rows: int, total: int) -> torch.Tensor:
    keep = max(1, round(t.shape[dim] * rows / total))
    return t.narrow(dim, 0, min(keep, t.shape[dim]))


def _resize(t: torch.Tensor, dim: int, new: int) -> torch.Tensor:
    old = t.shape[dim]
    out = t.index_select(dim, torch.arange(new) % old)
    if out.is_floating_point():
        probs = (t >= 0).all() and torch.allclose(t.sum(-1), torch.ones((), dtype=t.dtype), atol=1e-6)
        if probs and dim == t.dim() - 1:
            out = out / out.sum(-1, keepdim=True)  # probability rows stay on the simplex
    return out


def _fit_indices(t, changes: dict[int, int]):
    """Integer inputs that may index a dimension that shrank (class indices into fewer classes)
    are taken modulo its new size; negative values (``ignore_index``) are kept."""
    if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.dtype == torch.bool or not t.numel():
        return t
    top = int(t.max())
    for old, new in changes.items():
        if new < old and new <= top < old:
            t = torch.where(t >= 0, t % new, t)
            top = int(t.max())
    return t


def _reshape(args, kwargs, main, bdim, pos_b, kw_b, old_shape, dims, rows):
    """Exact batch size, then the other dimensions of the main input resized everywhere."""
    args, kwargs = list(args), dict(kwargs)
    total = args[main].shape[bdim]
    if rows != total:
        args = [_slice_batch(a, bdim, rows, total) if pos_b[i] else a for i, a in enumerate(args)]
        kwargs = {k: _slice_batch(v, bdim, rows, total) if kw_b[k] else v for k, v in kwargs.items()}
    changes: dict[int, int] = {}
    for j, (old, new) in enumerate(zip(old_shape, dims)):
        if j != bdim and old != new:
            if changes.get(old, new) != new:
                raise BenchError(f"--shape {'x'.join(map(str, dims))}: the example's dimensions of size {old} "
                                 "cannot take different sizes")
            changes[old] = new

    def fix(t: torch.Tensor, batched: bool) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            return t
        resized_square = False
        for d in range(t.dim()):
            if batched and d == bdim:
                continue
            if t.shape[d] in changes:
                new = changes[t.shape[d]]
                square = t.dim() >= 2 and t.shape[-1] == t.shape[-2]
                t = _resize(t, d, new)
                resized_square = resized_square or (square and d >= t.dim() - 2)
        if resized_square and t.is_floating_point() and t.shape[-1] == t.shape[-2] \
                and torch.allclose(t, t.transpose(-1, -2)):
            # repeated rows make a covariance singular: add its mean variance on the diagonal
            scale = torch.diagonal(t, dim1=-2, dim2=-1).mean(-1, keepdim=True).clamp_min(1e-3)
            t = t + scale.unsqueeze(-1) * torch.eye(t.shape[-1], dtype=t.dtype)
        return t

    args = [_fit_indices(fix(a, pos_b[i]), changes) for i, a in enumerate(args)]
    kwargs = {k: _fit_indices(fix(v, kw_b.get(k, False)), changes) for k, v in kwargs.items()}
    return args, kwargs


# ----------------------------------------------------------------------------- one benchmark
@dataclass
class Side:
    label: str
    status: str = "ok"  # ok | skipped | failed
    reason: str | None = None
    time_s: float | None = None
    peak_mib: float | None = None
    value: float | None = None
    package: str | None = None
    note: str | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class BenchResult:
    name: str
    size: str
    dtype: str
    shape: str | None
    mode: str
    why: str
    inputs: str
    hyperparameters: dict
    repeat: int
    warmup: int
    machine: str
    memory: str
    ours: Side
    peer: Side | None

    @property
    def time_ratio(self) -> float | None:
        if self.peer is None or self.peer.status != "ok" or not self.peer.time_s or self.ours.time_s is None:
            return None
        return self.ours.time_s / self.peer.time_s

    @property
    def memory_ratio(self) -> float | None:
        """None when either figure is below 1 MiB: RSS moves by pages, and a few pages are noise."""
        if self.peer is None or self.peer.status != "ok" or self.ours.peak_mib is None or self.peer.peak_mib is None:
            return None
        if min(self.ours.peak_mib, self.peer.peak_mib) < 1.0:
            return None
        return self.ours.peak_mib / self.peer.peak_mib

    def as_dict(self) -> dict:
        return {
            "name": self.name, "size": self.size, "dtype": self.dtype, "shape": self.shape, "mode": self.mode,
            "why": self.why, "inputs": self.inputs, "hyperparameters": self.hyperparameters,
            "repeat": self.repeat, "warmup": self.warmup, "machine": self.machine, "memory_method": self.memory,
            "losslab": self.ours.as_dict(), "peer": None if self.peer is None else self.peer.as_dict(),
            "time_ratio": self.time_ratio, "memory_ratio": self.memory_ratio,
        }


def _scalar(value) -> float | None:
    """The value shown next to the time: the output, or its sum when it is not one number."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return float(value.detach().double().sum())
    return None


def _mode(info, args, grad_positions) -> tuple[str, str]:
    if isinstance(info.function, type):
        return "forward only", "streaming estimator: update() on the batch, then compute()"
    if info.properties.get("returns") == "float":
        return "forward only", "returns a Python float (a fitting procedure)"
    if not info.differentiable:
        return "forward only", "not differentiable"
    if not grad_positions:
        return "forward only", "no floating input to differentiate"
    return "forward+backward", "backward of the output's sum to " + ", ".join(grad_positions)


def _streaming_step(cls, args, kwargs):
    params = inspect.signature(cls).parameters
    ctor = {k: v for k, v in kwargs.items() if k in params}
    per_batch = {k: v for k, v in kwargs.items() if k not in params}
    if "shape" in params and "shape" not in ctor and args:
        ctor["shape"] = tuple(args[0].shape[1:])

    def step():
        m = cls(**ctor)
        m.update(*args, **per_batch)
        return m.compute() if hasattr(m, "compute") else m
    return step


def bench(name: str, *, size: str = "small", dtype: torch.dtype = torch.float32, shape: str | None = None,
          repeat: int = 9, warmup: int = 2, memory: bool = True, peer_available: Callable | None = None,
          max_seconds: float = 60.0) -> BenchResult:
    """Time one registered objective (and its registered peer, when installed) on inputs
    scaled from its example: forward+backward median over ``repeat`` interleaved runs after
    ``warmup`` runs (a case whose first run is slow gets fewer, stopping after
    ``max_seconds``), and the extra peak memory of one run (:func:`peak_extra_mib`, the
    largest of :data:`MEMORY_RUNS` runs).

    Raises:
        BenchError: the inputs cannot be built, or losslab's own call fails on them.
    """
    import losslab

    info = losslab.info(name)
    inp = bench_inputs(name, size=size, shape=shape, dtype=dtype)
    args, kwargs = list(inp.args), inp.kwargs
    streaming = isinstance(info.function, type)
    floating = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()]
    declared = info.example.grad
    positions = [i for i in (declared if declared else floating) if i in floating]
    mode, why = _mode(info, args, [inp.names[i] for i in positions])
    backward = mode == "forward+backward"
    if backward:
        for i in positions:
            args[i] = args[i].detach().requires_grad_(True)
    leaves = [args[i] for i in positions] if backward else []
    extract = info.example.output

    def output(value):  # the example's extractor fits the example's options, e.g. a NamedTuple
        return value if extract is None or isinstance(value, torch.Tensor) else extract(value)

    def finish(value):
        if backward and isinstance(value, torch.Tensor) and value.requires_grad:
            value.sum().backward()
        return value

    def clear():
        for x in leaves:
            x.grad = None

    if streaming:
        ours_call = _streaming_step(info.function, tuple(args), kwargs)
    else:
        def ours_call():
            return output(info.function(*args, **kwargs))

    def ours_step():
        clear()
        return finish(ours_call())

    started = time.perf_counter()
    try:
        with contextlib.nullcontext() if backward else torch.no_grad():
            first = ours_step()
    except Exception as exc:  # the inputs do not fit the objective (e.g. a --shape it cannot take)
        what = f"--shape {shape}" if shape else f"--size {size} inputs ({inp.describe()})"
        raise BenchError(f"{name} cannot take {what}: {type(exc).__name__}: {exc}") from None
    if backward and not (isinstance(first, torch.Tensor) and first.requires_grad):
        backward, mode, why = False, "forward only", "the output does not depend on a differentiable input"
    ours = Side(label=_label(info), value=_scalar(first))

    peer_side, peer_step = None, None
    peer = info.peer
    if peer is not None:
        peer_side = Side(label=peer.label, package=peer.package, note=peer.note or None)
        available = peer_available(peer) if peer_available is not None else peer.available()
        if not available:
            peer_side.status, peer_side.reason = "skipped", f"not installed: {peer.package}"
        else:
            reason = peer.skip_reason(tuple(args), kwargs) if peer.skip_reason is not None else None
            if reason:
                peer_side.status, peer_side.reason = "skipped", reason
            else:
                try:
                    call = peer.build(tuple(args), kwargs)

                    def peer_step():
                        clear()
                        return finish(call())

                    with contextlib.nullcontext() if backward else torch.no_grad():
                        peer_side.value = _scalar(peer_step())
                except Exception as exc:
                    peer_side.status, peer_side.reason = "failed", f"{type(exc).__name__}: {exc}".splitlines()[0]
                    peer_step = None

    steps = {"ours": ours_step}
    if peer_step is not None:
        steps["peer"] = peer_step
    # the calls above were the first warm-up run; a slow case gets no more and stops timing
    # after max_seconds (at least one timed run each)
    slow = (time.perf_counter() - started) * (warmup + repeat) > max_seconds
    extra_warmup = 0 if slow else max(warmup - 1, 0)
    calls = {k: 0 for k in steps}

    def counted(key, fn):
        def run():
            calls[key] += 1
            return fn()
        return run

    with contextlib.nullcontext() if backward else torch.no_grad():
        times = interleaved_medians({k: counted(k, f) for k, f in steps.items()}, repeat=repeat,
                                    warmup=extra_warmup, max_seconds=max_seconds, min_repeat=1)
        ours.time_s = times["ours"]
        if peer_step is not None:
            peer_side.time_s = times["peer"]
        if memory:
            ours.peak_mib = _peak(ours_step, clear, 1 if slow else MEMORY_RUNS)
            if peer_step is not None:
                peer_side.peak_mib = _peak(peer_step, clear, 1 if slow else MEMORY_RUNS)
    clear()
    hyper = {k: v if isinstance(v, (bool, int, float, str, type(None))) else repr(v)
             for k, v in inp.kwargs.items() if not isinstance(v, torch.Tensor)}
    return BenchResult(
        name=name, size=size, dtype=str(dtype).removeprefix("torch."), shape=shape, mode=mode, why=why,
        inputs=inp.describe(), hyperparameters=hyper, repeat=calls["ours"] - extra_warmup, warmup=1 + extra_warmup,
        machine=machine(),
        memory=(f"extra peak RSS of one call in this process, the largest of {1 if slow else MEMORY_RUNS} "
                "(VmHWM reset before the call, after malloc_trim)") if memory else "not measured",
        ours=ours, peer=peer_side,
    )


# The same call's peak can differ between runs (the order in which the allocator frees and
# reuses large blocks): the reported figure is the largest of a few runs.
MEMORY_RUNS = 3


def _peak(step, clear, runs: int) -> float | None:
    peaks = []
    for _ in range(runs):
        clear()  # from the state after the inputs exist: no gradients held from a timed run
        peaks.append(peak_extra_mib(step))
    return None if None in peaks else max(peaks)


def _label(info) -> str:
    fn = info.function
    if isinstance(fn, type):
        return f"losslab.estimators.{fn.__name__}"
    space = "estimators" if info.family == "estimators" else "functional"
    return f"losslab.{space}.{info.name}"

