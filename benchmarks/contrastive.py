"""nt_xent / info_nce / supcon_loss vs the plain torch formulation and pytorch-metric-learning.

    .venv/bin/python benchmarks/contrastive.py            # B in {1024, 2048, 8192}, D=128
    .venv/bin/python benchmarks/contrastive.py --quick    # B in {1024, 2048}, fewer repeats

Forward + backward in float32. "plain" is the formulation most training scripts write
(normalize, one B x B similarity matrix, mask the diagonal, F.cross_entropy / a masked
log-softmax), written out below. Time: median of repeated runs in this process. Memory:
extra peak RSS of one forward+backward in a fresh subprocess (high-water mark reset after setup).
pytorch-metric-learning (PML) builds O(B^3) intermediates for NT-Xent (about 34 GB at
B=1024), so it runs at the small sizes ``--pml-sizes`` only, in a subprocess whose address
space is capped at ``--pml-limit-gib``: a size that does not fit is reported as failed.
Targets (issue #4): time ratio ours/plain <= 1, memory ratio <= 1.2, B=8192 within 4 GiB.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
import torch.nn.functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine, median_time, print_table  # noqa: E402

TAU = 0.1


# ----------------------------------------------------------------------------- plain torch
def plain_nt_xent(z1, z2, tau=TAU):
    b = z1.shape[0]
    z = TF.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / tau
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    return TF.cross_entropy(sim, target)


def plain_info_nce(q, k, tau=TAU):
    logits = TF.normalize(q, dim=1) @ TF.normalize(k, dim=1).T / tau
    target = torch.arange(q.shape[0])
    return 0.5 * (TF.cross_entropy(logits, target) + TF.cross_entropy(logits.T, target))


def plain_supcon(e, y, tau=TAU):
    n = e.shape[0]
    e = TF.normalize(e, dim=1)
    eye = torch.eye(n, dtype=torch.bool)
    sim = (e @ e.T / tau).masked_fill(eye, float("-inf"))
    log_prob = torch.log_softmax(sim, dim=1)
    pos = (y[:, None] == y[None, :]) & ~eye
    n_pos = pos.sum(1)
    per_anchor = -torch.where(pos, log_prob, torch.zeros(())).sum(1) / n_pos.clamp_min(1)
    keep = n_pos > 0
    return per_anchor[keep].mean()


PLAIN = {"nt_xent": "plain_nt_xent", "info_nce": "plain_info_nce", "supcon_loss": "plain_supcon"}
CALLS = {  # (ours, plain, PML) as code run on tensors a, b (D columns) and labels y
    "nt_xent": ("nt_xent(a, b, temperature=TAU)", "plain_nt_xent(a, b)",
                "pml.SelfSupervisedLoss(pml.NTXentLoss(temperature=TAU), symmetric=True)(a, b)"),
    "info_nce": ("info_nce(a, b, temperature=TAU)", "plain_info_nce(a, b)", None),
    "supcon_loss": ("supcon_loss(a, y, temperature=TAU)", "plain_supcon(a, y)",
                    "pml.SupConLoss(temperature=TAU)(a, y)"),
}


def inputs(b, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(b, d, generator=g)
    return a, a + 0.3 * torch.randn(b, d, generator=g), torch.randint(0, max(2, b // 8), (b,), generator=g)


def step(expr, a, b, y, env):
    def run():
        aa, bb = a.detach().requires_grad_(True), b.detach().requires_grad_(True)
        eval(expr, env, {"a": aa, "b": bb, "y": y}).backward()

    return run


SETUP = """
import sys
sys.path.insert(0, {here!r})
from contrastive import *
import pytorch_metric_learning.losses as pml
a, b, y = inputs({b}, {d})
a.requires_grad_(True); b.requires_grad_(True)
"""


_MEMORY = """
import gc, json
{setup}
gc.collect()
def _status(key):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
with open('/proc/self/clear_refs', 'w') as f:  # reset the high-water mark (VmHWM) after setup
    f.write('5')
