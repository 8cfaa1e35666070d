"""Latency where the model runs: how much of a pruned model's GFLOPs saving becomes a latency saving, per runtime,
batch and channel rounding, and why one plan of given GFLOPs runs slower than another (issue 18).

    python benchmarks/bench_latency.py                  # yolov8n (YAML) and the demo at 320, the full grid
    python benchmarks/bench_latency.py --quick          # the demo at 128, onnxruntime, batch 1, a short grid
    python benchmarks/bench_latency.py --models demo --backends openvino --batches 1 --round-to 8 32
    python benchmarks/bench_latency.py --models demo --study runs/search/NAME/study.db   # + a search's front

(a) For each model: uniform keep 0.3, 0.5 and 0.7, and one-shot global pruning (L1 scores, one threshold) planned to
the same conv GFLOPs as each uniform plan, each with channel counts rounded to multiples of 1, 8, 16 and 32
(`round_to`), are pruned and timed end to end in each runtime (onnxruntime, openvino) at batch 1 and 8 with
`--threads` threads (default 1: with 2 threads on a shared CPU consecutive runs of one model differed by 1.5x).
Each figure is the minimum over a timing run (`latency_model.measure_model_ms`: load only ever adds time). One row
per plan: GFLOPs ratio and latency ratio against the unpruned model, and the latency efficiency
(1 - latency ratio) / (1 - GFLOPs ratio): 1 when latency falls as fast as the GFLOPs, 0 when it does not fall.
With `--study`, the Pareto front of that search (of the demo model) is timed the same way, one 'front' row per
trial, rebuilt from the study as `apply --trial` does. Comparing a plan's rows across `round_to` answers whether a runtime rewards channel counts that are multiples of
8/16/32 on this CPU; comparing uniform with global rows at the same GFLOPs, whether the uniform genome is slower.

(b) Per layer (`--explain`, on by default; the first model, backend and batch): the uniform plan at keep 0.5 and the
global plan at its GFLOPs (round_to 8), each conv timed alone as the latency table times it (conv + bias +
activation, `LatencyTable.entry`, cached in `--table`), the convs where the two plans differ most first: their
channels (with the multiples of 8/16/32 they are), MACs and milliseconds. Where the uniform plan's extra time sits
says why it is slower (or that the sum of its layers is not, and the difference is outside the convs).

The command and the machine are printed first. Figures from a loaded machine (load average above the core count,
printed with every table) are not the ones to record: run it on a quiet machine for docs/BENCHMARKS.md. Nothing is
asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import header, load  # noqa: E402

QUICK = {"models": ["demo"], "imgsz": 128, "backends": ["onnxruntime"], "batches": [1], "keeps": [0.5],
         "round_to": [1, 8], "explain_layers": 6}


def efficiency(gflops_ratio: float, latency_ratio: float) -> float | None:
    """(1 - latency ratio) / (1 - GFLOPs ratio); None when nothing was pruned.

    Example:
        >>> round(efficiency(0.45, 0.57), 2)
        0.78
    """
    return None if gflops_ratio >= 1 else (1 - latency_ratio) / (1 - gflops_ratio)


def multiples(n: int) -> str:
    """The largest of 32, 16, 8 that divides `n` ("-" for none)."""
    return next((str(m) for m in (32, 16, 8) if n % m == 0), "-")


def plans(graph, scores, keeps, round_tos, min_channels: int) -> list[tuple[str, float, int, dict]]:
    """(kind, keep, round_to, counts): uniform keep k at each round_to, and global pruning at the conv GFLOPs of
    uniform keep k with round_to 1 (one target per keep, the same for every rounding). A target below what a
    round_to's floor allows is skipped, with a line saying so."""
    from autoprune.errors import UserError
    from autoprune.pruner import keep_counts
    from autoprune.strategies import global_for_gflops, uniform_for_gflops

    out = []
    for keep in keeps:
        target = graph.conv_gflops(keep_counts(graph, keep, round_to=1, min_channels=min_channels))
        for r in round_tos:
            try:
                out.append(("uniform", keep, r, uniform_for_gflops(graph, target, round_to=r,
                                                                   min_channels=min_channels)[1]))
                out.append(("global", keep, r, global_for_gflops(graph, scores, target, round_to=r,
                                                                min_channels=min_channels)[1]))
            except UserError as e:
                print(f"skipped keep {keep}, round_to {r}: {e}", flush=True)
    return out


