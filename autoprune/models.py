"""Load YOLO models from what a user names, fingerprint them, and save checkpoints Ultralytics can read.

`--model` accepts a `.pt` checkpoint, an Ultralytics model YAML (a file, or a name such as `yolov8n.yaml` that
Ultralytics ships, built with random weights from a fixed seed), or nothing for the embedded demo model. The tasks
autoprune handles are in `TASKS`: detection, instance segmentation, pose, oriented boxes and classification, each
with its stock head (`HEADS`); other models (RT-DETR, World, YOLOE, depth, semantic segmentation) are refused.
"""

from __future__ import annotations

import errno
import hashlib
import re
from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from autoprune import _ultralytics  # noqa: F401  (offline, quiet Ultralytics before it is used)
from autoprune.errors import UserError


# task -> (the Ultralytics model class's name, the head classes' names it may end in)
TASKS = {
    "detect": ("DetectionModel", ("Detect", "v10Detect")),
    "segment": ("SegmentationModel", ("Segment", "Segment26")),
    "pose": ("PoseModel", ("Pose", "Pose26")),
    "obb": ("OBBModel", ("OBB", "OBB26")),
    "classify": ("ClassificationModel", ("Classify",)),
}
# The tasks whose labels autoprune reads: the proxy's loss and validator, sparse training, finetuning and a data
# criterion's ranking handle them (`require_task`); every task in `TASKS` prunes without data.
LABELLED_TASKS = ("detect", "segment", "pose", "obb", "classify")


@dataclass
class LoadedModel:
    """A YOLO model and where it came from.

    Attributes:
        model: the Ultralytics model (`DetectionModel`, `SegmentationModel`, `PoseModel`, `OBBModel` or
            `ClassificationModel`), in float32 and eval mode.
        source: what the user named (path or YAML name), as a string.
        ckpt: the checkpoint dictionary it was loaded from, or an empty dict for a YAML model.
        fingerprint: a hash of the weights and architecture (see `fingerprint`).
    """

    model: nn.Module
    source: str
    ckpt: dict
    fingerprint: str

    @property
    def names(self) -> dict:
        """Class names by index."""
        return dict(getattr(self.model, "names", {}) or {})

    @property
    def task(self) -> str:
        """The model's task: one of `TASKS`."""
        return model_task(self.model)


def model_task(model: nn.Module) -> str:
    """The task of an Ultralytics model of a class autoprune handles (`TASKS`), by its class.

    Example:
        >>> from ultralytics.nn.tasks import PoseModel
        >>> model_task(PoseModel("yolov8n-pose.yaml", verbose=False))
        'pose'
    """
    from autoprune.wrappers import detection_model

    kind = type(detection_model(model)).__name__
    for task, (cls_name, _) in TASKS.items():
        if kind == cls_name:
            return task
    raise ValueError(f"{kind} is not a model class autoprune handles")


def require_task(loaded: LoadedModel, command: str, tasks: tuple[str, ...] = LABELLED_TASKS) -> None:
    """A `UserError` naming the model's task and `command` where `command` does not handle that task yet.

    The stages that read labels and score a model (the proxy's loss and validator, sparse training, finetuning)
    handle the `LABELLED_TASKS`; `groups`, `cost` and `prune` without data handle every task in `TASKS`.
    """
    task = loaded.task
    if task not in tasks:
        names = " and ".join(tasks) if len(tasks) < 3 else f"{', '.join(tasks[:-1])} and {tasks[-1]}"
        raise UserError(f"autoprune {command} handles {names} models only so far, and {loaded.source} is "
                        f"a {task} model (groups, cost and prune --criterion l1 --no-val handle it)")


def head_classes(model: nn.Module) -> int:
    """How many classes the model's head predicts: a Detect head's `nc`, a Classify head's linear outputs.

    Example:
        >>> from ultralytics.nn.tasks import ClassificationModel
        >>> head_classes(ClassificationModel("yolov8n-cls.yaml", nc=8, verbose=False))
        8
    """
    from autoprune.wrappers import detection_model

    head = detection_model(model).model[-1]
    nc = getattr(head, "nc", None)
    return int(nc) if nc is not None else int(head.linear.out_features)


def keypoint_shape(model: nn.Module) -> tuple[int, int] | None:
    """A pose model's `kpt_shape` (keypoints, values per keypoint), read from its head; None for other tasks.

    Example:
        >>> from ultralytics.nn.tasks import PoseModel
        >>> keypoint_shape(PoseModel("yolov8n-pose.yaml", verbose=False))
        (17, 3)
    """
    from autoprune.wrappers import detection_model

    shape = getattr(detection_model(model).model[-1], "kpt_shape", None)
    return tuple(int(v) for v in shape) if shape is not None else None


