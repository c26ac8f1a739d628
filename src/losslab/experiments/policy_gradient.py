"""``losslab run policy-gradient``: GRPO-family losses on a verifiable toy task, and the vanishing gradient.

A small autoregressive policy (an MLP over the prompt, the position and the running sum;
the LM head through :func:`losslab.functional.linear_token_logprobs`) is trained from
scratch to write up to ``--length`` digits whose sum is the prompt's target (a token
``EOS`` ends the completion early). The reward is verifiable: 1 if the digits sum to the
target, else 0. Each step samples ``--prompts`` targets, ``--group`` completions each,
computes :func:`~losslab.functional.group_advantages` and takes ``--updates`` optimizer
steps on :func:`~losslab.functional.grpo_loss` (the first on-policy, ratio 1; the next
ones off-policy, so the clipping acts). Runs:

* ``grpo``, ``dr_grpo`` (advantages without the std, ``scale="none"``), ``dapo``, ``cispo``
  (``epsilon_high=5``, an absolute cap) with prompts drawn uniformly;
* ``grpo+vas``: GRPO with MMR1's variance-aware sampling: half of each batch drawn with
  probability proportional to :func:`~losslab.functional.variance_promotion_score`
  (refreshed every ``--vps-every`` steps from ``--group`` fresh rollouts of every prompt),
  half uniformly.

Reported: reward and mean completion length over training, held-out reward (every target,
``--group`` samples each, after training), the mean within-group reward variance, the share
of groups with zero variance (no learning signal at all), and the seed's claim measured
directly: the policy-gradient norm of the first (on-policy) update of each step against the
batch's mean within-group reward variance, a log-log scatter with its least-squares slope.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

from . import ExperimentError
from ._io import pyplot, save_figure, write_json

NAME = "policy-gradient"
HELP = "GRPO / Dr. GRPO / DAPO / CISPO on a digit-sum task; gradient norm vs reward variance; variance-aware sampling"
RUNS = ("grpo", "dr_grpo", "dapo", "cispo", "grpo+vas")
EOS = 10
VOCAB = 11


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {','.join(RUNS)}")
    p.add_argument("--steps", type=int, default=150, help="training steps (generations) per run (default 150)")
    p.add_argument("--prompts", type=int, default=16, help="prompts per step (default 16)")
    p.add_argument("--group", type=int, default=8, help="completions per prompt G (default 8)")
    p.add_argument("--length", type=int, default=4, help="most digits per completion (default 4)")
    p.add_argument("--max-target", type=int, default=27, help="targets are 0..max-target (default 27)")
    p.add_argument("--updates", type=int, default=2, help="optimizer steps per generation (default 2)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    p.add_argument("--beta", type=float, default=0.0, help="KL coefficient to the initial policy (default 0)")
    p.add_argument("--vps-every", type=int, default=10, help="steps between VPS refreshes (default 10)")
    p.add_argument("--vps-beta", type=float, default=0.0,
                   help="weight of the trajectory-diversity term of VPS (default 0: the authors' released config)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per run, 0..N-1 (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default="runs/policy-gradient", help="output folder")


# ----------------------------------------------------------------------------- policy
class _Policy(torch.nn.Module):
    def __init__(self, targets: int, length: int, dim: int = 64) -> None:
        super().__init__()
        self.target = torch.nn.Embedding(targets, dim)
        self.pos = torch.nn.Embedding(length, dim)
        self.sum = torch.nn.Embedding(9 * length + 1, dim)
        self.body = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(dim, dim), torch.nn.ReLU(),
                                        torch.nn.Linear(dim, dim))
        self.head = torch.nn.Parameter(torch.randn(VOCAB, dim) * dim ** -0.5)

    def hidden(self, target, pos, running):
        return self.body(self.target(target) + self.pos(pos) + self.sum(running))


def _sample(policy: _Policy, targets: torch.Tensor, length: int, gen: torch.Generator):
    """Completions of the targets: tokens (B, L), mask (B, L), running sums before each position, rewards."""
    b = targets.shape[0]
    tokens = torch.zeros(b, length, dtype=torch.long)
    mask = torch.zeros(b, length, dtype=torch.bool)
    running = torch.zeros(b, length, dtype=torch.long)
    total = torch.zeros(b, dtype=torch.long)
    alive = torch.ones(b, dtype=torch.bool)
    with torch.no_grad():
        for t in range(length):
            running[:, t] = total
            h = policy.hidden(targets, torch.full((b,), t), total)
            probs = torch.softmax(h @ policy.head.T, -1)
            tok = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            tokens[:, t] = torch.where(alive, tok, EOS)
            mask[:, t] = alive
            total = total + torch.where(alive & (tok != EOS), tok, 0)
            alive = alive & (tok != EOS)
    rewards = (total == targets).to(torch.float32)
    return tokens, mask, running, rewards


def _logps(policy: _Policy, targets, tokens, mask, running, length):
    from losslab.functional import linear_token_logprobs

    b = targets.shape[0]
    pos = torch.arange(length).expand(b, length)
    h = policy.hidden(targets[:, None].expand(b, length), pos, running)
    target = torch.where(mask, tokens, -100)
    return linear_token_logprobs(h, policy.head, target, return_entropy=True)


# ----------------------------------------------------------------------------- training
def _train(run: str, seed: int, args) -> dict:
    from losslab.functional import group_advantages, grpo_loss, variance_promotion_score

    loss_type = run.split("+")[0]
    vas = run.endswith("+vas")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(1000 + seed)
    n_targets = args.max_target + 1
    policy = _Policy(n_targets, args.length)
    ref = _Policy(n_targets, args.length)
    ref.load_state_dict(policy.state_dict())
    opt = torch.optim.Adam(policy.parameters(), lr=args.lr)
    all_targets = torch.arange(n_targets)
    vps = torch.ones(n_targets)
    eps_high = 5.0 if loss_type == "cispo" else None
    scale = "none" if loss_type == "dr_grpo" else "group"
    curve, lengths, variances, zero_share, grad_norms, entropies = [], [], [], [], [], []
    for step in range(args.steps):
        if vas and step % args.vps_every == 0:
            # refresh every prompt's score from G fresh rollouts (MMR1, Algorithm 1)
            rep = all_targets.repeat_interleave(args.group)
            tok, msk, _, rew = _sample(policy, rep, args.length, gen)
            vps = variance_promotion_score(rew, args.group, tok if args.vps_beta > 0 else None,
                                           completion_mask=msk, alpha=1.0, beta=args.vps_beta)
        if vas:
            n_w = args.prompts // 2
            weights = vps + 1e-6  # every prompt stays reachable
            chosen = torch.cat([torch.multinomial(weights, n_w, replacement=True, generator=gen),
                                torch.randint(0, n_targets, (args.prompts - n_w,), generator=gen)])
        else:
            chosen = torch.randint(0, n_targets, (args.prompts,), generator=gen)
        targets = chosen.repeat_interleave(args.group)
        tokens, mask, running, rewards = _sample(policy, targets, args.length, gen)
        adv = group_advantages(rewards, args.group, scale=scale)
        var = rewards.view(-1, args.group).var(1)
        with torch.no_grad():
            old = _logps(policy, targets, tokens, mask, running, args.length).logps
            ref_lp = _logps(ref, targets, tokens, mask, running, args.length).logps if args.beta > 0 else None
        for k in range(args.updates):
            out = _logps(policy, targets, tokens, mask, running, args.length)
            loss = grpo_loss(out.logps, old, adv, mask, ref_logps=ref_lp, beta=args.beta, epsilon_high=eps_high,
                             loss_type=loss_type, max_completion_length=args.length)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if k == 0:
                grads = [p.grad.norm() for p in policy.parameters() if p.grad is not None]
                grad_norms.append(float(torch.stack(grads).norm()) if grads else 0.0)
                entropies.append(float(out.entropy.detach().sum() / mask.sum().clamp_min(1)))
            opt.step()
        curve.append(float(rewards.mean()))
        lengths.append(float(mask.sum(1).float().mean()))
        variances.append(float(var.mean()))
        zero_share.append(float((var == 0).float().mean()))
    rep = all_targets.repeat_interleave(args.group)
    eval_reward = float(_sample(policy, rep, args.length, gen)[3].mean())
    return {"run": run, "seed": seed, "curve": curve, "length": lengths, "variance": variances,
            "zero_variance_share": zero_share, "grad_norm": grad_norms, "entropy": entropies,
            "eval_reward": eval_reward}


def _slope(xs, ys):
    """Least-squares slope and correlation of log y on log x over the points with x, y > 0."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pts) < 3:
        return float("nan"), float("nan")
    lx, ly = zip(*pts)
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    syy = sum((b - my) ** 2 for b in ly)
    sxy = sum((a - mx) * (b - my) for a, b in zip(lx, ly))
    if sxx == 0 or syy == 0:
        return float("nan"), float("nan")
    return sxy / sxx, sxy / math.sqrt(sxx * syy)


