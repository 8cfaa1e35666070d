"""Report what a model costs: GFLOPs, parameters and measured latency on a device.

    autoprune cost --model yolov8n.yaml --imgsz 640 --device cpu
    autoprune cost --model runs/search/exp1/best.pt --latency-backend onnxruntime --json
    autoprune cost --model yolov8n.yaml --latency-backend openvino --latency-batch 8
"""

from __future__ import annotations

import argparse
import os

from autoprune.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the `cost` command's flags."""
    parser.add_argument("--model", default=None,
                        help="a .pt checkpoint or a model YAML such as yolov8n.yaml (default: the embedded demo model)")
    parser.add_argument("--imgsz", type=int, default=640, help="square input size, a multiple of 32 (default 640)")
    parser.add_argument("--latency-batch", "--batch", dest="batch", type=int, default=1,
                        help="images per forward pass for the latency (default 1)")
    from autoprune.cli._common import add_device_argument

    add_device_argument(parser, "device to time on")
    parser.add_argument("--latency-backend", "--backend", dest="backend", default="torch", metavar="BACKEND",
                        help="the runtime the latency is measured in: torch, onnxruntime, openvino (CPU) or tensorrt "
                             "(CUDA); the model is exported as Ultralytics exports it for that runtime (default torch)")
    parser.add_argument("--latency-precision", dest="precision", default=None, choices=["fp32", "fp16"],
                        help="fp32 or fp16 (default: fp16 on a CUDA device, else fp32)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for the latency (default: OMP_NUM_THREADS if set, else one per physical core; "
                             "the same in every command and with or without --json)")
    parser.add_argument("--cache", default=None, metavar="FILE",
                        help="JSON latency cache to read and add to (created if missing); off by default")


def run(args: argparse.Namespace) -> dict:
    """Check the inputs, load the model, count GFLOPs and parameters, measure latency; print and return them."""
    from autoprune import cost
    from autoprune.cost.timing import under_load
    from autoprune.devices import resolve_device

    imgsz = cost.check_imgsz(args.imgsz)
    if args.batch < 1:
        raise UserError(f"--latency-batch (--batch) must be a positive integer, got {args.batch}")
    cost.check_backend(args.backend)
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be a positive integer, got {args.threads}")
    if args.cache:
        from autoprune.runs import check_writable

        check_writable(args.cache, kind="file", what="--cache")
    device = resolve_device(args.device)
    precision = cost.check_runtime(args.backend, device, args.precision)
    cache = cost.LatencyCache(args.cache) if args.cache else False

    from autoprune.models import load_model
    from autoprune.progress import stage

    loaded = load_model(args.model)
    model = loaded.model
    gflops = cost.count_gflops(model, imgsz)
    params = cost.count_params(model)
    with stage(f"measuring latency ({args.backend} {precision} on {device})"):
        lat = cost.measure_latency(model, imgsz=imgsz, batch=args.batch, device=device, backend=args.backend,
                                   precision=precision, cache=cache, threads=args.threads)
    result = {
        "model": loaded.source,
        "imgsz": imgsz,
        "batch": args.batch,
        "gflops": round(gflops, 4),
        "params": params,
        "latency_ms": round(lat.median_ms, 4),
        "latency_p10_ms": round(lat.p10_ms, 4),
        "latency_p90_ms": round(lat.p90_ms, 4),
        "latency_spread_ms": round(lat.spread_ms, 4),
        "repeats": lat.repeats,
        "stable": lat.stable,
        "cached": lat.cached,
        "device": lat.device,
        "device_name": lat.device_name,
        "backend": lat.backend,
        "precision": lat.precision,
        "executed_precision": lat.executed_precision,
        "threads": lat.threads,
        "signature": lat.signature,
        "load": lat.load,
    }
    if not args.json:
        where = f"{lat.device} ({lat.device_name}, {lat.threads} thread{'s' if lat.threads != 1 else ''})" if lat.device == "cpu" else (
            f"{lat.device} ({lat.device_name})")
        note = "" if lat.stable else "  [the median did not settle within the time cap]"
        print(f"model      {loaded.source}")
        print(f"input      {args.batch}x{cost.input_channels(model)}x{imgsz}x{imgsz}")
        print(f"GFLOPs     {gflops:.2f}  (2 x multiply-adds, batch 1)")
        print(f"params     {params:,}")
        print(f"latency    {lat.median_ms:.2f} ms median, p10-p90 {lat.p10_ms:.2f}-{lat.p90_ms:.2f} ms, "
              f"{lat.repeats} runs{' (cached)' if lat.cached else ''}{note}")
        executed = (f" (computed in {lat.executed_precision})"
                    if lat.executed_precision not in (None, lat.precision) else "")
        print(f"device     {where}, {lat.backend} {lat.precision}{executed}")
        if under_load(lat.load, lat.device) and not lat.cached:
            print(f"note       load average {lat.load:.1f} on {os.cpu_count() or 1} cores: other processes shared "
                  "the CPU, so this latency is noisy")
    return result
