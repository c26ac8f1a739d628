"""``losslab run censored-regression``: naive ERM vs Kaplan–Meier-weighted ERM under right censoring.

Synthetic survival data with a known regression function (Ausset, Clémençon, Portier 2019,
the setting of their experiments in spirit): ``X ~ U[0, 1]^d``, durations
``Y = m(X) + U[-0.5, 0.5]`` with ``m(x) = 1.5 + 2 x_1 - x_2 >= 0.5`` (so ``E[Y | X] = m(X)``), and an
independent exponential censoring time ``C`` whose rate is set (by bisection on a 10^6-sample
Monte Carlo estimate, seed 0) so that ``P(C < Y)`` is the requested censoring rate. The
learner sees ``(X, min(Y, C), 1[Y <= C])``.

Two linear least-squares fits of the same model on the same data, both with
:func:`losslab.functional.censored_regression_loss` minimized by L-BFGS (a convex quadratic):

* ``naive``: every observed time counts as a duration (``sample_weight = 1/n``), i.e. the
  ERM that treats censored times as observed;
* ``km``: the Kaplan–Meier inverse-probability-of-censoring weights (the paper's estimator).

Scored on 20 000 fresh test points: the excess risk ``mean (f(X) - m(X))^2`` and the bias
``mean (f(X) - m(X))``; mean ± sample std over ``--seeds`` training sets. The naive fit is
biased downwards as soon as there is censoring; the weighted one is not (at a higher variance).
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from . import ExperimentError
from ._io import pyplot, save_figure, write_json

NAME = "censored-regression"
HELP = "synthetic right-censored regression: naive ERM vs Kaplan-Meier-weighted ERM over censoring rates 0-60 %"
DIM = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rates", default="0,0.1,0.2,0.3,0.4,0.5,0.6", help="censoring rates (default 0,0.1,...,0.6)")
    p.add_argument("--n", type=int, default=500, help="training samples (default 500)")
    p.add_argument("--seeds", type=int, default=5, help="training sets per rate (default 5)")
    p.add_argument("--out", default="runs/censored-regression", help="output folder")


def _m(x: torch.Tensor) -> torch.Tensor:
    return 1.5 + 2.0 * x[:, 0] - x[:, 1]


def _durations(n: int, gen: torch.Generator):
    x = torch.rand(n, DIM, generator=gen, dtype=torch.float64)
    return x, _m(x) + torch.rand(n, generator=gen, dtype=torch.float64) - 0.5


def _censoring_rate_for(target: float) -> float:
    """Exponential rate λ with P(C < Y) = target, C ~ Exp(λ): P = E[1 - exp(-λ Y)], increasing in λ."""
    if target == 0:
        return 0.0
    _, y = _durations(1_000_000, torch.Generator().manual_seed(0))
    lo, hi = 0.0, 1.0
    while float((1 - torch.exp(-hi * y)).mean()) < target:
        hi *= 2
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float((1 - torch.exp(-mid * y)).mean()) < target else (lo, mid)
    return 0.5 * (lo + hi)


def _fit(x, times, events, weights) -> torch.Tensor:
    from losslab.functional import censored_regression_loss

    theta = torch.zeros(DIM + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        pred = x @ theta[:DIM] + theta[DIM]
        loss = censored_regression_loss(pred, times, events, sample_weight=weights, reduction="sum")
        loss.backward()
        return loss

    opt.step(closure)
    return theta.detach()


def run(args) -> int:
    from losslab.functional import kaplan_meier_weights

    try:
        rates = [float(r) for r in args.rates.split(",")]
    except ValueError:
        raise ExperimentError("--rates takes comma-separated numbers") from None
    if not all(0 <= r <= 0.9 for r in rates):
        raise ExperimentError(f"--rates must lie in [0, 0.9], got {args.rates!r}")
    if args.n < 10 or args.seeds < 2:
        raise ExperimentError("--n must be >= 10 and --seeds >= 2")
    x_test, _ = _durations(20_000, torch.Generator().manual_seed(10 ** 6))
    m_test = _m(x_test)
    rows = []
    for rate in rates:
        lam = _censoring_rate_for(rate)
        res = {"naive": [], "km": []}
        observed = []
        for seed in range(args.seeds):
            gen = torch.Generator().manual_seed(seed)
            x, y = _durations(args.n, gen)
            c = torch.empty(args.n, dtype=torch.float64).exponential_(lam, generator=gen) if lam > 0 \
                else torch.full((args.n,), float("inf"), dtype=torch.float64)
            times, events = torch.minimum(y, c), (y <= c).long()
            observed.append(1 - float(events.double().mean()))
            weights = {"naive": torch.full((args.n,), 1.0 / args.n, dtype=torch.float64),
                       "km": kaplan_meier_weights(times, events)}
            for name, w in weights.items():
                theta = _fit(x, times, events, w)
                err = x_test @ theta[:DIM] + theta[DIM] - m_test
                res[name].append((float((err ** 2).mean()), float(err.mean())))
        for name, vals in res.items():
            risk, bias = zip(*vals)
            rows.append({"censoring_rate": rate, "observed_censoring": statistics.fmean(observed), "method": name,
                         "excess_risk": statistics.fmean(risk), "excess_risk_std": statistics.stdev(risk),
                         "bias": statistics.fmean(bias), "bias_std": statistics.stdev(bias), "rate_lambda": lam})
    out = Path(args.out)
    config = {"n": args.n, "seeds": args.seeds, "dim": DIM, "m": "1.5 + 2 x1 - x2", "noise": "U[-0.5, 0.5]",
              "censoring": "Exp(lambda), independent", "test_points": 20_000, "fit": "linear, L-BFGS"}
    write_json(out / "results.json", {"config": config, "results": rows})
    drew = _plot(out, rows)
    print(f"linear fit of E[Y|X] = 1.5 + 2 x1 - x2 from n = {args.n} right-censored samples; "
          f"mean ± std over {args.seeds} training sets")
    print(f"{'censoring':>9} {'observed':>8} {'method':>6} {'excess risk':>19} {'bias':>19}")
    for r in rows:
        print(f"{r['censoring_rate']:>9.2f} {r['observed_censoring']:>8.3f} {r['method']:>6} "
              f"{r['excess_risk']:>9.4f} ± {r['excess_risk_std']:<7.4f} {r['bias']:>+9.4f} ± {r['bias_std']:<7.4f}")
    figure = "and censoring.png" if drew else "(no figure: matplotlib is not installed)"
    print(f"(results in {out}/results.json {figure})")
    return 0


def _plot(out: Path, rows) -> bool:
    plt = pyplot()
    if plt is None:  # figures are optional (matplotlib is in the cli extra)
        return False
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, label in (("naive", "naive ERM (censored = observed)"), ("km", "Kaplan–Meier-weighted ERM")):
        pts = [(r["censoring_rate"], r["excess_risk"], r["excess_risk_std"]) for r in rows if r["method"] == name]
        xs, ys, es = zip(*pts)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label)
    ax.set_xlabel("censoring rate P(C < Y)")
    ax.set_ylabel("excess risk E[(f(X) - m(X))²]")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(out / "censoring.png", fig)
    plt.close(fig)
    return True
