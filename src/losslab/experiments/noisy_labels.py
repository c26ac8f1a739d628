"""``losslab run noisy-labels``: robust classification losses under injected label noise.

Trains a small MLP (in-256-256-C, ReLU, Adam lr 1e-3, batch 64) on a scikit-learn bundled
dataset (digits by default) whose *training* labels are corrupted, once per (objective,
seed), and reports the accuracy on the clean test labels. It tests the claim of the LDR
paper (Zhu, Ying, Yang, ICML 2023) and the comp-sum paper (Mao, Mohri, Zhong, ICML 2023)
that robust losses (GCE, MAE, LDR-KL, ALDR-KL) beat cross-entropy under label noise.

Protocol (every choice is recorded in ``results.json``):

* data: :func:`losslab.data.sklearn_sets.load` (stratified 30 % test split with split
  seed 0, features standardized with training statistics);
* noise: :func:`losslab.data.sklearn_sets.corrupt_labels` on the training labels only,
  drawn from ``numpy.random.default_rng(seed)``: all objectives see the *same* noisy
  labels for a given seed (a paired comparison). ``--noise`` must lie in ``[0, 1)`` and
  below the rate at which the true class stops being the plurality label
  (``(C-1)/C`` symmetric, ``1/2`` asymmetric), see :func:`~losslab.data.sklearn_sets.max_noise`;
* model and optimisation: parameters initialised like torch's ``nn.Linear`` default but
  from a ``torch.Generator`` seeded with ``seed``; minibatch order from a second generator
  seeded with ``seed``; Adam (fused CPU kernel when available); one intra-op thread per
  run (two threads are slower on matrices this small) and value-reading input checks off
  while training (the objective is checked on a dry batch first, and the labels come from
  the loader), so a step has no host synchronisation; both global settings are restored
  after the last run. Runs train ``--workers`` at a time in threads of this process
  (default: one per available CPU core). Same seed and configuration → bit-identical
  results on one machine, whatever ``--workers``;
* metric: clean test accuracy after every epoch; the table shows the **final-epoch**
  accuracy (mean ± sample std over seeds) and, for information, the mean over seeds of
  the best epoch's accuracy — an oracle that peeks at the test labels, *not* a model
  selection result.

Objectives are named by a short name from :data:`OBJECTIVES` (one table: short name →
registered objective + hyperparameters) or by any registered classification objective
taking ``(logits, target)``; either may be followed by ``:key=value`` overrides, e.g.
``--losses ce,ldr_kl:lam=1,comp_sum_loss:tau=1.5``. A registered objective with property
``stateful_module`` (ALDR-KL) is used through its Module,
``info.module(num_samples=N_train, **kwargs)``, called as ``module(logits, target, index)``
with the batch's dataset indices.

Outputs: ``OUT/table.txt`` (the table as printed), ``OUT/results.csv`` and
``OUT/results.json`` (the same numbers, with per-seed values and per-epoch curves), and
``OUT/accuracy.png`` (the curves; needs matplotlib); the last lines printed name them.

Resume: every finished (objective, seed) run is written at once to ``OUT/runs/`` (with its
per-epoch curves and the configuration), atomically; rerunning with the same ``--out``
and configuration trains only the missing runs and reuses the others (Ctrl-C starts no
new run, lets the runs in progress finish and keeps them). More seeds or more objectives
may be added to an existing ``--out``; a different configuration (dataset, noise, epochs,
batch size, learning rate, or a changed hyperparameter behind a short name) is refused
with an error.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from . import ExperimentError
from ._io import claim_out_dir, read_json, save_figure, write_atomic, write_csv, write_json

NAME = "noisy-labels"
HELP = "train an MLP on sklearn digits/breast-cancer with label noise; compare objectives by clean test accuracy"

#: Short name -> (registered objective, hyperparameters): the one table of the experiment.
#: GCE q=0.7 (Zhang & Sabuncu 2018); MAE = comp-sum at tau=2 (Mao et al. 2023: Phi_2 is
#: MAE up to a factor); focal gamma=2 (Lin et al. 2017); LDR-KL lam=10, margin=1 (lam=1 on
#: raw logits is a margin cross-entropy and fits noise like CE; the LDR paper's noisy-label
#: runs use a large lambda); ``ldr_kl_norm``: the authors' code's logit normalization;
#: ALDR-KL at the authors' defaults (lam0=10, alpha=2, margin=0.1) on raw logits. Note: on
#: raw logits a network can grow its logits ~lam-fold and undo lam (observed here: the
#: LDR-KL model's logit gaps end ~8x those of the CE model), so LDR-KL delays fitting the
#: noisy labels rather than preventing it.
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
#: 60 epochs: cross-entropy has fitted the noisy labels by then (its test accuracy plateaus
#: after ~40 epochs at noise 0.4), so the gap to the robust losses is visible; fewer epochs
#: would also hide that LDR-KL and ALDR-KL only delay fitting the noise (their accuracy is
#: still falling at epoch 60). 2 seeds: each objective's verdict against cross-entropy is the
#: same as with 3 (``--seeds 3``: seeds 0 and 1 are the same runs). The default study, 6
#: objectives x 2 seeds x 60 epochs = 14,400 steps (:func:`training_steps`), costs about
#: 15-20 s of one core, split over the available cores by ``--workers``. The README's longer
#: study uses ``--epochs 150 --seeds 3`` (a run's first E epochs are identical to an E-epoch run).
DEFAULT_EPOCHS = 60
DEFAULT_SEEDS = 2
#: Bump when the training procedure changes, so that old run files are never reused.
VERSION = 2
HIDDEN = 256


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits", help="digits (default) or breast-cancer")
    p.add_argument("--noise", type=float, default=0.4, help="training-label noise rate in [0, 1) (default 0.4)")
    p.add_argument("--noise-type", default="symmetric",
                   help="symmetric (default: flip to a uniformly drawn other class) or asymmetric (k -> k+1 mod C)")
    p.add_argument("--losses", default=DEFAULT_LOSSES,
                   help=f"comma-separated objectives (default {DEFAULT_LOSSES}); short names: {', '.join(OBJECTIVES)}; "
                   "or any registered classification objective on (logits, target); NAME:key=value overrides")
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help=f"number of seeds 0..N-1 (default {DEFAULT_SEEDS})")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"training epochs (default {DEFAULT_EPOCHS})")
    p.add_argument("--batch-size", type=int, default=64, help="minibatch size (default 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--out", default=None, help="output folder (default runs/noisy-labels-<dataset>-<noise-type>-<noise>)")
    p.add_argument("--workers", type=int, default=None,
                   help="runs trained at a time, one core each (default: the available CPU cores); "
                   "results do not depend on it")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-run lines")


# ----------------------------------------------------------------------------- objectives
def _parse_value(text: str):
    low = text.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _parse_spec(spec: str) -> tuple[str, dict]:
    """``name[:key=value[:key=value...]]`` -> (name, overrides)."""
    name, *items = spec.split(":")
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ExperimentError(f"bad objective spec {spec!r}: expected NAME:key=value, got {item!r}")
        overrides[key] = _parse_value(value)
    return name.strip(), overrides


def _loss_callable(reg: str, kwargs: dict, num_samples: int):
    """``loss(logits, target, index)`` for one training run (a fresh Module for stateful objectives)."""
    import losslab

    info = losslab.info(reg)
    if info.properties.get("stateful_module"):
        return info.module(num_samples=num_samples, **kwargs)
    fn = info.function
    return lambda logits, target, index: fn(logits, target, **kwargs)


def resolve(names: str, num_classes: int) -> list[tuple[str, str, dict]]:
    """``--losses`` -> [(label, registered name, hyperparameters)], checked on a dummy batch."""
    import inspect

    import losslab

    known = set(losslab.list_losses())
    out = []
    for spec in [n.strip() for n in names.split(",") if n.strip()]:
        name, overrides = _parse_spec(spec)
        reg, kw = OBJECTIVES.get(name, (name, {}))
        if reg not in known:
            missing = f" (short name for {reg}, which is not registered in this losslab)" if name in OBJECTIVES else ""
            raise ExperimentError(f"unknown objective {name!r}{missing}; short names: {', '.join(OBJECTIVES)}, "
                                  "or see `losslab list --family classification`")
        info = losslab.info(reg)
        if info.family != "classification":
            raise ExperimentError(f"objective {name!r} is not a classification objective (family {info.family})")
        if not info.properties.get("stateful_module"):
            params = list(inspect.signature(info.function).parameters.values())
            ok = (len(params) >= 2 and [p.name for p in params[:2]] == ["logits", "target"]
                  and params[1].default is inspect.Parameter.empty
                  and not any(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in params[2:]))
            if not ok:
                raise ExperimentError(f"objective {name!r} does not take (logits, target); "
                                      f"its signature is {reg}{inspect.signature(info.function)}")
        kw = {**kw, **overrides}
        # A dry run on a tiny batch turns a missing/invalid hyperparameter into a one-line error.
        try:
            gen = torch.Generator().manual_seed(0)
            logits = torch.randn(4, num_classes, generator=gen, requires_grad=True)
            target = torch.arange(4) % num_classes
            value = _loss_callable(reg, kw, 4)(logits, target, torch.arange(4))
            value.backward()
            if value.ndim != 0 or not torch.isfinite(value):
                raise ValueError(f"expected a finite scalar loss, got {value}")
        except (TypeError, ValueError, RuntimeError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExperimentError(f"objective {spec!r} ({reg} with {kw}) cannot be trained here: {msg}") from None
        out.append((spec, reg, kw))
    if not out:
        raise ExperimentError("--losses names no objective")
    labels = [s for s, _, _ in out]
    if len(set(labels)) != len(labels):
        raise ExperimentError(f"--losses names an objective twice: {','.join(labels)}")
    return out


def _file_label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", label)


# ----------------------------------------------------------------------------- checks
def validate(args) -> int:
    """Reject bad input before any data is loaded; returns the number of classes."""
    from losslab.data.sklearn_sets import DATASETS, NOISE_TYPES, NUM_CLASSES, max_noise

    if args.dataset not in DATASETS:
        raise ExperimentError(f"unknown dataset {args.dataset!r}; choose one of {', '.join(DATASETS)}")
    if args.noise_type not in NOISE_TYPES:
        raise ExperimentError(f"--noise-type must be one of {', '.join(NOISE_TYPES)}, got {args.noise_type!r}")
    if math.isnan(args.noise) or not 0.0 <= args.noise < 1.0:
        raise ExperimentError(f"--noise must be in [0, 1), got {args.noise}")
    num_classes = NUM_CLASSES[args.dataset]
    limit = max_noise(num_classes, args.noise_type)
    if args.noise >= limit:
        raise ExperimentError(f"--noise {args.noise:g}: the true class is no longer the plurality label "
                              f"({args.noise_type} noise on {num_classes} classes needs noise < {limit:.3g})")
    workers = getattr(args, "workers", None)  # None: one per available core
    for flag, v in (("--seeds", args.seeds), ("--epochs", args.epochs), ("--batch-size", args.batch_size),
                    ("--workers", 1 if workers is None else workers)):
        if v < 1:
            raise ExperimentError(f"{flag} must be >= 1, got {v}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise ExperimentError(f"--lr must be a positive number, got {args.lr}")
    return num_classes


# ----------------------------------------------------------------------------- training
def make_mlp(d_in: int, num_classes: int, gen: torch.Generator) -> torch.nn.Sequential:
    """in-256-256-C ReLU MLP, initialised like ``nn.Linear``'s default but from ``gen``."""
    from torch.nn.utils import skip_init

    # skip_init: no draw from the global RNG (the layers are initialised from gen below).
    model = torch.nn.Sequential(
        skip_init(torch.nn.Linear, d_in, HIDDEN), torch.nn.ReLU(),
        skip_init(torch.nn.Linear, HIDDEN, HIDDEN), torch.nn.ReLU(),
        skip_init(torch.nn.Linear, HIDDEN, num_classes),
    )
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                # nn.Linear.reset_parameters: W ~ U(±1/sqrt(fan_in)) (kaiming_uniform with a=sqrt(5)),
                # b ~ U(±1/sqrt(fan_in)).
                torch.nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=gen)
                bound = 1.0 / math.sqrt(layer.in_features)
                torch.nn.init.uniform_(layer.bias, -bound, bound, generator=gen)
    return model


