"""Feature-map reconstruction at one keep ratio: Detect-input error and proxy mAP before finetuning, with and without.

    python benchmarks/bench_reconstruct.py                         # demo baseline and data, keep 0.5, l1
    python benchmarks/bench_reconstruct.py --model M.pt --data D.yaml --keep 0.5 --criterion l1
    python benchmarks/bench_reconstruct.py --criteria              # + every criterion at 50% GFLOPs, both strategies

Prints, for the model pruned uniformly at --keep:

- the relative MSE of the Detect inputs (on the kept channels) and of the head's raw outputs against the unpruned
  model, without and with reconstruction, on the calibration images the refit used and on held-out val images;
- the proxy mAP50-95 before any finetuning (`ProxyEvaluator.evaluate(model, steps=0)`), without and with BN
  recalibration, for the unpruned model, the pruned one, and the pruned one after reconstruction.

With --criteria, also the same proxy mAPs for every criterion at --target-gflops of the unpruned conv GFLOPs, uniform
and global (with --criteria-reconstruct, also after reconstruction). Everything is seeded; timings are wall clock on a
possibly shared CPU.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="checkpoint (default: the demo baseline)")
    p.add_argument("--data", default=None, help="data YAML (default: the demo data)")
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--criterion", default="l1")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--calib-batches", type=int, default=8, help="batches the refit and the gradients use")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--ridge", type=float, default=1e-3)
    p.add_argument("--max-samples", type=int, default=8192)
    p.add_argument("--val-images", type=int, default=200, help="proxy val subset")
    p.add_argument("--bn-batches", type=int, default=20, help="batches of the proxy's BN recalibration")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--criteria", action="store_true", help="also every criterion at --target-gflops, both strategies")
    p.add_argument("--target-gflops", type=float, default=0.5, help="share of the unpruned conv GFLOPs (--criteria)")
    p.add_argument("--only", default=None, help="comma-separated criteria for --criteria (default: all)")
    p.add_argument("--criteria-reconstruct", action="store_true",
                   help="--criteria also with reconstruction (two more columns)")
    p.add_argument("--skip-keep", action="store_true", help="skip the keep-ratio part (only --criteria)")
    return p.parse_args()


def main() -> None:
    args = parse()
    header()
    import torch

    from autoprune.channels import analyze
    from autoprune.data import load_data_config
    from autoprune.models import load_model
    from autoprune.proxy import ProxyEvaluator, ProxySettings

    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data_config(args.data)
    loaded = load_model(args.model)
    model = loaded.model
    print(f"model: {loaded.source} ({sum(p.numel() for p in model.parameters()):,} params); data: {data.yaml}")
    settings = ProxySettings(imgsz=args.imgsz, calib_batches=args.bn_batches, steps=0, batch=args.batch,
                             val_images=args.val_images, device="cpu", threads=args.threads)
    ev = ProxyEvaluator(data, settings)
    from autoprune.batches import calibration_batches

    calib = calibration_batches(data, imgsz=args.imgsz, calib_batches=args.calib_batches, batch=args.batch, seed=1,
                                train_images=settings.train_images)
    held = calibration_batches(dataclasses.replace(data, train=data.val), imgsz=args.imgsz, calib_batches=4,
                               batch=args.batch, seed=2, train_images=settings.train_images)
    print(f"calibration: {len(calib)} x {args.batch} train images at {args.imgsz} (seed 1); held out: {len(held)} x "
          f"{args.batch} val images; proxy: {ev.val_images} val images, BN recalibration on {args.bn_batches} x "
          f"{args.batch} train images (seed 0)\n")

    def proxy(m) -> tuple[float, float]:
        a = ev.evaluate(copy.deepcopy(m), steps=0, recalibrate=False).map50_95
        b = ev.evaluate(copy.deepcopy(m), steps=0, recalibrate=True).map50_95
        return a, b

    graph = analyze(model, imgsz=args.imgsz)
    if not args.skip_keep:
        _keep_part(args, model, graph, calib, held, proxy)
    if args.criteria:
        _criteria_part(args, model, graph, calib, proxy)


def _keep_part(args, model, graph, calib, held, proxy) -> None:
    import time

    from autoprune.importance import DATA_CRITERIA
    from autoprune.pruner import apply_indices, keep_counts, rank_channels, score_context, select_indices
    from autoprune.reconstruct import feature_errors, reconstruct

    full = graph.conv_gflops()
    t = time.perf_counter()
    ctx = score_context(model, graph, args.criterion, batches=calib if args.criterion in DATA_CRITERIA else None)
    counts = keep_counts(graph, args.keep)
    indices = select_indices(graph, counts, rank_channels(model, graph, args.criterion, ctx))
    pruned = apply_indices(model, graph, indices)
    t_prune = time.perf_counter() - t
    t = time.perf_counter()
    result = reconstruct(model, pruned, graph, indices, calib, ridge=args.ridge, max_samples=args.max_samples)
    t_rec = time.perf_counter() - t
    s = result.summary()
    print(f"pruned uniformly at keep {args.keep} by {args.criterion}: {graph.conv_gflops(counts) / full:.1%} of "
          f"{full:.3f} conv GFLOPs, {t_prune:.1f}s; reconstruction: {s['convs']} convs refit in {t_rec:.1f}s "
          f"(mean relative layer error on the samples {s['mean_error_before']:.4f} -> {s['mean_error_after']:.4f}; "
          f"ridge {args.ridge:g}, <= {args.max_samples} positions per conv)\n")

    print("relative MSE vs the unpruned model     without   with reconstruction")
    for name, batches in (("calibration images", calib), ("held-out val images", held)):
        a = feature_errors(model, pruned, graph, indices, batches)
        b = feature_errors(model, result.model, graph, indices, batches)
        cut = 1 - b["detect_inputs_mean"] / a["detect_inputs_mean"]
        levels = ", ".join(f"{x:.3f}->{y:.3f}" for x, y in zip(a["detect_inputs"], b["detect_inputs"]))
        print(f"  Detect inputs, {name:20s} {a['detect_inputs_mean']:8.4f}  {b['detect_inputs_mean']:8.4f}"
              f"   (-{cut:.0%}; per level {levels})")
        print(f"  head outputs,  {name:20s} {a['head_outputs']:8.4f}  {b['head_outputs']:8.4f}")

    print("\nproxy mAP50-95 before finetuning     no BN recal   BN recal")
    rows = (("unpruned", model), (f"pruned keep {args.keep}", pruned), ("pruned + reconstruction", result.model))
    for name, m in rows:
        a, b = proxy(m)
        print(f"  {name:32s} {a:8.4f}     {b:8.4f}")



def _criteria_part(args, model, graph, calib, proxy) -> None:
    import time

    from autoprune.importance import CRITERIA, DATA_CRITERIA
    from autoprune.pruner import apply_indices, channel_scores, rank_channels, score_context, select_indices
    from autoprune.reconstruct import reconstruct
    from autoprune.strategies import plan_counts

    full = graph.conv_gflops()
    target = args.target_gflops * full
    names = sorted(CRITERIA) if not args.only else [c.strip() for c in args.only.split(",")]
    rec = args.criteria_reconstruct
    print(f"\nper criterion at {args.target_gflops:.0%} of the conv GFLOPs ({target:.3f}), proxy mAP50-95 before "
          f"finetuning{'; +rec: after reconstruction' if rec else ', no reconstruction'}; s: scoring seconds")
    print(f"  {'criterion':10s} {'strategy':8s} {'GFLOPs':>7s} {'share':>6s} {'no recal':>9s} {'BN recal':>9s}"
          + (f" {'+rec':>8s} {'+rec+BN':>8s}" if rec else "") + "  s")
    for criterion in names:
        t = time.perf_counter()
        cctx = score_context(model, graph, criterion, batches=calib if criterion in DATA_CRITERIA else None)
        scores = channel_scores(model, graph, criterion, cctx)
        ranking = rank_channels(model, graph, criterion, cctx)
        t_score = time.perf_counter() - t
        for strategy in ("uniform", "global"):
            plan = plan_counts(graph, strategy, target_gflops=target, scores=scores)
            indices = select_indices(graph, plan.counts, ranking)
            m = apply_indices(model, graph, indices)
            a, b = proxy(m)
            extra = ""
            if rec:
                r = reconstruct(model, m, graph, indices, calib, ridge=args.ridge, max_samples=args.max_samples)
                ra, rb = proxy(r.model)
                extra = f" {ra:8.4f} {rb:8.4f}"
            print(f"  {criterion:10s} {strategy:8s} {plan.gflops:7.3f} {plan.gflops / full:6.1%} {a:9.4f} "
                  f"{b:9.4f}{extra}  {t_score:.1f}", flush=True)


if __name__ == "__main__":
    main()
