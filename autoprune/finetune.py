"""Distillation-assisted finetune of a pruned detector, with Ultralytics' own trainer.

Two things a pruned model needs from its finetune, and how this module provides them:

1. **Train the pruned object itself.** Ultralytics' `Model.train()` rebuilds the network from the checkpoint's YAML,
   which cannot describe per-group channel counts: the classic bug of pruning tutorials is a finetune that silently
   trains the unpruned architecture. `PrunedModelTrainer` is a `DetectionTrainer` that is handed the model object:
   `setup_model` installs it, and `get_model` (the YAML path) raises.

2. **Learn from the unpruned model.** The unpruned model is the teacher. `DistillationLoss` is installed as the
   student's `criterion` (the hook Ultralytics' `DetectionModel.loss` calls) for the length of the training only:
   detection loss + `weight` x head distillation (+ `neck_weight` x neck feature distillation). It is a plain Python
   object, not an `nn.Module` attribute of the student, so it never reaches the EMA, `last.pt`, `best.pt` or the
   state dict; the teacher and the neck projector live inside it. Everything written to disk is a stock Ultralytics
   checkpoint.

3. **Reach DDP workers.** On several GPUs Ultralytics rebuilds the trainer in one process per GPU from its class and
   arguments alone; the student and teacher go there as files, named by a per-run subclass's `WorkerState`
   (`finetune_trainer`), and the workers' results come back as a summary file.

The distillation losses and `DistillationLoss` live in `autoprune.distill` (re-exported here).

Ultralytics 8.4 ships its own distillation (`ultralytics.nn.distill_model.DistillationModel`, `distill_model=`): a
wrapper model with forward hooks on the neck features and a projector, which does not distill the head outputs and
makes the wrapper the thing the trainer trains and checkpoints. This module keeps the stock `DetectionModel` as the
trained and saved object instead.

Example:
    >>> from autoprune.finetune import DistillSettings, finetune
    >>> result = finetune(pruned, data_config, teacher=unpruned, distill=DistillSettings(weight=1.0),
    ...                   epochs=10, imgsz=320, save_dir=Path("runs/apply/x/train"))
    >>> result.best   # a stock Ultralytics checkpoint of the finetuned pruned model
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import pickle
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from autoprune import _ultralytics  # noqa: F401  (offline, quiet Ultralytics before it is used)
from autoprune.distill import (  # noqa: F401  (re-exported: finetune's public names include the distillation)
    DistillationLoss,
    DistillSettings,
    FeatureMatch,
    FeatureProjector,
    detect_input_channels,
    head_distillation,
    head_term,
    neck_distillation,
)
from autoprune.ddp import (  # noqa: F401  (re-exported)
    SUMMARY_ARGS,
    WorkerState,
    _average_gradients,
    _broadcast_parameters,
    check_multi_gpu,
)
from autoprune.schedule import (  # noqa: F401  (re-exported: apply and the benchmarks take the schedule from here)
    FinetuneSchedule,
    short_schedule,
)

__all__ = [
    "DistillSettings",
    "DistillationLoss",
    "FeatureMatch",
    "FeatureProjector",
    "FinetuneResult",
    "FinetuneSchedule",
    "PrunedModelTrainer",
    "WorkerState",
    "check_multi_gpu",
    "finetune",
    "finetune_trainer",
    "head_distillation",
    "head_term",
    "neck_distillation",
    "offline_ultralytics",
    "pickled_modules",
    "short_schedule",
    "validate_checkpoint",
]


# ---------------------------------------------------------------------------------------------------- offline
_AMP_BAD_GPUS = re.compile(
    r"(nvidia|geforce|quadro|tesla).*?(1660|1650|1630|t400|t550|t600|t1000|t1200|t2000|k40m)", re.IGNORECASE
)  # the GPUs Ultralytics' check_amp refuses AMP on


def check_amp_offline(model: nn.Module) -> bool:
    """Ultralytics' AMP check without its download: the same GPU deny-list, then the model under training itself
    compared in float32 and under autocast on Ultralytics' bundled bus.jpg (instead of a downloaded yolo26n.pt).

    Returns False on the CPU (AMP does nothing there), on a deny-listed GPU, or when autocast gives non-finite or
    grossly different outputs; True otherwise.
    """
    from ultralytics.utils import ASSETS, LOGGER

    p = next(model.parameters())
    device = p.device
    if device.type != "cuda":
        return False
    gpu = torch.cuda.get_device_name(device)
    if _AMP_BAD_GPUS.search(gpu):
        LOGGER.warning(f"AMP: disabled on {gpu}, whose AMP Ultralytics knows to give NaN losses or zero mAP")
        return False
    x = _amp_probe_image(ASSETS / "bus.jpg", 256).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            a = _raw_first(model(x)).float()
            with torch.autocast("cuda", dtype=torch.float16):
                b = _raw_first(model(x)).float()
    finally:
        model.train(was_training)
    ok = bool(torch.isfinite(b).all()) and float((a - b).abs().mean()) < 0.5
    if ok:
        LOGGER.info("AMP: checks passed (offline, on the model being trained)")
    else:
        LOGGER.warning("AMP: float16 outputs differ from float32 ones; AMP disabled for this training")
    return ok


def _raw_first(y):
    return y[0] if isinstance(y, (tuple, list)) else y


def _amp_probe_image(path: Path, size: int) -> torch.Tensor:
    try:
        import cv2

        im = cv2.imread(str(path))
        if im is None:
            raise OSError(path)
        im = cv2.resize(im, (size, size))[:, :, ::-1].copy()
        return torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255
    except Exception:  # noqa: BLE001 - any image does; the check compares two precisions of one forward pass
        g = torch.Generator().manual_seed(0)
        return torch.rand(1, 3, size, size, generator=g)


@contextlib.contextmanager
def offline_ultralytics():
    """While training, validating or exporting: nothing in Ultralytics tries the network.

    - `check_det_dataset` ends with `check_font`, which asks the network for Arial.ttf when it is not installed;
      fonts only serve plots, which autoprune never draws, so the check is skipped;
    - the trainer's `check_amp` on CUDA loads (downloads) yolo26n.pt; `check_amp_offline` replaces it.

    It also writes nothing into the dataset's folder (`_ultralytics.no_label_caches`). The data itself is checked
    offline by `autoprune.data.load_data_config` before anything runs. The originals are restored on exit.
    """
    import ultralytics.data.utils as data_utils
    import ultralytics.engine.trainer as trainer_mod

    from autoprune._ultralytics import no_label_caches

    saved = [(data_utils, "check_font", data_utils.check_font), (trainer_mod, "check_amp", trainer_mod.check_amp)]
    data_utils.check_font = lambda *a, **k: None
    trainer_mod.check_amp = check_amp_offline
    try:
        with no_label_caches():
            yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)


# ---------------------------------------------------------------------------------------------------- the trainer
# The Ultralytics trainer of each task `finetune` trains (module, class); the pruned model is handed to it.
TRAINERS = {"detect": ("ultralytics.models.yolo.detect", "DetectionTrainer"),
            "segment": ("ultralytics.models.yolo.segment", "SegmentationTrainer"),
            "pose": ("ultralytics.models.yolo.pose", "PoseTrainer"),
            "obb": ("ultralytics.models.yolo.obb", "OBBTrainer"),
            "classify": ("ultralytics.models.yolo.classify", "ClassificationTrainer")}


@functools.lru_cache(maxsize=None)
def _trainer_class(task: str = "detect"):
    import importlib

    if task not in TRAINERS:
        raise ValueError(f"finetune trains {', '.join(TRAINERS)} models, got task {task!r}")
    module, cls = TRAINERS[task]
    Base = getattr(importlib.import_module(module), cls)

    class PrunedModelTrainer(Base):
        """A `DetectionTrainer` (the task's trainer: `SegmentationTrainer`, `PoseTrainer`, `OBBTrainer`) that
        trains the model object it is handed, never one rebuilt from a YAML.

        `student` is installed by `setup_model`; `get_model` raises. With a `teacher` and `distill` settings, the
        student's criterion is a `DistillationLoss` from the end of setup (after the EMA copy is made, so the EMA
        never holds the teacher) until training ends; the projector of the neck term joins the optimizer.

        A DDP worker builds it from Ultralytics' `(cfg, overrides, _callbacks)` alone: then the models, data and
        settings come from the class's `worker_state` (`WorkerState`, set on a per-run subclass by
        `finetune_trainer`), and `_do_train` applies `offline_ultralytics` and writes the summary itself.
        """

        worker_state: WorkerState | None = None

        def __init__(self, student: nn.Module | None = None, *, data=None, teacher: nn.Module | None = None,
                     distill: DistillSettings | None = None, overrides: dict | None = None, _callbacks=None,
                     schedule: FinetuneSchedule | None = None, features: FeatureMatch | None = None, cfg=None,
                     lr_scale: float = 1.0, warmup_bias_lr: float | None = None):
            from ultralytics.utils import DEFAULT_CFG

            if student is None:  # a DDP worker
                state = self.worker_state
                if state is None:
                    raise TypeError("PrunedModelTrainer trains the model it is handed (or a worker_state's file)")
                student, teacher = state.load_models()
                data, distill, schedule, features = state.data, state.distill, state.schedule, state.features
                lr_scale, warmup_bias_lr = state.lr_scale, state.warmup_bias_lr
            self._student = student
            self._teacher = teacher
            self._distill = distill if teacher is not None else None
            self._schedule = schedule
            self._lr_scale = float(lr_scale)
            self._warmup_bias_lr = warmup_bias_lr
            self._features = features if self._distill is not None else None
            self._data_config = data
            self.projector: FeatureProjector | None = None
            self.distill_loss: DistillationLoss | None = None
            super().__init__(cfg=DEFAULT_CFG if cfg is None else cfg, overrides=overrides, _callbacks=_callbacks)

        def get_dataset(self):
            # Ultralytics' check_det_dataset would download a dataset whose images are missing; the data config was
            # checked offline already (autoprune.data.load_data_config).
            data = self._data_config.ultralytics_dict()
            if self.args.single_cls:
                data.update(names={0: "item"}, nc=1)
            return data

        def setup_model(self):
            self.model = self._student
            return None

        def _get_warmup_iterations(self, num_batches):
            # Ultralytics caps the warm-up at epochs - 1 (none at all in a 1-epoch run); a short schedule's
            # warm-up is already a fraction of the finetune and is used as it is.
            if self._schedule is None:
                return super()._get_warmup_iterations(num_batches)
            return round(min(self.args.warmup_epochs, self.epochs) * num_batches)

        def get_model(self, cfg=None, weights=None, verbose=True):
            raise RuntimeError("PrunedModelTrainer trains the model it was handed; it never builds one from a YAML")

        def build_optimizer(self, model, *args, **kwargs):
            from ultralytics.utils.torch_utils import unwrap_model

            optimizer = super().build_optimizer(model, *args, **kwargs)
            if self._lr_scale != 1.0:  # x the rate Ultralytics chose (optimizer=auto's fit) or was given
                for g in optimizer.param_groups:
                    g["lr"] *= self._lr_scale  # before the scheduler reads it as each group's initial_lr
                self.args.lr0 = self.args.lr0 * self._lr_scale  # the summary reports the rate used
            if self._warmup_bias_lr is not None:  # optimizer=auto has just set it to 0; the warm-up reads it later
                self.args.warmup_bias_lr = float(self._warmup_bias_lr)
            if self._distill is not None and self._distill.neck_weight > 0:
                student = unwrap_model(model)  # the module inside DDP's wrapper
                device = next(student.parameters()).device
                self.projector = FeatureProjector(detect_input_channels(student),
                                                  detect_input_channels(self._teacher)).to(device)
                _broadcast_parameters(self.projector)  # outside DDP's wrapper: every rank starts from rank 0's
                like = next((g for g in optimizer.param_groups if g.get("param_group") in ("weight", "muon")),
                            optimizer.param_groups[0])
                optimizer.add_param_group({**{k: v for k, v in like.items() if k != "params"},
                                           "params": list(self.projector.parameters())})
            return optimizer

        def optimizer_step(self):
            if self.projector is not None and self.world_size > 1:
                _average_gradients(self.projector, self.world_size)  # DDP averages those of the student only
            super().optimizer_step()

        def _setup_train(self):
            from ultralytics.utils.torch_utils import unwrap_model

            super()._setup_train()
            if self._distill is not None:
                # A private frozen copy: the caller's teacher keeps its device, mode and requires_grad flags.
                teacher = copy.deepcopy(self._teacher).to(self.device).eval()
                if self.device.type == "cuda":
                    teacher = teacher.to(memory_format=torch.channels_last)
                for p in teacher.parameters():
                    p.requires_grad_(False)
                student = unwrap_model(self.model)  # under DDP, the module inside the wrapper
                self.distill_loss = DistillationLoss(student, teacher, self._distill, self.projector,
                                                     features=self._features)
                student.criterion = self.distill_loss

        def final_eval(self):
            # Ultralytics strips the optimizer from last.pt and best.pt, then validates best.pt again; `apply`
            # validates the result itself under the report's protocol, so only the stripping is kept.
            from ultralytics.utils.torch_utils import strip_optimizer

            ckpt = strip_optimizer(self.last) if self.last.exists() else {}
            if self.best.exists():
                strip_optimizer(self.best, updates={"train_results": ckpt.get("train_results")})

        def _do_train(self):
            # Runs where the training runs: in `finetune`'s process, or in a DDP worker, which `finetune`'s
            # patches do not reach and which returns nothing to it.
            if self.worker_state is None:
                return super()._do_train()
            from ultralytics.utils import RANK

            from autoprune._ultralytics import set_verbose

            set_verbose(bool(self.args.verbose))
            with offline_ultralytics():
                super()._do_train()
            if RANK in {-1, 0}:
                Path(self.worker_state.summary).write_text(json.dumps(self.summary()))

        def summary(self) -> dict:
            """What `finetune` reports of a finished training: AMP as used, the loss terms, the last validation's
            metrics, and the schedule's arguments as resolved (`optimizer=auto` picks the optimizer and lr0)."""
            return {"amp": bool(self.amp), "loss_names": list(self.loss_names),
                    "metrics": {k: float(v) for k, v in (self.metrics or {}).items()},
                    "args": {k: getattr(self.args, k) for k in SUMMARY_ARGS}}

    return PrunedModelTrainer


