"""cross_entropy vs torch.nn.functional.cross_entropy, forward + backward.

    .venv/bin/python benchmarks/classification.py            # N=8192, C in {10, 1000, 32000}
    .venv/bin/python benchmarks/classification.py --quick    # C in {10, 1000}, fewer repeats
    .venv/bin/python benchmarks/classification.py --threads 1 --cpu-time   # on a busy machine

Variants: plain; z-loss (torch: F.cross_entropy + the z-loss term written by hand);
label smoothing 0.1. float32 and bfloat16 logits. Prints median times and the ratio
ours / torch (target: median ratio <= 1.10).

The competitors are timed interleaved (torch, losslab, torch, losslab, ...), so a load
change on a shared machine hits both alike; ``--cpu-time`` measures process CPU time
instead of wall time (steadier under load with ``--threads 1``; with several threads it
sums the threads' time).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved_medians, machine, print_table  # noqa: E402

from losslab.functional import cross_entropy  # noqa: E402

Z = 1e-4


def torch_variant(name):
    if name == "plain":
        return lambda x, t: TF.cross_entropy(x, t)
    if name == "z_loss":
        return lambda x, t: TF.cross_entropy(x, t) + Z * torch.logsumexp(x.float(), -1).square().mean()
    return lambda x, t: TF.cross_entropy(x, t, label_smoothing=0.1)


def ours_variant(name):
    if name == "plain":
        return lambda x, t: cross_entropy(x, t)
    if name == "z_loss":
        return lambda x, t: cross_entropy(x, t, z_loss=Z)
    return lambda x, t: cross_entropy(x, t, label_smoothing=0.1)


def fwd_bwd(fn, logits, target):
    def step():
        x = logits.detach().requires_grad_(True)
        fn(x, target).backward()

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="C in {10, 1000} and 5 repeats")
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per case (default 9, quick 5)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeat = args.repeat or (5 if args.quick else 9)
    clock = time.process_time if args.cpu_time else time.perf_counter
    classes = [10, 1000] if args.quick else [10, 1000, 32000]
    print(f"# cross_entropy vs F.cross_entropy, forward+backward, N={args.n}; {machine()}; "
          f"{'CPU' if args.cpu_time else 'wall'} time, median of {repeat} interleaved runs")
    rows, ratios, upcast_ratios = [], [], []
    for dtype in (torch.float32, torch.bfloat16):
        for c in classes:
            g = torch.Generator().manual_seed(0)
            logits = (torch.randn(args.n, c, generator=g) * 2).to(dtype)
            target = torch.randint(0, c, (args.n,), generator=g)
            for variant in ("plain", "z_loss", "smoothing"):
                fn = torch_variant(variant)
                steps = [fwd_bwd(fn, logits, target), fwd_bwd(ours_variant(variant), logits, target)]
                if dtype == torch.bfloat16:
                    # autocast's rule for losses: torch computes cross-entropy in float32.
                    steps.append(fwd_bwd(lambda x, t, fn=fn: fn(x.float(), t), logits, target))
                medians = interleaved_medians(steps, repeat=repeat, clock=clock)
                t_torch, t_ours = medians[0], medians[1]
                row = {"dtype": str(dtype).replace("torch.", ""), "C": c, "variant": variant,
                       "torch ms": 1e3 * t_torch, "losslab ms": 1e3 * t_ours, "ratio": t_ours / t_torch}
                ratios.append(row["ratio"])
                if dtype == torch.bfloat16:
                    row["torch fp32-upcast ms"] = 1e3 * medians[2]
                    row["ratio vs upcast"] = t_ours / medians[2]
                    upcast_ratios.append(row["ratio vs upcast"])
                rows.append(row)
                print(f"#   done {row['dtype']} C={c} {variant}: ratio {row['ratio']:.3f}", flush=True)
    print_table(rows, ["dtype", "C", "variant", "torch ms", "losslab ms", "ratio", "torch fp32-upcast ms", "ratio vs upcast"])
    print(f"median ratio (losslab / torch): {statistics.median(ratios):.3f}; max {max(ratios):.3f}")
    print(f"bfloat16, median ratio vs torch computing in float32 (autocast's rule): {statistics.median(upcast_ratios):.3f}")


if __name__ == "__main__":
    main()