def _adam(params, lr: float) -> torch.optim.Optimizer:
    try:  # the fused CPU kernel (torch >= 2.4) is ~25 % faster on this overhead-bound model
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # pragma: no cover - older torch
        return torch.optim.Adam(params, lr=lr)


_SETTINGS_LOCK = threading.Lock()
_SETTINGS_USERS = 0
_SETTINGS_SAVED: tuple[int, bool] = (1, True)


@contextlib.contextmanager
def _training_settings() -> Iterator[None]:
    """One intra-op thread and no value-reading input checks while any run trains.

    Both are process-wide settings; runs training in several threads share one entry, and
    the caller's settings come back when the last run leaves.
    """
    import losslab

    global _SETTINGS_USERS, _SETTINGS_SAVED
    with _SETTINGS_LOCK:
        if _SETTINGS_USERS == 0:
            _SETTINGS_SAVED = (torch.get_num_threads(), losslab.validation_enabled())
            # A 64x256 matmul is too small to share: one thread per run is fastest, and runs
            # in parallel threads use the other cores.
            torch.set_num_threads(1)
            # The objective was checked on a dry batch by resolve() and the labels come from
            # the loader, so the per-step value checks (host syncs) would only cost time.
            losslab.set_validation(False)
        _SETTINGS_USERS += 1
    try:
        yield
    finally:
        with _SETTINGS_LOCK:
            _SETTINGS_USERS -= 1
            if _SETTINGS_USERS == 0:
                torch.set_num_threads(_SETTINGS_SAVED[0])
                losslab.set_validation(_SETTINGS_SAVED[1])


