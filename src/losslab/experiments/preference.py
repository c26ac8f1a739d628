"""``losslab run preference``: the alignment / diversity trade-off of f-DPO and of reference-free objectives.

A bandit version of preference alignment, small enough to run in seconds, that tests the
claim of Wang et al. ("Beyond Reverse KL", ICLR 2024, figure 2 and table 1): at a similar
reward, DPO constrained by the JS divergence or the forward KL keeps a more diverse
(higher-entropy) policy than the usual reverse-KL DPO.

Setting (every choice is recorded in ``results.json``):

* ``--prompts`` P prompts, each with ``--responses`` K candidate responses; a hidden
  reward ``R[p, k] ~ N(0, 1)``; the policy is a categorical distribution over the K
  responses of each prompt with learnable logits (one response = one token, so summed
  and length-averaged log-probs coincide); the reference policy is the policy at its
  initialization, logits ``~ N(0, 1)``.
* Data (offline, fixed per seed): ``--pairs`` preference pairs; a prompt is drawn
  uniformly, two different responses from π_ref, and the first is preferred with the
  Bradley–Terry probability ``σ(R[y1] - R[y2])``.
* Objectives: ``dpo_loss`` with each ``divergence`` (reverse_kl, forward_kl, js, alpha
  with α = 0.5) at every ``--betas`` value; ``simpo_loss`` (β = 2, γ = 1), ``orpo_loss``
  (β = 0.1 with the chosen responses' NLL) and ``npo_loss`` (β = 0.1, with the
  *rejected* responses as the forget set, i.e. unlearning the dispreferred answers) at
  their papers' defaults (one point each; their β is not a KL strength).
* Training: full-batch Adam (``--lr``), ``--steps`` steps, one intra-op thread; the
  generator of each seed draws the reward, the reference and the data, so every
  objective sees the same problem for a given seed (a paired comparison).
* Metrics of the final policy, averaged over prompts: expected hidden reward
  ``E_π R``, entropy ``H(π)`` (nats; ``log K`` is uniform) and ``KL(π‖π_ref)``; mean and
  sample std over ``--seeds`` seeds. The figure plots reward against entropy.

Resume: each finished (objective, β, seed) run is written at once to ``OUT/runs/``
(atomically); rerunning with the same ``--out`` and configuration reuses them. A
different configuration in an existing ``--out`` is refused.
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
from ._io import claim_out_dir, pyplot, read_json, save_figure, write_csv, write_json

NAME = "preference"
HELP = "categorical policy over K responses, Bradley-Terry pairs from a hidden reward: reward vs entropy per objective"
VERSION = 1
DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")
ALPHA = 0.5
#: label -> (registered objective, hyperparameters); "dpo_*" rows are run at every --betas value.
OBJECTIVES: dict[str, tuple[str, dict]] = {
    **{f"dpo_{d}": ("dpo_loss", {"divergence": d, **({"alpha": ALPHA} if d == "alpha" else {})}) for d in DIVERGENCES},
    "simpo": ("simpo_loss", {"beta": 2.0, "gamma": 1.0}),
    "orpo": ("orpo_loss", {"beta": 0.1}),
    "npo": ("npo_loss", {"beta": 0.1}),
}
DEFAULT_OBJECTIVES = ",".join(OBJECTIVES)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--objectives", default=DEFAULT_OBJECTIVES, help=f"comma-separated, from {DEFAULT_OBJECTIVES}")
    p.add_argument("--betas", default="0.05,0.1,0.3,1", help="beta values of the dpo_* objectives (default 0.05,0.1,0.3,1)")
    p.add_argument("--prompts", type=int, default=16, help="number of prompts P (default 16)")
    p.add_argument("--responses", type=int, default=8, help="responses per prompt K (default 8)")
    p.add_argument("--pairs", type=int, default=2048, help="preference pairs in the offline data set (default 2048)")
    p.add_argument("--steps", type=int, default=1000, help="full-batch Adam steps (default 1000)")
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate (default 0.05)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds 0..N-1 (default 3)")
    p.add_argument("--out", default="runs/preference", help="output folder (default runs/preference)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# ----------------------------------------------------------------------------- problem and training
def make_problem(prompts: int, responses: int, pairs: int, seed: int) -> dict:
    """Hidden reward, reference logits and Bradley-Terry pairs drawn from one seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    reward = torch.randn(prompts, responses, generator=gen, dtype=torch.float64)
    ref_logits = torch.randn(prompts, responses, generator=gen, dtype=torch.float64)
    ref_probs = torch.softmax(ref_logits, -1)
    prompt = torch.randint(0, prompts, (pairs,), generator=gen)
    # two different responses from π_ref: sample without replacement
    two = torch.multinomial(ref_probs[prompt], 2, replacement=False, generator=gen)
    y1, y2 = two[:, 0], two[:, 1]
    p_first = torch.sigmoid(reward[prompt, y1] - reward[prompt, y2])
    first = torch.rand(pairs, generator=gen, dtype=torch.float64) < p_first
    chosen, rejected = torch.where(first, y1, y2), torch.where(first, y2, y1)
    return {"reward": reward, "ref_logits": ref_logits, "prompt": prompt, "chosen": chosen, "rejected": rejected}


