"""``losslab bench NAME``: time one objective against its registered peer on scaled example inputs."""
from __future__ import annotations

import argparse
import json

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from losslab.benchmarking import SIZES

    p.add_argument("name", help="a registered objective (losslab list)")
    p.add_argument("--size", default="small", choices=list(SIZES),
                   help="batch rows of the main input: " + ", ".join(f"{k} {v}" for k, v in SIZES.items())
                   + " (default small)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="floating inputs' dtype (default float32)")
    p.add_argument("--shape", default=None, help="the main input's shape instead of --size, e.g. 4096x32000")
    p.add_argument("--repeat", type=int, default=9, help="timed runs per implementation (default 9)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's); 1 is steadier "
                   "on a busy machine")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="do not measure peak memory")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def check(args) -> str | None:
    """The bad-input message for parsed arguments, or None."""
    if args.repeat < 1:
        return f"--repeat must be at least 1; got {args.repeat}"
    if args.warmup < 0:
        return f"--warmup must be at least 0; got {args.warmup}"
    if args.threads is not None and args.threads < 1:
        return f"--threads must be at least 1; got {args.threads}"
    return None


def _ms(t: float | None) -> str:
    if t is None:
        return "—"
    return f"{t:.3g} s" if t >= 1 else f"{t * 1e3:.3g} ms"


def _mib(m: float | None) -> str:
    return "—" if m is None else f"{m:.1f} MiB"


def _ratio(r: float) -> str:
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def _value(v) -> str:
    return "—" if v is None else f"{v:.6g}"


def format_text(res) -> str:
    from losslab.benchmarking import format_table

    where = f"--shape {res.shape}" if res.shape else f"--size {res.size}"
    lines = [
        f"losslab bench {res.name}  ({where}, {res.dtype}, {res.mode}: {res.why})",
        f"inputs: {res.inputs}",
        "hyperparameters: losslab's defaults" + (
            f" ({', '.join(f'{k}={v!r}' for k, v in res.hyperparameters.items())} as the example gives them)"
            if res.hyperparameters else ""),
        f"timing: median of {res.repeat} interleaved runs after {res.warmup} warm-up runs; {res.machine}",
        f"memory: {res.memory}",
        "",
    ]
    rows = [{"implementation": res.ours.label, "time": _ms(res.ours.time_s), "peak extra": _mib(res.ours.peak_mib),
             "value": _value(res.ours.value)}]
    peer = res.peer
    if peer is not None and peer.status == "ok":
        rows.append({"implementation": peer.label, "time": _ms(peer.time_s), "peak extra": _mib(peer.peak_mib),
                     "value": _value(peer.value)})
    lines.append(format_table(rows, ["implementation", "time", "peak extra", "value"]))
    lines.append("(value: the output, summed when it is not one number)")
    if peer is None:
        lines.append("peer: none registered (no torch, pytorch-metric-learning, geomloss, POT or torchmetrics "
                     "implementation of this objective)")
    elif peer.status == "skipped":
        lines.append(f"peer {peer.label}: skipped ({peer.reason})")
    elif peer.status == "failed":
        lines.append(f"peer {peer.label}: failed ({peer.reason})")
    else:
        ratios = [f"time {_ratio(res.time_ratio)}" if res.time_ratio is not None else "time —",
                  f"peak memory {_ratio(res.memory_ratio)}" if res.memory_ratio is not None
                  else "peak memory — (below 1 MiB)" if res.memory != "not measured" else "peak memory —"]
        lines.append(f"losslab / peer: {', '.join(ratios)}; below 1: losslab is faster / smaller")
        if peer.note:
            lines.append(f"peer value: {peer.note}")
    return "\n".join(lines)


def run(args) -> int:
    from losslab.benchmarking import bench

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    res = bench(args.name, size=args.size, dtype=DTYPES[args.dtype], shape=args.shape, repeat=args.repeat,
                warmup=args.warmup, memory=args.memory)
    print(json.dumps(res.as_dict()) if args.json else format_text(res))
    return 0
