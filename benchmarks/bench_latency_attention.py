"""Attention in the latency model (issue 18): candidates that prune attention head dims, predicted with the attention
cores priced (`LatencyTable`'s attention sites) and as the table predicted them with the cores left in `rest_ms`,
against measured end-to-end latency.

    .venv/bin/python benchmarks/bench_latency_attention.py                      # yolo11n.yaml and yolo12n.yaml at 320
    .venv/bin/python benchmarks/bench_latency_attention.py --models yolo11n.yaml --rounds 3

For each model: the unpruned model; every attention's query/key group (`*.attn.qkv`: the head dims; YOLO12's carries
the values too) at its floor and at half, everything else whole; the `fine` space's uniform 0.5 with the attention
groups whole, as the space leaves them, and at their floor. The table is built (or read from `--table`); every
candidate is pruned and measured end to end (the minimum over `--rounds` round-robin timing runs, as the entries are
minima). "before" is the table's prediction without the cores, from the same conv entries: the unpruned model less
its convs as one constant, the convs scaled as the table scales them when they alone exceed the model. Prints the
command, the machine and one row per candidate with the predicted and measured change from the unpruned model.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import header, load  # noqa: E402


def candidates(space, graph) -> list[tuple[str, dict]]:
    """(label, kept counts) of the candidates that prune attention, after the unpruned model."""
    from autoprune.strategies import floor_counts

    qkv = [g for g in graph.groups if g.id.endswith("attn.qkv")]
    floor = floor_counts(graph, round_to=space.round_to, min_channels=space.min_channels)
    low = {g.id: floor[g.id] for g in qkv}
    half = {g.id: max(floor[g.id], g.size // 2) for g in qkv}
    whole = {g.id: g.size for g in qkv}
    uniform = space.counts(space.uniform(0.5))
    return [("unpruned", {}), ("head dims at floor", low), ("head dims at half", half),
            ("uniform 0.5, attention whole", {**uniform, **whole}), ("uniform 0.5, head dims at floor",
                                                                      {**uniform, **low})]


def before(table, counts) -> float:
    """The table's minimum prediction with the attention cores left in `rest_ms` (the same conv entries)."""
    from autoprune.latency_layers import _interpolate

    convs_full = sum(table._layer_ms(s.name, s.full.macs()) for s in table.sites)
    cores_full = sum(_interpolate(table._attention_curves[s.name], s.full.macs()) for s in table.attention_sites)
    model_ms = table.rest_ms + table.scale * (convs_full + cores_full)
    scale = min(1.0, model_ms / convs_full) if convs_full > 0 else 1.0
    layers = table.layer_latencies(counts)
    return scale * sum(layers[s.name] for s in table.sites) + model_ms - scale * convs_full


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["yolo11n.yaml", "yolo12n.yaml"])
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--table", default="runs/bench_latency_attention/lut.json")
    p.add_argument("--rounds", type=int, default=3,
                   help="measure every candidate this many times, round robin, and keep the minimum")
    args = p.parse_args()
    header()

    from autoprune.candidate import order_of
    from autoprune.channels import analyze
    from autoprune.cost import count_gflops
    from autoprune.latency_model import LatencyTable, measure_model_ms
    from autoprune.models import load_model
    from autoprune.pruner import channel_scores, prune_to_counts
    from autoprune.space import load_space

    for name in args.models:
        model = load_model(name).model
        graph = analyze(model, imgsz=args.imgsz)
        space = load_space("fine", graph, model)
        table = LatencyTable(model, graph, imgsz=args.imgsz, backend=args.backend, threads=args.threads,
                             path=args.table, round_to=space.round_to, min_channels=space.min_channels).build()
        cores = {s.name: round(table.layer_latencies()[s.name], 4) for s in table.attention_sites}
        print(f"## {name} at {args.imgsz}, {args.backend}, {args.threads} thread(s): {len(table.sites)} convs, "
              f"{len(table.attention_sites)} attention cores (unpruned, ms: {cores}), {table.measured} entries "
              f"measured now, rest {table.rest_ms:.2f} ms, scale {table.scale:.3f}; {load()}", flush=True)
        ranking = order_of(channel_scores(model, graph, "l1"))
        cands = candidates(space, graph)
        base = count_gflops(model, args.imgsz)
        models = [prune_to_counts(model, counts, graph=graph, ranking=ranking) for _, counts in cands]
        meas = [math.inf] * len(cands)
        for _ in range(args.rounds):  # round robin: a burst of load spoils one round of a candidate, not all
            for i, pruned in enumerate(models):
                ms = measure_model_ms(pruned, imgsz=args.imgsz, backend=args.backend, threads=args.threads)
                meas[i] = min(meas[i], ms)
        print("| candidate | GFLOPs share | measured ms | predicted before | after | change from unpruned: "
              "measured | predicted before | after |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        old0, new0 = before(table, {}), table.predict_min({})
        for i, (label, counts) in enumerate(cands):
            old, new = before(table, counts), table.predict_min(counts)
            share = count_gflops(models[i], args.imgsz) / base
            print(f"| {label} | {share:.3f} | {meas[i]:.2f} | {old:.2f} | {new:.2f} | {meas[i] - meas[0]:+.3f} | "
                  f"{old - old0:+.3f} | {new - new0:+.3f} |", flush=True)
        print(f"\n{load()}\n", flush=True)


if __name__ == "__main__":
    main()
