"""Validate the latency model (`autoprune.latency_model.LatencyTable`): predicted against measured end-to-end latency.

    .venv/bin/python benchmarks/bench_latency_model.py                          # demo model and yolov8n at 320
    .venv/bin/python benchmarks/bench_latency_model.py --models demo --backends onnxruntime --candidates 10
    .venv/bin/python benchmarks/bench_latency_model.py --models demo --backends onnxruntime --swaps 3,5 16,19

For each model, `--candidates` genomes of the `fine` space (uniform keeps, and random genomes fitted to a GFLOPs
target drawn between 20% and 100% of the model's), the same for every backend. For each backend (1 thread): the
table is built (or read from `--table`), every candidate is pruned, measured end to end (the minimum over a timing
run, as the table's entries are: the CPU is shared, and load only ever adds time) and predicted. Prints the
command, the machine, one row per candidate and one summary row per model and backend (mean absolute percentage
error, Kendall tau), ready for docs/BENCHMARKS.md. Nothing is asserted.

With `--swaps SITES...` (comma lists of swap site ids, `autoprune groups` lists them) the candidates are swapped
ones instead: each of dws, group4 and factor on each list of sites, at full widths and at the `fine` space's uniform
0.5, and the two no-swap references (full, uniform 0.5); the table measures the replacement layers of those swaps.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import header, load  # noqa: E402


def kendall_tau(x, y) -> float:
    """Kendall's tau-b (scipy's when installed)."""
    try:
        from scipy.stats import kendalltau

        return float(kendalltau(x, y).statistic)
    except ImportError:
        n, conc, disc, tx, ty = len(x), 0, 0, 0, 0
        for i in range(n):
            for j in range(i + 1, n):
                a, b = (x[i] > x[j]) - (x[i] < x[j]), (y[i] > y[j]) - (y[i] < y[j])
                if a == 0 and b == 0:
                    continue
                if a == 0:
                    tx += 1
                elif b == 0:
                    ty += 1
                elif a == b:
                    conc += 1
                else:
                    disc += 1
        return (conc - disc) / math.sqrt((conc + disc + tx) * (conc + disc + ty))


def candidates(space, base_gflops: float, imgsz: int, n: int, seed: int = 0) -> list[tuple[str, dict]]:
    """Uniform keeps (a third of them) and random genomes fitted to GFLOPs targets in [20%, 100%]."""
    import numpy as np

    from autoprune.budget import fit, gflops_budget

    rng = np.random.default_rng(seed)
    n_uniform = max(2, n // 3)
    out = [(f"uniform {r:.2f}", space.uniform(r)) for r in np.linspace(0.25, 1.0, n_uniform)]
    while len(out) < n:
        share = float(rng.uniform(0.2, 1.0))
        genome = fit(space, space.random(rng), gflops_budget(space, share * base_gflops, imgsz, base_gflops=base_gflops))
        out.append((f"random {share:.2f}", genome))
    return out


def swap_candidates(space, sites: list[str], kinds=("dws", "group4", "factor")) -> list[tuple[str, dict]]:
    """(label, kept counts with swap entries): each kind on each comma list of `sites`, at full widths and at the
    space's uniform 0.5, after the two references without swaps."""
    from autoprune.swap import KINDS, swap_key

    out = []
    for ratio in (1.0, 0.5):
        widths = space.counts(space.uniform(ratio))
        out.append((f"widths {ratio:g}, no swap", widths))
        for group in sites:
            for kind in kinds:
                swaps = {swap_key(sid): KINDS.index(kind) for sid in group.split(",")}
                out.append((f"widths {ratio:g}, {kind} on {group}", {**widths, **swaps}))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["demo", "yolov8n.yaml"])
    p.add_argument("--backends", nargs="+", default=["onnxruntime", "openvino"])
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--candidates", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--table", default="runs/bench_latency_model/lut.json")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every candidate this many times, round robin, and keep the minimum")
    p.add_argument("--swaps", nargs="+", default=None, metavar="SITES",
                   help="swapped candidates instead: dws, group4 and factor on each comma list of swap site ids")
    args = p.parse_args()
    header()

    from autoprune.candidate import order_of
    from autoprune.channels import analyze
    from autoprune.cost import count_gflops
    from autoprune.latency_model import LatencyTable, measure_model_ms
    from autoprune.demo import demo_model_path
    from autoprune.models import load_model
    from autoprune.pruner import channel_scores, prune_to_counts
    from autoprune.space import load_space
    from autoprune.swap import split_counts, swap_convs

    summary = []
    for name in args.models:
        model = load_model(str(demo_model_path()) if name == "demo" else name).model
        graph = analyze(model, imgsz=args.imgsz)
        space = load_space("fine", graph, model)
        base = count_gflops(model, args.imgsz)
        ranking = order_of(channel_scores(model, graph, "l1"))
        if args.swaps:
            cands = swap_candidates(space, args.swaps)
        else:
            cands = [(label, space.counts(g)) for label, g in candidates(space, base, args.imgsz, args.candidates)]
        kinds: dict[str, set] = {}
        for _, counts in cands:
            for sid, kind in split_counts(counts)[1].items():
                kinds.setdefault(sid, set()).add(kind)
        for backend in args.backends:
            t0 = time.perf_counter()
            table = LatencyTable(model, graph, imgsz=args.imgsz, backend=backend, threads=args.threads,
                                 path=args.table, round_to=space.round_to, min_channels=space.min_channels,
                                 swaps={sid: sorted(k) for sid, k in kinds.items()}).build()
            print(f"## {name} at {args.imgsz}, {backend}, {args.threads} thread(s): table of {len(table.sites)} convs, "
                  f"{table.measured} entries measured now in {time.perf_counter() - t0:.0f} s, rest "
                  f"{table.rest_ms:.2f} ms; {load()}")
            models, shares = [], []
            for label, counts in cands:
                widths, swaps = split_counts(counts)
                pruned = prune_to_counts(model, widths, graph=graph, ranking=ranking)
                if swaps:  # fitted on the weights: the latency does not depend on the values
                    pruned = swap_convs(pruned, swaps, inplace=True)[0]
                models.append(pruned)
                shares.append(count_gflops(pruned, args.imgsz) / base)
            meas = [math.inf] * len(cands)
            for _ in range(args.rounds):  # round robin: a burst of load spoils one round of a candidate, not all
                for i, pruned in enumerate(models):
                    ms = measure_model_ms(pruned, imgsz=args.imgsz, backend=backend, threads=args.threads)
                    meas[i] = min(meas[i], ms)
            pred = [table.predict_min(counts) for _, counts in cands]  # minima, as measured here
            refs = {}  # the candidate without swaps at the same widths: what a swap's effect is measured against
            for i, (_, counts) in enumerate(cands):
                refs.setdefault(json.dumps(split_counts(counts)[0], sort_keys=True), i)
            print("| candidate | GFLOPs share | predicted ms | measured ms | error "
                  "| swap effect predicted | measured |")
            print("|---|---:|---:|---:|---:|---:|---:|")
            effects = []
            for i, (label, counts) in enumerate(cands):
                q, m = pred[i], meas[i]
                r = refs[json.dumps(split_counts(counts)[0], sort_keys=True)]
                effect = "| |"
                if r != i:
                    effects.append((q - pred[r], m - meas[r]))
                    effect = f"| {q - pred[r]:+.2f} | {m - meas[r]:+.2f} |"
                print(f"| {label} | {shares[i]:.2f} | {q:.2f} | {m:.2f} | {100 * (q - m) / m:+.1f}% {effect}",
                      flush=True)
            if effects:
                mae = sum(abs(a - b) for a, b in effects) / len(effects)
                print(f"\nswap effect (candidate minus its no-swap reference): mean absolute error {mae:.2f} ms over "
                      f"{len(effects)} swapped candidates")
            mape = 100 * sum(abs(q - m) / m for q, m in zip(pred, meas)) / len(meas)
            tau = kendall_tau(pred, meas)
            row = (f"| {name} | {backend} | {len(meas)} | {min(meas):.1f}-{max(meas):.1f} | {mape:.1f}% | {tau:.3f} | "
                   f"{load()} |")
            summary.append(row)
            print(f"\nMAPE {mape:.1f}%, Kendall tau {tau:.3f}\n", flush=True)
    print("| model | backend | candidates | measured ms | MAPE | Kendall tau | load |")
    print("|---|---|---:|---|---:|---:|---|")
    for row in summary:
        print(row)


if __name__ == "__main__":
    main()
