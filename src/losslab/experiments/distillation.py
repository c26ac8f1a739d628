"""``losslab run distillation``: a small student distilled from a wide teacher on scikit-learn digits.

Per seed, a wide teacher MLP (64-512-512-10, ReLU) is trained with cross-entropy, then a
small student (64-H-10, H = ``--student-width``, default 16) is trained from the same
initialization (per seed) with each objective; the table reports the student's test
accuracy (final epoch, mean ± sample std over seeds), next to the teacher's.

Objectives (the one table :data:`OBJECTIVES`; every distillation term is added to the
student's cross-entropy on the true labels):

* ``ce``: cross-entropy alone (no teacher);
* ``kd_<divergence>``: :func:`~losslab.functional.kd_loss` with ``ce_weight=0.5`` and
  ``temperature=4``, i.e. ``0.5 CE + 0.5 T² D(teacher‖student)`` (Hinton et al.'s mix),
  for ``kl``, ``reverse_kl``, ``js``, ``total_variation``;
* ``sinkd``: ``0.5 CE + 0.5 T² · sinkhorn_kd_loss`` (T = 2, ε = 0.1), the scale of the
  ``kd_*`` rows. (The authors' code's value is B = 64 times ours; at that weight the
  transport term swamps the cross-entropy here: 0.66 ± 0.07 test accuracy at 30 epochs.)
* ``nd``: ``CE + nd_loss``, the student's features projected (a trained linear map, dropped
  at test time) to the teacher's 512-dimensional penultimate layer, ``class_means`` the
  teacher's per-class training means;
* ``dhkd``: :func:`~losslab.functional.dual_head_kd_loss` (T = 2) on two student heads;
  head 1 is evaluated.

Protocol: data from :func:`losslab.data.sklearn_sets.load` (fixed stratified 30 % test
split, standardized); parameters initialised like ``nn.Linear``'s default from a
``torch.Generator`` seeded with the seed; minibatch order from a second seeded generator;
Adam (lr 1e-3, batch 64); one intra-op thread. Same configuration → the same numbers on
one machine. Resume: each finished (objective, seed) run and each teacher is written at
once (atomically) under ``OUT/``; a rerun with the same ``--out`` and configuration reuses
them; another configuration is refused.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from . import ExperimentError
from ._io import claim_out_dir, pyplot, read_json, save_figure, write_atomic, write_csv, write_json

NAME = "distillation"
HELP = "distil a wide MLP teacher into a small student on sklearn digits; compare KD objectives by test accuracy"
VERSION = 2
TEACHER_WIDTH = 512
T_KD, T_SINKD, T_DHKD = 4.0, 2.0, 2.0
#: label -> (registered objective, hyperparameters): what each run adds to its cross-entropy.
OBJECTIVES: dict[str, tuple[str | None, dict]] = {
    "ce": (None, {}),
    "kd_kl": ("kd_loss", {"divergence": "kl", "temperature": T_KD, "ce_weight": 0.5}),
    "kd_reverse_kl": ("kd_loss", {"divergence": "reverse_kl", "temperature": T_KD, "ce_weight": 0.5}),
    "kd_js": ("kd_loss", {"divergence": "js", "temperature": T_KD, "ce_weight": 0.5}),
    "kd_total_variation": ("kd_loss", {"divergence": "total_variation", "temperature": T_KD, "ce_weight": 0.5}),
    "sinkd": ("sinkhorn_kd_loss", {"temperature": T_SINKD, "epsilon": 0.1}),
    "nd": ("nd_loss", {}),
    "dhkd": ("dual_head_kd_loss", {"temperature": T_DHKD}),
}
DEFAULT_LOSSES = ",".join(OBJECTIVES)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--losses", default=DEFAULT_LOSSES, help=f"comma-separated subset of {DEFAULT_LOSSES}")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds 0..N-1 (default 3)")
    p.add_argument("--epochs", type=int, default=30, help="student training epochs (default 30)")
    p.add_argument("--teacher-epochs", type=int, default=30, help="teacher training epochs (default 30)")
    p.add_argument("--student-width", type=int, default=16, help="the student's hidden width (default 16)")
    p.add_argument("--student-fraction", type=float, default=1.0,
                   help="fraction of the training set the student sees (per class; the teacher sees all; default 1)")
    p.add_argument("--batch-size", type=int, default=64, help="minibatch size (default 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--out", default="runs/distillation", help="output folder (default runs/distillation)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-run lines")


def validate(args) -> list[str]:
    labels = [s.strip() for s in args.losses.split(",") if s.strip()]
    if not labels:
        raise ExperimentError("--losses names no objective")
    unknown = [s for s in labels if s not in OBJECTIVES]
    if unknown:
        raise ExperimentError(f"unknown objective {unknown[0]!r}; choose from {DEFAULT_LOSSES}")
    if len(set(labels)) != len(labels):
        raise ExperimentError(f"--losses names an objective twice: {args.losses}")
    for flag, v in (("--seeds", args.seeds), ("--epochs", args.epochs), ("--teacher-epochs", args.teacher_epochs),
                    ("--student-width", args.student_width), ("--batch-size", args.batch_size)):
        if v < 1:
            raise ExperimentError(f"{flag} must be >= 1, got {v}")
    if args.batch_size < 2 and "sinkd" in labels:
        raise ExperimentError("sinkd needs --batch-size >= 2 (a transport plan between batch samples)")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise ExperimentError(f"--lr must be a positive number, got {args.lr}")
    if not 0.0 < args.student_fraction <= 1.0:
        raise ExperimentError(f"--student-fraction must be in (0, 1], got {args.student_fraction}")
    return labels


def student_subset(y: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices of the student's training samples: per class, the first ceil(fraction * n_c) of a
    fixed permutation (generator seed 0; the same subset for every objective and seed)."""
    if fraction >= 1.0:
        return torch.arange(len(y))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    keep = [perm[y[perm] == c][: math.ceil(fraction * int((y == c).sum()))] for c in range(int(y.max()) + 1)]
    return torch.cat(keep).sort().values


