"""kd_loss vs the hand-written torch expression a user would otherwise write, forward + backward.

    .venv/bin/python benchmarks/distillation.py                # B*T = 8192 tokens, V = 32000
    .venv/bin/python benchmarks/distillation.py --quick        # B*T = 1024, fewer repeats
    .venv/bin/python benchmarks/distillation.py --threads 1 --cpu-time   # on a busy machine

Cases (student logits with a gradient, teacher logits without, float32 and bfloat16):

* ``kl``: Hinton's forward KL at temperature T = 2, averaged over tokens. torch:
  ``T**2 * F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,
  reduction="batchmean")``; losslab: ``kd_loss(s, t, temperature=2.0)``.
* ``kl+ce``: the same mixed half-and-half with cross-entropy on token targets, 10 % of
  them ignored (-100). torch: the KL summed over kept tokens / their count, plus
  ``F.cross_entropy(..., ignore_index=-100)``; losslab: ``kd_loss(s, t, temperature=2.0,
  target=y, ce_weight=0.5)``.

For bfloat16, torch's expression is written on ``.float()`` copies (autocast's rule for
losses; losslab computes in float32 too). Times are medians of interleaved runs; the ratio
is losslab / torch (target <= 1.10). One process holds ~4 GB per (8192, 32000) float32
tensor pair, plus temporaries: expect ~12 GB peak for the full size.
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

from losslab.functional import kd_loss  # noqa: E402

T = 2.0


def torch_kl(s, t, y):
    return T ** 2 * TF.kl_div(TF.log_softmax(s.float() / T, -1), TF.log_softmax(t.float() / T, -1),
                              log_target=True, reduction="batchmean")


def torch_kl_ce(s, t, y):
    keep = y != -100
    per_token = TF.kl_div(TF.log_softmax(s.float() / T, -1), TF.log_softmax(t.float() / T, -1),
                          log_target=True, reduction="none").sum(-1)
    kl = (per_token * keep).sum() / keep.sum()
    return 0.5 * T ** 2 * kl + 0.5 * TF.cross_entropy(s.float(), y, ignore_index=-100)


def ours_kl(s, t, y):
    return kd_loss(s, t, temperature=T)


def ours_kl_ce(s, t, y):
    return kd_loss(s, t, temperature=T, target=y, ce_weight=0.5)


CASES = {"kl": (torch_kl, ours_kl), "kl+ce": (torch_kl_ce, ours_kl_ce)}


def step(fn, s, t, y):
    def run():
        x = s.detach().requires_grad_(True)
        fn(x, t, y).backward()

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="B*T = 1024 tokens and 3 repeats")
    ap.add_argument("--tokens", type=int, default=None, help="B*T (default 8192; quick 1024)")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per case (default 5, quick 3)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--cases", default=",".join(CASES), help=f"subset of {','.join(CASES)}")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.tokens or (1024 if args.quick else 8192)
    repeat = args.repeat or (3 if args.quick else 5)
    clock = time.process_time if args.cpu_time else time.perf_counter
    print(f"# kd_loss vs hand-written torch, forward+backward, B*T={n}, V={args.vocab}; {machine()}; "
          f"{'CPU' if args.cpu_time else 'wall'} time, median of {repeat} interleaved runs")
    rows = []
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        g = torch.Generator().manual_seed(0)
        s = (torch.randn(n, args.vocab, generator=g) * 2).to(dtype)
        t = (torch.randn(n, args.vocab, generator=g) * 2).to(dtype)
        y = torch.randint(0, args.vocab, (n,), generator=g)
        y[torch.rand(n, generator=g) < 0.1] = -100
        for case in args.cases.split(","):
            theirs, ours = CASES[case]
            torch.testing.assert_close(ours(s, t, y), theirs(s, t, y), rtol=1e-4, atol=1e-5)
            t_torch, t_ours = interleaved_medians([step(theirs, s, t, y), step(ours, s, t, y)], repeat=repeat,
                                                  clock=clock, warmup=1, max_seconds=300.0)
            rows.append({"dtype": name, "case": case, "torch ms": 1e3 * t_torch, "losslab ms": 1e3 * t_ours,
                         "ratio": t_ours / t_torch})
            print(f"#   done {name} {case}: ratio {t_ours / t_torch:.3f}", flush=True)
        del s, t
    print_table(rows, ["dtype", "case", "torch ms", "losslab ms", "ratio"])
    ratios = [r["ratio"] for r in rows]
    print(f"median ratio (losslab / torch): {statistics.median(ratios):.3f}; max {max(ratios):.3f}")


if __name__ == "__main__":
    main()
