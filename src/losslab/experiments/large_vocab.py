"""``losslab run large-vocab``: a tiny word-level language model trained with and without the logit matrix.

The text is public-domain English prose shipped with losslab
(``losslab/data/public_domain_prose.txt``: the Declaration of Independence, two addresses
of Lincoln, the first chapter of Pride and Prejudice). A word-level model — an embedding
of the previous ``--context`` words, one tanh layer, an output matrix over the whole
vocabulary — is trained twice from the same initialisation and the same batches: once with
:func:`losslab.functional.linear_cross_entropy` (chunked, the logits never materialized) and
once with :func:`losslab.functional.cross_entropy` on the materialized logits. The two loss
curves coincide to float32 round-off. The table gives the time per step of each run and the
extra peak memory (RSS of a fresh interpreter) of one loss forward+backward at
``--memory-tokens`` tokens with this vocabulary. Outputs: ``results.json``,
``loss_curves.png``.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import torch

from . import ExperimentError
from ._io import pyplot, save_figure, write_json

NAME = "large-vocab"
HELP = "tiny word-level LM trained with linear_cross_entropy and with materialized logits: identical curves, memory/time"
TEXT = "public_domain_prose.txt"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per run (default 300)")
    p.add_argument("--batch", type=int, default=256, help="tokens per batch (default 256)")
    p.add_argument("--context", type=int, default=4, help="previous words seen by the model (default 4)")
    p.add_argument("--dim", type=int, default=64, help="hidden size (default 64)")
    p.add_argument("--chunk-size", type=int, default=64, help="tokens per chunk of linear_cross_entropy (default 64)")
    p.add_argument("--memory-tokens", type=int, default=4096,
                   help="tokens in the peak-memory measurement (default 4096; 0 skips it)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads while training (default 1: the model is tiny, more threads only add overhead)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/large-vocab", help="output folder")


def load_tokens() -> tuple[list[str], list[str]]:
    """Words and punctuation of the shipped text (comment lines dropped), lower-cased, and the vocabulary."""
    raw = resources.files("losslab.data").joinpath(TEXT).read_text(encoding="utf-8")
    body = "\n".join(line for line in raw.splitlines() if not line.startswith("#"))
    words = re.findall(r"[a-z]+(?:'[a-z]+)?|[^\sa-z]", body.lower())
    return words, sorted(set(words))


class TinyLM(torch.nn.Module):
    def __init__(self, vocab: int, context: int, dim: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.mix = torch.nn.Linear(context * dim, dim)
        self.out = torch.nn.Linear(dim, vocab)  # its weight (V, D) and bias go to the loss

    def hidden(self, ctx: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mix(self.embed(ctx).flatten(1)))


def _train(kind, ids, n_train, vocab, args, init_state, batches):
    from losslab.functional import cross_entropy, linear_cross_entropy

    torch.manual_seed(args.seed)
    model = TinyLM(vocab, args.context, args.dim)
    model.load_state_dict(init_state)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    offsets = torch.arange(-args.context, 0)
    curve = []
    start = time.perf_counter()
    for pos in batches:
        ctx, tgt = ids[pos.unsqueeze(1) + offsets], ids[pos]
        h = model.hidden(ctx)
        if kind == "linear_cross_entropy":
            loss = linear_cross_entropy(h, model.out.weight, tgt, bias=model.out.bias, chunk_size=args.chunk_size)
        else:
            loss = cross_entropy(model.out(h), tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.append(loss.item())
    seconds = time.perf_counter() - start
    with torch.no_grad():  # held-out loss on the last 10% of the text
        pos = torch.arange(n_train, len(ids))
        val = float(cross_entropy(model.out(model.hidden(ids[pos.unsqueeze(1) + offsets])), ids[pos]))
    return curve, seconds, val, model


_MEM = """
import json, sys, torch
from losslab.functional import cross_entropy, linear_cross_entropy
torch.manual_seed(0)
n, d, v, chunk = {n}, {d}, {v}, {chunk}
h = torch.randn(n, d, requires_grad=True); w = (torch.randn(v, d) / 8).requires_grad_(True)
b = torch.zeros(v, requires_grad=True); t = torch.randint(0, v, (n,))
import gc; gc.collect()
def status(key):
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key)) / 1024
with open('/proc/self/clear_refs', 'w') as f:  # reset this process's peak (VmHWM) after setup
    f.write('5')
before = status('VmRSS:')
if sys.argv[1] == "linear_cross_entropy":
    linear_cross_entropy(h, w, t, bias=b, chunk_size=chunk).backward()
else:
    cross_entropy(torch.addmm(b, h, w.T), t).backward()
