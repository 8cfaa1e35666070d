"""Show the built-in demo (generated dataset and shipped baseline, with its measured val mAP), or retrain the baseline.

    autoprune demo [--val-images N] [--refresh] [--json]
    autoprune demo --train [--task detect] [--model YAML] [--init PATH] [--epochs N] [--imgsz 320] [--device auto] [--batch 16] [--patience 30] [--project DIR] [--name NAME] [--exist-ok]

Without `--train` it generates the demo dataset if needed, then prints where the data and the model are and the
baseline's mAP50 / mAP50-95 on the val split, measured with Ultralytics' validator (cached by the model file's hash).
With `--train` it reproduces the baseline into `PROJECT/NAME/` (default `runs/demo/expN/`) and prints where the new weights are; the shipped
`baseline.pt` is never overwritten. `--task segment` (or pose, obb) trains that task's yolov8n on the same scenes'
labels of that task, starting from the shipped detection baseline's weights where shapes match (`--init` names
another checkpoint, `--init none` starts from random weights): the task models the benchmarks prune. `--model yolo11n.yaml` trains
another architecture on the demo (from random weights unless `--init`), with the shipped recipe.
"""

from __future__ import annotations

import argparse

from autoprune.errors import UserError
from autoprune.imgsz import check_imgsz

