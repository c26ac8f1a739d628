r"""``losslab run variance-reduction``: standard errors of Monte Carlo estimators on problems with known answers.

Three parts, each with every choice recorded in ``results.json``:

1. **A Gaussian expectation**: :math:`\mu = E[(X - k)_+]`, :math:`X \sim N(0, 1)`,
   :math:`k = 1.5`, known in closed form, :math:`\varphi(k) - k\,\bar\Phi(k) = 0.029307`.
   Estimators from :math:`n` samples: plain Monte Carlo (the sample mean); control variates
   (:func:`losslab.estimators.control_variate_mean` with the controls :math:`X, X^2, X^3`,
   of known means 0, 1, 0, on the same samples; :math:`1 - R^2 = 0.13`); importance
   sampling (:func:`losslab.estimators.importance_sampling_mean`, :math:`n` samples of the
   proposal :math:`N(k, 1)`, log-weights :math:`-x^2/2 + (x - k)^2/2`).
2. **A bandit with a known target-policy value**: 20 contexts (uniform), 5 actions,
   Bernoulli rewards with means drawn once from :math:`U(0, 1)` (problem seed 0), a logging
   policy :math:`\operatorname{softmax}(z)`, :math:`z \sim N(0, 1)`, and the target policy
   :math:`\operatorname{softmax}(3 \bar r(x, \cdot))`; its value is the exact sum
   :math:`\frac1{20}\sum_x\sum_a \pi(a|x)\bar r(x, a)`. Estimators from :math:`n` logged
   rounds: IPS, self-normalized IPS (:func:`losslab.estimators.ips_value`) and doubly robust
   (:func:`losslab.estimators.doubly_robust_value`) with a reward model that has errors: the
   true means plus :math:`N(0, 0.1^2)` noise drawn once.
3. **The gradient noise scale of the digits MLP during training**: the
   ``noisy-labels`` MLP (64-256-256-10, ReLU, Adam lr 1e-3, cross-entropy, clean labels) on
   scikit-learn's digits; every step splits a batch of ``--large-batch`` samples into
   microbatches of ``--small-batch``, backpropagates each, and averages their gradients into
   the large batch's gradient (on which the optimizer steps);
   :func:`losslab.estimators.gradient_noise_scale` turns the mean microbatch squared
   gradient norm and the large batch's (per layer, from
   :func:`losslab.estimators.grad_sq_norms`) of every step of a window of ``--window`` epochs into
   the unbiased estimates of :math:`|G|^2` and :math:`\operatorname{tr}\Sigma` and the
   simple noise scale :math:`B_{\text{simple}} = \operatorname{tr}\Sigma / |G|^2`
   (McCandlish et al. 2018).

For parts 1 and 2, each sample size is repeated ``--repeats`` times with independent
samples (seeded generators: same seed, same numbers); the table reports the mean of the
estimates, their actual spread over the repeats (``sd``: the true standard error, up to
Monte Carlo noise), the mean of the estimators' own reported standard errors (``stderr``)
the spread relative to the baseline (plain Monte Carlo, IPS: ``sd/base``) and the fraction of
repeats whose interval ``estimate ± 2 stderr`` contains the truth (``cover``). A log-log figure shows
``sd`` against ``n`` (``variance_reduction.png``).
"""
from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch

from . import ExperimentError
from ._io import pyplot, save_figure, write_json

NAME = "variance-reduction"
HELP = "standard errors of plain MC vs control variates vs importance sampling, IPS vs DR, and the gradient noise scale"

STRIKE = 1.5
CONTEXTS, ACTIONS = 20, 5
F64 = torch.float64


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="100,1000,10000", help="sample sizes n (default 100,1000,10000)")
    p.add_argument("--repeats", type=int, default=200, help="independent repeats per n (default 200)")
    p.add_argument("--epochs", type=int, default=20, help="MLP training epochs for the noise scale (default 20; 0 skips)")
    p.add_argument("--small-batch", type=int, default=16, help="small batch size b (default 16)")
    p.add_argument("--large-batch", type=int, default=128, help="large batch size B (default 128)")
    p.add_argument("--window", type=int, default=5, help="epochs per noise-scale estimate (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples and of the MLP (default 0)")
    p.add_argument("--out", default="runs/variance-reduction", help="output folder")


# ----------------------------------------------------------------------------- part 1
def gaussian_truth(k: float = STRIKE) -> float:
    """E[(X - k)_+] for X ~ N(0, 1): phi(k) - k * (1 - Phi(k))."""
    phi = math.exp(-0.5 * k * k) / math.sqrt(2 * math.pi)
    tail = 0.5 * math.erfc(k / math.sqrt(2))
    return phi - k * tail