def run(args) -> int:
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    bad = [r for r in runs if r not in RUNS]
    if not runs or bad:
        raise ExperimentError(f"--runs must be a comma-separated subset of {','.join(RUNS)}, got {args.runs!r}")
    for name in ("steps", "prompts", "length", "updates", "vps_every", "seeds", "threads"):
        if getattr(args, name) < 1:
            raise ExperimentError(f"--{name.replace('_', '-')} must be >= 1")
    if args.group < 2:
        raise ExperimentError("--group must be >= 2 (a group-relative advantage needs two completions)")
    if args.max_target < 0 or args.max_target > 9 * args.length:
        raise ExperimentError(f"--max-target must be in [0, 9 * length] = [0, {9 * args.length}]")
    if not (args.lr > 0) or not (args.beta >= 0) or not (args.vps_beta >= 0):
        raise ExperimentError("--lr must be > 0, --beta and --vps-beta >= 0")
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        results = [_train(r, s, args) for r in runs for s in range(args.seeds)]
    finally:
        torch.set_num_threads(threads)
    tail = max(1, args.steps // 5)
    summary = []
    for r in runs:
        rs = [x for x in results if x["run"] == r]
        norms = [g for x in rs for g in x["grad_norm"]]
        vars_ = [v for x in rs for v in x["variance"]]
        slope, corr = _slope(vars_, norms)
        zero_steps = [g for x in rs for g, z in zip(x["grad_norm"], x["zero_variance_share"]) if z == 1.0]
        summary.append({
            "run": r,
            "final_reward": statistics.fmean(v for x in rs for v in x["curve"][-tail:]),
            "eval_reward": statistics.fmean(x["eval_reward"] for x in rs),
            "eval_reward_std": statistics.pstdev([x["eval_reward"] for x in rs]) if len(rs) > 1 else 0.0,
            "mean_length": statistics.fmean(v for x in rs for v in x["length"][-tail:]),
            "mean_group_variance": statistics.fmean(vars_),
            "zero_variance_share": statistics.fmean(v for x in rs for v in x["zero_variance_share"]),
            "loglog_slope": slope,
            "loglog_corr": corr,
            "grad_norm_all_zero_variance": max(zero_steps) if zero_steps else None,
        })
    out = Path(args.out)
    config = {k: getattr(args, k) for k in ("steps", "prompts", "group", "length", "max_target", "updates", "lr",
                                            "beta", "vps_every", "vps_beta", "seeds")}
    config.update(runs=runs, seconds=round(time.perf_counter() - start, 1))
    write_json(out / "results.json", {"config": config, "summary": summary, "runs": results})
    drew = _plot(out, runs, results, config)
    print(f"digit-sum task: targets 0..{args.max_target}, <= {args.length} digits, {args.prompts} prompts x "
          f"G={args.group}, {args.steps} steps, {args.updates} updates/step, {args.seeds} seed(s)")
    print(f"{'run':<10} {'reward(last 20%)':>16} {'held-out':>9} {'length':>7} {'group var':>10} "
          f"{'zero-var groups':>16} {'log-log slope':>14} {'corr':>6}")
    for s in summary:
        print(f"{s['run']:<10} {s['final_reward']:>16.3f} {s['eval_reward']:>9.3f} {s['mean_length']:>7.2f} "
              f"{s['mean_group_variance']:>10.4f} {s['zero_variance_share']:>16.3f} {s['loglog_slope']:>14.2f} "
              f"{s['loglog_corr']:>6.2f}")
    print("(log-log slope: least squares of log ||grad|| on log mean group reward variance, first update of each"
          " step; a step whose groups all have zero variance has gradient exactly 0)")
    figure = "and figures" if drew else "(no figures: matplotlib is not installed)"
    print(f"(results in {out}/results.json {figure}; {config['seconds']} s)")
    return 0


def _plot(out: Path, runs, results, config) -> bool:
    plt = pyplot()
    if plt is None:
        return False

    fig, axes = plt.subplots(1, 4, figsize=(18.0, 3.8))
    for i, r in enumerate(runs):
        rs = [x for x in results if x["run"] == r]
        color = f"C{i}"
        for key, ax in (("curve", axes[0]), ("length", axes[1]), ("variance", axes[2])):
            mean = [statistics.fmean(v) for v in zip(*(x[key] for x in rs))]
            ax.plot(mean, color=color, label=r)
        xs = [v for x in rs for v in x["variance"]]
        ys = [g for x in rs for g in x["grad_norm"]]
        pts = [(a, b) for a, b in zip(xs, ys) if a > 0 and b > 0]
        if pts:
            axes[3].scatter(*zip(*pts), s=6, alpha=0.5, color=color, label=r)
    for ax, title in zip(axes, ("reward (batch mean)", "mean completion length", "mean within-group reward variance",
                                "||policy gradient|| vs group reward variance")):
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for ax in axes[:3]:
        ax.set_xlabel("step")
    axes[3].set_xscale("log")
    axes[3].set_yscale("log")
    axes[3].set_xlabel("mean within-group reward variance")
    axes[0].legend()
    fig.suptitle(f"digit-sum task, G={config['group']}, {config['steps']} steps, {config['seeds']} seed(s)", y=1.03)
    save_figure(out / "policy_gradient.png", fig)
    plt.close(fig)
    return True
