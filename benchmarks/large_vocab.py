"""linear_cross_entropy vs the materialized logits, PyTorch's chunked path and the matmul floor.

    .venv/bin/python benchmarks/large_vocab.py            # N=4096, D=256, V in {32768, 131072, 262144}
    .venv/bin/python benchmarks/large_vocab.py --quick    # N=1024, V=32768 only, fewer repeats
    .venv/bin/python benchmarks/large_vocab.py --vocab 32768 --repeat 3
    .venv/bin/python benchmarks/large_vocab.py --bf16-memory   # bfloat16 weight: extra peak memory vs (V, D)

Forward + backward of the loss of ``hidden (N, D) @ weight (V, D).T`` with targets in
[0, V), gradients to both. Competitors, timed interleaved in one run (a load change on a
shared machine hits all alike):

* ``materialized``: ``F.cross_entropy(h @ w.T, t)`` (with options on: losslab's
  ``cross_entropy`` on the materialized logits, which has z-loss and softcap);
* ``torch_chunked``: PyTorch's ``F.linear_cross_entropy(..., options=LinearCrossEntropyOptions())``
  when this torch has it (it has no z-loss / softcap, so it is left out of those rows);
* ``ours``: ``losslab.functional.linear_cross_entropy``;
* ``floor``: the three matrix products of the same shapes (forward logits, grad of hidden,
  grad of weight) in the inputs' dtype, nothing else.

Weights: ``moderate`` = ``randn(V, D) / 16``; ``peaked`` = ``randn(V, D)`` (logits of
magnitude ~16: many softmax entries underflow to subnormal floats, which CPU arithmetic
handles ~10x slower). Memory: extra peak RSS of one forward+backward in a fresh interpreter
(``_timing.peak_rss_mib``). The targets of issue 5 are printed with the ratios.

``--bf16-memory``: the half-precision target (a bfloat16 weight must not be copied to
float32 nor get a float32 gradient: extra memory within the chunk buffers plus one ``(V, D)``
tensor in bfloat16, the gradient). For each (V, D) of ``--mem-configs``, forward+backward of
ours and of the materialized bfloat16 path, each once in a fresh interpreter: extra peak RSS
(VmHWM after the inputs exist), wall time of that one call, the weight's size, and ours
minus the weight's size (what is left for buffers and dh). Run it with ``PYTHONPATH`` set to
another checkout's ``src`` to measure that version.

cut-cross-entropy (Apple's CCE): its wheel requires triton on Linux; triton is not
importable on this CPU machine, so it is reported as unavailable (its ``impl="torch_compile"``
path is ``torch.compile`` of the materialized logits plus ``F.cross_entropy``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
import torch.nn.functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved_medians, machine, peak_rss_mib, print_table  # noqa: E402

from losslab.functional import cross_entropy, linear_cross_entropy  # noqa: E402

OPTIONS = dict(z_loss=1e-4, label_smoothing=0.1, softcap=30.0)
HAS_TORCH_LCE = hasattr(TF, "linear_cross_entropy") and hasattr(torch.nn, "LinearCrossEntropyOptions")


def make(n, d, v, dtype, peaked, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g).to(dtype).requires_grad_(True)
    w = (torch.randn(v, d, generator=g) / (1.0 if peaked else 16.0)).to(dtype).requires_grad_(True)
    t = torch.randint(0, v, (n,), generator=g)
    return h, w, t


def step_fns(h, w, t, options):
    def run(loss_fn):
        def step():
            h.grad = w.grad = None
            loss_fn().backward()
        return step

    fns = {}
    if options:
        fns["materialized"] = run(lambda: cross_entropy(h @ w.T, t, **OPTIONS))
    else:
        fns["materialized"] = run(lambda: TF.cross_entropy(h @ w.T, t))
    if HAS_TORCH_LCE and not options:
        opts = torch.nn.LinearCrossEntropyOptions()
        fns["torch_chunked"] = run(lambda: TF.linear_cross_entropy(h, w, t, options=opts))
    kw = OPTIONS if options else {}
    fns["ours"] = run(lambda: linear_cross_entropy(h, w, t, **kw))

    # The floor runs in the inputs' dtype: bfloat16 inputs have their products in bfloat16
    # (the materialized path's and ours; this CPU has bfloat16 units).
    hd, wd = h.detach(), w.detach()

    def floor():
        x = hd @ wd.T
        x @ wd
        x.T @ hd

    fns["floor"] = floor
    return fns


SETUP = """
import sys; sys.path.insert(0, {bench!r})
import torch, torch.nn.functional as TF
from large_vocab import make, OPTIONS
from losslab.functional import cross_entropy, linear_cross_entropy
h, w, t = make({n}, {d}, {v}, torch.{dtype}, {peaked})
"""
CALLS = {  # the floor in the inputs' dtype as in step_fns
    "materialized": "TF.cross_entropy(h @ w.T, t).backward()",
    "materialized+opts": "cross_entropy(h @ w.T, t, **OPTIONS).backward()",
    "torch_chunked": "TF.linear_cross_entropy(h, w, t, options=torch.nn.LinearCrossEntropyOptions()).backward()",
    "ours": "linear_cross_entropy(h, w, t).backward()",
    "ours+opts": "linear_cross_entropy(h, w, t, **OPTIONS).backward()",
    "floor": "hf, wf = h.detach(), w.detach(); x = hf @ wf.T; x @ wf; x.T @ hf",
}


def mem_available_mib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


BF16_CALL = textwrap.dedent("""
    import json, sys, time, gc
    import torch
    import torch.nn.functional as TF
    torch.set_num_threads({threads})
    g = torch.Generator().manual_seed(0)
    h = torch.randn({n}, {d}, generator=g).bfloat16().requires_grad_(True)
    w = (torch.randn({v}, {d}, generator=g) / 16).bfloat16().requires_grad_(True)
    t = torch.randint(0, {v}, ({n},), generator=g)
    from losslab.functional import linear_cross_entropy
    gc.collect()
    def rss(key):
        with open('/proc/self/status') as f:
            return next(int(l.split()[1]) for l in f if l.startswith(key)) / 1024
    with open('/proc/self/clear_refs', 'w') as f:  # reset the high-water mark after setup
        f.write('5')
    before = rss('VmRSS:')
    t0 = time.perf_counter()
    if {which!r} == "ours":
        linear_cross_entropy(h, w, t).backward()
    else:
        TF.cross_entropy(h @ w.T, t).backward()
    seconds = time.perf_counter() - t0
    assert w.grad.dtype == torch.bfloat16
    print(json.dumps({{"extra": rss('VmHWM:') - before, "seconds": seconds}}))