def front_models(db: str, imgsz: int) -> tuple[str, list[tuple[int, object]]]:
    """(the study's model, [(trial number, pruned model)]) for the Pareto front of the search study in `db` (its
    study.db file; the one study in it), each trial rebuilt from its stored kept counts as `apply --trial` does."""
    import optuna

    from autoprune.apply import rebuild
    from autoprune.models import load_model
    from autoprune.search import records

    url = f"sqlite:///{Path(db).resolve()}"
    (summary,) = optuna.get_all_study_summaries(url)
    study = optuna.load_study(study_name=summary.study_name, storage=url)
    attrs = study.user_attrs
    loaded = load_model(attrs.get(records.STUDY_MODEL))
    front = records.pareto_front(records.load_records(study))
    return attrs.get(records.STUDY_MODEL) or "demo", [
        (r.number, rebuild(loaded, r, imgsz=attrs[records.STUDY_IMGSZ], ranking=attrs.get(records.STUDY_RANKING))[0])
        for r in front]


def explain(model, graph, uniform: dict, glob: dict, *, imgsz, backend, batch, threads, table_path, top) -> None:
    """Part (b): each conv of the two plans timed alone, the convs where they differ most first."""
    from autoprune.latency_model import LatencyTable

    table = LatencyTable(model, graph, imgsz=imgsz, batch=batch, backend=backend, threads=threads, path=table_path,
                         round_to=1, min_channels=1)
    cu, cg = graph.conv_channels(uniform), graph.conv_channels(glob)
    sites = sorted(table.sites, key=lambda s: -abs(s.config(*cu[s.name]).macs() - s.config(*cg[s.name]).macs()))
    print(f"\n## (b) per layer: {backend}, batch {batch}, {threads} thread(s), {imgsz} px: uniform keep 0.5 vs global "
          f"at its GFLOPs (round_to 8); the {top or len(sites)} convs where they differ most; {load()}")
    print("| conv | uniform cin/cout (x8/16/32) | uniform MMACs | uniform ms | global cin/cout (x8/16/32) | "
          "global MMACs | global ms | uniform - global ms |")
    print("|---|---|---:|---:|---|---:|---:|---:|")
    total_u = total_g = 0.0
    for s in sites[:top] if top else sites:
        a, b = s.config(*cu[s.name]), s.config(*cg[s.name])
        ma, mb = table.entry(a), table.entry(b)
        total_u, total_g = total_u + ma, total_g + mb
        print(f"| {s.name} | {a.cin}/{a.cout} ({multiples(a.cin)}/{multiples(a.cout)}) | {a.macs() / 1e6:.1f} | "
              f"{ma:.3f} | {b.cin}/{b.cout} ({multiples(b.cin)}/{multiples(b.cout)}) | {b.macs() / 1e6:.1f} | "
              f"{mb:.3f} | {ma - mb:+.3f} |", flush=True)
    print(f"| sum of these | | | {total_u:.2f} | | | {total_g:.2f} | {total_u - total_g:+.2f} |")
    print("(each conv alone, conv + bias + activation, min over runs; its runtime call overhead included)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["yolov8n.yaml", "demo"],
                   help="model names or paths; 'demo' is the embedded demo model")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--backends", nargs="+", default=["onnxruntime", "openvino"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--keeps", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    p.add_argument("--round-to", nargs="+", type=int, default=[1, 8, 16, 32])
    p.add_argument("--min-channels", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--study", default=None, metavar="STUDY_DB",
                   help="also time the Pareto front of this search (its study.db) with the model it searched, as "
                        "'front' rows (the trial number in the keep column)")
    p.add_argument("--no-explain", dest="explain", action="store_false", help="skip part (b), the per-layer table")
    p.add_argument("--explain-layers", type=int, default=0, help="convs shown in part (b) (default 0: all)")
    p.add_argument("--table", default="runs/bench_latency/lut.json", help="where part (b)'s layer timings are kept")
    p.add_argument("--quick", action="store_true",
                   help="a check that the benchmark runs: " + ", ".join(f"{k} {v}" for k, v in QUICK.items())
                        + ", a short timing run")
    args = p.parse_args()
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    header()

    from autoprune.candidate import order_of
    from autoprune.channels import analyze
    from autoprune.cost import TimingProtocol, count_gflops
    from autoprune.demo import demo_model_path
    from autoprune.latency_model import MODEL_TIMING, measure_model_ms
    from autoprune.models import load_model
    from autoprune.pruner import channel_scores, prune_to_counts

    protocol = TimingProtocol(warmup_runs=2, warmup_s=0.1, min_repeats=5, min_time_s=0.2, max_time_s=2.0) \
        if args.quick else MODEL_TIMING
    rows = []
    for name in args.models:
        model = load_model(str(demo_model_path()) if name == "demo" else name).model
        graph = analyze(model, imgsz=args.imgsz)
        scores = channel_scores(model, graph, "l1")
        ranking = order_of(scores)
        base_gflops = count_gflops(model, args.imgsz)
        candidates = []
        for kind, keep, r, counts in plans(graph, scores, args.keeps, args.round_to, args.min_channels):
            pruned = prune_to_counts(model, counts, graph=graph, ranking=ranking)
            candidates.append((kind, keep, r, counts, pruned, count_gflops(pruned, args.imgsz) / base_gflops))
        if args.study and name == "demo":  # the front's rows: (kind, trial number, round_to of its space)
            searched, front = front_models(args.study, args.imgsz)
            print(f"front of {args.study} ({searched}): trials {', '.join(str(n) for n, _ in front)}", flush=True)
            for number, pruned in front:
                candidates.append(("front", number, 8, None, pruned, count_gflops(pruned, args.imgsz) / base_gflops))
        for backend in args.backends:
            for batch in args.batches:
                t0 = time.perf_counter()

                def ms(m):
                    return measure_model_ms(m, imgsz=args.imgsz, batch=batch, backend=backend, threads=args.threads,
                                            protocol=protocol)

                base_ms = ms(model)
                print(f"## (a) {name} at {args.imgsz}, {backend}, batch {batch}, {args.threads} thread(s): unpruned "
                      f"{base_gflops:.2f} GFLOPs, {base_ms:.2f} ms; {load()}")
                print("| plan | target: uniform keep (front: trial) | round_to | GFLOPs ratio | ms | latency ratio | "
                      "efficiency |")
                print("|---|---:|---:|---:|---:|---:|---:|")
                for kind, keep, r, counts, pruned, g in candidates:
                    m = ms(pruned)
                    e = efficiency(g, m / base_ms)
                    target = keep if kind == "front" else f"{keep:.2f}"
                    print(f"| {kind} | {target} | {r} | {g:.3f} | {m:.2f} | {m / base_ms:.3f} | "
                          f"{'-' if e is None else f'{e:.2f}'} |", flush=True)
                    rows.append((name, backend, batch, kind, keep, r, g, m / base_ms, e))
                print(f"({time.perf_counter() - t0:.0f} s)\n")
        if args.explain and name == args.models[0]:
            keep = 0.5 if 0.5 in args.keeps else args.keeps[0]
            r = 8 if 8 in args.round_to else args.round_to[0]
            pick = {kind: counts for kind, k, rr, counts, _, _ in candidates
                    if kind != "front" and k == keep and rr == r}
            explain(model, graph, pick["uniform"], pick["global"], imgsz=args.imgsz, backend=args.backends[0],
                    batch=args.batches[0], threads=args.threads, table_path=args.table, top=args.explain_layers)
    print("\n## summary: latency efficiency by runtime, batch, plan and round_to (mean over the keeps)")
    print("| model | backend | batch | plan | " + " | ".join(f"round_to {r}" for r in args.round_to) + " |")
    print("|---|---|---:|---|" + "---:|" * len(args.round_to))
    for name in args.models:
        for backend in args.backends:
            for batch in args.batches:
                for kind in ("uniform", "global", "front"):
                    cells = []
                    for r in args.round_to:
                        es = [row[8] for row in rows if row[:4] == (name, backend, batch, kind) and row[5] == r
                              and row[8] is not None]
                        cells.append(f"{sum(es) / len(es):.2f}" if es else "-")
                    print(f"| {name} | {backend} | {batch} | {kind} | " + " | ".join(cells) + " |")
    print(f"\n{load()}")


if __name__ == "__main__":
    main()