def metrics(logits: torch.Tensor, problem: dict) -> dict:
    from losslab.functional import kl_divergence

    logp = torch.log_softmax(logits, -1)
    p = logp.exp()
    return {
        "expected_reward": float((p * problem["reward"]).sum(-1).mean()),
        "entropy": float(-(p * logp).sum(-1).mean()),
        "kl_to_ref": float(kl_divergence(logits, problem["ref_logits"])),
    }


def _objective_loss(reg: str, kw: dict, beta: float | None):
    import losslab

    fn = losslab.get(reg)
    kw = dict(kw) if beta is None else {**kw, "beta": beta}

    def loss(logp, ref_logp, prob):
        i, c, r = prob["prompt"], prob["chosen"], prob["rejected"]
        pc, pr = logp[i, c], logp[i, r]
        if reg == "dpo_loss":
            return fn(pc, pr, ref_logp[i, c], ref_logp[i, r], **kw)
        if reg == "npo_loss":
            return fn(pr, ref_logp[i, r], **kw)
        if reg == "orpo_loss":
            return fn(pc, pr, chosen_nll=-pc, **kw)
        return fn(pc, pr, **kw)

    return loss


def train_one(reg: str, kw: dict, beta: float | None, problem: dict, steps: int, lr: float, tick=None) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest (restored below)
    try:
        logits = problem["ref_logits"].clone().requires_grad_(True)
        ref_logp = torch.log_softmax(problem["ref_logits"], -1)
        opt = torch.optim.Adam([logits], lr=lr)
        loss_fn = _objective_loss(reg, kw, beta)
        value = torch.zeros(())
        for _ in range(steps):
            value = loss_fn(torch.log_softmax(logits, -1), ref_logp, problem)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            if tick is not None:
                tick()
        if not torch.isfinite(value):
            raise ExperimentError(f"{reg} (beta={beta}) diverged: non-finite loss")
        with torch.no_grad():
            return {**metrics(logits.detach(), problem), "final_loss": float(value)}
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- run
def _parse(args) -> tuple[list[str], list[float]]:
    names = [n.strip() for n in args.objectives.split(",") if n.strip()]
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown or not names:
        raise ExperimentError(f"unknown objective(s) {unknown or names}; choose from {DEFAULT_OBJECTIVES}")
    if len(set(names)) != len(names):
        raise ExperimentError("--objectives names an objective twice")
    try:
        betas = [float(b) for b in args.betas.split(",") if b.strip()]
    except ValueError:
        raise ExperimentError(f"--betas takes comma-separated numbers, got {args.betas!r}") from None
    if not betas or not all(b > 0 and math.isfinite(b) for b in betas):
        raise ExperimentError(f"--betas must be positive numbers, got {args.betas!r}")
    if args.prompts < 1 or args.responses < 2 or args.pairs < 1 or args.steps < 1 or args.seeds < 1:
        raise ExperimentError("--prompts, --pairs, --steps and --seeds must be >= 1, --responses >= 2")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise ExperimentError(f"--lr must be a positive number, got {args.lr}")
    return names, betas


def _jobs(names: list[str], betas: list[float], seeds: int) -> list[tuple[str, float | None, int]]:
    return [(n, b, s) for n in names for b in (betas if n.startswith("dpo_") else [None]) for s in range(seeds)]


def _run_path(out: Path, label: str, beta: float | None, seed: int) -> Path:
    return out / "runs" / (f"{label}-beta{beta:g}-seed{seed}.json" if beta is not None else f"{label}-seed{seed}.json")


def _config(args) -> dict:
    return {"experiment": NAME, "version": VERSION, "prompts": args.prompts, "responses": args.responses,
            "pairs": args.pairs, "steps": args.steps, "lr": args.lr, "optimizer": "adam (full batch)",
            "reward": "N(0,1)", "reference_logits": "N(0,1)", "alpha": ALPHA}


