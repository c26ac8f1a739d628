"""``losslab run contrastive-temperature``: the uniformity-tolerance dilemma of the temperature on digits.

Reproduces the experiment of Wang & Liu, "Understanding the Behaviour of Contrastive
Loss" (CVPR 2021), at laptop scale: a small MLP encoder is trained on scikit-learn's
8 × 8 digits with a contrastive objective (``nt_xent`` by default) at several
temperatures; two augmented views per image (random shift by at most one pixel in each
direction with zero fill, then Gaussian pixel noise). For every temperature it reports, on
the held-out images:

* uniformity ``log E exp(-2 ||z_i - z_j||^2)`` of the unit embeddings ``z`` the loss sees
  (lower = more uniform, :func:`losslab.functional.uniformity`),
* tolerance, the mean cosine similarity of same-digit pairs of ``z`` (higher = more
  tolerant to semantically similar samples, :func:`losslab.functional.tolerance`),
* linear-probe accuracy: multinomial logistic regression (scikit-learn) trained on the
  frozen encoder features (before the projection head) of the training images.

The paper's claim: a smaller temperature gives a more uniform but less tolerant embedding,
and the best downstream accuracy lies in between.
"""
from __future__ import annotations

import argparse
import inspect
import statistics
import time
from pathlib import Path

import torch

from . import ExperimentError
from ._io import pyplot, save_figure, write_json

NAME = "contrastive-temperature"
HELP = "uniformity, tolerance and linear-probe accuracy of a contrastive encoder on digits vs temperature"
OBJECTIVES = ("nt_xent", "supcon_loss", "robust_contrastive_loss")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--objective", default="nt_xent", help=f"one of {', '.join(OBJECTIVES)} (default nt_xent)")
    p.add_argument("--temperatures", default="0.05,0.1,0.2,0.5,1.0", help="comma-separated τ values (default 0.05,0.1,0.2,0.5,1.0)")
    p.add_argument("--epochs", type=int, default=40, help="training epochs per temperature (default 40)")
    p.add_argument("--seeds", type=int, default=2, help="number of seeds per temperature, 0..N-1 (default 2)")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default 2e-3)")
    p.add_argument("--noise", type=float, default=0.1, help="std of the Gaussian pixel noise, pixels in [0, 1] (default 0.1)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads while training (default 1: the encoder is tiny, more threads only add overhead)")
    p.add_argument("--out", default="runs/contrastive-temperature", help="output folder")


