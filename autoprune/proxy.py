"""The proxy score of a pruned candidate: BN recalibration, a short finetune, a quick validation.

A search scores hundreds of candidates, so everything that does not depend on the candidate is built once per
process by `ProxyEvaluator`: the datasets, the fixed seeded image subsets (loaded, letterboxed and kept in memory as
uint8 tensors), the batch schedule and Ultralytics' validator. Scoring one candidate then costs only its own work:

1. recalibrate BatchNorm statistics on `calib_batches` train batches (EagleEye's adaptive BN, ECCV 2020: reset the
   running statistics, cumulative average (momentum=None) in train mode under no_grad, then eval);
2. `steps` optimizer steps on the model's own detection loss (`model.loss(batch)`, Ultralytics' loss of the task),
   plus, with `distill` > 0 and a teacher (`set_teacher`), the head distillation `autoprune apply` finetunes with
   (`autoprune.finetune.head_term`); the teacher's outputs on the fixed batches are computed once and cached;
3. validation on a fixed seeded subset of the val split with Ultralytics' NMS, matching and metrics
   (`DetectionValidator.postprocess` / `update_metrics` / `DetMetrics`), giving mAP50 and mAP50-95 (a classify
   model: `ClassificationValidator`'s top-1 and top-5 accuracy, in map50_95 and map50).

The score is repeatable: the image subsets and the batch order depend only on the settings' seed, are drawn once,
and are the same for every candidate, however many candidates ran before; the same model and settings give the
same mAP bit for bit on the same machine. (The float summation order depends on the CPU thread count, so scores
are comparable between runs with the same `threads`; on CUDA, a few backward kernels use atomics, so finetuned
weights, and then the mAP, may differ in the last digits between runs.)

Where the validation differs from `yolo val`: images are letterboxed to a square `imgsz` (rect=False, so batches
can be cached as one tensor; identical for square images), the NMS time limit is lifted (a limit that depends on
the machine's speed is not repeatable), a head with a one-to-one branch is scored through its one-to-many branch
plus NMS (what Ultralytics' validator does by default), and with `amp` the network runs in bfloat16. With `amp`
off, the proxy's validation of an untouched model reproduces Ultralytics' `val(rect=False)` mAP to four digits
(`benchmarks/bench_proxy.py --sections crosscheck`).

Example:
    >>> from autoprune.proxy import ProxyEvaluator, ProxySettings
    >>> ev = ProxyEvaluator("data.yaml", ProxySettings(steps=50))   # once per process
    >>> for candidate in candidates:                                 # fresh pruned copies
    ...     r = ev.evaluate(candidate)
    ...     print(r.map50_95, r.seconds, r.breakdown)
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from autoprune import _ultralytics, batches, uncertainty  # noqa: F401  (offline, quiet Ultralytics before it is used)
from autoprune.batchnorm import recalibrate_bn
from autoprune.data import DataConfig, check_task, load_data_config
from autoprune.devices import resolve_device, torch_threads
from autoprune.distill import head_branches, head_term
from autoprune.errors import UserError
from autoprune.imgsz import check_imgsz
from autoprune.precision import amp_dtype, float_preds, fp32_decode
from autoprune.validator import make_validator

__all__ = ["ProxyEvaluator", "ProxyResult", "ProxySettings", "TASK_METRICS", "figure_names", "metric_keys",
           "recalibrate_bn"]

# The metric the proxy scores each task by (Ultralytics' validator of the task): its name, and the suffix of
# Ultralytics' metric keys it is read from ('metrics/mAP50-95(M)'). OBBMetrics keeps DetMetrics' keys: its (B)
# figures are the rotated boxes'. ClassifyMetrics has no suffix: 'top1' stands for its accuracy keys (`metric_keys`).
TASK_METRICS = {"detect": ("box mAP50-95", "B"), "segment": ("mask mAP50-95", "M"), "pose": ("pose mAP50-95", "P"),
                "obb": ("OBB mAP50-95", "B"), "classify": ("top-1 accuracy", "top1")}
# The validator's per-detection matches of each metric suffix (its stats key), which the bootstrap resamples.
_MATCHES = {"B": "tp", "M": "tp_m", "P": "tp_p"}
# The raw head outputs the proxy's distillation reads from the teacher (`_teacher_targets`), where the head has them.
_TEACHER_KEYS = ("scores", "boxes", "kpts", "angle", "logits")


def metric_keys(task: str) -> tuple[str, str]:
    """Ultralytics' keys (its validators' results, its trainers' results.csv columns) of the two figures autoprune
    reports as map50 and map50_95 for a `task` model: the task's mAP50 and mAP50-95, or a classify model's top-5 and
    top-1 accuracy.

    Example:
        >>> metric_keys("segment")
        ('metrics/mAP50(M)', 'metrics/mAP50-95(M)')
        >>> metric_keys("classify")
        ('metrics/accuracy_top5', 'metrics/accuracy_top1')
    """
    if task == "classify":
        return "metrics/accuracy_top5", "metrics/accuracy_top1"
    x = TASK_METRICS[task][1]
    return f"metrics/mAP50({x})", f"metrics/mAP50-95({x})"


def figure_names(task: str) -> tuple[str, str]:
    """What a report calls the map50 and map50_95 figures of a `task` model: a detector's plain 'mAP50' and
    'mAP50-95', another task's own ('mask mAP50', 'OBB mAP50-95'), a classify model's 'top-5 accuracy' and
    'top-1 accuracy'."""
    if task == "classify":
        return "top-5 accuracy", TASK_METRICS[task][0]
    kind = "" if task == "detect" else TASK_METRICS[task][0].removesuffix("mAP50-95")
    return f"{kind}mAP50", f"{kind}mAP50-95"


@dataclass(frozen=True)
class ProxySettings:
    """How a candidate is scored. Validated on construction; a bad value is a `UserError` naming the field.

    Attributes:
        imgsz: square input size for calibration, finetune and validation (letterboxed, no augmentation); a
            multiple of 32. 320 is what the demo model was trained at.
        calib_batches: train batches for the BN recalibration (0 skips recalibration). 20 x `batch` = 160 images
            give stable per-channel means and variances; more barely moves mAP and costs forward passes.
        steps: optimizer steps on the detection loss after recalibration (0: no finetune).
        batch: images per calibration and finetune batch. 8 keeps 50 steps within the CPU budget; 16 is steadier.
        lr: AdamW learning rate of the finetune, constant after a linear warm-up over the first 10% of the steps.
            3e-4 recovered the most mAP of a pruned stand-in model in a sweep (1e-4, 3e-4, 1e-3) while leaving the
            unpruned model's mAP about where it was; 1e-3 (about Ultralytics' 'auto' choice for a fresh training)
            cut the unpruned model's mAP50-95 by two thirds in 50 steps.
        val_images: size of the fixed, seeded subset of the val split that is scored (all of it if smaller).
        train_images: cap on the seeded subsets of the train split kept in memory for the finetune (only as many as
            max(calib_batches, steps) x batch need: 400 with the defaults) and for calibration (calib_batches x
            batch, drawn whatever `steps` is, so a data criterion ranks channels alike at any proxy length).
        seed: seeds the image subsets and the batch order (and any randomness inside a candidate's evaluation).
        device: 'auto' (first CUDA GPU, else CPU), 'cpu', 'cuda' or 'cuda:N'.
        recalibrate: ablation switch; False skips step 1 whatever `calib_batches` says.
        val_batch: images per validation forward pass (no effect on the score beyond float rounding).
        channels_last: run convolutions in channels-last memory format (about 2x faster on CPU).
        amp: run the convolutions in bfloat16 autocast where the hardware does that natively (CPUs with AVX512-BF16
            or AMX, CUDA GPUs with bf16), else float32; boxes are decoded and the loss computed in float32. About
            1.5x faster on an AVX512-BF16 CPU for a mAP within noise of float32 (see benchmarks/bench_proxy.py).
        distill: weight of the head distillation from the teacher (`ProxyEvaluator.set_teacher`, the unpruned model)
            in the finetune, as in `autoprune apply` (`DistillSettings.weight`, temperature 2); 0 (default): the
            detection loss alone. The teacher's outputs on the fixed batches are computed once per evaluator, so a
            candidate costs the same either way.
        threads: CPU threads torch uses during an evaluation (restored afterwards); 0 leaves torch's setting alone.
            1 by default: on a CPU that other processes also load (parallel search workers, anything else), two
            threads made a candidate 5-10x slower than one in our measurements (OpenMP threads waiting on each
            other), and the score depends on the thread count (float summation order), so a fixed count also
            keeps scores comparable across machines. On an idle many-core machine, more threads are faster.
    """

    imgsz: int = 320
    calib_batches: int = 20
    steps: int = 50
    batch: int = 8
    lr: float = 3e-4
    val_images: int = 200
    train_images: int = 512
    seed: int = 0
    device: str = "auto"
    recalibrate: bool = True
    val_batch: int = 32
    channels_last: bool = True
    amp: bool = True
    threads: int = 1
    distill: float = 0.0

    def __post_init__(self):
        def _int(name, lo):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise UserError(f"{name} must be an integer >= {lo}, got {v!r}")

        check_imgsz(self.imgsz, "imgsz", why=" (the largest model stride)")
        for name, lo in (("calib_batches", 0), ("steps", 0), ("batch", 1), ("val_images", 1), ("train_images", 1),
                         ("seed", 0), ("val_batch", 1), ("threads", 0)):
            _int(name, lo)
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not (0 < self.lr < 1):
            raise UserError(f"lr must be a number in (0, 1), got {self.lr!r}")
        if isinstance(self.distill, bool) or not isinstance(self.distill, (int, float)) \
                or not math.isfinite(self.distill) or self.distill < 0:
            raise UserError(f"distill must be a number >= 0, got {self.distill!r}")
        for name in ("recalibrate", "channels_last", "amp"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name} must be true or false, got {getattr(self, name)!r}")
        resolve_device(self.device)  # raises a UserError naming `device`


@dataclass(frozen=True)
class ProxyResult:
    """The proxy score of one candidate.

    Attributes:
        map50: mAP at IoU 0.5 on the validation subset (a classify model: top-5 accuracy).
        map50_95: mAP averaged over IoU 0.5:0.95 on the validation subset (a classify model: top-1 accuracy, what
            a search ranks it by).
        precision: mean precision at the F1-optimal confidence (Ultralytics' definition); a classify model's
            micro-averaged precision, which for one label per image is its top-1 accuracy.
        recall: mean recall at the same confidence (a classify model: micro-averaged, its top-1 accuracy too).
        seconds: wall-clock seconds the evaluation took (all stages).
        breakdown: wall-clock seconds per stage: setup (device, memory format, criterion), calibrate, train,
            val_forward, nms, metrics.
        cpu_seconds: CPU seconds of this process per stage (all its threads). On a CPU shared with other work
            the wall-clock figures stretch; with one thread these stay close to what an idle machine would take.
        steps: optimizer steps that ran.
        recalibrated: whether BN statistics were recalibrated.
        train_loss: mean detection loss per image over the first and the last 10% of the steps (empty without
            steps): a sanity check that the finetune moved in the right direction. A finetune that diverges stops
            at the first non-finite loss, which then shows here as nan or inf.
        val_images: images scored.
        map50_95_se: the standard error of `map50_95` over validation subsets of the same size, from a bootstrap
            over the scored images (`autoprune.uncertainty`; no extra forward pass); None for fewer than two images.
        map50_95_boot: mAP50-95 of each bootstrap resample; every candidate scored on the same images is resampled
            alike, so two candidates' lists pair up (`uncertainty.difference_se`).
        metric: what `map50_95` measures, the task's own metric from Ultralytics' validator (`TASK_METRICS`):
            'box mAP50-95' for a detect model, 'mask mAP50-95' for a segment model (then map50, precision, recall
            and the bootstrap are the mask figures too, matched by mask IoU), 'pose mAP50-95' for a pose model
            (matched by keypoint OKS), 'OBB mAP50-95' for an OBB model (rotated boxes, matched by probabilistic IoU),
            'top-1 accuracy' for a classify model (its bootstrap resamples each image's hit or miss).
        box_map50, box_map50_95: a segment or pose model's box figures beside its mask or keypoint ones; None for
            a detect or OBB model (whose map50 and map50_95 are the box figures).
    """

    map50: float
    map50_95: float
    precision: float
    recall: float
    seconds: float
    breakdown: dict = field(default_factory=dict)
    cpu_seconds: dict = field(default_factory=dict)
    steps: int = 0
    recalibrated: bool = False
    train_loss: tuple = ()
    val_images: int = 0
    map50_95_se: float | None = None
    map50_95_boot: tuple = ()
    metric: str = "box mAP50-95"
    box_map50: float | None = None
    box_map50_95: float | None = None

    def as_dict(self) -> dict:
        """A JSON-friendly dictionary."""
        return asdict(self)


class Stopwatch:
    """Adds wall-clock seconds per stage; synchronises CUDA so that asynchronous kernels land in their stage."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        if self.cuda:
            torch.cuda.synchronize(self.device)
        t, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize(self.device)
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t
            self.cpu_seconds[stage] = self.cpu_seconds.get(stage, 0.0) + time.process_time() - c


class ProxyEvaluator:
    """Scores candidates by BN recalibration, a short finetune and a quick validation; build it once per process.

    Construction reads and checks the data YAML, builds Ultralytics' train and val datasets, draws the seeded
    train pool and val subset, loads and letterboxes their images once (kept in memory as uint8 tensors: at
    imgsz 320 about 0.3 MB per image; the finetune pool and the calibration images are two seeded subsets of at
    most `train_images` each, loaded once where they overlap, so never more than `val_images` + 2 x `train_images`
    images whatever the dataset's size), fixes the calibration and finetune batch schedule and builds the
    validator. `evaluate` then only runs the candidate.

    Not thread-safe: one evaluation at a time per evaluator.

    Example:
        >>> ev = ProxyEvaluator("data.yaml", ProxySettings(imgsz=320, steps=50))
        >>> r = ev.evaluate(pruned_copy)
        >>> round(r.map50_95, 3), r.breakdown["train"]
    """

    def __init__(self, data: str | Path | DataConfig | None, settings: ProxySettings | None = None, *,
                 task: str = "detect"):
        t0 = time.perf_counter()
        if task not in TASK_METRICS:
            raise ValueError(f"the proxy scores {', '.join(TASK_METRICS)} models, got task {task!r}")
        self.task = task
        self.settings = settings or ProxySettings()
        self.device = resolve_device(self.settings.device)
        self.amp_dtype = amp_dtype(self.device, self.settings.amp)
        self.precision = {None: "fp32", torch.bfloat16: "bf16"}[self.amp_dtype]
        self.data = data if isinstance(data, DataConfig) else load_data_config(data)
        check_task(self.data, task)  # e.g. a segment model needs polygon labels: one error line before any loading
        s = self.settings

        udata = self.data.ultralytics_dict()
        from autoprune._ultralytics import no_label_caches, quiet

        with quiet(), no_label_caches():
            cfg = batches.dataset_cfg(s.imgsz, task)
            val_ds = batches.build_dataset(cfg, self.data, "val", s.val_batch)
            train_ds = batches.build_dataset(cfg, self.data, "train", s.batch)

            val_idx = batches.subset(len(val_ds), s.val_images, s.seed, batches.VAL_SUBSET)
            need = max(s.calib_batches, s.steps) * s.batch
            pool_idx = batches.subset(len(train_ds), min(s.train_images, max(need, s.batch)), s.seed,
                                      batches.TRAIN_SUBSET)
            # The calibration images depend on the calibration settings alone, never on `steps`: a data criterion
            # (taylor, hessian) ranks channels on them, and `autoprune prune`, a search's global plan and every
            # proxy must rank alike (`batches.calibration_batches` draws the same). Images in both pools are loaded
            # once.
            calib_idx = batches.subset(len(train_ds), batches.calibration_size(s.calib_batches, s.batch,
                                                                               s.train_images),
                                       s.seed, batches.TRAIN_SUBSET)
            val_items = batches.load_items(val_ds, val_idx)
            items = dict(zip(pool_idx, batches.load_items(train_ds, pool_idx)))
            missing = [i for i in calib_idx if i not in items]
            if missing:
                items.update(zip(missing, batches.load_items(train_ds, missing)))
            self._pool = [items[i] for i in pool_idx]  # per image: img (uint8 CHW), cls, bboxes
            self._calib_pool = [items[i] for i in calib_idx]

        if not sum(len(it["cls"]) for it in val_items):  # a classification dataset's images all have their class
            raise UserError(f"{self.data.yaml}: the val images have no labels (labels/*.txt beside images/)")
        self.val_images = len(val_items)
        self.val_boxes = sum(len(it["cls"]) for it in val_items)
        self.train_pool_images = len(self._pool)
        self._val_batches = [batches.collate(val_items[i : i + s.val_batch])
                             for i in range(0, len(val_items), s.val_batch)]

        # The batch schedule: a seeded permutation of the pool per pass, the same for every candidate.
        self._calib_order = batches.batch_order(s.calib_batches * s.batch, len(self._calib_pool), s.seed,
                                                batches.CALIB_ORDER)
        self._train_order = self._order(s.steps * s.batch)

        self._validator = make_validator(s.imgsz, self.device, task)
        self._validator.data = udata
        self._validator.names = dict(self.data.names)
        if task != "classify":  # ClassificationValidator.init_metrics reads the model's names only
            subset_labels = [val_ds.labels[i] for i in val_idx]
            # init_metrics reads dataloader.dataset.labels (to raise max_det for crowded images); nothing else.
            self._validator.dataloader = SimpleNamespace(dataset=SimpleNamespace(labels=subset_labels))
        self._teacher: nn.Module | None = None
        self._teacher_outputs: list[dict] | None = None  # per finetune step, computed on first use
        self.setup_seconds = time.perf_counter() - t0

    # ------------------------------------------------------------------ construction helpers
    def _order(self, n: int) -> list[int]:
        """n indices into the finetune pool (`batches.batch_order`): each pass sees every image once."""
        return batches.batch_order(n, len(self._pool), self.settings.seed, batches.TRAIN_ORDER)

    def _batch(self, order: list[int], k: int, pool: list[dict] | None = None) -> dict:
        b = self.settings.batch
        idx = order[k * b : (k + 1) * b]
        pool = self._pool if pool is None else pool
        return batches.collate([pool[i] for i in idx])

    def set_teacher(self, teacher: nn.Module) -> None:
        """The model the finetune distils from when `distill` > 0 (a private frozen copy is kept; the caller's model
        is not touched). Its outputs on the fixed finetune batches are computed on first use and reused by every
        candidate."""
        import copy

        t = copy.deepcopy(teacher)
        self._prepare(t)
        t.eval().requires_grad_(False)
        self._teacher, self._teacher_outputs = t, None

    def _teacher_targets(self, order: list[int], steps: int) -> list[dict]:
        """The teacher's raw head outputs (float16, CPU) for finetune batches 0..steps-1 of `order`."""
        have = self._teacher_outputs or []
        if len(have) < steps:
            with torch.no_grad(), torch_threads(self.settings.threads):
                for k in range(len(have), steps):
                    raw = head_branches(self._teacher(self._images(self._batch(order, k)["img"])))
                    have.append({br: {key: out[key].detach().to("cpu", torch.float16) for key in _TEACHER_KEYS
                                      if key in out} for br, out in raw.items()})
            self._teacher_outputs = have
        return have[:steps]

    def calibration_batches(self) -> list[dict]:
        """The fixed calibration batches (collated dicts, uint8 images on the CPU)."""
        return [self._batch(self._calib_order, k, self._calib_pool) for k in range(self.settings.calib_batches)]

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _images(self, img: torch.Tensor) -> torch.Tensor:
        x = img.to(self.device, non_blocking=True).float().div_(255)
        return x.contiguous(memory_format=torch.channels_last) if self.settings.channels_last else x

    # ------------------------------------------------------------------ per candidate
    def evaluate(self, model: nn.Module, *, recalibrate: bool | None = None, steps: int | None = None) -> ProxyResult:
        """Score one candidate: recalibrate BN, finetune `steps` steps, validate; return mAP50 and mAP50-95.

        MODIFIES `model`: it is moved to the evaluator's device (channels-last), its BN statistics and (with
        steps) its weights change, and it gets the loss hyperparameters Ultralytics' criterion reads. Pass a fresh
        copy (what `autoprune.prune` returns). Nothing shared with other candidates is changed, and the score does
        not depend on what was evaluated before.

        `recalibrate` and `steps` override the settings for this call (ablations); the batch order stays fixed.
        """
        s = self.settings
        recalibrate = s.recalibrate and s.calib_batches > 0 if recalibrate is None else bool(recalibrate)
        steps = s.steps if steps is None else int(steps)
        if steps < 0:
            raise UserError(f"steps must be an integer >= 0, got {steps}")
        if recalibrate and s.calib_batches == 0:
            raise UserError("recalibrate needs calib_batches >= 1")
        clock = Stopwatch(self.device)
        t0 = time.perf_counter()
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), self._deterministic(), torch_threads(s.threads):
            torch.manual_seed(s.seed)  # any randomness inside the candidate is seeded the same for every candidate
            with clock("setup"):
                model = self._prepare(model)
            if recalibrate:
                with clock("calibrate"), self._autocast():
                    recalibrate_bn(model, (self._images(b["img"]) for b in self.calibration_batches()))
            losses: list[float] = []
            if steps:
                with clock("train"):
                    losses = self._finetune(model, steps)
            m = self._validate(model, clock)
        k = max(1, math.ceil(len(losses) / 10))
        train_loss = (sum(losses[:k]) / k, sum(losses[-k:]) / k) if losses else ()
        metric, x = TASK_METRICS[self.task]
        box = x in ("M", "P")  # the task's own figures are not the boxes': give those too
        key50, key = metric_keys(self.task)
        return ProxyResult(
            map50=m[key50],
            map50_95=m[key],
            precision=m[f"metrics/precision({x})"] if self.task != "classify" else m[key],
            recall=m[f"metrics/recall({x})"] if self.task != "classify" else m[key],
            seconds=time.perf_counter() - t0,
            breakdown={k_: round(v, 4) for k_, v in clock.seconds.items()},
            cpu_seconds={k_: round(v, 4) for k_, v in clock.cpu_seconds.items()},
            steps=steps,
            recalibrated=recalibrate,
            train_loss=train_loss,
            val_images=self.val_images,
            map50_95_se=uncertainty.standard_error(m["boot"]),
            map50_95_boot=tuple(m["boot"]),
            metric=metric,
            box_map50=m["metrics/mAP50(B)"] if box else None,
            box_map50_95=m["metrics/mAP50-95(B)"] if box else None,
        )

    @contextlib.contextmanager
    def _deterministic(self):
        if self.device.type == "cuda":
            with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
                yield
        else:
            yield

    def _prepare(self, model: nn.Module) -> nn.Module:
        from ultralytics.cfg import DEFAULT_CFG_DICT
        from ultralytics.nn.modules import Classify, Detect
        from ultralytics.utils import IterableSimpleNamespace

        from autoprune.models import head_classes

        head = model.model[-1] if isinstance(getattr(model, "model", None), nn.Sequential) else None
        if not isinstance(head, (Detect, Classify)):
            raise UserError(f"the proxy scores Ultralytics YOLO models, got a {type(model).__name__}")
        nc = head_classes(model)
        if nc != self.data.nc:
            raise UserError(f"the model predicts {nc} classes but {self.data.yaml.name} has {self.data.nc}; "
                            "use a model trained on this dataset")
        check_task(self.data, self.task, kpt_shape=getattr(head, "kpt_shape", None))  # a pose model's keypoints
        stride = int(max(getattr(model, "stride", torch.tensor([32])).max().item(), 32))
        if self.settings.imgsz % stride:
            raise UserError(f"imgsz {self.settings.imgsz} is not a multiple of the model's largest stride {stride}")
        model = model.to(self.device).float()
        if self.settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        # The loss gains Ultralytics' criterion reads from model.args (a checkpoint stores them as a dict).
        old = getattr(model, "args", None)
        old = old if isinstance(old, dict) else vars(old) if hasattr(old, "__dict__") else {}
        hyp = {**DEFAULT_CFG_DICT, **{k: old[k] for k in ("box", "cls", "dfl") if old.get(k) is not None}}
        model.args = IterableSimpleNamespace(**hyp)
        model.criterion = None  # a copied model may carry a criterion bound to another model's strides and device
        if self.data.kpt_oks_sigmas is not None:  # the keypoint loss's sigmas, as Ultralytics' PoseTrainer sets them
            model.kpt_oks_sigmas = list(self.data.kpt_oks_sigmas)
        if hasattr(model, "end2end"):
            model.end2end = False  # what Ultralytics' validator does by default (nms=None): one-to-many head + NMS
        if not getattr(model, "names", None) or len(model.names) != self.data.nc:
            model.names = dict(self.data.names)
        return model

    def _finetune(self, model: nn.Module, steps: int) -> list[float]:
        """`steps` AdamW steps on the mean per-image detection loss (plus the distillation, with `distill`); returns
        the loss per step."""
        s = self.settings
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if ".dfl" in name:  # Ultralytics always freezes the DFL projection (fixed 0..reg_max-1 weights)
                p.requires_grad_(False)
                continue
            p.requires_grad_(True)
            (decay if p.ndim > 1 else no_decay).append(p)  # conv weights decay; BN weights and biases do not
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=s.lr, betas=(0.9, 0.999))
        warmup = max(1, round(0.1 * steps))
        order = self._train_order if steps <= s.steps else self._order(steps * s.batch)  # same prefix
        model.train()
        losses = []
        targets = None
        if s.distill > 0:
            if self._teacher is None:
                raise ValueError("ProxySettings.distill > 0 needs a teacher: call set_teacher(unpruned_model) first")
            targets = self._teacher_targets(order, steps)
            gains = float(getattr(model.args, "cls", 0.5)), float(getattr(model.args, "dfl", 1.5))
        for k in range(steps):
            for g in opt.param_groups:
                g["lr"] = s.lr * min(1.0, (k + 1) / warmup)
            b = self._batch(order, k)
            batch = {"img": self._images(b["img"])}
            # a segment model's loss reads the masks, a pose model's the keypoints; a classify model's the classes
            for key in ("cls", "bboxes", "batch_idx", *batches.TARGETS):
                if key in b:
                    batch[key] = b[key].to(self.device)
            with self._autocast():
                preds = model(batch["img"])
            preds = float_preds(preds)
            loss = batches.mean_loss(model, batch, preds)  # float32, per image
            if targets is not None:
                t = {br: {key: v.to(self.device, torch.float32) for key, v in out.items()}
                     for br, out in targets[k].items()}
                loss = loss + s.distill * head_term(preds, t, cls_gain=gains[0], box_gain=gains[1])
            if not torch.isfinite(loss):  # diverged: stop; the non-finite loss is reported in train_loss
                losses.append(float(loss.detach()))
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)  # as Ultralytics' trainer
            opt.step()
            losses.append(float(loss.detach()))
        opt.zero_grad(set_to_none=True)
        model.eval()
        return losses

    @torch.no_grad()
    def _validate(self, model: nn.Module, clock: Stopwatch) -> dict:
        v = self._validator
        model.eval()
        v.init_metrics(model)
        for b in self._val_batches:
            with clock("val_forward"), fp32_decode(model, self.amp_dtype), self._autocast():
                preds = model(self._images(b["img"]))
            with clock("nms"):
                preds = v.postprocess(preds)
            with clock("metrics"):
                if self.task == "classify":
                    v.update_metrics(preds, {"cls": b["cls"]})
                    continue
                batch = {**b, "img": b["img"], "batch_idx": b["batch_idx"].to(self.device),
                         "cls": b["cls"].to(self.device), "bboxes": b["bboxes"].to(self.device)}
                if "masks" in b:  # SegmentationValidator matches by mask IoU on these
                    batch["masks"] = b["masks"].to(self.device).float()
                if "keypoints" in b:  # PoseValidator matches by keypoint OKS on these
                    batch["keypoints"] = b["keypoints"].to(self.device)
                v.update_metrics(preds, batch)
        if self.task == "classify":
            return self._accuracy(v, clock)
        with clock("metrics"):
            # get_stats clears them; the bootstrap resamples the task's own matches (mask IoU for segment, OKS for pose)
            images = uncertainty.per_image_stats(v.metrics.stats, _MATCHES[TASK_METRICS[self.task][1]])
            stats = v.get_stats()
        out = {f"metrics/{k}({x})": float(stats.get(f"metrics/{k}({x})", 0.0))
               for k in ("precision", "recall", "mAP50", "mAP50-95") for x in _MATCHES}
        with clock("bootstrap"):
            out["boot"] = uncertainty.bootstrap_scores(images)
        return out

    @staticmethod
    def _accuracy(v, clock: Stopwatch) -> dict:
        """A classify model's figures from the validator's top-5 lists: ClassifyMetrics' top-1 and top-5 accuracy,
        and the bootstrap of top-1 over the images (each image a hit or a miss)."""
        with clock("metrics"):
            hits = (torch.cat(v.pred)[:, 0] == torch.cat(v.targets)).numpy()
            stats = v.get_stats()
        out = {k: float(stats[k]) for k in metric_keys("classify")}
        with clock("bootstrap"):
            out["boot"] = uncertainty.bootstrap_accuracy(hits)
        return out