def load_model(spec: str | Path | None, *, seed: int = 0) -> LoadedModel:
    """Load a YOLO model from a checkpoint path, a model YAML, or (spec None) the embedded demo.

    Raises `UserError` for a missing file, a file that is not a checkpoint, or a model of a task or head autoprune
    does not handle (`TASKS`).

    Example:
        >>> lm = load_model("yolov8n.yaml")
        >>> type(lm.model).__name__
        'DetectionModel'
    """
    if spec is None:
        from autoprune.demo import demo_model_path

        spec = demo_model_path()
    spec = str(spec)
    path = Path(spec).expanduser()
    if spec.endswith((".yaml", ".yml")):
        model, ckpt = _build_from_yaml(spec, seed), {}
    elif path.suffix == ".pt":
        if not path.is_file():
            raise UserError(f"model file not found: {spec} (autoprune never downloads weights)")
        model, ckpt = _load_checkpoint(path)
    else:
        raise UserError(f"--model must be a .pt checkpoint or a model .yaml, got {spec!r}")
    _check_task(model, spec)
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return LoadedModel(model=model, source=spec, ckpt=ckpt, fingerprint=fingerprint(model))


def _build_from_yaml(spec: str, seed: int) -> nn.Module:
    from ultralytics.nn.tasks import guess_model_task, yaml_model_load

    try:
        cfg = yaml_model_load(spec)
    except (FileNotFoundError, OSError) as e:
        raise UserError(f"model YAML not found: {spec}") from e
    except Exception as e:  # a broken YAML surfaces as one of several parser errors
        raise UserError(f"cannot read model YAML {spec}: {e}") from e
    if not isinstance(cfg, dict) or "backbone" not in cfg or "head" not in cfg:
        raise UserError(f"{spec} is not an Ultralytics model YAML (it needs 'backbone' and 'head')")
    task = guess_model_task(cfg)
    if task not in TASKS:
        head = cfg["head"][-1][2] if cfg["head"] and len(cfg["head"][-1]) > 2 else "its head"
        what = f"a {task} model" if task else f"a model whose task Ultralytics cannot tell (head {head})"
        raise UserError(f"{spec} is {what}; autoprune handles {_task_list()} models")
    from ultralytics.nn import tasks

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # a YAML model's random weights are part of its identity: make them reproducible
    from autoprune._ultralytics import quiet

    try:
        with quiet():  # ClassificationModel prints its summary whatever `verbose` says
            model = getattr(tasks, TASKS[task][0])(cfg, verbose=False)
    except Exception as e:
        raise UserError(f"cannot build a model from {spec}: {type(e).__name__}: {e}") from e
    finally:
        torch.random.set_rng_state(state)
    return model


def _load_checkpoint(path: Path) -> tuple[nn.Module, dict]:
    from ultralytics.nn.tasks import load_checkpoint

    if path.stat().st_size == 0:
        raise UserError(f"{path} is not a loadable Ultralytics checkpoint: the file is empty")
    try:
        model, ckpt = load_checkpoint(path)
    except (TypeError, RuntimeError, EOFError, KeyError, AttributeError, ValueError) as e:
        raise UserError(f"{path} is not a loadable Ultralytics checkpoint: {_why_not_loadable(e, path)}") from e
    except PermissionError as e:
        raise UserError(f"cannot read {path}: permission denied") from e
    except OSError as e:
        if e.errno != errno.EINVAL:  # torch's zip reader: EINVAL for a zip archive cut short
            raise
        raise UserError(f"{path} is not a loadable Ultralytics checkpoint: the file is truncated or corrupted "
                        "(its zip archive cannot be read)") from e
    except Exception as e:  # pickle errors and friends from a file that is not a checkpoint at all
        if type(e).__module__ in ("pickle", "_pickle", "zipfile"):
            raise UserError(f"{path} is not a loadable Ultralytics checkpoint: {_why_not_loadable(e, path)}") from e
        raise
    return model, ckpt


