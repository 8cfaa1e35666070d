"""Benchmark the cost measurements: GFLOPs against Ultralytics' own count, how long counting takes, and whether the
CPU latency protocol repeats itself (two back-to-back measurements of the same model).

    .venv/bin/python benchmarks/bench_cost.py                       # yolov8n, yolo11n, yolov8s at 640, torch
    .venv/bin/python benchmarks/bench_cost.py --backend onnxruntime --models yolov8n

With yolov8n among the models it also times yolov8n pruned uniformly to half its conv GFLOPs and at keep 0.7, and
prints their latency as a multiple of the unpruned model's.

Prints the command, the machine and its load (the CPU is often shared: figures taken under load are noisy), then one
Markdown row per model, ready for docs/BENCHMARKS.md. Nothing is asserted; the numbers are the result.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))


from _common import machine  # noqa: E402

from autoprune import cost  # noqa: E402
from autoprune.models import load_model  # noqa: E402

AGREEMENT = 0.10  # two back-to-back medians must agree within this


def gflops_timing(model, imgsz: int, n: int = 3) -> tuple[float, float]:
    """fvcore GFLOPs and the median seconds one uncached count takes."""
    times, value = [], 0.0
    for _ in range(n):
        cost.flops._GFLOPS_CACHE.clear()  # time the count itself, not the cache
        t = time.perf_counter()
        value = cost.count_gflops(model, imgsz)
        times.append(time.perf_counter() - t)
    return value, statistics.median(times)


def bench_model(label: str, model, args) -> dict:
    from ultralytics.utils.torch_utils import get_flops

    ours, count_s = gflops_timing(model, args.imgsz)
    theirs = get_flops(model, args.imgsz)
    kw = dict(imgsz=args.imgsz, device="cpu", backend=args.backend, cache=False, threads=args.threads)
    t = time.perf_counter()
    first = cost.measure_latency(model, **kw)
    first_s = time.perf_counter() - t
    second = cost.measure_latency(model, **kw)
    ratio = second.median_ms / first.median_ms
    return {
        "model": label,
        "gflops": ours,
        "ultralytics": theirs,
        "diff": 100 * (ours - theirs) / theirs if theirs else float("nan"),
        "params": cost.count_params(model),
        "count_s": count_s,
        "first": first,
        "second": second,
        "ratio": ratio,
        "agree": abs(ratio - 1) <= AGREEMENT,
        "first_s": first_s,
    }


def row(r: dict) -> str:
    a, b = r["first"], r["second"]
    return (
        f"| {r['model']} | {r['gflops']:.3f} | {r['ultralytics']:.3f} | {r['diff']:+.3f}% | {r['params']:,} "
        f"| {r['count_s']:.2f} s | {a.median_ms:.1f} ({a.p10_ms:.1f}-{a.p90_ms:.1f}), n={a.repeats}"
        f"{'' if a.stable else ' unsettled'}, {r['first_s']:.1f} s "
        f"| {b.median_ms:.1f} ({b.p10_ms:.1f}-{b.p90_ms:.1f}), n={b.repeats}{'' if b.stable else ' unsettled'} "
        f"| {r['ratio']:.3f} {'ok' if r['agree'] else 'OVER 10%'} |"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["yolov8n", "yolo11n", "yolov8s"], help="Ultralytics YAML names")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--backend", choices=cost.BACKENDS, default="torch")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's setting)")
    args = p.parse_args()

    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {machine()}")
    print(f"protocol: {cost.timing.DEFAULT_PROTOCOL}")
    print(f"latency: CPU, {args.backend}, fp32, batch 1, imgsz {args.imgsz}, median (p10-p90) ms of n runs\n")
    print("| model | GFLOPs (fvcore) | GFLOPs (Ultralytics) | diff | params | count time "
          "| latency 1st: median (p10-p90) ms, n, wall | latency 2nd | 2nd/1st |")
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    for name in args.models:
        r = bench_model(name, load_model(f"{name}.yaml").model, args)
        results.append(r)
        print(row(r), flush=True)

    # Pruned yolov8n: does half the GFLOPs buy half the latency? Uniform L1 pruning to the largest ratio within 50%
    # of the conv GFLOPs (rounding to 8 channels lands below it), and a plain keep 0.7, against the unpruned model.
    if "yolov8n" in args.models:
        from autoprune.channels import analyze
        from autoprune.pruner import prune, prune_to_counts
        from autoprune.strategies import plan_counts

        base = load_model("yolov8n.yaml").model
        graph = analyze(base, imgsz=args.imgsz)
        plan = plan_counts(graph, "uniform", target_gflops=0.5 * graph.conv_gflops())
        unpruned, ratios = results[args.models.index("yolov8n")], []
        for label, small in ((f"yolov8n uniform {plan.ratio:.3f}", prune_to_counts(base, plan.counts, graph=graph)),
                             ("yolov8n keep 0.7", prune(base, 0.7))):
            r = bench_model(label, small, args)
            print(row(r), flush=True)
            ratios.append(f"{label}: {r['gflops'] / unpruned['gflops']:.1%} of the GFLOPs, latency "
                          f"{r['first'].median_ms / unpruned['first'].median_ms:.3f}x / "
                          f"{r['second'].median_ms / unpruned['second'].median_ms:.3f}x the unpruned (1st / 2nd)")
            results.append(r)
        print("\n" + "\n".join(ratios))

    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    bad = [r["model"] for r in results if not r["agree"]]
    print("back-to-back agreement within 10%: " + ("all" if not bad else f"NOT for {', '.join(bad)}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
