"""``losslab run noisy-labels``: robust classification losses under injected label noise.

Trains a small MLP (in-256-256-C, ReLU, Adam 1e-3, batch 64) on a scikit-learn bundled
dataset whose *training* labels are corrupted, once per (objective, seed), and reports
the accuracy on the clean test labels. Reproduces the claim of the LDR and comp-sum
papers that robust losses (GCE, MAE, LDR-KL, ALDR-KL) beat cross-entropy under noise.

Every finished (objective, seed) run is saved at once in ``OUT/runs/`` (atomically);
rerunning with the same ``--out`` and configuration reuses them, so an interrupted run
resumes where it stopped.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import ExperimentError
from ._io import read_json, save_figure, write_csv, write_json

NAME = "noisy-labels"
HELP = "train an MLP on sklearn digits/breast-cancer with label noise; compare objectives by clean test accuracy"

#: Short names -> (registered objective, hyperparameters). Any registered classification
#: objective taking (logits, target) may also be named directly.
OBJECTIVES: dict[str, tuple[str, dict]] = {
    "ce": ("cross_entropy", {}),
    "gce": ("generalized_cross_entropy", {"q": 0.7}),
    "mae": ("comp_sum_loss", {"tau": 2.0}),
    "focal": ("focal_loss", {"gamma": 2.0}),
    "ldr_kl": ("ldr_kl_loss", {"lam": 10.0, "margin": 1.0}),
    "ldr_kl_norm": ("ldr_kl_loss", {"lam": 1.0, "margin": 2.0, "logit_transform": "normalize"}),
    "aldr_kl": ("aldr_kl_loss", {}),
    "spherical_z": ("spherical_z_loss", {}),
}
DEFAULT_LOSSES = "ce,gce,mae,focal,ldr_kl,aldr_kl"
VERSION = 1  # bump when the training procedure changes, so old run files are not reused


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits", help="digits (default) or breast-cancer")
    p.add_argument("--noise", type=float, default=0.4, help="label-noise rate in [0, 1) (default 0.4)")
    p.add_argument("--noise-type", default="symmetric", help="symmetric (default) or asymmetric")
    p.add_argument("--losses", default=DEFAULT_LOSSES, help=f"comma-separated objectives (default {DEFAULT_LOSSES}); "
                   f"short names: {', '.join(OBJECTIVES)}; or any registered classification objective")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    p.add_argument("--epochs", type=int, default=150, help="training epochs (default 150)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--out", default=None, help="output folder (default runs/noisy-labels-<dataset>-<type>-<noise>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _resolve(names: str) -> list[tuple[str, str, dict]]:
    import losslab

    out = []
    for short in [n.strip() for n in names.split(",") if n.strip()]:
        reg, kw = OBJECTIVES.get(short, (short, {}))
        if reg not in losslab.list_losses():
            raise ExperimentError(f"unknown objective {short!r}; known: {', '.join(OBJECTIVES)} or `losslab list --family classification`")
        if losslab.info(reg).family != "classification":
            raise ExperimentError(f"objective {short!r} is not a classification objective (family {losslab.info(reg).family})")
        out.append((short, reg, kw))
    if not out:
        raise ExperimentError("--losses names no objective")
    if len({s for s, _, _ in out}) != len(out):
        raise ExperimentError("--losses names an objective twice")
    return out


def _validate(args, num_classes: int) -> None:
    if not (0.0 <= args.noise < 1.0) or math.isnan(args.noise):
        raise ExperimentError(f"--noise must be in [0, 1), got {args.noise}")
    if args.noise_type not in ("symmetric", "asymmetric"):
        raise ExperimentError(f"--noise-type must be symmetric or asymmetric, got {args.noise_type!r}")
    # Beyond these rates the true class is no longer the most frequent observed label.
    limit = (num_classes - 1) / num_classes if args.noise_type == "symmetric" else 0.5
    if args.noise >= limit:
        raise ExperimentError(f"--noise {args.noise} leaves the true class no longer the plurality "
                              f"({args.noise_type} noise needs < {limit:.3g} for {num_classes} classes)")
    for flag, v in (("--seeds", args.seeds), ("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if v < 1:
            raise ExperimentError(f"{flag} must be >= 1, got {v}")
    if not args.lr > 0:
        raise ExperimentError(f"--lr must be > 0, got {args.lr}")


def _mlp(d_in: int, c: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(d_in, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, c)
    )


def train_one(split, y_noisy: np.ndarray, objective: str, kwargs: dict, seed: int, args, tick=None) -> dict:
    """Train one model; returns the per-epoch clean test accuracy and training loss."""
    import losslab

    info = losslab.info(objective)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # parameter initialisation
    model = _mlp(split.x_train.shape[1], split.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    x_tr, y_tr = torch.from_numpy(split.x_train), torch.from_numpy(y_noisy)
    x_te, y_te = torch.from_numpy(split.x_test), torch.from_numpy(split.y_test)
    n = x_tr.shape[0]
    if info.properties.get("stateful_module"):
        criterion = info.module(num_samples=n, **kwargs)

        def loss_fn(logits, target, index):
            return criterion(logits, target, index)
    else:

        def loss_fn(logits, target, index):
            return info.function(logits, target, **kwargs)

    test_acc, train_loss = [], []
    for _ in range(args.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for start in range(0, n, args.batch_size):
            idx = perm[start : start + args.batch_size]
            loss = loss_fn(model(x_tr[idx]), y_tr[idx], idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
            count += idx.numel()
        model.eval()
        with torch.no_grad():
            test_acc.append(float((model(x_te).argmax(-1) == y_te).float().mean()))
        train_loss.append(total / count)
        if tick is not None:
            tick()
    return {"test_accuracy": test_acc, "train_loss": train_loss}


def _config(args, split) -> dict:
    return {
        "version": VERSION, "dataset": split.name, "noise": args.noise, "noise_type": args.noise_type,
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "model": f"mlp {split.x_train.shape[1]}-256-256-{split.num_classes}",
    }


def run(args) -> int:
    from losslab.data.sklearn_sets import DATASETS, corrupt_labels, load

    if args.dataset not in DATASETS:
        raise ExperimentError(f"unknown dataset {args.dataset!r}; choose one of {', '.join(DATASETS)}")
    objectives = _resolve(args.losses)
    split = load(args.dataset)
    _validate(args, split.num_classes)
    out = Path(args.out or f"runs/noisy-labels-{args.dataset}-{args.noise_type}-{args.noise:g}")
    config = _config(args, split)
    cfg_path = out / "config.json"
    if cfg_path.exists() and read_json(cfg_path) != config:
        raise ExperimentError(f"{out} holds results of a different configuration ({cfg_path}); use another --out")
    write_json(cfg_path, config)
    torch.set_num_threads(1)  # a 64-256-256-C MLP is faster on one thread than on two

    jobs = [(s, r, kw, seed) for (s, r, kw) in objectives for seed in range(args.seeds)]
    todo = [j for j in jobs if not (out / "runs" / f"{j[0]}-seed{j[3]}.json").exists()]
    if len(todo) < len(jobs):
        print(f"resuming: {len(jobs) - len(todo)} of {len(jobs)} runs already finished in {out}", file=sys.stderr)
    bar = None
    if todo and not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(todo) * args.epochs, unit="epoch", desc="noisy-labels", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        for short, reg, kw, seed in todo:
            if bar is not None:
                bar.set_postfix_str(f"{short} seed {seed}")
            rng = np.random.default_rng(seed)
            y_noisy = corrupt_labels(split.y_train, split.num_classes, args.noise, args.noise_type, rng)
            result = train_one(split, y_noisy, reg, kw, seed, args, tick=bar.update if bar is not None else None)
            result.update(objective=short, registered=reg, hyperparameters=kw, seed=seed,
                          observed_noise=float((y_noisy != split.y_train).mean()))
            write_json(out / "runs" / f"{short}-seed{seed}.json", result)
    finally:
        if bar is not None:
            bar.close()
    summary = summarize(out, objectives, args.seeds, config)
    print(format_table(summary, config))
    print(f"({time.perf_counter() - t0:.0f} s; results in {out}/results.json, results.csv, accuracy.png)")
    return 0


def summarize(out: Path, objectives, seeds: int, config: dict) -> list[dict]:
    rows = []
    curves = {}
    for short, reg, kw in objectives:
        runs = [read_json(out / "runs" / f"{short}-seed{s}.json") for s in range(seeds)]
        final = [r["test_accuracy"][-1] for r in runs]
        rows.append({
            "objective": short, "registered": reg, "hyperparameters": kw, "seeds": seeds,
            "final_test_accuracy_mean": statistics.fmean(final),
            "final_test_accuracy_std": statistics.stdev(final) if len(final) > 1 else 0.0,
            "best_epoch_test_accuracy_mean": statistics.fmean(max(r["test_accuracy"]) for r in runs),
        })
        curves[short] = np.mean([r["test_accuracy"] for r in runs], axis=0).tolist()
    write_json(out / "results.json", {"config": config, "results": rows, "curves": curves})
    write_csv(out / "results.csv", [{**r, "hyperparameters": str(r["hyperparameters"])} for r in rows],
              ["objective", "registered", "hyperparameters", "seeds", "final_test_accuracy_mean",
               "final_test_accuracy_std", "best_epoch_test_accuracy_mean"])
    _plot(out, curves, config)
    return rows


def format_table(rows: list[dict], config: dict) -> str:
    head = (f"clean test accuracy after {config['epochs']} epochs, {config['dataset']}, "
            f"{config['noise_type']} noise {config['noise']:g} (mean ± std over seeds)")
    lines = [head, f"{'objective':<14}{'final accuracy':>18}{'best epoch':>12}"]
    for r in rows:
        lines.append(f"{r['objective']:<14}{r['final_test_accuracy_mean']:>10.3f} ± {r['final_test_accuracy_std']:.3f}"
                     f"{r['best_epoch_test_accuracy_mean']:>12.3f}")
    return "\n".join(lines)


def _plot(out: Path, curves: dict, config: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("clean test accuracy (mean over seeds)")
    ax.set_title(f"{config['dataset']}, {config['noise_type']} label noise {config['noise']:g}")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(out / "accuracy.png", fig)
    plt.close(fig)