def _why_not_loadable(e: BaseException, path: Path) -> str:
    """One clause saying why a checkpoint did not load, from the innermost error (Ultralytics wraps torch's)."""
    import pickle

    root = e
    while root.__cause__ is not None:
        root = root.__cause__
    text = str(root).strip().splitlines()[0] if str(root).strip() else ""
    if isinstance(root, EOFError):
        return "the file ends too early (it is truncated)"
    if isinstance(root, pickle.UnpicklingError) or type(root).__module__ in ("pickle", "_pickle"):
        return "its bytes are not a PyTorch checkpoint (the file is corrupted, or another kind of file)"
    if isinstance(root, RuntimeError) and "PytorchStreamReader" in text:
        return "the file is truncated or corrupted (its zip archive cannot be read)"
    if isinstance(root, RuntimeError) and "inline_container" in text:
        return "it is a zip archive, but not one PyTorch wrote"
    held = re.match(r"'(\w+)' object has no attribute", text) if isinstance(root, AttributeError) else None
    if held:
        return f"it holds a {held.group(1)}, not an Ultralytics model"
    # Ultralytics' own messages: "ERROR ❌️ PATH is a TorchScript archive, not ... checkpoint.\nRecommended ..."
    text = re.sub(r"^ERROR\W*", "", text)
    if text.startswith(f"{path} "):
        text = "it " + text[len(str(path)) + 1:]
    text = text.split(". ", 1)[0].rstrip(".")
    return text or type(root).__name__


def _task_list() -> str:
    return ", ".join(TASKS)


def _check_task(model: nn.Module, spec: str) -> None:
    """A `UserError` unless `model` is one of `TASKS`' model classes ending in one of that task's heads."""
    kind = type(model).__name__
    head = model.model[-1] if isinstance(getattr(model, "model", None), nn.Sequential) else None
    heads = next((h for cls_name, h in TASKS.values() if cls_name == kind), None)
    if heads is None:
        raise UserError(f"{spec} is a {kind}, not a model of a task autoprune handles ({_task_list()})")
    if type(head).__name__ not in heads:
        raise UserError(f"{spec} is a {kind} with a {type(head).__name__} head; autoprune handles the stock heads "
                        f"of its task ({' / '.join(heads)})")


def fingerprint(model: nn.Module) -> str:
    """A short, stable hash of a model's architecture and weights.

    Two models with the same fingerprint prune to the same result for the same genome: it is what a trial stores
    to refuse replaying on a different model.
    """
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.dtype.is_floating_point:
            t = t.float()  # fp16 and fp32 copies of the same weights hash alike
        h.update(t.numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


# What a derived checkpoint keeps of its parent's train_args: what describes the data, not how the parent was
# trained (the keys Ultralytics itself keeps when it reloads a checkpoint, `Model._reset_ckpt_args`).
DATA_ARGS = ("data", "imgsz", "task", "single_cls")


def save_checkpoint(model: nn.Module, path: str | Path, *, base_ckpt: dict | None = None, meta: dict | None = None,
                    derived: bool = False):
    """Save `model` the way Ultralytics saves its own final checkpoints (FP16, no optimizer), so sizes compare.

    The file loads with `ultralytics.YOLO(path)` in a process that never imports autoprune: it holds only stock
    Ultralytics and torch classes and plain Python data. `meta` (plain types only) is stored under "autoprune", a key
    Ultralytics ignores.

    `derived`: `model` was made from `base_ckpt`'s model without training (a prune): the parent's train_metrics and
    train_results describe another model and are dropped, and of its train_args only `DATA_ARGS` are kept.
    """
    from ultralytics import __version__
    from ultralytics.utils import DEFAULT_CFG_DICT, DEFAULT_CFG_KEYS

    m = deepcopy(model).cpu()
    m.criterion = None  # the loss holds references Ultralytics strips from its checkpoints too
    if hasattr(m, "args") and not isinstance(m.args, dict):
        m.args = dict(vars(m.args))
    m.half()
    for p in m.parameters():
        p.requires_grad = False
    base = dict(base_ckpt or {})
    parent_args = base.get("train_args") or {}
    if derived:
        base = {k: v for k, v in base.items() if k not in ("train_metrics", "train_results")}
        parent_args = {k: v for k, v in parent_args.items() if k in DATA_ARGS}
    args = {**DEFAULT_CFG_DICT, **parent_args}
    task = next((t for t, (cls_name, _) in TASKS.items() if type(m).__name__ == cls_name), None)
    if task is not None:  # Ultralytics takes a loaded model's task from here before its architecture
        args["task"] = task
    ckpt = {
        **{k: v for k, v in base.items() if k not in ("model", "ema", "optimizer", "scaler", "stopper")},
        "date": datetime.now().astimezone().isoformat(),
        "version": __version__,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "model": m,
        "ema": None,
        "optimizer": None,
        "scaler": None,
        "updates": None,
        "stopper": None,
        "best_fitness": None,
        "epoch": -1,
        "train_args": {k: v for k, v in args.items() if k in DEFAULT_CFG_KEYS},
    }
    if meta is not None:
        ckpt["autoprune"] = meta
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint under the final name
    return path