def __getattr__(name):  # PrunedModelTrainer is built on first use: importing Ultralytics' trainer is slow
    if name == "PrunedModelTrainer":
        return _trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class FinetuneResult:
    """What `finetune` leaves behind.

    Attributes:
        best: the trainer's best.pt (the best validation fitness), or last.pt when no epoch was validated.
        last: the trainer's last.pt.
        save_dir: the trainer's folder (weights/, results.csv, args.yaml).
        loss_names: the loss terms the trainer reported (detection terms, then kd_loss / kd_neck when distilling).
        amp: whether the trainer really used mixed precision.
        device: the device it trained on.
        seconds: wall time of the training.
        metrics: the trainer's last validation metrics.
        schedule: the optimizer and learning-rate settings the trainer used (Ultralytics' `optimizer=auto`
            resolved to what it picked).
    """

    best: Path
    last: Path
    save_dir: Path
    loss_names: tuple
    amp: bool
    device: str
    seconds: float
    metrics: dict = field(default_factory=dict)
    schedule: dict = field(default_factory=dict)


def ultralytics_device(device: torch.device) -> str:
    """Ultralytics' spelling of a device: 'cpu', 'mps' or the CUDA index."""
    return device.type if device.type in ("cpu", "mps") else str(device.index or 0)


