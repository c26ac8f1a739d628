"""Streaming calibration error: losslab.estimators.CalibrationError vs torchmetrics.

    .venv/bin/python benchmarks/calibration.py                 # 10^6 and 10^7 samples, 10 classes
    .venv/bin/python benchmarks/calibration.py --samples 1000000 --repeat 3

A stream of ``N`` samples in batches of 10^5 (``(B, 10)`` float32 probabilities; a pool of 10
batches, made once, is cycled so the input costs the same for both), each batch given to
``update``, then one ``compute``:

* ``ours``: ``CalibrationError(n_bins=15)`` (per-bin float64 sums);
* ``torchmetrics``: ``MulticlassCalibrationError(num_classes=10, n_bins=15)``, which keeps
  every sample's confidence and accuracy until ``compute``.

Both with their input checks at the defaults (on) and off (``losslab.validation(False)``,
``validate_args=False``). Time: median wall time (and process CPU time, less sensitive to other jobs on a shared
machine) of the whole stream over interleaved repeats, and the ratio of the fastest repeats
(``min_ratio``: the least disturbed run of each). Memory: extra peak RSS
of one stream in a fresh interpreter once the batch pool exists (``_timing.peak_rss_mib``),
and the bytes of the metric's state after the stream. Target (issue 10): O(n_bins) memory and
time <= torchmetrics.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import machine, peak_rss_mib, print_table  # noqa: E402

BATCH, POOL, C, BINS = 100_000, 10, 10, 15

SETUP = f"""
import torch, losslab
from losslab.estimators import CalibrationError
from torchmetrics.classification import MulticlassCalibrationError
g = torch.Generator().manual_seed(0)
pool = []
for _ in range({POOL}):
    t = torch.randint(0, {C}, ({BATCH},), generator=g)
    z = torch.randn({BATCH}, {C}, generator=g) * 2
    z[torch.arange({BATCH}), t] += 1.0
    pool.append((torch.softmax(z, -1), t))
"""


def _stream_code(kind: str, n: int, checks: bool) -> str:
    if kind == "ours":
        make = f"m = CalibrationError(n_bins={BINS})"
        ctx = "losslab.validation(True)" if checks else "losslab.validation(False)"
    else:
        make = f"m = MulticlassCalibrationError(num_classes={C}, n_bins={BINS}, validate_args={checks})"
        ctx = "torch.no_grad()"
    return f"""
{make}
with {ctx}:
    for i in range({n // BATCH}):
        p, t = pool[i % {POOL}]
        m.update(p, t)
    value = float(m.compute())
"""


def _state_bytes(m) -> int:
    if isinstance(m, torch.nn.Module) and hasattr(m, "count") and not hasattr(m, "_defaults"):
        return sum(b.numel() * b.element_size() for b in m.buffers())
    total = 0
    for name in m._defaults:
        v = getattr(m, name)
        for t in (v if isinstance(v, list) else [v]):
            total += t.numel() * t.element_size()
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", default="1000000,10000000")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    ns = [int(s) for s in args.samples.split(",")]
    print(f"machine: {machine()}")
    env: dict = {}
    exec(SETUP, env)  # the same batch pool in this process for timing
    rows = []
    for n in ns:
        for checks in (True, False):
            times, mems, states, values = {}, {}, {}, {}
            codes = {kind: _stream_code(kind, n, checks) for kind in ("ours", "torchmetrics")}
            # Interleaved repeats (ours, theirs, ours, ...): a load change on the shared
            # machine hits both alike; the median of each is reported.
            samples = {kind: [] for kind in codes}
            cpu = {kind: [] for kind in codes}
            for _ in range(args.repeat):
                for kind, code in codes.items():
                    local = dict(env)
                    start, start_cpu = time.perf_counter(), time.process_time()
                    exec(code, local)
                    samples[kind].append(time.perf_counter() - start)
                    cpu[kind].append(time.process_time() - start_cpu)
            cpus, mins = {}, {}
            for kind, code in codes.items():
                times[kind] = statistics.median(samples[kind])
                mins[kind] = min(samples[kind])
                cpus[kind] = statistics.median(cpu[kind])
                local = dict(env)
                exec(code, local)
                states[kind] = _state_bytes(local["m"]) / 2 ** 20
                values[kind] = local["value"]
                mems[kind] = peak_rss_mib(SETUP, code)
            rows.append({
                "N": n, "checks": "on" if checks else "off",
                "ours_s": times["ours"], "tm_s": times["torchmetrics"],
                "time_ratio": times["ours"] / times["torchmetrics"],
                "min_ratio": mins["ours"] / mins["torchmetrics"],
                "ours_cpu_s": cpus["ours"], "tm_cpu_s": cpus["torchmetrics"],
                "cpu_ratio": cpus["ours"] / cpus["torchmetrics"],
                "ours_state_MiB": states["ours"], "tm_state_MiB": states["torchmetrics"],
                "ours_peak_MiB": mems["ours"], "tm_peak_MiB": mems["torchmetrics"],
                "ece_ours": values["ours"], "ece_tm": values["torchmetrics"],
            })
            print_table(rows[-1:], list(rows[-1]))
    print("\nall rows (time_ratio, min_ratio, cpu_ratio = ours / torchmetrics; < 1 is faster):")
    print_table(rows, list(rows[0]))


if __name__ == "__main__":
    main()