def _gaussian_estimates(n: int, gen: torch.Generator) -> dict[str, tuple[float, float]]:
    from losslab.estimators import control_variate_mean, importance_sampling_mean

    x = torch.randn(n, generator=gen, dtype=F64)
    f = (x - STRIKE).clamp_min(0)
    plain = (float(f.mean()), float(f.std() / math.sqrt(n)))
    controls = torch.stack([x, x * x, x ** 3], 1)  # Gaussian moments 0, 1, 0
    cv = control_variate_mean(f, controls, torch.tensor([0.0, 1.0, 0.0], dtype=F64))
    z = STRIKE + torch.randn(n, generator=gen, dtype=F64)  # proposal N(k, 1)
    is_ = importance_sampling_mean((z - STRIKE).clamp_min(0), -0.5 * z ** 2 + 0.5 * (z - STRIKE) ** 2)
    return {"plain": plain, "control variates": (float(cv.value), float(cv.stderr)),
            "importance sampling": (float(is_.value), float(is_.stderr))}


# ----------------------------------------------------------------------------- part 2
def bandit_problem() -> dict[str, torch.Tensor | float]:
    """The fixed bandit (problem seed 0): reward means, policies, reward model, exact target value."""
    gen = torch.Generator().manual_seed(0)
    mean_reward = torch.rand(CONTEXTS, ACTIONS, generator=gen, dtype=F64)
    logging = torch.softmax(torch.randn(CONTEXTS, ACTIONS, generator=gen, dtype=F64), -1)
    target = torch.softmax(3.0 * mean_reward, -1)
    model = mean_reward + 0.1 * torch.randn(CONTEXTS, ACTIONS, generator=gen, dtype=F64)
    value = float((target * mean_reward).sum(1).mean())
    return {"mean_reward": mean_reward, "logging": logging, "target": target, "model": model, "value": value}


def _bandit_estimates(n: int, gen: torch.Generator, prob: dict) -> dict[str, tuple[float, float]]:
    from losslab.estimators import doubly_robust_value, ips_value

    ctx = torch.randint(0, CONTEXTS, (n,), generator=gen)
    mu, pi = prob["logging"][ctx], prob["target"][ctx]
    actions = torch.multinomial(mu, 1, generator=gen).squeeze(1)
    rewards = torch.bernoulli(prob["mean_reward"][ctx, actions], generator=gen)
    out = {}
    for name, est in (("IPS", ips_value(rewards, actions, pi, mu)),
                      ("SNIPS", ips_value(rewards, actions, pi, mu, self_normalized=True)),
                      ("doubly robust", doubly_robust_value(rewards, actions, pi, mu, prob["model"][ctx]))):
        out[name] = (float(est.value), float(est.stderr))
    return out


def _study(problem: str, truth: float, sizes, repeats, seed, draw) -> list[dict]:
    rows = []
    for n in sizes:
        runs: dict[str, list[tuple[float, float]]] = {}
        for rep in range(repeats):
            gen = torch.Generator().manual_seed(1_000_003 * seed + 7919 * n + rep)
            for name, vs in draw(n, gen).items():
                runs.setdefault(name, []).append(vs)
        base = None
        for name, vs in runs.items():
            values = [v for v, _ in vs]
            sd = statistics.stdev(values)
            base = sd if base is None else base  # the first estimator is the baseline
            rows.append({
                "problem": problem, "estimator": name, "n": n, "truth": truth,
                "mean": statistics.fmean(values), "sd": sd,
                "mean_stderr": statistics.fmean(s for _, s in vs),
                "sd_ratio_to_baseline": sd / base if base > 0 else float("nan"),
                "coverage_2se": statistics.fmean(float(abs(v - truth) <= 2 * s) for v, s in vs),
            })
    return rows