def train_one(split, y_noisy: np.ndarray, objective: str, kwargs: dict, seed: int, args, tick=None) -> dict:
    """Train one model; returns the per-epoch clean test accuracy and mean training loss.

    Safe to call from several threads at once (each run has its own model, optimizer,
    objective and generators).
    """
    with _training_settings():
        return _train(split, y_noisy, objective, kwargs, seed, args, tick)


def _train(split, y_noisy, objective, kwargs, seed, args, tick) -> dict:
    gen_init = torch.Generator().manual_seed(seed)
    gen_order = torch.Generator().manual_seed(10_000 + seed)
    model = make_mlp(split.x_train.shape[1], split.num_classes, gen_init)
    opt = _adam(model.parameters(), args.lr)
    x_tr, y_tr = torch.from_numpy(split.x_train), torch.from_numpy(y_noisy)
    x_te, y_te = torch.from_numpy(split.x_test), torch.from_numpy(split.y_test)
    n = x_tr.shape[0]
    loss_fn = _loss_callable(objective, kwargs, n)
    test_acc, train_loss = [], []
    for _ in range(args.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen_order)
        total = torch.zeros((), dtype=torch.float64)
        for start in range(0, n, args.batch_size):
            idx = perm[start : start + args.batch_size]
            loss = loss_fn(model(x_tr[idx]), y_tr[idx], idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * idx.numel()
        if not torch.isfinite(total):
            raise ExperimentError(f"{objective} with {kwargs} diverged (non-finite training loss) at seed {seed}")
        model.eval()
        with torch.inference_mode():
            test_acc.append(int((model(x_te).argmax(-1) == y_te).sum()) / len(y_te))
        train_loss.append(float(total) / n)
        if tick is not None:
            tick()
    return {"test_accuracy": test_acc, "train_loss": train_loss}


def _config(args, split) -> dict:
    return {
        "experiment": NAME, "version": VERSION, "dataset": split.name, "num_classes": split.num_classes,
        "n_train": int(split.x_train.shape[0]), "n_test": int(split.x_test.shape[0]),
        "test_size": 0.3, "split_seed": 0, "features": "standardized (train mean/std)",
        "noise": args.noise, "noise_type": args.noise_type,
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "optimizer": "adam",
        "model": f"mlp {split.x_train.shape[1]}-{HIDDEN}-{HIDDEN}-{split.num_classes} relu",
    }


def _run_path(out: Path, label: str, seed: int) -> Path:
    return out / "runs" / f"{_file_label(label)}-seed{seed}.json"


def _finished(out: Path, label: str, reg: str, kw: dict, seed: int, config: dict) -> bool:
    """Whether a reusable result exists; a result made with other settings is an error."""
    path = _run_path(out, label, seed)
    if not path.exists():
        return False
    try:
        rec = read_json(path)
    except ValueError:  # not valid JSON: cannot come from our atomic writes; recompute
        return False
    made = (rec.get("config"), rec.get("registered"), rec.get("hyperparameters"), rec.get("seed"))
    if made != (config, reg, kw, seed):
        raise ExperimentError(f"{path} was made with other settings ({rec.get('registered')} "
                              f"{rec.get('hyperparameters')}); use another --out or delete it")
    return True


def training_steps(runs: int, epochs: int, n_train: int, batch_size: int) -> int:
    """Optimizer steps of a study: its cost (every step is one forward/backward of the MLP on
    a minibatch; each run also evaluates the test set once per epoch)."""
    return runs * epochs * math.ceil(n_train / batch_size)


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _one_run(split, job, args, tick) -> tuple[dict, float]:
    """Train one (objective, seed) run on the seed's noisy labels; returns (result, seconds)."""
    from losslab.data.sklearn_sets import corrupt_labels

    label, reg, kw, seed = job
    t0 = time.perf_counter()
    y_noisy = corrupt_labels(split.y_train, split.num_classes, args.noise, args.noise_type,
                             np.random.default_rng(seed))
    result = train_one(split, y_noisy, reg, kw, seed, args, tick=tick)
    result["observed_noise"] = float((y_noisy != split.y_train).mean())
    return result, time.perf_counter() - t0


def _train_runs(split, todo: list, args, workers: int, done, tick=None) -> None:
    """Train the jobs of ``todo``, ``workers`` at a time (threads: torch releases the GIL in
    its kernels), calling ``done(job, result, seconds)`` in this thread as each finishes.

    On an error or Ctrl-C no new run starts, the runs in progress finish (seconds) and go
    to ``done``, then the first error is raised.
    """
    if workers <= 1:
        for job in todo:
            done(job, *_one_run(split, job, args, tick))
        return
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    with _training_settings(), ThreadPoolExecutor(workers, thread_name_prefix=NAME) as pool:
        futures = {pool.submit(_one_run, split, job, args, tick): i for i, job in enumerate(todo)}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                error = None
                for fut in sorted(finished, key=futures.get):
                    try:
                        result = fut.result()
                    except BaseException as exc:  # re-raised below, once the other finished runs are kept
                        error = error or exc
                        continue
                    done(todo[futures[fut]], *result)
                if error is not None:
                    raise error
        finally:
            for fut in pending:
                fut.cancel()
            for fut in sorted(pending, key=futures.get):
                if fut.cancelled():
                    continue
                try:
                    result = fut.result()
                except BaseException:  # the first error is the one being raised
                    continue
                done(todo[futures[fut]], *result)


def run(args) -> int:
    num_classes = validate(args)  # cheap checks first: no scikit-learn import for bad input
    objectives = resolve(args.losses, num_classes)
    from losslab.data.sklearn_sets import load

    split = load(args.dataset)
    out = Path(args.out or f"runs/noisy-labels-{args.dataset}-{args.noise_type}-{args.noise:g}")
    config = _config(args, split)
    claim_out_dir(out, config)

    jobs = [(label, reg, kw, seed) for (label, reg, kw) in objectives for seed in range(args.seeds)]
    todo = [j for j in jobs if not _finished(out, *j, config)]
    workers = max(1, min(getattr(args, "workers", None) or _available_cores(), len(todo)))
    verbose = not args.quiet
    if len(todo) < len(jobs):  # printed even with --quiet: the table reuses older results
        print(f"resuming: {len(jobs) - len(todo)} of {len(jobs)} runs already finished in {out}", file=sys.stderr)
    bar = tick = None
    if todo and verbose and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(todo) * args.epochs, unit="epoch", desc=NAME, file=sys.stderr, dynamic_ncols=True)
        bar_lock = threading.Lock()

        def tick():  # once per epoch, from the training threads
            with bar_lock:
                bar.update()

    finished = 0

    def done(job, result: dict, seconds: float) -> None:
        nonlocal finished
        label, reg, kw, seed = job
        result.update(objective=label, registered=reg, hyperparameters=kw, seed=seed, config=config)
        write_json(_run_path(out, label, seed), result)
        finished += 1
        if verbose and bar is None:
            print(f"[{finished}/{len(todo)}] {label} seed {seed}: final clean test accuracy "
                  f"{result['test_accuracy'][-1]:.3f} ({seconds:.1f} s)", file=sys.stderr)

    t0 = time.perf_counter()
    try:
        _train_runs(split, todo, args, workers, done, tick)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    summary = summarize(out, objectives, args.seeds, config)
    print(format_table(summary, config))
    if todo:
        print(f"({len(todo)} new runs in {seconds:.0f} s, {workers} at a time)")
    figure = out / "accuracy.png"
    print(f"table:  {out / 'table.txt'} (beside it: results.csv, and results.json with per-seed values and curves)")
    print(f"figure: {figure}" if figure.exists() else
          "figure: not drawn (matplotlib is not installed: pip install 'losslab[cli]')")
    return 0


