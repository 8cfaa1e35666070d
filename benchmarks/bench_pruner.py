"""Benchmark the channel analysis and the pruner, and compare with Torch-Pruning where it works.

    .venv/bin/python benchmarks/bench_pruner.py

For yolov8n, yolo11n and yolov8s at 640: the number of prunable groups, the prunable share of the conv FLOPs, the
time to analyse the model and to prune it at keep 0.5 (median of several runs), and GFLOPs before and after.
Then, on yolov5nu (where Torch-Pruning 1.6 works) and yolov8n (where it does not), Torch-Pruning's L1 magnitude
pruner at the same ratio, side by side. Nothing is asserted; the numbers are the result.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

from _common import header

import torch

from autoprune.channels import analyze
from autoprune.cost import count_gflops
from autoprune.pruner import prune


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def build(name: str):
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    return DetectionModel(name, verbose=False).eval()


def autoprune_row(name: str, keep: float, repeats: int) -> dict:
    model = build(name)
    t_analyse, graph = timed(lambda: analyze(model), repeats)
    t_prune, pruned = timed(lambda: prune(model, keep, graph=graph), repeats)
    before, after = count_gflops(model, 640), count_gflops(pruned, 640)
    return {
        "model": name.removesuffix(".yaml"),
        "groups": len(graph.groups),
        "prunable": graph.prunable_flops_share(),
        "analyse_s": t_analyse,
        "prune_s": t_prune,
        "gflops": (before, after),
        "params": (sum(p.numel() for p in model.parameters()), sum(p.numel() for p in pruned.parameters())),
    }


def torch_pruning_row(name: str, ratio: float, repeats: int) -> dict:
    import torch_pruning as tp

    def run():
        model = build(name)
        for p in model.parameters():
            p.requires_grad_(True)
        head = model.model[-1]
        ignored = [head.dfl] + [b[-1] for b in head.cv2] + [b[-1] for b in head.cv3]  # outputs stay whole
        pruner = tp.pruner.MagnitudePruner(
            model,
            torch.randn(1, 3, 640, 640),
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio,
            ignored_layers=ignored,
            round_to=8,
        )
        pruner.step()
        return model

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seconds, model = timed(run, repeats)
        return {"model": name.removesuffix(".yaml"), "seconds": seconds, "gflops": count_gflops(model, 640)}
    except Exception as e:  # the point of the row: where it breaks, say how
        return {"model": name.removesuffix(".yaml"), "error": f"{type(e).__name__}: {e}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    header()

    print("| model | groups | prunable conv FLOPs | analyse (s) | prune at keep %.2g (s) | GFLOPs before -> after | params before -> after |" % args.keep)
    print("|---|---|---|---|---|---|---|")
    for name in ("yolov8n.yaml", "yolo11n.yaml", "yolov8s.yaml"):
        r = autoprune_row(name, args.keep, args.repeats)
        print(
            f"| {r['model']} | {r['groups']} | {100 * r['prunable']:.1f}% | {r['analyse_s']:.3f} | {r['prune_s']:.3f} | "
            f"{r['gflops'][0]:.2f} -> {r['gflops'][1]:.2f} | {r['params'][0] / 1e6:.2f}M -> {r['params'][1] / 1e6:.2f}M |"
        )

    print("\nSame ratio, autoprune vs Torch-Pruning (L1 magnitude, Detect outputs ignored, round_to 8):\n")
    print("| model | autoprune analyse+prune (s) | autoprune GFLOPs | Torch-Pruning (s) | Torch-Pruning GFLOPs |")
    print("|---|---|---|---|---|")
    for name in ("yolov5nu.yaml", "yolov8n.yaml"):
        a = autoprune_row(name, args.keep, args.repeats)
        t = torch_pruning_row(name, 1 - args.keep, max(1, args.repeats // 2))
        tp_cells = f"{t['seconds']:.3f} | {t['gflops']:.2f}" if "error" not in t else f"fails: {t['error'][:80]} | -"
        print(f"| {a['model']} | {a['analyse_s'] + a['prune_s']:.3f} | {a['gflops'][1]:.2f} | {tp_cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
