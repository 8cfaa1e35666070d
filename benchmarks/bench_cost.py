"""Benchmark the cost measurements: GFLOPs against Ultralytics' own count, how long counting takes, and whether the
CPU latency protocol repeats itself (two back-to-back measurements of the same model).

    .venv/bin/python benchmarks/bench_cost.py                       # yolov8n, yolo11n, yolov8s at 640, torch
    .venv/bin/python benchmarks/bench_cost.py --backend onnxruntime --models yolov8n

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
        cost._GFLOPS_CACHE.clear()  # time the count itself, not the cache
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
    print(f"protocol: {cost.DEFAULT_PROTOCOL}")
    print(f"latency: CPU, {args.backend}, fp32, batch 1, imgsz {args.imgsz}, median (p10-p90) ms of n runs\n")
    print("| model | GFLOPs (fvcore) | GFLOPs (Ultralytics) | diff | params | count time "
          "| latency 1st: median (p10-p90) ms, n, wall | latency 2nd | 2nd/1st |")
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    for name in args.models:
        r = bench_model(name, load_model(f"{name}.yaml").model, args)
        results.append(r)
        print(row(r), flush=True)

    # Pruned yolov8n: measured here once `autoprune.pruner.prune` is in (issue 3 follow-up), e.g.
    #     from autoprune.pruner import prune
    #     small = prune(load_model("yolov8n.yaml").model, 0.5)
    #     print(row(bench_model("yolov8n pruned 0.5", small, args)))
    # The same columns apply; the interesting ones are the GFLOPs diff (odd channel counts) and the latency ratio.

    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    bad = [r["model"] for r in results if not r["agree"]]
    print("back-to-back agreement within 10%: " + ("all" if not bad else f"NOT for {', '.join(bad)}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
