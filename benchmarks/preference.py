"""dpo_loss vs the hand-written torch expression a user would otherwise write, forward + backward.

    .venv/bin/python benchmarks/preference.py             # B in {64, 4096, 1048576}
    .venv/bin/python benchmarks/preference.py --quick     # B in {64, 4096}, fewer repeats
    .venv/bin/python benchmarks/preference.py --threads 1 --cpu-time   # on a busy machine

Variants (the torch side is the expression TRL's DPOTrainer evaluates, written inline):

* ``sigmoid``: ``-F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()`` (plain DPO);
* ``ipo``: ``((pc - rc) - (pr - rr) - 1 / (2 * beta)).square().mean()``;
* ``forward_kl``: f-DPO with the forward-KL score ``-exp(-r)`` (TRL 1.x), sigmoid loss.

Inputs are per-sequence log-probabilities ``(B,)`` in float32 and bfloat16; for bfloat16
the torch expression is timed on ``.float()`` inputs (losslab computes in float32, autocast's
rule for losses). Prints median times and the ratio losslab / torch (target: <= 1.10).
The two sides are timed interleaved, so a load change on the shared machine hits both.
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

from losslab.functional import dpo_loss  # noqa: E402

BETA = 0.1


def torch_variant(name):
    if name == "sigmoid":
        return lambda pc, pr, rc, rr: -TF.logsigmoid(BETA * ((pc - rc) - (pr - rr))).mean()
    if name == "ipo":
        return lambda pc, pr, rc, rr: ((pc - rc) - (pr - rr) - 1 / (2 * BETA)).square().mean()
    return lambda pc, pr, rc, rr: -TF.logsigmoid(BETA * (torch.exp(-(pr - rr)) - torch.exp(-(pc - rc)))).mean()


def ours_variant(name):
    if name == "sigmoid":
        return lambda pc, pr, rc, rr: dpo_loss(pc, pr, rc, rr, beta=BETA)
    if name == "ipo":
        return lambda pc, pr, rc, rr: dpo_loss(pc, pr, rc, rr, beta=BETA, loss_type="ipo")
    return lambda pc, pr, rc, rr: dpo_loss(pc, pr, rc, rr, beta=BETA, divergence="forward_kl")


def fwd_bwd(fn, inputs, inner):
    """``inner`` calls of forward + backward per timed step (tiny B is microseconds)."""
    def step():
        for _ in range(inner):
            xs = [x.detach().requires_grad_(True) for x in inputs[:2]]
            fn(xs[0], xs[1], inputs[2], inputs[3]).backward()

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per case (default 15, quick 7)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeat = args.repeat or (7 if args.quick else 15)
    clock = time.process_time if args.cpu_time else time.perf_counter
    sizes = [64, 4096] if args.quick else [64, 4096, 1 << 20]
    print(f"# dpo_loss vs the hand-written torch expression, forward+backward (policy inputs require grad); "
          f"{machine()}; {'CPU' if args.cpu_time else 'wall'} time, median of {repeat} interleaved runs")
    rows, ratios = [], []
    for dtype in (torch.float32, torch.bfloat16):
        for b in sizes:
            g = torch.Generator().manual_seed(0)
            inputs = [-(torch.rand(b, generator=g) * 50 + 1).to(dtype) for _ in range(4)]
            inner = max(1, 20000 // b)
            for variant in ("sigmoid", "ipo", "forward_kl"):
                ref = torch_variant(variant)
                if dtype == torch.bfloat16:
                    ref = (lambda f: lambda *xs: f(*(x.float() for x in xs)))(ref)
                t_torch, t_ours = interleaved_medians(
                    [fwd_bwd(ref, inputs, inner), fwd_bwd(ours_variant(variant), inputs, inner)], repeat=repeat,
                    warmup=3, clock=clock, max_seconds=60.0)
                row = {"dtype": str(dtype).replace("torch.", ""), "B": b, "variant": variant,
                       "torch us/call": 1e6 * t_torch / inner, "losslab us/call": 1e6 * t_ours / inner,
                       "ratio": t_ours / t_torch}
                ratios.append(row["ratio"])
                rows.append(row)
                print(f"#   done {row['dtype']} B={b} {variant}: ratio {row['ratio']:.3f}", flush=True)
    print_table(rows, ["dtype", "B", "variant", "torch us/call", "losslab us/call", "ratio"])
    print(f"median ratio (losslab / torch): {statistics.median(ratios):.3f}; max {max(ratios):.3f}")


if __name__ == "__main__":
    main()
