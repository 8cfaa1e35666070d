"""Does a one-shot plan made to a latency target land at it? (issue 18: the latency model calibrated at the target)

The target is `--share` of the unpruned model's latency in `--backend` at 640, batch 1, `--threads` threads, measured
first. `autoprune prune --target-latency-ms TARGET --latency-calibration STEPS --strategy global --criterion C` plans
on the latency model, calibrated by timing the plan at the target end to end STEPS times
(`autoprune.latency_calibration`; 0: the table alone); the benchmark then times the unpruned model, that pruned model
and any `--compare LABEL=CHECKPOINT` in turn (`cost.measure_latencies`, `--rounds` rounds, the median of the rounds'
medians) and prints each model's share of the unpruned model's latency, to set against `--share`.

    python benchmarks/bench_latency_calibration.py --share 0.5 --backend openvino --threads 1 \
        --compare uncalibrated=runs/bench_latency_budget/lat50/prune-hessian.pt

Results are kept in runs/bench_latency_calibration/NAME/results.json (the prune is not rerun; the timing in turn is,
unless the same models were timed before and --retime is not given).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _common import header, load, results_cache


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the demo model)")
    parser.add_argument("--share", type=float, default=0.5, help="the target as a share of the unpruned latency")
    parser.add_argument("--backend", default="openvino")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--criterion", default="hessian")
    parser.add_argument("--steps", type=int, default=2, help="prune's --latency-calibration (0: the table alone)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compare", nargs="*", default=[], metavar="LABEL=CHECKPOINT",
                        help="other pruned checkpoints to time in turn with the same unpruned model")
    parser.add_argument("--retime", action="store_true", help="time in turn again even if these models were")
    parser.add_argument("--name", default="cal50")
    args = parser.parse_args()
    header()

    from autoprune.cost import measure_latencies, measure_latency
    from autoprune.demo import demo_model_path
    from autoprune.models import load_model

    source = args.model or str(demo_model_path())
    base = load_model(source).model
    out = Path("runs/bench_latency_calibration") / args.name
    results, save = results_cache(out)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}

    if "target_ms" not in results:
        unpruned = measure_latency(base, imgsz=640, backend=args.backend, threads=args.threads, cache=False)
        results.update(unpruned_ms=unpruned.median_ms, target_ms=round(args.share * unpruned.median_ms, 2),
                       setup=f"{unpruned.backend}, {unpruned.precision}, 640, batch {unpruned.batch}, "
                             f"{unpruned.threads} thread(s), {unpruned.device_name}")
        save()
    target = results["target_ms"]
    setup = results.get("setup", f"{args.backend}, 640, batch 1, {args.threads} thread(s)")
    print(f"unpruned: {results['unpruned_ms']:.2f} ms ({setup}); target {target} ms ({args.share:.0%}); {load()}",
          flush=True)

    pruned_pt = out / "calibrated.pt"
    if "prune" not in results:
        cmd = ["autoprune", "prune", "--model", source, "--target-latency-ms", f"{target:.2f}", "--latency-backend",
               args.backend, "--latency-calibration", str(args.steps), "--strategy", "global", "--criterion",
               args.criterion, "--no-val", "--out",
               str(pruned_pt), "--json"]
        print("$ OMP_NUM_THREADS=%d " % args.threads + " ".join(cmd), flush=True)
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, env=env)
        r = json.loads(done.stdout)
        results["prune"] = {"latency": r["latency"], "gflops": r["after"]["gflops"], "seconds": r["seconds"]}
        save()
    lat = results["prune"]["latency"]
    cal = lat.get("calibration") or {"scale": 1.0, "offset_ms": 0.0, "steps": []}
    for i, s in enumerate(cal["steps"], 1):
        print(f"calibration step {i}: planned with x {s.get('scale', s.get('factor')):.3f} "
              f"{s.get('offset_ms', 0.0):+.2f} ms: predicted {s['predicted_ms']:.2f} ms, measured "
              f"{s['measured_ms']:.2f} ms ({s['measured_ms'] / target:.2f} of the target)")
    print(f"calibration x {cal.get('scale', cal.get('factor')):.3f} {cal.get('offset_ms', 0.0):+.2f} ms; the pruned "
          f"model {results['prune']['gflops']:.3f} GFLOPs, "
          f"{lat['after_ms']:.2f} ms measured by prune ({lat['after_ms'] / target:.2f} of the target)")

    models = {"calibrated": load_model(str(pruned_pt)).model}
    for spec in args.compare:
        label, _, path = spec.partition("=")
        if not path:
            sys.exit(f"error: --compare takes LABEL=CHECKPOINT, got {spec!r}")
        models[label] = load_model(path).model
    timed = results.get("interleaved", {}).get("ms", {})
    if args.retime or set(timed) != {"unpruned", *models}:
        print(f"timing the unpruned model and {len(models)} pruned ones in turn, {args.rounds} rounds; {load()}",
              flush=True)
        r = measure_latencies({"unpruned": base, **models}, rounds=args.rounds, imgsz=640, backend=args.backend,
                              threads=args.threads)
        results["interleaved"] = {"rounds": args.rounds, "load_after": r["unpruned"].load,
                                  "ms": {k: v.median_ms for k, v in r.items()}}
        save()
        timed = results["interleaved"]["ms"]
    print(f"in turn ({results['interleaved']['rounds']} rounds; load after {results['interleaved']['load_after']}): "
          f"unpruned {timed['unpruned']:.2f} ms")
    for label in models:
        print(f"  {label}: {timed[label]:.2f} ms, {timed[label] / timed['unpruned']:.3f} of the unpruned model "
              f"(target {args.share:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
