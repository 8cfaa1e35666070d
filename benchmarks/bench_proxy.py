"""Benchmark the proxy score: seconds per candidate, where they go, and what each proxy stage buys in mAP.

    .venv/bin/python benchmarks/bench_proxy.py                      # the demo (or the stand-in, see below)
    .venv/bin/python benchmarks/bench_proxy.py --model best.pt --data data.yaml --candidates 3

Prints its command line and the machine (CPU, threads, load average), then

1. timing: seconds per candidate (mean over `--candidates` fresh candidates) and the per-stage breakdown at
   `--steps` (50) and `--imgsz` (320), for a candidate pruned to about half the model's GFLOPs
   (`autoprune.prune` with the keep ratio that gets there; without the pruner, a narrower model built from the
   model's YAML);
2. ablation at `--keep` (0.5): mAP50 / mAP50-95 of the pruned model with no recalibration, with BN recalibration,
   and with recalibration plus the finetune steps; and of the unpruned model for reference.

Model and data: `--model` / `--data` when given; else the demo (`autoprune.demo`) when its baseline checkpoint
exists; else a stand-in: the demo generator's dataset (1000 train / 250 val images at 320 px, written under
runs/bench_proxy/) and a yolov8n trained on it here for `--standin-epochs` epochs (cached in runs/bench_proxy/).
Timing figures are noisy while other processes load the CPU: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from _common import load, machine  # noqa: E402

from autoprune import _ultralytics  # noqa: E402,F401

BENCH_DIR = ROOT / "runs" / "bench_proxy"


# ------------------------------------------------------------------------------------------ model and data
def standin_data() -> Path:
    """The demo generator's dataset, written under runs/bench_proxy/ (never into the demo's own cache)."""
    from autoprune.demo.dataset import generate

    root = BENCH_DIR / "data"
    if (root / "data.yaml").is_file():
        return root / "data.yaml"
    tmp = BENCH_DIR / "data.tmp"
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    generate(tmp, n_train=1000, n_val=250, seed=0, imgsz=320)
    tmp.rename(root)
    return root / "data.yaml"


def standin_model(data_yaml: Path, epochs: int) -> Path:
    """A yolov8n trained on `data_yaml` at 320 px for `epochs` epochs with Ultralytics' trainer (cached).

    Only for when the demo baseline is not there: a short CPU training, so its mAP is far below the demo's.
    """
    out = BENCH_DIR / f"standin-e{epochs}" / "weights" / "last.pt"
    if out.is_file():
        return out
    from ultralytics import YOLO

    print(f"training the stand-in baseline: yolov8n, {epochs} epochs at 320 px on {data_yaml} ...", flush=True)
    t = time.perf_counter()
    # nbs=16: a step per batch of 16, as the demo recipe (autoprune/demo/train.py) does for a from-scratch model
    YOLO("yolov8n.yaml").train(data=str(data_yaml), imgsz=320, epochs=epochs, batch=16, nbs=16, workers=2,
                               device="cpu", plots=False, amp=False, seed=0, deterministic=True, project=str(BENCH_DIR),
                               name=f"standin-e{epochs}", exist_ok=True, val=True, verbose=False)
    print(f"trained in {time.perf_counter() - t:.0f} s", flush=True)
    return out


def resolve_inputs(args) -> tuple[str | None, str]:
    """(data yaml, model spec) and a note saying which ones these are."""
    if args.data or args.model:
        return args.data, args.model
    try:
        from autoprune.demo import demo_model_path, ensure_demo_data

        if Path(demo_model_path()).is_file():
            return str(ensure_demo_data()), str(demo_model_path())
    except (ImportError, AttributeError):
        pass
    data = standin_data()
    return str(data), str(standin_model(data, args.standin_epochs))


def gflops(model, imgsz: int) -> float:
    try:
        from autoprune.cost import count_gflops

        return count_gflops(model, imgsz)
    except ImportError:
        from ultralytics.utils.torch_utils import get_flops

        return get_flops(model, imgsz)


def pruned(model, keep: float):
    """(candidate, how it was made): autoprune.prune when it exists, else a narrower YAML model of similar cost."""
    try:
        from autoprune import prune

        return prune(model, keep), f"autoprune.prune(model, {keep})"
    except (ImportError, AttributeError, NotImplementedError):
        pass
    from ultralytics.nn.tasks import DetectionModel

    cfg = copy.deepcopy(model.yaml)
    scale = cfg.get("scale") or "n"
    depth, width, max_ch = cfg["scales"][scale] if "scales" in cfg else (cfg["depth_multiple"], cfg["width_multiple"],
                                                                          1024)
    cfg["scales"] = {scale: [depth, width * keep, max_ch]}
    cfg["scale"] = scale
    torch.manual_seed(0)
    m = DetectionModel(cfg, nc=cfg["nc"], verbose=False)
    m.names = getattr(model, "names", m.names)
    return m, f"narrower YAML model (width x{keep}, random weights; no pruner available)"


def keep_for_half_gflops(model, imgsz: int) -> float:
    """The uniform keep ratio whose pruned model has about half the GFLOPs (bisection on the real pruner)."""
    full = gflops(model, imgsz)
    lo, hi = 0.3, 1.0
    for _ in range(6):
        mid = (lo + hi) / 2
        cand, _ = pruned(model, mid)
        if gflops(cand, imgsz) > 0.5 * full:
            hi = mid
        else:
            lo = mid
    return round((lo + hi) / 2, 3)


def vars_settings(settings) -> dict:
    return {k: getattr(settings, k) for k in settings.__dataclass_fields__}


def crosscheck(args, data: str, lm, report: dict) -> None:
    """The proxy's validation against Ultralytics' own `val` on the whole val split, same model, no BN or steps.

    Both use square letterboxed inputs (rect=False), conf 0.001, IoU 0.7, fp32; Ultralytics fuses Conv+BN first,
    so tiny float differences remain. A mismatch would mean the proxy's validation is wired wrongly.
    """
    import tempfile

    from ultralytics import YOLO

    from autoprune.data import load_data_config
    from autoprune.models import save_checkpoint
    from autoprune.proxy import ProxyEvaluator, ProxySettings

    cfg = load_data_config(data)
    ev = ProxyEvaluator(cfg, ProxySettings(imgsz=args.imgsz, calib_batches=1, steps=0, val_images=100_000,
                                           amp=False, device="cpu", threads=args.threads))
    r = ev.evaluate(copy.deepcopy(lm.model), recalibrate=False, steps=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = lm.source if lm.source.endswith(".pt") else save_checkpoint(lm.model, Path(tmp) / "m.pt")
        m = YOLO(str(path)).val(data=str(cfg.yaml), imgsz=args.imgsz, batch=32, rect=False, conf=0.001, iou=0.7,
                                device="cpu", plots=False, save_json=False, verbose=False, workers=0,
                                project=tmp, name="val")
    u50, u5095 = float(m.box.map50), float(m.box.map)
    print(f"\n== crosscheck on all {ev.val_images} val images, no recalibration, 0 steps, fp32")
    print(f"  proxy validation:     mAP50 {r.map50:.4f}  mAP50-95 {r.map50_95:.4f}")
    print(f"  Ultralytics val:      mAP50 {u50:.4f}  mAP50-95 {u5095:.4f}  (rect=False, fused)")
    report["crosscheck"] = {"proxy": [r.map50, r.map50_95], "ultralytics": [u50, u5095], "images": ev.val_images}


# -------------------------------------------------------------------------------------------------- main
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--standin-epochs", type=int, default=15)
    p.add_argument("--candidates", type=int, default=3, help="timed candidates (mean is reported)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--calib-batches", type=int, default=20)
    p.add_argument("--val-images", type=int, default=200)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--keep", type=float, default=0.5, help="keep ratio of the ablation")
    p.add_argument("--timing-keep", type=float, default=None, help="keep ratio of the timed candidates "
                   "(default: the one that halves GFLOPs)")
    p.add_argument("--sections", default="timing,ablation,crosscheck",
                   help="comma-separated: timing, ablation, crosscheck (proxy vs Ultralytics' own val), precision "
                        "(bf16 vs fp32 scores of the same candidates), lr (finetune learning rates, see --lrs)")
    p.add_argument("--lrs", default="1e-4,3e-4,1e-3", help="learning rates the lr section compares")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args()

    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    print("machine:", machine())
    print("at start:", load(), flush=True)

    from autoprune.models import load_model
    from autoprune.proxy import ProxyEvaluator, ProxySettings

    data, model_spec = resolve_inputs(args)
    lm = load_model(model_spec)
    base = lm.model
    print(f"model: {lm.source} ({gflops(base, args.imgsz):.3f} GFLOPs at {args.imgsz})  data: {data}")
    settings = ProxySettings(imgsz=args.imgsz, calib_batches=args.calib_batches, steps=args.steps, batch=args.batch,
                             lr=args.lr, val_images=args.val_images, threads=args.threads, device="cpu")
    t = time.perf_counter()
    ev = ProxyEvaluator(data, settings)
    print(f"evaluator setup: {time.perf_counter() - t:.2f} s ({ev.val_images} val images, {ev.train_pool_images} "
          f"train images cached)  settings: {settings}", flush=True)
    report: dict = {"command": sys.argv, "machine": machine(), "model": lm.source, "data": data,
                    "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__}}

    sections = set(args.sections.split(","))
    if "timing" in sections:
        keep = args.timing_keep or keep_for_half_gflops(base, args.imgsz)
        cand, how = pruned(base, keep)
        g0, g1 = gflops(base, args.imgsz), gflops(cand, args.imgsz)
        print(f"\n== timing: {how}: {g1:.3f} GFLOPs ({g1 / g0:.0%} of the model), steps {args.steps}, "
              f"imgsz {args.imgsz}, batch {args.batch}, {args.candidates} candidates")
        ev.evaluate(copy.deepcopy(cand), steps=1)  # warm-up: first-call kernel selection is not a candidate's cost
        runs = []
        for i in range(args.candidates):
            before = load()
            r = ev.evaluate(copy.deepcopy(cand))
            runs.append(r)
            print(f"  candidate {i}: {r.seconds:6.2f} s wall, {sum(r.cpu_seconds.values()):6.2f} CPU-s  "
                  f"mAP50-95 {r.map50_95:.4f}  wall {r.breakdown}  CPU {r.cpu_seconds}  ({before})", flush=True)
        mean = statistics.mean(r.seconds for r in runs)
        stages = {k: statistics.mean(r.breakdown.get(k, 0.0) for r in runs) for k in runs[0].breakdown}
        cpu = {k: statistics.mean(r.cpu_seconds.get(k, 0.0) for r in runs) for k in runs[0].cpu_seconds}
        cpu_mean = sum(cpu.values())
        print(f"  mean {mean:.2f} s per candidate; per stage: "
              + ", ".join(f"{k} {v:.2f} s ({v / mean:.0%})" for k, v in stages.items()))
        print(f"  mean {cpu_mean:.2f} CPU-s per candidate ({settings.threads or torch.get_num_threads()} threads); "
              "per stage: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
        print("  after:", load())
        report["timing"] = {"keep": keep, "how": how, "gflops": g1, "gflops_full": g0, "seconds_mean": mean,
                            "stages_mean": stages, "cpu_seconds_mean": cpu_mean, "cpu_stages_mean": cpu,
                            "seconds": [r.seconds for r in runs], "load_after": load()}

    if "ablation" in sections:
        cand, how = pruned(base, args.keep)
        print(f"\n== ablation at keep {args.keep}: {how} ({gflops(cand, args.imgsz):.3f} GFLOPs)")
        rows = [("unpruned, as loaded (no recalibration, 0 steps)", base, False, 0),
                ("unpruned, recalibrated + steps", base, True, args.steps),
                ("pruned, no recalibration, 0 steps", cand, False, 0),
                ("pruned, recalibrated, 0 steps", cand, True, 0),
                (f"pruned, recalibrated + {args.steps} steps", cand, True, args.steps)]
        report["ablation"] = []
        for name, m, recal, steps in rows:
            r = ev.evaluate(copy.deepcopy(m), recalibrate=recal, steps=steps)
            print(f"  {name:48s} mAP50 {r.map50:.4f}  mAP50-95 {r.map50_95:.4f}  ({r.seconds:.1f} s)", flush=True)
            report["ablation"].append({"case": name, "map50": r.map50, "map50_95": r.map50_95, "seconds": r.seconds,
                                       "train_loss": list(r.train_loss)})
    if "precision" in sections:
        cand, how = pruned(base, args.keep)
        fp32 = ProxyEvaluator(data, ProxySettings(**{**vars_settings(settings), "amp": False}))
        print(f"\n== precision: {ev.precision} vs fp32 scores, keep {args.keep} ({how})")
        report["precision"] = []
        for name, m, recal, steps in (("unpruned, 0 steps", base, False, 0),
                                      ("pruned, recalibrated, 0 steps", cand, True, 0),
                                      (f"pruned, recalibrated + {args.steps} steps", cand, True, args.steps)):
            a = ev.evaluate(copy.deepcopy(m), recalibrate=recal, steps=steps)
            b = fp32.evaluate(copy.deepcopy(m), recalibrate=recal, steps=steps)
            print(f"  {name:40s} {ev.precision}: mAP50-95 {a.map50_95:.4f} ({a.seconds:5.1f} s)   "
                  f"fp32: {b.map50_95:.4f} ({b.seconds:5.1f} s)", flush=True)
            report["precision"].append({"case": name, "amp": a.map50_95, "fp32": b.map50_95,
                                        "amp_seconds": a.seconds, "fp32_seconds": b.seconds})

    if "lr" in sections:
        cand, how = pruned(base, args.keep)
        print(f"\n== finetune learning rate, keep {args.keep} ({how}), recalibrated + {args.steps} steps")
        report["lr"] = []
        for lr in (float(x) for x in args.lrs.split(",")):
            e = ProxyEvaluator(data, ProxySettings(**{**vars_settings(settings), "lr": lr}))
            r = e.evaluate(copy.deepcopy(cand))
            print(f"  lr {lr:g}: mAP50 {r.map50:.4f}  mAP50-95 {r.map50_95:.4f}  loss {r.train_loss}", flush=True)
            report["lr"].append({"lr": lr, "map50": r.map50, "map50_95": r.map50_95, "train_loss": r.train_loss})

    if "crosscheck" in sections:
        crosscheck(args, data, lm, report)
    print("\nat end:", load())
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