def run(args) -> int:
    names, betas = _parse(args)
    out = Path(args.out)
    config = _config(args)
    claim_out_dir(out, config)
    jobs = _jobs(names, betas, args.seeds)
    todo = [j for j in jobs if not _run_path(out, *j).exists()]
    if len(todo) < len(jobs):
        print(f"resuming: {len(jobs) - len(todo)} of {len(jobs)} runs already finished in {out}", file=sys.stderr)
    bar = None
    if todo and not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(todo) * args.steps, unit="step", desc=NAME, file=sys.stderr, dynamic_ncols=True)
    t0 = time.perf_counter()
    problems: dict[int, dict] = {}
    try:
        for label, beta, seed in todo:
            if seed not in problems:
                problems[seed] = make_problem(args.prompts, args.responses, args.pairs, seed)
            if bar is not None:
                bar.set_postfix_str(f"{label} beta={beta} seed {seed}")
            reg, kw = OBJECTIVES[label]
            res = train_one(reg, kw, beta, problems[seed], args.steps, args.lr,
                            tick=bar.update if bar is not None else None)
            res.update(objective=label, registered=reg, hyperparameters=kw, beta=beta, seed=seed, config=config)
            write_json(_run_path(out, label, beta, seed), res)
    finally:
        if bar is not None:
            bar.close()
    rows = summarize(out, names, betas, args.seeds, config)
    print(format_table(rows, config, args.seeds, read_json(out / "results.json")["best_expected_reward_mean"]))
    drew = _plot(out, rows, config)
    figure = "tradeoff.png" if drew else "no figure: matplotlib is not installed"
    print(f"({time.perf_counter() - t0:.0f} s for {len(todo)} new runs; results in {out}/results.json, "
          f"results.csv, {figure})")
    return 0


# ----------------------------------------------------------------------------- outputs
METRICS = ("expected_reward", "entropy", "kl_to_ref")


def summarize(out: Path, names: list[str], betas: list[float], seeds: int, config: dict) -> list[dict]:
    rows = []
    groups: dict[tuple, list] = {}
    for label, beta, seed in _jobs(names, betas, seeds):
        rec = read_json(_run_path(out, label, beta, seed))
        if rec.get("config") != config:
            raise ExperimentError(f"{_run_path(out, label, beta, seed)} was made with another configuration")
        groups.setdefault((label, beta), []).append(rec)
    # The reference policy (the start of every run) and the greedy optimum, for scale.
    probs = [make_problem(config["prompts"], config["responses"], config["pairs"], s) for s in range(seeds)]
    groups[("reference", None)] = [metrics(p["ref_logits"], p) for p in probs]
    best = [float(p["reward"].max(-1).values.mean()) for p in probs]
    for (label, beta), recs in groups.items():
        row = {"objective": label, "beta": beta, "seeds": len(recs)}
        for m in METRICS:
            vals = [r[m] for r in recs]
            row[f"{m}_mean"] = statistics.fmean(vals)
            row[f"{m}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        rows.append(row)
    write_json(out / "results.json", {"config": config, "results": rows, "best_expected_reward_mean": statistics.fmean(best)})
    cols = ["objective", "beta", "seeds"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
    write_csv(out / "results.csv", rows, cols)
    return rows


def format_table(rows: list[dict], config: dict, seeds: int, best: float) -> str:
    ref_h = math.log(config["responses"])
    lines = [f"final policy, {config['prompts']} prompts x {config['responses']} responses, {config['pairs']} pairs, "
             f"{config['steps']} Adam steps; mean ± std over {seeds} seeds (uniform entropy log K = {ref_h:.3f}, "
             f"greedy policy's reward {best:.3f})",
             f"{'objective':<16} {'beta':>6}  {'E[reward]':>15}  {'entropy':>15}  {'KL(pi||ref)':>15}"]
    for r in rows:
        beta = ("-" if r["objective"] == "reference" else "paper") if r["beta"] is None else f"{r['beta']:g}"
        lines.append(f"{r['objective']:<16} {beta:>6}  " + "  ".join(
            f"{r[m + '_mean']:>7.3f} ± {r[m + '_std']:<5.3f}" for m in METRICS))
    return "\n".join(lines)


def _plot(out: Path, rows: list[dict], config: dict) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    labels = list(dict.fromkeys(r["objective"] for r in rows))
    for label in labels:
        pts = sorted(((r["entropy_mean"], r["expected_reward_mean"], r["beta"]) for r in rows
                      if r["objective"] == label), key=lambda t: (t[2] is None, t[2] or 0))
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        style = "o-" if label.startswith("dpo_") else ("k*" if label == "reference" else "s")
        ax.plot(xs, ys, style, label=label)
        if label.startswith("dpo_"):
            for x, y, b in pts:
                ax.annotate(f"{b:g}", (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel("policy entropy (nats, mean over prompts)")
    ax.set_ylabel("expected hidden reward")
    ax.set_title(f"preference bandit: {config['prompts']} prompts x {config['responses']} responses (labels: beta)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    save_figure(out / "tradeoff.png", fig)
    plt.close(fig)
    return True