def finetune_trainer(
    model: nn.Module,
    data,
    *,
    save_dir: Path,
    teacher: nn.Module | None = None,
    distill: DistillSettings | None = None,
    epochs: int = 20,
    imgsz: int = 320,
    batch: int = 16,
    device: torch.device | str = "cpu",
    amp: bool = True,
    workers: int = 2,
    seed: int = 0,
    verbose: bool = True,
    label: str = "pruned",
    extra: dict | None = None,
    schedule: FinetuneSchedule | None = None,
    features: FeatureMatch | None = None,
    task: str = "detect",
    workdir: Path | None = None,
    lr_scale: float = 1.0,
    warmup_bias_lr: float | None = None,
):
    """The Ultralytics trainer `finetune` trains `model` with, built and not yet trained (the arguments are
    `finetune`'s).

    With several GPUs in `device` ("0,1", "cuda:0,1"), its `train()` is Ultralytics' DDP launch: one worker process
    per GPU rebuilds the trainer from its class and arguments. The student and teacher are then saved into
    `workdir` (required, and it must outlive the training) and named, with the other settings, by the per-run
    subclass's `worker_state` (`WorkerState`).

    Example:
        >>> trainer = finetune_trainer(pruned, data, save_dir=Path("runs/x/train"), device="0,1", workdir=tmp)
        >>> type(trainer).worker_state.student   # tmp/student.pt, what each DDP worker trains
    """
    from autoprune.devices import resolve_devices

    devices = resolve_devices(device)
    gpus = len(devices)
    if gpus > 1:
        check_multi_gpu(batch, gpus)
    use_amp = bool(amp and devices[0].type == "cuda")
    overrides = dict(
        task=task, mode="train", model=label, data=str(data.yaml), epochs=epochs, imgsz=imgsz, batch=batch,
        nbs=batch, device=",".join(ultralytics_device(d) for d in devices), amp=use_amp, workers=workers, seed=seed,
        deterministic=True, plots=False, save_dir=str(Path(save_dir).resolve()), val=True, verbose=verbose,
        cache=False, exist_ok=False,
    )  # fmt: skip
    overrides.update(schedule.overrides() if schedule is not None else {})
    overrides.update(extra or {})
    Trainer = _trainer_class(task)
    if gpus > 1:
        if workdir is None:
            raise ValueError("a multi-GPU finetune needs a workdir for the files its DDP workers load")
        distilled = teacher is not None and distill is not None
        state = WorkerState.write(Path(workdir), model, teacher if distilled else None, data=data,
                                  distill=distill if distilled else None, schedule=schedule,
                                  features=features if distilled else None, lr_scale=lr_scale,
                                  warmup_bias_lr=warmup_bias_lr)
        Trainer = type(Trainer.__name__, (Trainer,), {"worker_state": state, "__module__": Trainer.__module__,
                                                       "__qualname__": Trainer.__qualname__})
    return Trainer(model, data=data, teacher=teacher, distill=distill, overrides=overrides, schedule=schedule,
                   features=features, lr_scale=lr_scale, warmup_bias_lr=warmup_bias_lr)