# ----------------------------------------------------------------------------- data
def _digits():
    """Train/test split of the digits (fixed, stratified), pixels scaled to [0, 1], as (N, 8, 8)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)

    def t(a):
        return torch.as_tensor(a, dtype=torch.float32).reshape(-1, 8, 8) / 16.0

    return t(x_tr), torch.as_tensor(y_tr), t(x_te), torch.as_tensor(y_te)


def _augment(x: torch.Tensor, noise: float, gen: torch.Generator) -> torch.Tensor:
    """Random shift of each image by (dy, dx) in {-1, 0, 1}^2 with zero fill, then Gaussian noise."""
    n = x.shape[0]
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))  # (n, 10, 10)
    dy = torch.randint(0, 3, (n,), generator=gen)
    dx = torch.randint(0, 3, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(8))[:, :, None].expand(n, 8, 8)
    cols = (dx[:, None] + torch.arange(8))[:, None, :].expand(n, 8, 8)
    shifted = padded[torch.arange(n)[:, None, None], rows, cols]
    return shifted + noise * torch.randn(shifted.shape, generator=gen)


# ----------------------------------------------------------------------------- model
class _Encoder(torch.nn.Module):
    def __init__(self, hidden: int = 128, out: int = 32) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden), torch.nn.ReLU()
        )
        self.head = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, out))

    def forward(self, x):
        return self.head(self.body(x))


def _objective(name: str):
    """``loss(query, key, labels, temperature)`` (two views) for the chosen objective, or ExperimentError."""
    import losslab

    if name not in OBJECTIVES:
        raise ExperimentError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {name!r}")
    if name not in losslab.list_losses():
        raise ExperimentError(f"--objective {name}: {name} is not registered in this losslab build")
    fn = losslab.info(name).function
    if name == "supcon_loss":  # labelled embeddings: both views, each with its image's label
        return lambda query, key, y, tau: fn(torch.cat([query, key]), torch.cat([y, y]), temperature=tau)
    params = inspect.signature(fn).parameters
    if "temperature" not in params:
        raise ExperimentError(f"--objective {name}: {name} takes no temperature argument")
    return lambda query, key, y, tau: fn(query, key, temperature=tau)


def _probe_accuracy(f_tr, y_tr, f_te, y_te) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(f_tr)
    clf = LogisticRegression(max_iter=2000).fit(scaler.transform(f_tr), y_tr)
    return float(clf.score(scaler.transform(f_te), y_te))


def _train_one(data, loss_fn, tau: float, seed: int, args) -> dict:
    from losslab.functional import alignment, tolerance, uniformity

    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(10_000 + seed)
    model = _Encoder()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    n = x_tr.shape[0]
    last = float("nan")
    for _ in range(args.epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - 1, args.batch_size):
            idx = perm[i : i + args.batch_size]
            if idx.numel() < 2:
                continue
            xb = x_tr[idx]
            z = model(torch.cat([_augment(xb, args.noise, gen), _augment(xb, args.noise, gen)]))
            loss = loss_fn(z[: idx.numel()], z[idx.numel():], y_tr[idx], tau)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            last = float(loss.detach())
    model.eval()
    with torch.no_grad():
        z_te = model(x_te)
        query, key = model(_augment(x_te, args.noise, gen)), model(_augment(x_te, args.noise, gen))
        f_tr, f_te = model.body(x_tr).numpy(), model.body(x_te).numpy()
        return {
            "temperature": tau,
            "seed": seed,
            "final_train_loss": last,
            "uniformity": float(uniformity(z_te, t=2.0)),
            "tolerance": float(tolerance(z_te, y_te)),
            "alignment": float(alignment(query, key, alpha=2.0)),
            "probe_accuracy": _probe_accuracy(f_tr, y_tr.numpy(), f_te, y_te.numpy()),
        }


def run(args) -> int:
    try:
        taus = [float(v) for v in args.temperatures.split(",")]
    except ValueError:
        raise ExperimentError(f"--temperatures takes comma-separated numbers, got {args.temperatures!r}") from None
    if not taus or any(not (t > 0) or t != t or t == float("inf") for t in taus):
        raise ExperimentError(f"every temperature must be a finite number > 0, got {args.temperatures!r}")
    if args.epochs < 1 or args.seeds < 1 or args.batch_size < 2:
        raise ExperimentError("--epochs and --seeds must be >= 1 and --batch-size >= 2")
    if not (args.lr > 0) or not (args.noise >= 0):
        raise ExperimentError("--lr must be > 0 and --noise >= 0")
    if args.threads < 1:
        raise ExperimentError("--threads must be >= 1")
    loss_fn = _objective(args.objective)
    data = _digits()
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        runs = [_train_one(data, loss_fn, tau, seed, args) for tau in taus for seed in range(args.seeds)]
    finally:
        torch.set_num_threads(threads)
    metrics = ("uniformity", "tolerance", "alignment", "probe_accuracy", "final_train_loss")
    summary = []
    for tau in taus:
        rs = [r for r in runs if r["temperature"] == tau]
        row = {"temperature": tau}
        for m in metrics:
            vals = [r[m] for r in rs]
            row[m] = statistics.fmean(vals)
            row[m + "_std"] = statistics.pstdev(vals) if len(vals) > 1 else 0.0
        summary.append(row)
    out = Path(args.out)
    config = {k: getattr(args, k) for k in ("objective", "epochs", "seeds", "batch_size", "lr", "noise")}
    config.update(temperatures=taus, train_images=int(data[0].shape[0]), test_images=int(data[2].shape[0]),
                  seconds=round(time.perf_counter() - start, 1))
    write_json(out / "results.json", {"config": config, "summary": summary, "runs": runs})
    drew = _plot(out, summary, config)
    print(f"{args.objective} on digits ({config['train_images']} train / {config['test_images']} test images), "
          f"{args.epochs} epochs, {args.seeds} seed(s), mean over seeds; metrics on held-out images")
    print(f"{'tau':>6} {'uniformity':>11} {'tolerance':>10} {'alignment':>10} {'probe acc':>10}")
    for r in summary:
        print(f"{r['temperature']:>6g} {r['uniformity']:>11.3f} {r['tolerance']:>10.3f} {r['alignment']:>10.3f} "
              f"{r['probe_accuracy']:>10.3f}")
    print("(uniformity: lower = more uniform; tolerance: mean cosine of same-digit pairs)")
    figure = "and temperature.png" if drew else "(no figure: matplotlib is not installed)"
    print(f"(results in {out}/results.json {figure}; {config['seconds']} s)")
    return 0


def _plot(out: Path, summary, config) -> bool:
    plt = pyplot()
    if plt is None:  # figures are optional (matplotlib is in the cli extra)
        return False

    taus = [r["temperature"] for r in summary]
    fig, axes = plt.subplots(1, 3, figsize=(12.0, 3.6))
    for ax, (key, label) in zip(axes, [("uniformity", "uniformity (lower = more uniform)"),
                                       ("tolerance", "tolerance (same-digit cosine)"),
                                       ("probe_accuracy", "linear-probe accuracy")]):
        ax.errorbar(taus, [r[key] for r in summary], yerr=[r[key + "_std"] for r in summary], marker="o", capsize=3)
        ax.set_xscale("log")
        ax.set_xlabel("temperature τ")
        ax.set_title(label)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"{config['objective']} on digits, {config['epochs']} epochs, {config['seeds']} seed(s)", y=1.04)
    save_figure(out / "temperature.png", fig)
    plt.close(fig)
    return True
