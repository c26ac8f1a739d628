"""``losslab run sliced-wasserstein-cv``: variance of the sliced Wasserstein estimate with and without control variates.

Two real point clouds — two digit classes of scikit-learn's digits, projected on their
top principal components — are compared with SW_2² estimated from L random directions,
repeated with independent directions. Each repeat uses the same directions for the three
estimators (plain Monte Carlo, the lower and the upper control variates of Nguyen & Ho),
so the table shows how much of the Monte Carlo variance the control variates remove.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

from . import ExperimentError
from ._io import pyplot, save_figure, write_json

NAME = "sliced-wasserstein-cv"
HELP = "variance of the sliced Wasserstein estimate vs number of projections, with and without control variates"
ESTIMATORS = (None, "lower", "upper")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--classes", default="3,8", help="two digit classes to compare (default 3,8)")
    p.add_argument("--dims", type=int, default=10, help="principal components kept (default 10)")
    p.add_argument("--projections", default="10,50,100,500", help="numbers of directions L (default 10,50,100,500)")
    p.add_argument("--repeats", type=int, default=100, help="independent repeats per L (default 100)")
    p.add_argument("--out", default="runs/sliced-wasserstein-cv", help="output folder")


def _clouds(classes: tuple[int, int], dims: int):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x - x.mean(0)
    # PCA by SVD of the centred data (numpy only)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    z = x @ vt[:dims].T
    a, b = z[y == classes[0]], z[y == classes[1]]
    n = min(len(a), len(b))
    return torch.from_numpy(a[:n]).double(), torch.from_numpy(b[:n]).double()


def run(args) -> int:
    from losslab.functional import sliced_wasserstein

    try:
        classes = tuple(int(c) for c in args.classes.split(","))
        ls = [int(v) for v in args.projections.split(",")]
    except ValueError:
        raise ExperimentError("--classes and --projections take comma-separated integers") from None
    if len(classes) != 2 or classes[0] == classes[1] or not all(0 <= c <= 9 for c in classes):
        raise ExperimentError(f"--classes needs two different digits in 0..9, got {args.classes!r}")
    if not (1 <= args.dims <= 64):
        raise ExperimentError(f"--dims must be in [1, 64], got {args.dims}")
    if args.repeats < 2 or any(v < 2 for v in ls):
        raise ExperimentError("--repeats and every number of projections must be >= 2")
    x, y = _clouds(classes, args.dims)
    rows = []
    for L in ls:
        est = {cv: [] for cv in ESTIMATORS}
        for rep in range(args.repeats):
            for cv in ESTIMATORS:
                gen = torch.Generator().manual_seed(1000 * L + rep)  # same directions for all three
                est[cv].append(float(sliced_wasserstein(x, y, num_projections=L, control_variate=cv, generator=gen)) ** 2)
        base = statistics.pvariance(est[None])
        for cv in ESTIMATORS:
            var = statistics.pvariance(est[cv])
            rows.append({"projections": L, "estimator": cv or "plain", "mean_sw2": statistics.fmean(est[cv]),
                         "variance": var, "variance_ratio_to_plain": var / base if base > 0 else float("nan"),
                         "variance_reduction": base / var if var > 0 else float("inf")})
    out = Path(args.out)
    config = {"classes": list(classes), "dims": args.dims, "points_per_cloud": int(x.shape[0]), "repeats": args.repeats}
    write_json(out / "results.json", {"config": config, "results": rows})
    drew = _plot(out, rows, config)
    print(f"SW_2^2 between digits {classes[0]} and {classes[1]} (PCA {args.dims}, {x.shape[0]} points each), "
          f"{args.repeats} repeats per L")
    print(f"{'L':>6} {'estimator':>10} {'mean':>10} {'variance':>12} {'var / plain':>12} {'reduction':>10}")
    for r in rows:
        print(f"{r['projections']:>6} {r['estimator']:>10} {r['mean_sw2']:>10.4f} {r['variance']:>12.4g} "
              f"{r['variance_ratio_to_plain']:>12.3g} {r['variance_reduction']:>9.1f}x")
    figure = "and variance.png" if drew else "(no figure: matplotlib is not installed)"
    print(f"(results in {out}/results.json {figure})")
    return 0


def _plot(out: Path, rows, config) -> bool:
    plt = pyplot()
    if plt is None:  # figures are optional (matplotlib is in the cli extra)
        return False

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for est in ("plain", "lower", "upper"):
        pts = [(r["projections"], r["variance"]) for r in rows if r["estimator"] == est]
        ax.loglog(*zip(*pts), marker="o", label=est if est == "plain" else f"{est} control variate")
    ax.set_xlabel("number of projections L")
    ax.set_ylabel("variance of the SW$_2^2$ estimate")
    ax.set_title(f"digits {config['classes'][0]} vs {config['classes'][1]}, PCA {config['dims']}")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    save_figure(out / "variance.png", fig)
    plt.close(fig)
    return True