_TRAIN_ONLY = ("task", "model", "init", "epochs", "imgsz", "device", "batch", "patience", "project", "name", "exist_ok")
_SHOW_ONLY = ("val_images", "refresh")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of `autoprune demo`."""
    parser.add_argument("--train", action="store_true", help="retrain the baseline into PROJECT/NAME/ (runs/demo/expN)")
    parser.add_argument("--task", choices=("detect", "segment", "pose", "obb"), default=None,
                        help="the task's yolov8n to train on the demo scenes (default: detect, the shipped baseline)")
    parser.add_argument("--model", default=None, metavar="YAML",
                        help="an Ultralytics model YAML to train instead (its task is the data's; default: yolov8n)")
    parser.add_argument("--init", default=None, metavar="PATH",
                        help="checkpoint whose matching weights start training; 'none' for random (default: random for"
                             " detect, the shipped detection baseline for the other tasks)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the shipped recipe's)")
    parser.add_argument("--imgsz", type=int, default=None, help="training image size (default: the demo's, 320)")
    from autoprune.cli._common import add_device_argument

    add_device_argument(parser, "training device")
    parser.add_argument("--batch", type=int, default=None, help="training batch size (default: 16)")
    parser.add_argument("--patience", type=int, default=None, help="early-stopping patience in epochs (default: 30)")
    from autoprune.cli._common import add_run_arguments

    add_run_arguments(parser, "demo")
    parser.add_argument("--val-images", type=int, default=None, help="validate on the first N val images only")
    parser.add_argument("--refresh", action="store_true", help="measure the baseline again, ignoring the cache")


def run(args: argparse.Namespace) -> dict:
    """Show the demo (default) or retrain the baseline (`--train`)."""
    if args.train:
        misplaced = [f for f in _SHOW_ONLY if getattr(args, f) not in (None, False)]
        if misplaced:
            raise UserError(f"--{misplaced[0].replace('_', '-')} does not apply with --train")
        return _train(args)
    misplaced = [f for f in _TRAIN_ONLY
                 if not (getattr(args, f) is None or getattr(args, f) is False or (f, getattr(args, f)) == ("device", "auto"))]
    if misplaced:
        raise UserError(f"--{misplaced[0].replace('_', '-')} only applies with --train")
    return _show(args)


def _show(args) -> dict:
    from autoprune.demo import (
        DEMO_IMGSZ,
        dataset_stats,
        demo_data_spec,
        demo_home,
        demo_metrics,
        demo_model_path,
        ensure_demo_data,
        file_sha256,
    )
    from autoprune.demo.dataset import CLASS_NAMES

    if args.val_images is not None and args.val_images < 1:
        raise UserError(f"--val-images must be >= 1, got {args.val_images}")
    model = demo_model_path()
    if not model.is_file():
        raise UserError(f"the shipped demo model is missing: {model} (reinstall autoprune)")
    spec = demo_data_spec()
    data = ensure_demo_data()
    stats = dataset_stats(data)
    metrics = demo_metrics(model, val_images=args.val_images, refresh=args.refresh)
    result = {
        "home": demo_home(),
        "data": data,
        "data_seed": spec.seed,
        "classes": list(CLASS_NAMES),
        "train_images": stats["train"]["images"],
        "train_boxes": stats["train"]["boxes"],
        "val_images": stats["val"]["images"],
        "val_boxes": stats["val"]["boxes"],
        "model": model,
        "model_sha256": file_sha256(model),
        "model_mb": round(model.stat().st_size / 2**20, 2),
        "imgsz": DEMO_IMGSZ,
        "validated_images": metrics["images"],
        "mAP50": metrics["mAP50"],
        "mAP50-95": metrics["mAP50-95"],
        "metrics_cached": metrics["cached"],
    }
    if not args.json:
        subset = "" if metrics["images"] == stats["val"]["images"] else f" (first {metrics['images']} images)"
        print(f"demo data : {data}")
        print(f"            {len(CLASS_NAMES)} classes: {', '.join(CLASS_NAMES)}")
        print(
            f"            train {result['train_images']} images / {result['train_boxes']} boxes, "
            f"val {result['val_images']} images / {result['val_boxes']} boxes, {spec.imgsz}x{spec.imgsz}"
        )
        print(f"demo model: {model} ({result['model_mb']} MB)")
        cached = ", cached" if metrics["cached"] else ""
        print(f"val{subset} at imgsz {DEMO_IMGSZ}: mAP50 {metrics['mAP50']:.4f}  mAP50-95 {metrics['mAP50-95']:.4f}"
              f"  (measured{cached})")  # fmt: skip
    return result


def _train(args) -> dict:
    from autoprune.demo import DEMO_IMGSZ
    from autoprune.demo import train as recipe
    from autoprune.runs import new_run_dir, save_args

    epochs = recipe.DEFAULT_EPOCHS if args.epochs is None else args.epochs
    imgsz = DEMO_IMGSZ if args.imgsz is None else args.imgsz
    from autoprune.devices import ultralytics_device

    batch = recipe.DEFAULT_BATCH if args.batch is None else args.batch
    patience = recipe.DEFAULT_PATIENCE if args.patience is None else args.patience
    if epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {epochs}")
    check_imgsz(imgsz, minimum=64)
    if batch < 1:
        raise UserError(f"--batch must be >= 1, got {batch}")
    if patience < 1:
        raise UserError(f"--patience must be >= 1, got {patience}")
    task, model_yaml = _model_and_task(args.model, args.task)
    init = _init_weights(args.init, task, custom=model_yaml is not None)
    device = ultralytics_device(args.device)  # checked against this machine; Ultralytics' spelling
    run_dir = new_run_dir("demo", args.name, project=args.project, exist_ok=args.exist_ok)
    save_args(
        run_dir, args, task=task, init=None if init is None else str(init), epochs=epochs, imgsz=imgsz, device=device,
        batch=batch, patience=patience, model=model_yaml or recipe.TASK_MODEL_YAMLS[task],
        fixed=recipe.recipe_args(init),
        project=str(run_dir.parent), name=run_dir.name,
    )  # fmt: skip
    result = recipe.train_baseline(
        run_dir, epochs=epochs, imgsz=imgsz, device=device, batch=batch, patience=patience, task=task, init=init,
        model_yaml=model_yaml,
    )
    if not args.json:
        print(f"trained {result['epochs_run']} epochs in {run_dir} (best epoch {result['best_epoch']})")
        print(f"weights: {result['weights']}")
        extra = f"  {result['metric']} {result['metric_map50_95']:.4f}" if task != "detect" else ""
        print(f"final val: mAP50 {result['mAP50']:.4f}  mAP50-95 {result['mAP50-95']:.4f}{extra}")
        print(f"curve  : {result['results_csv']}")
    return result


def _model_and_task(model: str | None, task: str | None) -> tuple[str, str | None]:
    """(task, model YAML or None for the task's yolov8n): `--model` must be a model YAML of a task the demo has data
    for, the same as `--task` when both are given."""
    from ultralytics.nn.tasks import guess_model_task

    from autoprune.demo.train import TASK_MODEL_YAMLS
    from autoprune.models import load_model

    if model is None:
        return task or "detect", None
    if not model.endswith((".yaml", ".yml")):
        raise UserError(f"--model must be an Ultralytics model YAML (training starts from random or --init weights), "
                        f"got {model!r}")
    own = guess_model_task(load_model(model).model)  # one error line for a YAML that does not exist or parse
    if own not in TASK_MODEL_YAMLS:
        raise UserError(f"--model {model} is a {own} model; the demo trains detect, segment, pose and obb models")
    if task is not None and task != own:
        raise UserError(f"--model {model} is a {own} model, not {task} (--task)")
    return own, model


def _init_weights(init: str | None, task: str, custom: bool = False):
    """The checkpoint that starts training: `--init` as given ('none': random), else the shipped detection baseline for
    a task other than detect with its yolov8n (its backbone, neck and box/class branches fit every task's yolov8n),
    else random."""
    from pathlib import Path

    from autoprune.demo import demo_model_path

    if init is None:
        return None if task == "detect" or custom else demo_model_path()
    if init.lower() == "none":
        return None
    path = Path(init).expanduser()
    if not path.is_file() or path.suffix != ".pt":
        raise UserError(f"--init must be an Ultralytics .pt checkpoint or 'none', got {init!r}")
    return path