before = _status('VmRSS:')
({call}).backward()
print(json.dumps({{"extra": _status('VmHWM:') - before}}))
"""


def memory(expr, b, d, limit_gib=None):
    """Extra peak RSS (MiB) of one forward+backward in a fresh interpreter, None if it fails.

    Like ``_timing.peak_rss_mib`` but the high-water mark is reset after the setup (imports
    of PML/losslab peak above the resting RSS and would otherwise hide small calls).
    """
    setup = SETUP.format(here=str(Path(__file__).resolve().parent), b=b, d=d)
    if limit_gib is not None:
        setup = f"import resource\nresource.setrlimit(resource.RLIMIT_AS, ({limit_gib} << 30, {limit_gib} << 30))\n" + setup
    code = f"import torch\ntorch.set_num_threads({torch.get_num_threads()})\n" + _MEMORY.format(setup=setup, call=expr)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["extra"]


def pml_error(expr, b, d, limit_gib):
    """The last line of the error a PML call raises under the address-space cap (for the printed note)."""
    code = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, ({limit_gib} << 30, {limit_gib} << 30))
    """) + SETUP.format(here=str(Path(__file__).resolve().parent), b=b, d=d) + f"({expr}).backward()\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    text = out.stderr or ""
    m = re.search(r"tried to allocate (\d+) bytes", text)
    if m:
        return f"allocation of {int(m.group(1)) / 1e9:.1f} GB refused"
    lines = text.strip().splitlines()
    return lines[-1][:120] if lines else f"exit status {out.returncode}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="B in {1024, 2048}, 3 repeats")
    ap.add_argument("--sizes", type=int, nargs="*", default=None)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--objectives", nargs="*", default=list(CALLS), choices=list(CALLS))
    ap.add_argument("--pml-sizes", type=int, nargs="*", default=[256, 512, 1024])
    ap.add_argument("--pml-limit-gib", type=int, default=12)
    ap.add_argument("--no-memory", action="store_true", help="skip the subprocess memory measurements")
    args = ap.parse_args()
    sizes = args.sizes or ([1024, 2048] if args.quick else [1024, 2048, 8192])
    repeat = 3 if args.quick else args.repeat
    print(f"# contrastive objectives, forward+backward, float32, D={args.dim}, tau={TAU}; {machine()}")
    import pytorch_metric_learning.losses as pml

    env = {**globals(), "pml": pml}
    rows = []
    for name in args.objectives:
        ours, plain, _ = CALLS[name]
        for b in sizes:
            a, bb, y = inputs(b, args.dim)
            reps = repeat if b <= 2048 else 3
            t_plain = median_time(step(plain, a, bb, y, env), warmup=1, repeat=reps)
            t_ours = median_time(step(ours, a, bb, y, env), warmup=1, repeat=reps)
            row = {"objective": name, "B": b, "plain ms": 1e3 * t_plain, "losslab ms": 1e3 * t_ours,
                   "time ratio": t_ours / t_plain}
            if not args.no_memory:
                m_plain, m_ours = memory(plain, b, args.dim), memory(ours, b, args.dim)
                row.update({"plain MiB": m_plain, "losslab MiB": m_ours,
                            "mem ratio": m_ours / m_plain if m_plain and m_ours else None})
            rows.append(row)
            print(f"{name} B={b}: " + ", ".join(f"{k}={v:.3g}" for k, v in row.items() if isinstance(v, float)), flush=True)
    print()
    print_table(rows, ["objective", "B", "plain ms", "losslab ms", "time ratio", "plain MiB", "losslab MiB", "mem ratio"])

    print(f"\n# vs pytorch-metric-learning (address space capped at {args.pml_limit_gib} GiB)")
    prow = []
    for name in args.objectives:
        ours, _, peer = CALLS[name]
        if peer is None:
            continue
        for b in args.pml_sizes:
            a, bb, y = inputs(b, args.dim)
            m_peer = None if args.no_memory else memory(peer, b, args.dim, args.pml_limit_gib)
            row = {"objective": name, "B": b}
            if m_peer is None and not args.no_memory:
                row["PML"] = "failed: " + pml_error(peer, b, args.dim, args.pml_limit_gib)
                prow.append(row)
                print(f"{name} B={b}: PML {row['PML']}", flush=True)
                continue
            t_peer = median_time(step(peer, a, bb, y, env), warmup=1, repeat=3)
            t_ours = median_time(step(ours, a, bb, y, env), warmup=1, repeat=3)
            row.update({"PML ms": 1e3 * t_peer, "losslab ms": 1e3 * t_ours, "time ratio": t_ours / t_peer})
            if not args.no_memory:
                m_ours = memory(ours, b, args.dim)
                row.update({"PML MiB": m_peer, "losslab MiB": m_ours, "mem ratio": m_ours / m_peer if m_peer else None})
            prow.append(row)
            print(f"{name} B={b}: " + ", ".join(f"{k}={v:.3g}" for k, v in row.items() if isinstance(v, float)), flush=True)
    print()
    print_table(prow, ["objective", "B", "PML ms", "losslab ms", "time ratio", "PML MiB", "losslab MiB", "mem ratio", "PML"])


if __name__ == "__main__":
    main()