# ----------------------------------------------------------------------------- outputs
def summarize(out: Path, objectives, seeds: int, config: dict) -> list[dict]:
    """Aggregate the per-run files into table.txt, results.json, results.csv and accuracy.png.

    The figure needs matplotlib (the ``cli`` extra); without it the results are written and
    the figure is left out.
    """
    rows, curves = [], {}
    for label, reg, kw in objectives:
        runs = [read_json(_run_path(out, label, s)) for s in range(seeds)]
        final = [r["test_accuracy"][-1] for r in runs]
        best = [max(r["test_accuracy"]) for r in runs]
        rows.append({
            "objective": label, "registered": reg, "hyperparameters": kw, "seeds": seeds,
            "final_test_accuracy_mean": statistics.fmean(final),
            "final_test_accuracy_std": statistics.stdev(final) if len(final) > 1 else 0.0,
            "final_test_accuracy_per_seed": final,
            "best_epoch_test_accuracy_mean": statistics.fmean(best),
            "observed_noise_mean": statistics.fmean(r["observed_noise"] for r in runs),
        })
        curves[label] = np.mean([r["test_accuracy"] for r in runs], axis=0).tolist()
    write_json(out / "results.json", {"config": config, "results": rows, "curves": curves})
    columns = ["objective", "registered", "hyperparameters", "seeds", "final_test_accuracy_mean",
               "final_test_accuracy_std", "best_epoch_test_accuracy_mean", "observed_noise_mean"]
    write_csv(out / "results.csv", [{**r, "hyperparameters": _kw_text(r["hyperparameters"])} for r in rows], columns)
    write_atomic(out / "table.txt", format_table(rows, config) + "\n")
    _plot(out, curves, config)
    return rows