# ----------------------------------------------------------------------------- part 3
def noise_scale_during_training(epochs: int, small: int, large: int, seed: int, window: int = 5) -> list[dict]:
    """Per window of epochs: |G|^2, tr(Sigma) and B_simple of the digits MLP, with the training loss
    (mean over the window's last epoch) and the test accuracy at the window's end."""
    from losslab.data.sklearn_sets import load
    from losslab.estimators import grad_sq_norms, gradient_noise_scale
    from losslab.functional import cross_entropy

    from .noisy_labels import make_mlp

    split = load("digits")
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    x_te, y_te = torch.from_numpy(split.x_test), torch.from_numpy(split.y_test)
    n = x.shape[0]
    if large > n:
        raise ExperimentError(f"--large-batch must be at most the {n} training samples, got {large}")
    model = make_mlp(x.shape[1], split.num_classes, torch.Generator().manual_seed(seed))
    layers = [m for m in model if isinstance(m, torch.nn.Linear)]
    groups = [{"params": list(m.parameters())} for m in layers]  # one parameter group per layer
    params = [p for g in groups for p in g["params"]]
    per_step = large // small
    opt = torch.optim.Adam(groups, lr=1e-3)
    order = torch.Generator().manual_seed(10_000 + seed)
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # an overhead-bound MLP (see noisy-labels)
    try:
        first, s_norms, l_norms = 1, [], []
        for epoch in range(1, epochs + 1):
            perm = torch.randperm(n, generator=order)
            losses = []
            for start in range(0, n - large + 1, large):  # full large batches only
                idx = perm[start:start + large]
                # The large batch as B/b microbatches of size b: each one's squared gradient norm
                # is a small-batch norm (their mean is as unbiased as one, and far less noisy),
                # and the mean of their gradients is the large batch's gradient.
                acc = [torch.zeros_like(p) for p in params]
                micro = torch.zeros(len(groups), dtype=F64)
                batch_loss = 0.0
                for chunk in idx.split(small):
                    opt.zero_grad(set_to_none=True)
                    loss = cross_entropy(model(x[chunk]), y[chunk])
                    loss.backward()
                    micro += grad_sq_norms(opt)
                    batch_loss += float(loss.detach()) / per_step
                    for a, p in zip(acc, params):
                        a += p.grad
                for a, p in zip(acc, params):
                    p.grad = a / per_step
                s_norms.append(micro / per_step)
                l_norms.append(grad_sq_norms(opt))
                losses.append(batch_loss)
                opt.step()
            if epoch % window and epoch != epochs:
                continue
            # One estimate per window of epochs: the paper averages the numerator and the
            # denominator over many steps before dividing (|G|^2 is small late in training).
            s_t, l_t = torch.stack(s_norms), torch.stack(l_norms)
            # the whole network: squared norms add over layers, and so do |G|^2 and tr(Sigma)
            s_t = torch.cat([s_t, s_t.sum(1, keepdim=True)], 1)
            l_t = torch.cat([l_t, l_t.sum(1, keepdim=True)], 1)
            gns = gradient_noise_scale(s_t, l_t, small_batch_size=small, large_batch_size=large)
            with torch.no_grad():
                acc = float((model(x_te).argmax(-1) == y_te).double().mean())
            rows.append({
                "epochs": [first, epoch], "steps": len(s_norms), "train_loss": statistics.fmean(losses),
                "test_accuracy": acc,
                "grad_sq_norm": float(gns.grad_sq_norm.value[-1]), "grad_sq_norm_stderr": float(gns.grad_sq_norm.stderr[-1]),
                "trace_cov": float(gns.trace_cov.value[-1]), "trace_cov_stderr": float(gns.trace_cov.stderr[-1]),
                "noise_scale": float(gns.noise_scale[-1]),
                "noise_scale_per_layer": [float(v) for v in gns.noise_scale[:-1]],
            })
            first, s_norms, l_norms = epoch + 1, [], []
    finally:
        torch.set_num_threads(threads)
    return rows


# ----------------------------------------------------------------------------- driver
def _parse(args) -> list[int]:
    try:
        sizes = [int(v) for v in str(args.sizes).split(",")]
    except ValueError:
        raise ExperimentError(f"--sizes takes comma-separated integers, got {args.sizes!r}") from None
    if any(v < 10 for v in sizes):
        raise ExperimentError(f"every sample size in --sizes must be >= 10, got {args.sizes!r}")
    if args.repeats < 2:
        raise ExperimentError(f"--repeats must be >= 2, got {args.repeats}")
    if args.epochs < 0:
        raise ExperimentError(f"--epochs must be >= 0, got {args.epochs}")
    if args.window < 1:
        raise ExperimentError(f"--window must be >= 1, got {args.window}")
    if not (1 <= args.small_batch < args.large_batch) or args.large_batch % args.small_batch:
        raise ExperimentError(f"--small-batch must be >= 1, below --large-batch and divide it, got "
                              f"{args.small_batch} and {args.large_batch}")
    return sizes


