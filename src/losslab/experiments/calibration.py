"""``losslab run calibration``: post-hoc calibration of an MLP on scikit-learn digits.

An MLP (64-H-10, ReLU, Adam, cross-entropy, no regularization, so it ends over-confident) is
trained on digits' training split minus a held-out calibration set; a temperature T is then
fitted on the calibration set by each objective and the held-out test split is scored:

* ``uncalibrated``: T = 1;
* ``temperature``: :func:`losslab.functional.fit_temperature` (NLL, Guo et al. 2017);
* ``ca`` / ``ca_reweighted``: the T minimizing :func:`losslab.functional.correctness_aware_loss`
  without / with the authors' code's correct/incorrect reweighting by the batch accuracy (the
  CA paper trains a calibrator network on transformed images; here the calibrator is one
  temperature, the ``Temperature`` module of the authors' code);
* ``h_calibration``: the T minimizing :func:`losslab.functional.h_calibration_loss` of
  ``softmax(z / T)`` (window ``--window``, epsilon 0).

CA and h-calibration are minimized over log T by a grid on [-3, 3] (241 points) refined by
golden-section search: deterministic, and a temperature changes no prediction, so the
accuracy is the same for every row. Metrics on the test split: ECE (15 equal-width bins,
l1) and MCE (max), Brier score, NLL, accuracy; mean ± sample std over ``--seeds`` training
seeds. ``reliability.png`` shows the test reliability diagrams of seed 0.
"""
from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import numpy as np
import torch

from . import ExperimentError
from ._io import pyplot, save_figure, write_json

NAME = "calibration"
HELP = "post-hoc calibration of an MLP on sklearn digits: temperature scaling, CA loss, h-calibration (ECE, Brier, NLL)"
METHODS = ("uncalibrated", "temperature", "ca", "ca_reweighted", "h_calibration")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 (default 3)")
    p.add_argument("--epochs", type=int, default=60, help="training epochs (default 60)")
    p.add_argument("--hidden", type=int, default=128, help="hidden units (default 128)")
    p.add_argument("--calibration-size", type=int, default=400, help="held-out calibration samples (default 400)")
    p.add_argument("--window", type=int, default=100, help="h-calibration window (default 100)")
    p.add_argument("--bins", type=int, default=15, help="ECE bins (default 15)")
    p.add_argument("--out", default="runs/calibration", help="output folder")


