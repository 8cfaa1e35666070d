"""Train the demo baseline: an Ultralytics yolov8n, from random weights, on the generated demo dataset.

This is the recipe that produced the shipped `autoprune/demo/baseline.pt`; `autoprune demo --train` runs it with the
defaults below. `task="segment"` / "pose" / "obb" trains that task's yolov8n on the same scenes' labels of that task,
starting from the shipped detection baseline's weights wherever the shapes match (backbone, neck, the box and class
branches): the task demo models the benchmarks search and finetune (no task checkpoint ships; only this one binary
does). It uses Ultralytics' own trainer, so the result is an ordinary Ultralytics checkpoint
(`weights/best.pt`, stripped to FP16 by the trainer), and Ultralytics' `results.csv` keeps the per-epoch validation
metrics that show the plateau.

Example:
    >>> from autoprune.demo.train import train_baseline
    >>> result = train_baseline(Path("runs/demo/exp1"), epochs=100)
    >>> result["weights"].relative_to(Path.cwd())
    PosixPath('runs/demo/exp1/train/weights/best.pt')
"""

from __future__ import annotations

import csv
from pathlib import Path

from autoprune.demo import DEMO_IMGSZ, ensure_demo_data

MODEL_YAML = "yolov8n.yaml"
TASK_MODEL_YAMLS = {"detect": MODEL_YAML, "segment": "yolov8n-seg.yaml", "pose": "yolov8n-pose.yaml", "obb": "yolov8n-obb.yaml"}
DEFAULT_EPOCHS = 100
DEFAULT_PATIENCE = 30
DEFAULT_BATCH = 16

# Everything else the shipped baseline was trained with. nbs=16 (instead of Ultralytics' 64) makes the optimizer step
# after every batch of 16 rather than accumulating 4 batches: four times more updates for the same CPU time, which a
# from-scratch model on a small dataset needs. The rest are Ultralytics' defaults spelled out, plus what an offline CPU
# run needs (no AMP check, no plots: both would try to download).
FIXED_ARGS = dict(
    nbs=16,
    optimizer="auto",
    workers=2,  # on a CPU Ultralytics' trainer uses 0 (loads in the main process) whatever this says
    seed=0,
    deterministic=True,
    amp=False,
    plots=False,
    cache=False,
    pretrained=False,
    close_mosaic=10,
    val=True,
    verbose=True,
)


def train_baseline(
    run_dir: Path,
    *,
    epochs: int = DEFAULT_EPOCHS,
    imgsz: int = DEMO_IMGSZ,
    device: str = "cpu",
    batch: int = DEFAULT_BATCH,
    patience: int = DEFAULT_PATIENCE,
    data_yaml: str | Path | None = None,
    task: str = "detect",
    init: str | Path | None = None,
    model_yaml: str | None = None,
) -> dict:
    """Train `model_yaml` (default: `task`'s yolov8n, `TASK_MODEL_YAMLS`) on the demo data of `task` into
    `run_dir/train/`; return where the weights are and the final validation metrics.

    `init` is a checkpoint whose weights of matching shape start the training (Ultralytics' `pretrained`); None trains
    from random weights, as the detection baseline was. The demo data is generated first if needed. `run_dir` must
    exist (see `autoprune.runs.new_run_dir`); nothing outside it is written, and the shipped `baseline.pt` is never
    touched.
    """
    from autoprune import _ultralytics
    from autoprune.proxy import TASK_METRICS, metric_keys
    from ultralytics import YOLO

    if task not in TASK_MODEL_YAMLS:
        raise ValueError(f"task must be one of {sorted(TASK_MODEL_YAMLS)}, got {task!r}")
    _ultralytics.set_verbose(True)
    data_yaml = Path(data_yaml) if data_yaml is not None else ensure_demo_data(task)
    run_dir = Path(run_dir).resolve()
    model = YOLO(model_yaml or TASK_MODEL_YAMLS[task])
    model.train(
        data=str(data_yaml), imgsz=imgsz, epochs=epochs, device=device, batch=batch, patience=patience,
        project=str(run_dir), name="train", exist_ok=False, **recipe_args(init),
    )  # fmt: skip
    save_dir = Path(model.trainer.save_dir)
    best, last = save_dir / "weights" / "best.pt", save_dir / "weights" / "last.pt"
    metrics = model.trainer.metrics or {}
    curve = read_curve(save_dir / "results.csv")
    best_row = max(curve, key=lambda r: r["mAP50-95"]) if curve else None
    return {
        "run_dir": run_dir,
        "weights": best,
        "last": last,
        "results_csv": save_dir / "results.csv",
        "data": data_yaml,
        "epochs_run": len(curve),
        "best_epoch": best_row["epoch"] if best_row else None,
        "mAP50": round(float(metrics.get("metrics/mAP50(B)", float("nan"))), 4),
        "mAP50-95": round(float(metrics.get("metrics/mAP50-95(B)", float("nan"))), 4),
        "metric": TASK_METRICS[task][0],  # the task's own figure (mask mAP50-95 for segment; box for detect)
        "metric_map50_95": round(float(metrics.get(metric_keys(task)[1], float("nan"))), 4),
    }


def recipe_args(init: str | Path | None = None) -> dict:
    """The trainer arguments every demo training fixes (`FIXED_ARGS`), with `init` as Ultralytics' `pretrained`."""
    return FIXED_ARGS if init is None else dict(FIXED_ARGS, pretrained=str(init))


def read_curve(results_csv: str | Path) -> list[dict]:
    """Per-epoch validation metrics from an Ultralytics `results.csv`: [{epoch, mAP50, mAP50-95, elapsed_s}].

    `elapsed_s` is the training time since the start of the run, as Ultralytics logs it.
    """
    path = Path(results_csv)
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            r = {k.strip(): v for k, v in r.items()}
            rows.append(
                {
                    "epoch": int(float(r["epoch"])),
                    "mAP50": float(r["metrics/mAP50(B)"]),
                    "mAP50-95": float(r["metrics/mAP50-95(B)"]),
                    "elapsed_s": float(r.get("time", "nan")),
                }
            )
    return rows