def finetune(
    model: nn.Module,
    data,
    *,
    save_dir: Path,
    teacher: nn.Module | None = None,
    distill: DistillSettings | None = None,
    epochs: int = 20,
    imgsz: int = 320,
    batch: int = 16,
    device: torch.device | str = "cpu",
    amp: bool = True,
    workers: int = 2,
    seed: int = 0,
    verbose: bool = True,
    label: str = "pruned",
    extra: dict | None = None,
    schedule: FinetuneSchedule | None = None,
    features: FeatureMatch | None = None,
    task: str = "detect",
    lr_scale: float = 1.0,
    warmup_bias_lr: float | None = None,
) -> FinetuneResult:
    """Finetune `model` (the object itself) on `data` with Ultralytics' trainer; distil from `teacher` if given.

    `model` is trained in place (Ultralytics' trainer moves it to the device and updates it); pass a copy to keep
    the original. `data` is a `DataConfig`. AMP is used on CUDA when `amp` (Ultralytics' float16 autocast and grad
    scaler, checked offline by `check_amp_offline`) and never on the CPU, where it does nothing. nbs equals `batch`:
    one optimizer step per batch, which a short finetune on a small dataset needs. Ultralytics' own progress display
    shows when `verbose`. Nothing is downloaded. `label` is what the trainer records as its `model` argument (it
    never loads it); `extra` overrides any other trainer argument. `schedule` (`short_schedule`) sets the optimizer,
    learning rate and warm-up; without it, Ultralytics' defaults apply. `lr_scale` multiplies the starting learning
    rate the trainer ends up with (`optimizer=auto`'s fit, or the schedule's lr0) before anything trains.
    `warmup_bias_lr` is the rate the biases start the warm-up at (Ultralytics' argument; `optimizer=auto` and the
    short schedule set it to 0, None keeps theirs; Ultralytics' default is 0.1), falling to the schedule's. `features`
    (`distill.FeatureMatch`) adds channel-matched feature distillation at its levels (with a `teacher` and `distill`
    settings only). `task` picks Ultralytics' trainer (`TRAINERS`: a segment model trains on its masks and validates
    by mask mAP too, a pose model on its keypoints, an OBB model on its rotated boxes).

    A `device` naming several GPUs ("0,1") trains with Ultralytics' DDP (`finetune_trainer`): `batch` must be a
    multiple of the GPU count and cloudpickle installed (`check_multi_gpu`); the workers train copies of `model`
    loaded from a temporary file, so `model` itself is left as it was, and the result is read from what rank 0 wrote.
    """
    from autoprune._ultralytics import set_verbose
    from autoprune.devices import resolve_devices

    devices = resolve_devices(device)
    set_verbose(verbose)
    t0 = time.perf_counter()
    folder = tempfile.TemporaryDirectory(prefix="autoprune-ddp-") if len(devices) > 1 else contextlib.nullcontext()
    with offline_ultralytics(), folder as workdir:
        trainer = finetune_trainer(model, data, save_dir=save_dir, teacher=teacher, distill=distill, epochs=epochs,
                                   imgsz=imgsz, batch=batch, device=device, amp=amp, workers=workers, seed=seed,
                                   verbose=verbose, label=label, extra=extra, schedule=schedule, features=features,
                                   task=task, workdir=workdir, lr_scale=lr_scale, warmup_bias_lr=warmup_bias_lr)
        try:
            trainer.train()
        except ValueError as e:  # Ultralytics' refusal of a last batch of one image at a tiny size (BatchNorm)
            if "gives BatchNorm a single value" in str(e):
                from autoprune.errors import UserError

                raise UserError(f"finetuning failed: {str(e).splitlines()[0]}") from e
            raise
        finally:
            model.criterion = None  # never leave the teacher hanging off the model
            if trainer.distill_loss is not None:
                trainer.distill_loss.close()  # the feature hooks leave the student
        if trainer.worker_state is None:
            summary = trainer.summary()
        else:  # the DDP workers trained; rank 0 left its summary
            path = Path(trainer.worker_state.summary)
            if not path.exists():
                raise RuntimeError(f"the DDP workers finished without writing {path}")
            summary = json.loads(path.read_text())
    seconds = time.perf_counter() - t0
    a = summary["args"]
    used = {"name": "short" if schedule is not None else "ultralytics", "optimizer": a["optimizer"],
            "lr0": float(a["lr0"]), "lrf": float(a["lrf"]), "cos_lr": bool(a["cos_lr"]),
            "warmup_epochs": float(a["warmup_epochs"]) if schedule is not None
            else float(min(a["warmup_epochs"], max(epochs - 1, 0))),
            "lr_scale": float(lr_scale), "warmup_bias_lr": float(a["warmup_bias_lr"]),
            "ema": "Ultralytics ModelEMA (decay 0.9999, tau 2000 updates)"}
    best = trainer.best if trainer.best.exists() else trainer.last
    return FinetuneResult(
        best=Path(best), last=Path(trainer.last), save_dir=Path(trainer.save_dir),
        loss_names=tuple(summary["loss_names"]), amp=bool(summary["amp"]), device=",".join(str(d) for d in devices),
        seconds=seconds, metrics={k: float(v) for k, v in summary["metrics"].items()}, schedule=used,
    )