# ----------------------------------------------------------------------------- models
def _linear(d_in: int, d_out: int, gen: torch.Generator) -> torch.nn.Linear:
    """``nn.Linear`` initialised like its default, but from ``gen`` (no global RNG draw)."""
    from torch.nn.utils import skip_init

    layer = skip_init(torch.nn.Linear, d_in, d_out)
    with torch.no_grad():
        torch.nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=gen)
        bound = 1.0 / math.sqrt(d_in)
        torch.nn.init.uniform_(layer.bias, -bound, bound, generator=gen)
    return layer


class MLP(torch.nn.Module):
    """in-(width x depth)-C ReLU MLP returning (features, logits[, second-head logits], projected features)."""

    def __init__(self, d_in: int, width: int, depth: int, num_classes: int, gen: torch.Generator,
                 project_to: int | None = None) -> None:
        super().__init__()
        layers, d = [], d_in
        for _ in range(depth):
            layers += [_linear(d, width, gen), torch.nn.ReLU()]
            d = width
        self.body = torch.nn.Sequential(*layers)
        self.head = _linear(width, num_classes, gen)
        # Extra heads are drawn after the shared part, so every objective's student starts
        # from the same body and head for a given seed.
        self.head2 = _linear(width, num_classes, gen)
        self.project = _linear(width, project_to, gen) if project_to else None

    def forward(self, x):
        h = self.body(x)
        return h, self.head(h)


def _adam(params, lr: float) -> torch.optim.Optimizer:
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # pragma: no cover - older torch
        return torch.optim.Adam(params, lr=lr)


def _accuracy(model: MLP, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x)[1].argmax(-1) == y).double().mean())


def _batches(n: int, batch_size: int, gen: torch.Generator):
    perm = torch.randperm(n, generator=gen)
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