print(json.dumps(status('VmHWM:') - before))
"""


def _peak_memory(n: int, d: int, v: int, chunk: int) -> dict:
    code = _MEM.format(n=n, d=d, v=v, chunk=chunk)
    procs = {k: subprocess.Popen([sys.executable, "-c", code, k], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in ("linear_cross_entropy", "materialized")}
    out = {}
    for k, p in procs.items():
        stdout, _ = p.communicate(timeout=300)
        out[k] = json.loads(stdout.strip().splitlines()[-1]) if p.returncode == 0 else None
    return out


def run(args) -> int:
    for name in ("steps", "batch", "context", "dim", "chunk_size", "threads"):
        if getattr(args, name) < 1:
            raise ExperimentError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.memory_tokens < 0:
        raise ExperimentError(f"--memory-tokens must be >= 0, got {args.memory_tokens}")
    words, vocab_list = load_tokens()
    index = {w: i for i, w in enumerate(vocab_list)}
    ids = torch.tensor([index[w] for w in words])
    vocab = len(vocab_list)
    n_train = int(0.9 * len(ids))
    if n_train <= args.context + 1:
        raise ExperimentError(f"--context {args.context} is too long for the text")
    gen = torch.Generator().manual_seed(args.seed)
    batches = [torch.randint(args.context, n_train, (args.batch,), generator=gen) for _ in range(args.steps)]
    torch.manual_seed(args.seed)
    init_state = {k: v.clone() for k, v in TinyLM(vocab, args.context, args.dim).state_dict().items()}

    runs = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        trained = {kind: _train(kind, ids, n_train, vocab, args, init_state, batches)
                   for kind in ("linear_cross_entropy", "materialized")}
    finally:
        torch.set_num_threads(threads)
    for kind, (curve, seconds, val, model) in trained.items():
        runs[kind] = {"curve": curve, "seconds": seconds, "ms_per_step": 1000 * seconds / args.steps,
                      "final_train_loss": sum(curve[-10:]) / len(curve[-10:]), "val_loss": val,
                      "params": [p.detach().clone() for p in model.parameters()]}
    a, b = runs["linear_cross_entropy"], runs["materialized"]
    max_diff = max(abs(x - y) for x, y in zip(a["curve"], b["curve"]))
    param_diff = max(float((p - q).abs().max()) for p, q in zip(a.pop("params"), b.pop("params")))
    memory = _peak_memory(args.memory_tokens, args.dim, vocab, args.chunk_size) if args.memory_tokens else {}

    out = Path(args.out)
    config = {k: getattr(args, k) for k in ("steps", "batch", "context", "dim", "chunk_size", "memory_tokens", "threads",
                                            "seed")}
    config.update(vocab=vocab, tokens=len(ids), train_tokens=n_train, text=TEXT)
    result = {"config": config, "runs": runs, "max_abs_loss_difference": max_diff,
              "max_abs_parameter_difference": param_diff, "extra_peak_MiB": memory}
    write_json(out / "results.json", result)
    drew = _plot(out, runs, config, max_diff)

    print(f"word-level LM on {TEXT}: {len(ids)} tokens, vocabulary {vocab}, context {args.context}, "
          f"dim {args.dim}, {args.steps} steps of {args.batch} tokens, same init and batches")
    print(f"{'loss':<22} {'ms/step':>8} {'train loss':>11} {'val loss':>9} {'extra MiB @' + str(args.memory_tokens):>16}")
    for kind, r in runs.items():
        mem = memory.get(kind)
        mem_s = "—" if mem is None else f"{mem:.1f}"
        print(f"{kind:<22} {r['ms_per_step']:>8.2f} {r['final_train_loss']:>11.4f} {r['val_loss']:>9.4f} {mem_s:>16}")
    print(f"max |loss difference| over the curve: {max_diff:.2e}; max |parameter difference| at the end: {param_diff:.2e}")
    figure = f"and {out / 'loss_curves.png'}" if drew else "(no figure: matplotlib is not installed)"
    print(f"wrote {out / 'results.json'} {figure}")
    return 0


def _plot(out: Path, runs: dict, config: dict, max_diff: float) -> bool:
    plt = pyplot()
    if plt is None:  # figures are optional (matplotlib is in the cli extra)
        return False

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    styles = {"linear_cross_entropy": dict(lw=2.5, alpha=0.6), "materialized": dict(lw=1.0, ls="--", color="k")}
    for kind, r in runs.items():
        ax.plot(range(1, len(r["curve"]) + 1), r["curve"], label=kind, **styles[kind])
    ax.set_xlabel("step")
    ax.set_ylabel("training cross-entropy (nats)")
    ax.set_title(f"word LM, V={config['vocab']}: max |difference| {max_diff:.1e}")
    ax.legend()
    save_figure(out / "loss_curves.png", fig)
    plt.close(fig)
    return True
