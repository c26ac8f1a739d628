"""cross_entropy vs torch.nn.functional.cross_entropy, forward + backward.

    .venv/bin/python benchmarks/classification.py            # N=8192, C in {10, 1000, 32000}
    .venv/bin/python benchmarks/classification.py --quick    # C in {10, 1000}

Variants: plain; z-loss (torch: F.cross_entropy + the z-loss term written by hand);
label smoothing 0.1. float32 and bfloat16 logits. Prints median times and the ratio
ours / torch (target: median ratio <= 1.10).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine, median_time, print_table  # noqa: E402

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
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    classes = [10, 1000] if args.quick else [10, 1000, 32000]
    print(f"# cross_entropy vs F.cross_entropy, forward+backward, N={args.n}; {machine()}")
    rows, ratios, upcast_ratios = [], [], []
    for dtype in (torch.float32, torch.bfloat16):
        for c in classes:
            g = torch.Generator().manual_seed(0)
            logits = (torch.randn(args.n, c, generator=g) * 2).to(dtype)
            target = torch.randint(0, c, (args.n,), generator=g)
            for variant in ("plain", "z_loss", "smoothing"):
                t_torch = median_time(fwd_bwd(torch_variant(variant), logits, target), repeat=args.repeat)
                t_ours = median_time(fwd_bwd(ours_variant(variant), logits, target), repeat=args.repeat)
                row = {"dtype": str(dtype).replace("torch.", ""), "C": c, "variant": variant,
                       "torch ms": 1e3 * t_torch, "losslab ms": 1e3 * t_ours, "ratio": t_ours / t_torch}
                ratios.append(row["ratio"])
                if dtype == torch.bfloat16:
                    # autocast's rule for losses: torch computes cross-entropy in float32.
                    fn = torch_variant(variant)
                    t_fp32 = median_time(fwd_bwd(lambda x, t: fn(x.float(), t), logits, target), repeat=args.repeat)
                    row["torch fp32-upcast ms"] = 1e3 * t_fp32
                    row["ratio vs upcast"] = t_ours / t_fp32
                    upcast_ratios.append(row["ratio vs upcast"])
                rows.append(row)
    print_table(rows, ["dtype", "C", "variant", "torch ms", "losslab ms", "ratio", "torch fp32-upcast ms", "ratio vs upcast"])
    print(f"median ratio (losslab / torch): {statistics.median(ratios):.3f}; max {max(ratios):.3f}")
    print(f"bfloat16, median ratio vs torch computing in float32 (autocast's rule): {statistics.median(upcast_ratios):.3f}")


if __name__ == "__main__":
    main()
