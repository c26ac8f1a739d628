"""sinkhorn_divergence vs geomloss (tensorized) and POT (sinkhorn_log); vendi_score dual vs primal.

    .venv/bin/python benchmarks/transport.py --quick     # n = 500, 2000; d = 3
    .venv/bin/python benchmarks/transport.py             # + n = 5000, d = 64 (POT skipped above --pot-max)

Same cost (1/2 |x - y|^2, geomloss's p = 2), same epsilon (= blur^2), data: two Gaussian
clouds. The converged reference value is losslab's in float64 at tol 1e-9 (the test suite
checks losslab's Sinkhorn against POT's converged sinkhorn_log); relative errors to it are
printed next to the times. POT runs with its default iteration cap.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine, median_time, print_table  # noqa: E402

from losslab.functional import sinkhorn_divergence, vendi_score  # noqa: E402
from losslab.functional.transport import pairwise_cost  # noqa: E402


def pot_divergence(x, y, eps):
    import numpy as np
    import ot

    def val(u, v):
        C = pairwise_cost(u, v, "half_sqeuclidean").numpy()
        a = np.full(u.shape[0], 1.0 / u.shape[0])
        b = np.full(v.shape[0], 1.0 / v.shape[0])
        # POT returns <P, C>; the entropic value adds eps * KL(P || a b^T).
        P = ot.sinkhorn(a, b, C, reg=eps, method="sinkhorn_log")  # POT's defaults (1000 iterations max)
        P = np.maximum(P, 1e-300)
        return float((P * C).sum() + eps * (P * np.log(P / np.outer(a, b))).sum())

    return val(x, y) - 0.5 * (val(x, x) + val(y, y))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--pot-max", type=int, default=2000, help="largest n for POT (slow)")
    ap.add_argument("--sizes", default=None, help="comma-separated n (d = 3), e.g. 500")
    ap.add_argument("--skip-sinkhorn", action="store_true", help="only the vendi_score part")
    args = ap.parse_args()
    import geomloss

    sizes = [(500, 3), (2000, 3)] if args.quick else [(500, 3), (2000, 3), (2000, 64), (5000, 3)]
    if args.sizes:
        sizes = [(int(n), 3) for n in args.sizes.split(",")]
    if args.skip_sinkhorn:
        sizes = []
    print(f"# sinkhorn_divergence, eps = {args.eps} on 1/2|x-y|^2; {machine()}")
    rows = []
    for n, d in sizes:
        g = torch.Generator().manual_seed(0)
        x64 = torch.randn(n, d, generator=g, dtype=torch.float64)
        y64 = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.7 + 0.5
        # Converged reference: losslab in float64 at tol 1e-9 (checked against POT in the tests).
        ref = float(sinkhorn_divergence(x64, y64, epsilon=args.eps, cost="half_sqeuclidean", tol=1e-9,
                                        max_iter=30000, scaling=0.9))
        t_pot = pot_val = None
        if n <= args.pot_max:
            t0 = time.perf_counter()
            pot_val = pot_divergence(x64, y64, args.eps)
            t_pot = time.perf_counter() - t0
        for dtype in (torch.float64, torch.float32):
            x, y = x64.to(dtype), y64.to(dtype)
            # losslab at its default epsilon-scaling (0.5), iterating at the target epsilon until
            # the L1 marginal error is below tol. geomloss stops after its annealing schedule:
            # at its default scaling 0.5 and at 0.9 (the slower, more accurate setting).
            ours = lambda: sinkhorn_divergence(x, y, epsilon=args.eps, cost="half_sqeuclidean", tol=1e-5,
                                               max_iter=100000)
            peers = {s: geomloss.SamplesLoss("sinkhorn", p=2, blur=args.eps**0.5, debias=True, scaling=s,
                                             backend="tensorized") for s in (0.5, 0.9)}
            t_ours = median_time(ours, warmup=1, repeat=3)
            t_geo = {s: median_time(lambda: peer(x, y), warmup=1, repeat=3) for s, peer in peers.items()}
            rel = lambda v: abs(float(v) - ref) / abs(ref)
            rows.append({"n": n, "d": d, "dtype": str(dtype).replace("torch.", ""),
                         "losslab s": t_ours, "geo0.5 s": t_geo[0.5], "geo0.9 s": t_geo[0.9], "POT s": t_pot,
                         "/geo0.5": t_ours / t_geo[0.5], "/geo0.9": t_ours / t_geo[0.9],
                         "POT/losslab": (t_pot / t_ours) if t_pot else None,
                         "losslab err": rel(ours()), "geo0.5 err": rel(peers[0.5](x, y)),
                         "geo0.9 err": rel(peers[0.9](x, y)),
                         "POT err": rel(pot_val) if pot_val is not None else None})
            print("  ", {k: (float(f"{v:.3g}") if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    if rows:
        print_table(rows, ["n", "d", "dtype", "losslab s", "geo0.5 s", "geo0.9 s", "POT s", "/geo0.5", "/geo0.9",
                           "POT/losslab", "losslab err", "geo0.5 err", "geo0.9 err", "POT err"])
        print("(/geoS = losslab time / geomloss time at scaling S; err = relative error to the reference)")
        print("(POT timed once, float64, its default 1000-iteration cap; reference = losslab float64 at tol 1e-9)")

    print(f"\n# vendi_score: d x d dual (used when n > d) vs the n x n primal eigendecomposition; {machine()}")
    vrows = []
    for n in ([1000, 2000] if args.quick else [1000, 2000, 4000]):
        x = torch.randn(n, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        xn = torch.nn.functional.normalize(x, dim=-1)
        t_dual = median_time(lambda: vendi_score(x), warmup=1, repeat=5)
        t_primal = median_time(lambda: torch.linalg.eigvalsh(xn @ xn.T / n), warmup=0, repeat=3)
        vrows.append({"n": n, "d": 64, "dual s": t_dual, "primal s": t_primal, "speed-up": t_primal / t_dual})
    x = torch.randn(20000, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    vrows.append({"n": 20000, "d": 64, "dual s": median_time(lambda: vendi_score(x), warmup=1, repeat=5),
                  "primal s": None, "speed-up": None})
    print_table(vrows, ["n", "d", "dual s", "primal s", "speed-up"])
    print("(primal at n = 20000 not run: a 20000 x 20000 float64 eigendecomposition needs 3.2 GB and O(n^3) time)")


if __name__ == "__main__":
    main()
