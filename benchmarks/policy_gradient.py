"""linear_token_logprobs(..., return_entropy=True) vs materialized logits + log_softmax + entropy.

    .venv/bin/python benchmarks/policy_gradient.py                 # N=4096, D=256, V in {32768, 131072}
    .venv/bin/python benchmarks/policy_gradient.py --quick         # N=1024, V=32768, fewer repeats
    .venv/bin/python benchmarks/policy_gradient.py --vocab 32768 --repeat 3
    .venv/bin/python benchmarks/policy_gradient.py --threads 1 --cpu-time   # on a busy machine

Forward + backward of ``sum(u * logp_y + v * H)`` (per-token upstream weights ``u``, ``v``:
both outputs carry gradients, as in a GRPO step with an entropy bonus) from ``hidden (N, D)``
and ``weight (V, D)`` at temperature 0.7, gradients to both. Competitors, timed interleaved
in one run:

* ``materialized``: ``x = h @ w.T / T``; ``logp = log_softmax(x)``; the target's entry and
  ``-(exp(logp) * logp).sum(-1)`` (what TRL's ``selective_log_softmax`` + ``entropy_from_logits``
  compute, in one piece);
* ``ours``: ``losslab.functional.linear_token_logprobs(h, w, t, temperature=T, return_entropy=True)``.

Memory: extra peak RSS of one forward+backward in a fresh interpreter
(``_timing.peak_rss_mib``). The targets of issue 13 (time <= 1.0x, extra memory <= 8 % of
the materialized path's) are printed with the ratios.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved_medians, machine, peak_rss_mib, print_table  # noqa: E402

from losslab.functional import linear_token_logprobs  # noqa: E402

TEMPERATURE = 0.7


def make(n, d, v, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g).requires_grad_(True)
    w = (torch.randn(v, d, generator=g) / 16.0).requires_grad_(True)
    t = torch.randint(0, v, (n,), generator=g)
    u = torch.randn(n, generator=g)
    e = torch.randn(n, generator=g) * 0.01
    return h, w, t, u, e


def materialized(h, w, t, u, e):
    logp = torch.log_softmax(h @ w.T / TEMPERATURE, -1)
    lp = logp.gather(-1, t.unsqueeze(-1)).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    (lp * u + ent * e).sum().backward()


def ours(h, w, t, u, e):
    out = linear_token_logprobs(h, w, t, temperature=TEMPERATURE, return_entropy=True)
    (out.logps * u + out.entropy * e).sum().backward()


SETUP = """
import sys; sys.path.insert(0, {bench!r})
import torch
from policy_gradient import make, materialized, ours
h, w, t, u, e = make({n}, {d}, {v})
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=1024, V=32768, fewer repeats")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--vocab", type=int, nargs="*", default=None)
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    n = args.n or (1024 if args.quick else 4096)
    vocabs = args.vocab or ([32768] if args.quick else [32768, 131072])
    repeat = args.repeat or (3 if args.quick else 5)
    print(f"# linear_token_logprobs (logp + entropy, both differentiated) vs materialized; N={n}, D={args.d}, "
          f"T={TEMPERATURE}, float32, forward+backward, {'CPU' if args.cpu_time else 'wall'} time, median of "
          f"{repeat} interleaved runs; {machine()}")
    rows = []
    bench = str(Path(__file__).resolve().parent)
    for v in vocabs:
        h, w, t, u, e = make(n, args.d, v)

        def step(fn, inputs=(h, w, t, u, e)):
            def run():
                inputs[0].grad = inputs[1].grad = None
                fn(*inputs)
            return run

        times = interleaved_medians({"materialized": step(materialized), "ours": step(ours)}, repeat=repeat,
                                    warmup=1, max_seconds=120, min_repeat=2, clock=clock)
        del h, w, t, u, e
        mem = {}
        if not args.no_memory:
            setup = SETUP.format(bench=bench, n=n, d=args.d, v=v)
            for k in ("materialized", "ours"):
                mem[k] = peak_rss_mib(setup, f"{k}(h, w, t, u, e)")
        row = {"V": v, "mat_s": times["materialized"], "ours_s": times["ours"],
               "time_ratio": times["ours"] / times["materialized"],
               "mat_extra_MiB": mem.get("materialized"), "ours_extra_MiB": mem.get("ours")}
        if mem.get("materialized") and mem.get("ours") is not None:
            row["mem_ratio"] = mem["ours"] / mem["materialized"]
        rows.append(row)
        print_table([row], list(row))
        sys.stdout.flush()
    print()
    cols = ["V", "mat_s", "ours_s", "time_ratio", "mat_extra_MiB", "ours_extra_MiB", "mem_ratio"]
    print_table(rows, cols)
    print("# targets (issue 13): time_ratio <= 1.0, mem_ratio <= 0.08")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