# ---------------------------------------------------------------------------------------------------- checks
def validate_checkpoint(path: str | Path, data, *, imgsz: int, batch: int = 16, device: torch.device | str = "cpu",
                        verbose: bool = False) -> dict:
    """mAP50 and mAP50-95 of a checkpoint on the data's val split, by Ultralytics' own validation (`YOLO.val`).

    The same protocol for every model: the checkpoint file as saved, Ultralytics' default conf 0.001 / IoU 0.7, at
    `imgsz`; nothing downloaded, nothing written outside a temporary folder. `metric` names what was measured, the
    task's own metric (`proxy.TASK_METRICS`): box mAP for a detect model, rotated-box mAP for an OBB model; for a
    segment model the mask mAP and for a pose model the keypoint mAP, their box figures in box_map50 and
    box_map50_95; for a classify model top-1 accuracy as map50_95 and top-5 as map50 (`proxy.metric_keys`).
    """
    from ultralytics.utils.metrics import ClassifyMetrics, OBBMetrics

    from autoprune.proxy import TASK_METRICS

    from ultralytics import YOLO

    from autoprune.devices import resolve_device

    dev = resolve_device(device)
    with tempfile.TemporaryDirectory(prefix="autoprune-val-") as tmp, offline_ultralytics():
        t0 = time.perf_counter()
        m = YOLO(str(path)).val(data=str(data.yaml), imgsz=imgsz, batch=batch, device=ultralytics_device(dev),
                                plots=False, workers=0, project=tmp, name="val", verbose=verbose, save_json=False,
                                split="val")
        seconds = time.perf_counter() - t0
    if isinstance(m, ClassifyMetrics):
        return {"map50": float(m.top5), "map50_95": float(m.top1), "metric": TASK_METRICS["classify"][0],
                "seconds": round(seconds, 2)}
    # the task's own metric first (SegmentMetrics' seg, PoseMetrics' pose), then its boxes'
    task = ("segment" if getattr(m, "seg", None) is not None else "pose" if getattr(m, "pose", None) is not None
            else "obb" if isinstance(m, OBBMetrics) else "detect")
    own = m.seg if task == "segment" else m.pose if task == "pose" else m.box
    box = {"box_map50": float(m.box.map50), "box_map50_95": float(m.box.map)} if own is not m.box else {}
    return {"map50": float(own.map50), "map50_95": float(own.map), "metric": TASK_METRICS[task][0], **box,
            "seconds": round(seconds, 2)}


def pickled_modules(path: str | Path) -> set[str]:
    """The Python modules whose classes or functions a torch checkpoint's pickle refers to (loading it to see)."""
    seen: set[str] = set()

    class _Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add(module)
            return super().find_class(module, name)

    class _Module:
        Unpickler = _Recorder
        __name__ = "pickle"

        @staticmethod
        def load(f, **kw):
            return _Recorder(f, **kw).load()

    torch.load(path, map_location="cpu", weights_only=False, pickle_module=_Module)
    return seen
