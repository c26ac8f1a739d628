"""multi_similarity_loss (+ ε mining) and triplet_margin_loss vs pytorch-metric-learning, forward + backward.

    .venv/bin/python benchmarks/metric.py            # B in {256, 1024, 2048}, D=128
    .venv/bin/python benchmarks/metric.py --quick    # B=1024 only, fewer repeats
    .venv/bin/python benchmarks/metric.py --sizes 512,1024 --repeat 9

float32 on CPU, one process: every row times ours and pytorch-metric-learning (PML) on the same
inputs in the same run (median of repeated runs after warm-up) and prints the ratio
ours / PML (< 1: ours is faster). PML: ``MultiSimilarityLoss()`` with ``MultiSimilarityMiner(0.1)``
(miner inside the timed step, as in training), ``TripletMarginLoss()`` (all triplets,
``AvgNonZeroReducer``). Both values are checked to agree before timing.
Target (issue #4): multi_similarity_loss with mining at B=1024, D=128 <= 0.5 x PML.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine, median_time, print_table  # noqa: E402

from losslab.functional import multi_similarity_loss, triplet_margin_loss  # noqa: E402


def _step(fn, e, y):
    def run():
        x = e.detach().requires_grad_(True)
        fn(x, y).backward()
        return x.grad

    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="B=1024 only, 5 repeats")
    p.add_argument("--sizes", default=None, help="comma-separated batch sizes (default 256,1024,2048)")
    p.add_argument("--dim", type=int, default=128, help="embedding size D (default 128)")
    p.add_argument("--classes", type=int, default=64, help="number of classes in the batch (default 64)")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per cell (default 9, quick 5)")
    args = p.parse_args(argv)
    try:
        from pytorch_metric_learning import losses, miners
    except ImportError:
        print("pytorch-metric-learning is not installed: nothing to compare with", file=sys.stderr)
        return 2
    sizes = [1024] if args.quick and args.sizes is None else [int(s) for s in (args.sizes or "256,1024,2048").split(",")]
    repeat = args.repeat or (5 if args.quick else 9)
    warmup = 1 if args.quick else 2
    print(f"machine: {machine()}; D={args.dim}, {args.classes} classes, float32, forward+backward, median of {repeat}")

    pml_ms, pml_miner = losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner(epsilon=0.1)
    pml_triplet = losses.TripletMarginLoss()
    cases = {
        "multi_similarity (mining)": (lambda e, y: multi_similarity_loss(e, y), lambda e, y: pml_ms(e, y, pml_miner(e, y))),
        "multi_similarity (no mining)": (lambda e, y: multi_similarity_loss(e, y, mining=False), lambda e, y: pml_ms(e, y)),
        "triplet_margin (all triplets)": (lambda e, y: triplet_margin_loss(e, y), lambda e, y: pml_triplet(e, y)),
    }
    rows = []
    for b in sizes:
        g = torch.Generator().manual_seed(b)
        e = torch.randn(b, args.dim, generator=g)
        y = torch.randint(0, args.classes, (b,), generator=g)
        for name, (ours, theirs) in cases.items():
            if name.startswith("triplet") and b > 1024:
                # PML's all-triplets path materializes the triplet index lists (O(B^3) / classes).
                rows.append({"objective": name, "B": b, "ours s": median_time(_step(ours, e, y), warmup=warmup, repeat=repeat),
                             "PML s": None, "ours/PML": None})
                continue
            with torch.no_grad():
                a, t = float(ours(e, y)), float(theirs(e, y))
            if abs(a - t) > 1e-4 * max(1.0, abs(t)):
                print(f"warning: {name} B={b}: values differ, ours {a:.6g} vs PML {t:.6g}", file=sys.stderr)
            t_ours = median_time(_step(ours, e, y), warmup=warmup, repeat=repeat)
            t_pml = median_time(_step(theirs, e, y), warmup=warmup, repeat=repeat)
            rows.append({"objective": name, "B": b, "ours s": t_ours, "PML s": t_pml, "ours/PML": t_ours / t_pml})
            print(f"  {name:30s} B={b:5d}  ours {t_ours:.4f} s  PML {t_pml:.4f} s  ratio {t_ours / t_pml:.3f}", flush=True)
    print()
    print_table(rows, ["objective", "B", "ours s", "PML s", "ours/PML"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