""")


def bf16_memory(n: int, configs: list[tuple[int, int]]) -> int:
    import losslab

    print(f"# bf16 memory: N={n} tokens, forward+backward, one call per fresh interpreter; {machine()}")
    print(f"# losslab from {Path(losslab.__file__).parent}")
    rows = []
    for v, d in configs:
        weight = v * d * 2 / 2**20
        for which in ("ours", "materialized"):
            code = BF16_CALL.format(threads=torch.get_num_threads(), n=n, d=d, v=v, which=which)
            p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
            res = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {}
            row = {"V": v, "D": d, "method": which, "weight_MiB": weight, "extra_MiB": res.get("extra"),
                   "seconds": res.get("seconds")}
            if which == "ours" and row["extra_MiB"] is not None:
                row["extra_minus_weight_MiB"] = row["extra_MiB"] - weight
            rows.append(row)
            print_table([row], ["V", "D", "method", "weight_MiB", "extra_MiB", "extra_minus_weight_MiB", "seconds"])
            sys.stdout.flush()
    print()
    print_table(rows, ["V", "D", "method", "weight_MiB", "extra_MiB", "extra_minus_weight_MiB", "seconds"])
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=1024, V=32768, fewer repeats and rows")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--vocab", type=int, nargs="*", default=None)
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    ap.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"],
                    help="rows of these input dtypes only (default both; bfloat16 runs at the first vocabulary)")
    ap.add_argument("--bf16-memory", action="store_true",
                    help="only the bfloat16 memory mode: extra peak memory of ours and of the materialized path")
    ap.add_argument("--mem-configs", nargs="*", default=["32768x1024", "131072x1024", "131072x4096"],
                    help="VxD shapes of --bf16-memory (default 32768x1024 131072x1024 131072x4096)")
    args = ap.parse_args(argv)
    if args.bf16_memory:
        configs = [tuple(int(x) for x in c.lower().split("x")) for c in args.mem_configs]
        return bf16_memory(args.n or 1024, configs)
    n = args.n or (1024 if args.quick else 4096)
    vocabs = args.vocab or ([32768] if args.quick else [32768, 131072, 262144])
    repeat = args.repeat or (3 if args.quick else 5)
    print(f"# large_vocab benchmark: N={n}, D={args.d}, forward+backward; {machine()}")
    print(f"# torch F.linear_cross_entropy: {'available (chunked options path)' if HAS_TORCH_LCE else 'absent'}")
    has_triton = importlib.util.find_spec("triton") is not None
    has_cce = importlib.util.find_spec("cut_cross_entropy") is not None
    print(f"# cut-cross-entropy: {'installed' if has_cce else 'not installed'}; triton importable: {has_triton} "
          "-> CCE not compared (its wheel needs triton on Linux; no triton on this CPU machine)")

    configs = []  # (V, dtype, peaked, options)
    for v in vocabs:
        configs.append((v, "float32", False, False))
        if v == vocabs[0]:
            configs += [(v, "float32", True, False), (v, "float32", False, True), (v, "bfloat16", False, False)]
    configs = [c for c in configs if c[1] in args.dtypes]
    rows = []
    bench_dir = str(Path(__file__).resolve().parent)
    for v, dtype, peaked, options in configs:
        label = f"V={v} {dtype} {'peaked' if peaked else 'moderate'}{' +zloss+smooth+cap' if options else ''}"
        n_row = n
        if dtype == "bfloat16" and not args.quick:
            # bfloat16 matmuls on this CPU take ~50 s per step for the materialized path at
            # N=1024 already: the bfloat16 row runs at N=1024.
            n_row = min(n, 1024)
            label += f" (N={n_row})"
        h, w, t = make(n_row, args.d, v, getattr(torch, dtype), peaked)
        fns = step_fns(h, w, t, options)
        naive_gib = 3 * n_row * v * 4 / 2**30  # logits, their log-softmax and gradient in float32
        if naive_gib * 1024 > 0.5 * mem_available_mib():
            print(f"{label}: materialized path skipped: it needs ~{naive_gib:.1f} GiB, more than half the free memory")
            fns.pop("materialized")
            fns.pop("torch_chunked", None)  # its fallback and workspace are not the point here
        if peaked and "materialized" in fns and args.quick:
            fns.pop("materialized")  # ~10x slower with subnormals; the full run measures it
        print(f"{label}: timing {', '.join(fns)} ...", flush=True)
        med = interleaved_medians(fns, repeat=1 if dtype == "bfloat16" else repeat, warmup=1,
                                  max_seconds=60 if args.quick else 240, min_repeat=2)
        del h, w, t, fns
        for k, sec in med.items():
            row = {"config": label, "method": k, "seconds": sec}
            if not args.no_memory and k != "floor":
                key = k + ("+opts" if options and k in ("materialized", "ours") else "")
                setup = SETUP.format(bench=bench_dir, n=n_row, d=args.d, v=v, dtype=dtype, peaked=peaked)
                row["extra_MiB"] = peak_rss_mib(setup, CALLS[key])
            rows.append(row)
        base = {r["method"]: r for r in rows if r["config"] == label}
        for r in rows:
            if r["config"] != label:
                continue
            if "floor" in base:
                r["x_floor"] = r["seconds"] / base["floor"]["seconds"]
            if "materialized" in base:
                r["x_materialized"] = r["seconds"] / base["materialized"]["seconds"]
                if r.get("extra_MiB") is not None and base["materialized"].get("extra_MiB"):
                    r["mem_vs_materialized"] = r["extra_MiB"] / base["materialized"]["extra_MiB"]
        print_table([r for r in rows if r["config"] == label],
                    ["method", "seconds", "x_materialized", "x_floor", "extra_MiB", "mem_vs_materialized"])
        print(flush=True)

    print("# summary (targets of issue 5)")
    ours = {r["config"]: r for r in rows if r["method"] == "ours"}
    v0 = vocabs[0]
    moderate, peaked = ours.get(f"V={v0} float32 moderate"), ours.get(f"V={v0} float32 peaked")
    for label, r in ours.items():
        parts = [label]
        if r.get("x_materialized") is not None:
            parts.append(f"time/materialized {r['x_materialized']:.2f} (target <= 1.0)")
        if r.get("x_floor") is not None:
            parts.append(f"time/floor {r['x_floor']:.2f} (target <= 1.5)")
        if r.get("mem_vs_materialized") is not None:
            parts.append(f"memory/materialized {r['mem_vs_materialized']:.3f} (target <= 0.08)")
        print("  " + "; ".join(parts))
    if moderate and peaked:
        print(f"  peaked/moderate time of ours at V={v0}: {peaked['seconds'] / moderate['seconds']:.2f} (target <= 1.2)")
    opts = ours.get(f"V={v0} float32 moderate +zloss+smooth+cap")
    if moderate and opts:
        print(f"  options on / off time of ours: {opts['seconds'] / moderate['seconds']:.2f} (target <= 1.10); "
              f"memory {opts.get('extra_MiB')} vs {moderate.get('extra_MiB')} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