def _kw_text(kw: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(kw.items()))


def format_table(rows: list[dict], config: dict) -> str:
    seeds = rows[0]["seeds"] if rows else 0
    head = (f"clean test accuracy after {config['epochs']} epochs (final epoch; mean ± std over {seeds} seeds), "
            f"{config['dataset']}, {config['noise_type']} label noise {config['noise']:g}")
    width = max([len("objective")] + [len(r["objective"]) for r in rows])
    lines = [head, f"{'objective':<{width}}  {'final accuracy':>15}  {'best epoch*':>11}  objective (hyperparameters)"]
    for r in rows:
        lines.append(f"{r['objective']:<{width}}  {r['final_test_accuracy_mean']:>7.3f} ± {r['final_test_accuracy_std']:.3f}"
                     f"  {r['best_epoch_test_accuracy_mean']:>11.3f}  {r['registered']}({_kw_text(r['hyperparameters'])})")
    lines.append("* best epoch: mean over seeds of the highest per-epoch test accuracy (peeks at the test set)")
    return "\n".join(lines)


def _plot(out: Path, curves: dict, config: dict) -> bool:
    """Draw accuracy.png; False (and no figure) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("clean test accuracy (mean over seeds)")
    ax.set_title(f"{config['dataset']}, {config['noise_type']} label noise {config['noise']:g}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    save_figure(out / "accuracy.png", fig)
    plt.close(fig)
    return True