def _train(x, y, seed: int, hidden: int, epochs: int, num_classes: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, num_classes))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def _minimize_log_t(objective) -> float:
    """argmin over log T in [-3, 3]: a 241-point grid, then golden-section search around the best point."""
    grid = np.linspace(-3.0, 3.0, 241)
    values = [objective(float(g)) for g in grid]
    k = int(np.argmin(values))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = objective(a), objective(b)
    for _ in range(60):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = objective(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = objective(b)
    return math.exp(0.5 * (lo + hi))


def _temperatures(z, y, window: int) -> dict[str, float]:
    from losslab.functional import correctness_aware_loss, fit_temperature, h_calibration_loss

    def ca(log_t, reweight=False):
        return float(correctness_aware_loss(z, y, temperature=math.exp(log_t), reweight=reweight))

    def hcal(log_t):
        return float(h_calibration_loss(torch.softmax(z / math.exp(log_t), -1), y, window=window))

    return {"uncalibrated": 1.0, "temperature": float(fit_temperature(z, y)),
            "ca": _minimize_log_t(ca), "ca_reweighted": _minimize_log_t(lambda lt: ca(lt, True)),
            "h_calibration": _minimize_log_t(hcal)}


def _metrics(z, y, t: float, bins: int) -> dict[str, float]:
    from losslab.functional import brier_score, expected_calibration_error

    p = torch.softmax(z / t, -1)
    return {
        "ece": float(expected_calibration_error(p, y, n_bins=bins)),
        "mce": float(expected_calibration_error(p, y, n_bins=bins, norm="max")),
        "brier": float(brier_score(p, y)),
        "nll": float(torch.nn.functional.cross_entropy(z / t, y)),
        "accuracy": float((p.argmax(-1) == y).double().mean()),
    }


def run(args) -> int:
    from losslab.data.sklearn_sets import load

    if args.seeds < 1 or args.epochs < 1 or args.hidden < 1 or args.bins < 1 or args.window < 0:
        raise ExperimentError("--seeds, --epochs, --hidden and --bins must be >= 1, --window >= 0")
    split = load("digits")
    n_train = len(split.y_train)
    if not (10 <= args.calibration_size <= n_train // 2):
        raise ExperimentError(f"--calibration-size must be in [10, {n_train // 2}], got {args.calibration_size}")
    perm = np.random.default_rng(0).permutation(n_train)  # the same calibration set for every seed
    cal_idx, fit_idx = perm[:args.calibration_size], perm[args.calibration_size:]
    x = torch.from_numpy(split.x_train).double()
    y = torch.from_numpy(split.y_train)
    x_test, y_test = torch.from_numpy(split.x_test).double(), torch.from_numpy(split.y_test)
    runs = []
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for seed in range(args.seeds):
            model = _train(x[fit_idx].float(), y[fit_idx], seed, args.hidden, args.epochs, split.num_classes).double()
            with torch.no_grad():
                z_cal, z_test = model(x[cal_idx]), model(x_test)
            temps = _temperatures(z_cal, y[cal_idx], args.window)
            runs.append({"seed": seed, "temperature": temps,
                         "test": {m: _metrics(z_test, y_test, temps[m], args.bins) for m in METHODS}})
            if seed == 0:
                seed0 = (z_test, temps)
    finally:
        torch.set_num_threads(old_threads)
    rows = []
    for m in METHODS:
        row = {"method": m, "temperature_mean": statistics.fmean(r["temperature"][m] for r in runs)}
        for key in ("ece", "mce", "brier", "nll", "accuracy"):
            vals = [r["test"][m][key] for r in runs]
            row[key] = statistics.fmean(vals)
            row[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        rows.append(row)
    out = Path(args.out)
    config = {"dataset": "digits", "seeds": args.seeds, "epochs": args.epochs, "hidden": args.hidden,
              "calibration_size": args.calibration_size, "train_size": len(fit_idx), "test_size": len(y_test),
              "window": args.window, "bins": args.bins, "optimizer": "Adam lr 1e-3 batch 64"}
    write_json(out / "results.json", {"config": config, "results": rows, "runs": runs})
    drew = _plot(out, *seed0, y_test, args.bins)
    print(f"digits MLP 64-{args.hidden}-10, {args.epochs} epochs, calibration set {args.calibration_size}, "
          f"test {len(y_test)}; mean ± std over {args.seeds} seeds")
    print(f"{'method':>14} {'T':>6} {'ECE':>15} {'MCE':>15} {'Brier':>15} {'NLL':>15} {'accuracy':>8}")
    for r in rows:
        cells = " ".join(f"{r[k]:>7.4f}±{r[k + '_std']:<7.4f}" for k in ("ece", "mce", "brier", "nll"))
        print(f"{r['method']:>14} {r['temperature_mean']:>6.3f} {cells} {r['accuracy']:>8.4f}")
    figure = "and reliability.png" if drew else "(no figure: matplotlib is not installed)"
    print(f"(results in {out}/results.json {figure})")
    return 0


def _plot(out: Path, z, temps, y, bins: int) -> bool:
    plt = pyplot()
    if plt is None:  # figures are optional (matplotlib is in the cli extra)
        return False
    fig, axes = plt.subplots(1, len(METHODS), figsize=(3.2 * len(METHODS), 3.3), sharey=True)
    edges = np.linspace(0, 1, bins + 1)
    for ax, m in zip(axes, METHODS):
        conf, pred = torch.softmax(z / temps[m], -1).max(-1)
        conf, acc = conf.numpy(), (pred == y).numpy()
        idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
        accs = [acc[idx == k].mean() if np.any(idx == k) else 0.0 for k in range(bins)]
        ax.bar(edges[:-1], accs, width=1 / bins, align="edge", edgecolor="k", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "r--", lw=1)
        ax.set_title(f"{m} (T={temps[m]:.2f})", fontsize=9)
        ax.set_xlabel("confidence")
    axes[0].set_ylabel("accuracy")
    save_figure(out / "reliability.png", fig)
    plt.close(fig)
    return True