def run(args) -> int:
    sizes = _parse(args)
    prob = bandit_problem()
    truth_a, truth_b = gaussian_truth(), float(prob["value"])
    rows = _study("gaussian", truth_a, sizes, args.repeats, args.seed, _gaussian_estimates)
    rows += _study("bandit", truth_b, sizes, args.repeats, args.seed, lambda n, g: _bandit_estimates(n, g, prob))
    gns = noise_scale_during_training(args.epochs, args.small_batch, args.large_batch, args.seed,
                                      args.window) if args.epochs else []
    out = Path(args.out)
    config = {
        "sizes": sizes, "repeats": args.repeats, "seed": args.seed,
        "gaussian": {"integrand": f"max(x - {STRIKE}, 0), x ~ N(0, 1)", "truth": truth_a,
                     "controls": ["x (mean 0)", "x^2 (mean 1)", "x^3 (mean 0)"], "proposal": f"N({STRIKE}, 1)"},
        "bandit": {"contexts": CONTEXTS, "actions": ACTIONS, "truth": truth_b, "problem_seed": 0,
                   "target": "softmax(3 * mean reward)", "logging": "softmax(N(0, 1))",
                   "reward_model": "mean reward + N(0, 0.1^2)"},
        "noise_scale": {"dataset": "digits", "model": "mlp 64-256-256-10 relu", "optimizer": "adam lr 1e-3",
                        "loss": "cross_entropy", "epochs": args.epochs, "small_batch": args.small_batch,
                        "large_batch": args.large_batch, "window_epochs": args.window},
    }
    write_json(out / "results.json", {"config": config, "results": rows, "noise_scale": gns})
    drew = _plot(out, rows, gns)
    print(f"Gaussian expectation E[max(X - {STRIKE}, 0)] = {truth_a:.6f}; bandit target value = {truth_b:.6f}; "
          f"{args.repeats} repeats per n")
    print(f"{'problem':>9} {'estimator':>20} {'n':>7} {'mean':>9} {'sd':>10} {'stderr':>10} {'sd/base':>8} {'cover':>6}")
    for r in rows:
        print(f"{r['problem']:>9} {r['estimator']:>20} {r['n']:>7} {r['mean']:>9.5f} {r['sd']:>10.3g} "
              f"{r['mean_stderr']:>10.3g} {r['sd_ratio_to_baseline']:>8.3f} {r['coverage_2se']:>6.2f}")
    if gns:
        print(f"gradient noise scale of the digits MLP (b = {args.small_batch}, B = {args.large_batch}, whole network)")
        print(f"{'epochs':>7} {'loss':>8} {'test acc':>8} {'|G|^2':>20} {'tr Sigma':>18} {'B_simple':>9}")
        for r in gns:
            g2 = f"{r['grad_sq_norm']:.3g} ± {r['grad_sq_norm_stderr']:.2g}"
            tr = f"{r['trace_cov']:.3g} ± {r['trace_cov_stderr']:.2g}"
            print(f"{r['epochs'][0]:>3}-{r['epochs'][1]:<3} {r['train_loss']:>8.4f} {r['test_accuracy']:>8.3f} "
                  f"{g2:>20} {tr:>18} {r['noise_scale']:>9.1f}")
    figure = "and variance_reduction.png" if drew else "(no figure: matplotlib is not installed)"
    print(f"(results in {out}/results.json {figure})")
    return 0


def _plot(out: Path, rows, gns) -> bool:
    plt = pyplot()
    if plt is None:  # figures are optional (matplotlib is in the cli extra)
        return False
    panels = 3 if gns else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.0 * panels, 4.0))
    for ax, problem, title in zip(axes, ("gaussian", "bandit"),
                                  (f"E[(X - {STRIKE})+], X ~ N(0, 1)", "bandit: target-policy value")):
        names = list(dict.fromkeys(r["estimator"] for r in rows if r["problem"] == problem))
        for name in names:
            pts = [(r["n"], r["sd"]) for r in rows if r["problem"] == problem and r["estimator"] == name]
            ax.loglog(*zip(*pts), marker="o", label=name)
        ax.set_xlabel("sample size n")
        ax.set_ylabel("standard error (sd over repeats)")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    if gns:
        ax = axes[2]
        ax.semilogy([r["epochs"][1] for r in gns], [max(r["noise_scale"], 1e-3) for r in gns], marker="o")
        ax.set_xlabel("epoch (end of window)")
        ax.set_ylabel("simple noise scale tr(Σ)/|G|²")
        ax.set_title("digits MLP during training")
        ax.grid(alpha=0.3, which="both")
    save_figure(out / "variance_reduction.png", fig)
    plt.close(fig)
    return True