def train_teacher(split, seed: int, args) -> MLP:
    gen = torch.Generator().manual_seed(seed)
    order = torch.Generator().manual_seed(20_000 + seed)
    model = MLP(split.x_train.shape[1], TEACHER_WIDTH, 2, split.num_classes, gen)
    opt = _adam([p for n, p in model.named_parameters() if not n.startswith("head2")], args.lr)
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    for _ in range(args.teacher_epochs):
        model.train()
        for idx in _batches(len(y), args.batch_size, order):
            loss = torch.nn.functional.cross_entropy(model(x[idx])[1], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return model


def train_student(split, teacher: MLP, label: str, seed: int, args, tick=None) -> dict:
    import losslab.functional as LF

    reg, kw = OBJECTIVES[label]
    gen = torch.Generator().manual_seed(1000 + seed)
    order = torch.Generator().manual_seed(10_000 + seed)
    student = MLP(split.x_train.shape[1], args.student_width, 1, split.num_classes, gen, project_to=TEACHER_WIDTH)
    opt = _adam(student.parameters(), args.lr)
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    x_te, y_te = torch.from_numpy(split.x_test), torch.from_numpy(split.y_test)
    with torch.no_grad():
        t_feat, t_logits = teacher(x)
        # The teacher's class means over the whole training set (the teacher's data).
        class_means = torch.stack([t_feat[y == c].mean(0) for c in range(split.num_classes)])
    sub = student_subset(y, getattr(args, "student_fraction", 1.0))
    x, y, t_feat, t_logits = x[sub], y[sub], t_feat[sub], t_logits[sub]
    acc = []
    for _ in range(args.epochs):
        student.train()
        for idx in _batches(len(y), args.batch_size, order):
            h, logits = student(x[idx])
            ce = torch.nn.functional.cross_entropy(logits, y[idx])
            if reg is None:
                loss = ce
            elif reg == "kd_loss":
                loss = LF.kd_loss(logits, t_logits[idx], target=y[idx], **kw)
            elif reg == "sinkhorn_kd_loss":
                loss = 0.5 * ce + 0.5 * kw["temperature"] ** 2 * LF.sinkhorn_kd_loss(logits, t_logits[idx], **kw)
            elif reg == "nd_loss":
                loss = ce + LF.nd_loss(student.project(h), t_feat[idx], y[idx], class_means)
            else:  # dual_head_kd_loss: head 1 cross-entropy, head 2 logit-level
                loss = LF.dual_head_kd_loss(logits, student.head2(h), t_logits[idx], y[idx], **kw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if not torch.isfinite(loss):
                raise ExperimentError(f"{label} diverged (non-finite loss) at seed {seed}")
        acc.append(_accuracy(student, x_te, y_te))
        if tick is not None:
            tick()
    return {"test_accuracy": acc}


# ----------------------------------------------------------------------------- the run
def _config(args, split) -> dict:
    return {
        "experiment": NAME, "version": VERSION, "dataset": split.name, "n_train": int(split.x_train.shape[0]),
        "n_test": int(split.x_test.shape[0]), "epochs": args.epochs, "teacher_epochs": args.teacher_epochs,
        "batch_size": args.batch_size, "lr": args.lr, "optimizer": "adam",
        "student_fraction": args.student_fraction,
        "teacher": f"mlp 64-{TEACHER_WIDTH}-{TEACHER_WIDTH}-10 relu", "student": f"mlp 64-{args.student_width}-10 relu",
    }


def _teacher(out: Path, split, seed: int, args, config: dict) -> tuple[MLP, float]:
    """Train (or reload) the seed's teacher; returns it and its test accuracy."""
    import io

    path = out / "teachers" / f"seed{seed}.pt"
    meta = out / "teachers" / f"seed{seed}.json"
    model = MLP(split.x_train.shape[1], TEACHER_WIDTH, 2, split.num_classes, torch.Generator().manual_seed(seed))
    if path.exists() and meta.exists() and read_json(meta).get("config") == config:
        model.load_state_dict(torch.load(path, weights_only=True))
        model.eval()
    else:
        model = train_teacher(split, seed, args)
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        write_atomic(path, buf.getvalue())
        write_json(meta, {"config": config, "seed": seed})
    return model, _accuracy(model, torch.from_numpy(split.x_test), torch.from_numpy(split.y_test))


def _run_path(out: Path, label: str, seed: int) -> Path:
    return out / "runs" / f"{label}-seed{seed}.json"


def _finished(out: Path, label: str, seed: int, config: dict) -> bool:
    path = _run_path(out, label, seed)
    if not path.exists():
        return False
    try:
        rec = read_json(path)
    except ValueError:
        return False
    if (rec.get("config"), rec.get("objective"), rec.get("hyperparameters")) != (config, label,
                                                                                  OBJECTIVES[label][1]):
        raise ExperimentError(f"{path} was made with other settings; use another --out or delete it")
    return True


def run(args) -> int:
    labels = validate(args)
    from losslab.data.sklearn_sets import load

    split = load("digits")
    out = Path(args.out)
    config = _config(args, split)
    claim_out_dir(out, config)
    jobs = [(label, seed) for label in labels for seed in range(args.seeds)]
    todo = [j for j in jobs if not _finished(out, *j, config)]
    if len(todo) < len(jobs):
        print(f"resuming: {len(jobs) - len(todo)} of {len(jobs)} runs already finished in {out}", file=sys.stderr)
    verbose = not args.quiet
    bar = None
    if todo and verbose and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(todo) * args.epochs, unit="epoch", desc=NAME, file=sys.stderr, dynamic_ncols=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # overhead-bound MLPs: one intra-op thread is fastest (restored below)
    t0 = time.perf_counter()
    teachers: dict[int, tuple[MLP, float]] = {}
    try:
        for seed in range(args.seeds):
            teachers[seed] = _teacher(out, split, seed, args, config)
        for i, (label, seed) in enumerate(todo):
            if bar is not None:
                bar.set_postfix_str(f"{label} seed {seed}")
            t_run = time.perf_counter()
            result = train_student(split, teachers[seed][0], label, seed, args,
                                   tick=bar.update if bar is not None else None)
            result.update(objective=label, registered=OBJECTIVES[label][0], hyperparameters=OBJECTIVES[label][1],
                          seed=seed, config=config)
            write_json(_run_path(out, label, seed), result)
            if verbose and bar is None:
                print(f"[{i + 1}/{len(todo)}] {label} seed {seed}: test accuracy {result['test_accuracy'][-1]:.3f} "
                      f"({time.perf_counter() - t_run:.1f} s)", file=sys.stderr)
    finally:
        torch.set_num_threads(threads)
        if bar is not None:
            bar.close()
    rows = summarize(out, labels, args.seeds, config, [teachers[s][1] for s in range(args.seeds)])
    print(format_table(rows, config))
    figure = "accuracy.png" if (out / "accuracy.png").exists() else "no accuracy.png: matplotlib is not installed"
    print(f"({time.perf_counter() - t0:.0f} s for {len(todo)} new runs; results in {out}/results.json, "
          f"results.csv, {figure})")
    return 0


def summarize(out: Path, labels: list[str], seeds: int, config: dict, teacher_acc: list[float]) -> list[dict]:
    rows = []
    for label in labels:
        final = [read_json(_run_path(out, label, s))["test_accuracy"][-1] for s in range(seeds)]
        reg, kw = OBJECTIVES[label]
        rows.append({"objective": label, "registered": reg or "cross_entropy", "hyperparameters": kw, "seeds": seeds,
                     "test_accuracy_mean": statistics.fmean(final),
                     "test_accuracy_std": statistics.stdev(final) if len(final) > 1 else 0.0,
                     "test_accuracy_per_seed": final})
    teacher = {"mean": statistics.fmean(teacher_acc),
               "std": statistics.stdev(teacher_acc) if len(teacher_acc) > 1 else 0.0, "per_seed": teacher_acc}
    write_json(out / "results.json", {"config": config, "teacher_test_accuracy": teacher, "results": rows})
    write_csv(out / "results.csv", [{**r, "hyperparameters": _kw_text(r["hyperparameters"])} for r in rows],
              ["objective", "registered", "hyperparameters", "seeds", "test_accuracy_mean", "test_accuracy_std"])
    rows_with_teacher = [{"objective": "(teacher)", "test_accuracy_mean": teacher["mean"],
                          "test_accuracy_std": teacher["std"], "registered": "cross_entropy", "hyperparameters": {},
                          "seeds": seeds}] + rows
    _plot(out, rows_with_teacher, config)
    return rows_with_teacher


def _kw_text(kw: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(kw.items()))


def format_table(rows: list[dict], config: dict) -> str:
    seeds = rows[0]["seeds"] if rows else 0
    frac = config.get("student_fraction", 1.0)
    data = "" if frac >= 1 else f", the student on {frac:g} of the training set"
    head = (f"digits: student {config['student']} distilled from teacher {config['teacher']}{data}; test accuracy "
            f"after {config['epochs']} epochs (mean ± std over {seeds} seeds)")
    width = max(len(r["objective"]) for r in rows)
    lines = [head, f"{'objective':<{width}}  {'test accuracy':>15}  added to the student's cross-entropy"]
    for r in rows:
        what = "(the teacher itself)" if r["objective"] == "(teacher)" else (
            "nothing" if r["objective"] == "ce" else f"{r['registered']}({_kw_text(r['hyperparameters'])})")
        acc = f"{r['test_accuracy_mean']:>7.3f} ± {r['test_accuracy_std']:.3f}"
        lines.append(f"{r['objective']:<{width}}  {acc}  {what}")
    return "\n".join(lines)


def _plot(out: Path, rows: list[dict], config: dict) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7.0, 3.6))
    names = [r["objective"] for r in rows]
    ax.bar(range(len(rows)), [r["test_accuracy_mean"] for r in rows], yerr=[r["test_accuracy_std"] for r in rows],
           color=["0.6"] + ["C0"] * (len(rows) - 1), capsize=3)
    ax.set_xticks(range(len(rows)), names, rotation=30, ha="right")
    lo = min(r["test_accuracy_mean"] - r["test_accuracy_std"] for r in rows)
    ax.set_ylim(max(0.0, lo - 0.02), 1.0)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"digits, student {config['student']}")
    ax.grid(axis="y", alpha=0.3)
    save_figure(out / "accuracy.png", fig)
    plt.close(fig)
    return True



