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

The head distillation (see `head_distillation`) works on what the Detect head emits in training, per anchor:

- class logits: the binary KL divergence between teacher and student class probabilities at temperature T, per class
  (YOLO's classes are independent sigmoids, not a softmax), weighted per anchor by max(teacher confidence, student
  confidence): the teacher's detections must be reproduced and the student's own false positives suppressed, while
  the thousands of background anchors where both are quiet cost nothing;
- box distributions (DFL): the KL divergence of the reg_max-bin distribution of each box side at temperature T
  (localization distillation, Zheng et al., CVPR 2022), weighted per anchor by the teacher's confidence: a box is only
  worth copying where the teacher sees an object. Heads without DFL (reg_max 1) get an L1 on the side distances.

Both are normalized by the sum of the teacher's per-anchor confidences (the role `target_scores_sum` plays in
Ultralytics' loss) and scaled by the `cls` and `dfl` gains of the detection loss, so `weight=1` gives the teacher's
soft targets the same standing as the ground truth. Both are exactly zero when student and teacher outputs agree.

The optional neck distillation compares the Detect inputs. Pruned widths differ from the teacher's, so a 1x1 conv
projector (training-only) maps the student's maps to the teacher's widths; both are standardized per sample and
channel over space before an MSE (as PKD, Cao et al., NeurIPS 2022), so only the pattern is matched, not the scale.

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
import math
import pickle
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from autoprune import _ultralytics  # noqa: F401  (offline, quiet Ultralytics before it is used)
from autoprune.errors import UserError

__all__ = [
    "DistillSettings",
    "DistillationLoss",
    "FeatureProjector",
    "FinetuneResult",
    "PrunedModelTrainer",
    "finetune",
    "head_distillation",
    "head_term",
    "neck_distillation",
    "offline_ultralytics",
    "pickled_modules",
    "validate_checkpoint",
]


# ---------------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class DistillSettings:
    """How the unpruned teacher guides the finetune. Validated on construction; a bad value is a `UserError`.

    Attributes:
        weight: weight of the head distillation (class logits + box distributions) against the detection loss
            (1.0: the teacher's soft targets weigh as much as the ground truth). 0 turns it off.
        temperature: softens both the teacher's and the student's distributions (class sigmoids and DFL softmaxes);
            the loss is multiplied by T^2 so that its gradients keep their scale (Hinton et al.).
        neck_weight: weight of the neck feature distillation on the Detect inputs (through a training-only 1x1
            projector). 0 (default) turns it off.
    """

    weight: float = 1.0
    temperature: float = 2.0
    neck_weight: float = 0.0

    def __post_init__(self):
        for name, flag in (("weight", "--kd-weight"), ("neck_weight", "--kd-neck")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise UserError(f"{flag} must be a number >= 0, got {v!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise UserError(f"--kd-temperature must be a number > 0, got {t!r}")
        if self.weight == 0 and self.neck_weight == 0:
            raise UserError("distillation with --kd-weight 0 and --kd-neck 0 does nothing; use --no-distill instead")

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------- the losses
def _raw(preds) -> dict:
    """The head's raw training outputs: the dict Detect returns in training, or the second item of (y, raw) in eval."""
    return preds[1] if isinstance(preds, (tuple, list)) else preds


def _branches(preds) -> dict[str, dict]:
    """{branch name: raw outputs}: one2many and one2one for end-to-end heads, else the single branch."""
    p = _raw(preds)
    if "one2many" in p:
        return {k: p[k] for k in ("one2many", "one2one") if p.get(k)}
    return {"one2many": p}


def head_distillation(student: dict, teacher: dict, *, temperature: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(class term, box term) of the head distillation between two raw Detect outputs of one branch.

    `student` and `teacher` are dicts with "scores" (batch, nc, anchors) logits and "boxes" (batch, 4 * reg_max,
    anchors) DFL logits, from the same images at the same size (so the anchors correspond). Both terms are sums over
    anchors divided by the teacher's summed per-anchor confidence, like Ultralytics' detection loss divides by its
    target scores; both are exactly 0 when the two outputs are equal. Gradients flow into `student` only.

    Example:
        >>> s = {"scores": torch.randn(2, 3, 10), "boxes": torch.randn(2, 64, 10)}
        >>> [float(x) for x in head_distillation(s, s)]
        [0.0, 0.0]
    """
    T = float(temperature)
    s_cls, t_cls = student["scores"].float(), teacher["scores"].detach().float()
    if s_cls.shape != t_cls.shape:
        raise ValueError(f"class outputs differ in shape: student {tuple(s_cls.shape)}, teacher {tuple(t_cls.shape)}")
    t_conf = t_cls.sigmoid().amax(1)  # (batch, anchors): the teacher's confidence per anchor, at T = 1
    s_conf = s_cls.detach().sigmoid().amax(1)
    norm = t_conf.sum().clamp(min=1.0)

    # Binary KL(teacher || student) per class: YOLO's class scores are independent sigmoids.
    st, tt = s_cls / T, t_cls / T
    pt = tt.sigmoid()
    kl = pt * (F.logsigmoid(tt) - F.logsigmoid(st)) + (1 - pt) * (F.logsigmoid(-tt) - F.logsigmoid(-st))
    cls_term = (kl.sum(1) * torch.maximum(t_conf, s_conf)).sum() * (T * T) / norm

    s_box, t_box = student["boxes"].float(), teacher["boxes"].detach().float()
    if s_box.shape != t_box.shape:
        raise ValueError(f"box outputs differ in shape: student {tuple(s_box.shape)}, teacher {tuple(t_box.shape)}")
    b, c, a = s_box.shape
    reg_max = c // 4
    if reg_max > 1:
        # Channels are side-major (side * reg_max + bin), as v8DetectionLoss.bbox_decode reads them.
        ls = F.log_softmax(s_box.view(b, 4, reg_max, a) / T, dim=2)
        lt = F.log_softmax(t_box.view(b, 4, reg_max, a) / T, dim=2)
        per_anchor = (lt.exp() * (lt - ls)).sum(2).mean(1) * (T * T)  # KL per side, mean over the 4 sides
    else:  # no DFL (e.g. YOLO26): the raw side distances
        per_anchor = (s_box - t_box).abs().mean(1)
    box_term = (per_anchor * t_conf).sum() / norm
    return cls_term, box_term


def _standardize(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per sample and channel over space."""
    x = x.float().flatten(2)
    return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True, unbiased=False) + 1e-6)


class FeatureProjector(nn.Module):
    """1x1 convolutions mapping the student's Detect inputs to the teacher's widths (training-only, never saved).

    Where a level's widths are equal the projector starts as the identity, so identical models give zero loss.
    """

    def __init__(self, student_channels: list[int], teacher_channels: list[int]):
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(s, t, 1, bias=False) for s, t in zip(student_channels, teacher_channels))
        for conv, s, t in zip(self.proj, student_channels, teacher_channels):
            if s == t:
                with torch.no_grad():
                    conv.weight.copy_(torch.eye(t).view(t, t, 1, 1))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [p(f) for p, f in zip(self.proj, feats)]


def neck_distillation(student_feats, teacher_feats, projector: FeatureProjector) -> torch.Tensor:
    """Mean over levels of the MSE between standardized projected student maps and standardized teacher maps."""
    projected = projector(list(student_feats))
    losses = [F.mse_loss(_standardize(s), _standardize(t.detach())) for s, t in zip(projected, teacher_feats)]
    return torch.stack(losses).mean()


def detect_input_channels(model: nn.Module) -> list[int]:
    """Channels of each Detect input (the neck outputs), read from the head's first box conv per level."""
    head = model.model[-1]
    return [int(branch[0].conv.in_channels) for branch in head.cv2]


class DistillationLoss:
    """The student's training criterion: its own detection loss plus distillation from the frozen teacher.

    Called like any Ultralytics criterion, `criterion(preds, batch) -> (loss * batch size per term, loss items)`;
    the teacher sees `batch["img"]` (the images the student just saw) in eval mode under `torch.no_grad()`. The terms
    are those of the detection loss followed by "kd_loss" (and "kd_neck" when the neck term is on), so Ultralytics'
    progress display shows them. A plain object, never an `nn.Module` attribute of the student: nothing of it is
    saved with the model. `update()` forwards to the detection loss (end-to-end heads decay a gain per epoch).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, settings: DistillSettings,
                 projector: FeatureProjector | None = None):
        self.base = student.init_criterion()
        self.teacher = teacher
        self.settings = settings
        self.projector = projector
        hyp = student.args
        self.cls_gain = float(getattr(hyp, "cls", 0.5))
        self.box_gain = float(getattr(hyp, "dfl", 1.5))
        if settings.neck_weight > 0 and projector is None:
            raise ValueError("neck distillation needs a projector")

    def update(self) -> None:
        if hasattr(self.base, "update"):
            self.base.update()

    def __call__(self, preds, batch: dict):
        loss, items = self.base(preds, batch)
        with torch.no_grad():
            t_preds = self.teacher(batch["img"])  # eval mode: (decoded, raw)
        kd, neck = self.terms(preds, t_preds)
        bs = batch["img"].shape[0]
        extra = [kd * bs]
        items = {**items, "kd_loss": kd.detach()}
        if self.settings.neck_weight > 0:
            extra.append(neck * bs)
            items["kd_neck"] = neck.detach()
        return torch.cat([loss, torch.stack(extra).to(loss.dtype)]), items

    def terms(self, s_preds, t_preds) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted head term, weighted neck term) for raw student and teacher outputs."""
        s = self.settings
        kd = _zero(s_preds)
        if s.weight > 0:
            kd = head_term(s_preds, t_preds, cls_gain=self.cls_gain, box_gain=self.box_gain,
                           temperature=s.temperature) * s.weight
        neck = _zero(s_preds)
        if s.neck_weight > 0:
            s_br, t_br = _branches(s_preds), _branches(t_preds)
            first = next(iter(s_br.values()))
            neck = neck_distillation(first["feats"], next(iter(t_br.values()))["feats"], self.projector) * s.neck_weight
        return kd, neck


def head_term(s_preds, t_preds, *, cls_gain: float, box_gain: float, temperature: float = 2.0) -> torch.Tensor:
    """The unweighted head distillation between student and teacher predictions (raw, or eval-mode (y, raw)
    tuples): `cls_gain` x class term + `box_gain` x box term (`head_distillation`), averaged over the branches both
    have (one2many and one2one for end-to-end heads)."""
    s_br, t_br = _branches(s_preds), _branches(t_preds)
    heads = []
    for name in s_br:
        if name in t_br:
            c, b = head_distillation(s_br[name], t_br[name], temperature=temperature)
            heads.append(cls_gain * c + box_gain * b)
    return torch.stack(heads).mean() if heads else _zero(s_preds)


def _zero(preds) -> torch.Tensor:
    return torch.zeros((), device=next(iter(_branches(preds).values()))["scores"].device)


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
@functools.lru_cache(maxsize=None)
def _trainer_class():
    from ultralytics.models.yolo.detect import DetectionTrainer

    class PrunedModelTrainer(DetectionTrainer):
        """A `DetectionTrainer` that trains the model object it is handed, never one rebuilt from a YAML.

        `student` is installed by `setup_model`; `get_model` raises. With a `teacher` and `distill` settings, the
        student's criterion is a `DistillationLoss` from the end of setup (after the EMA copy is made, so the EMA
        never holds the teacher) until training ends; the projector of the neck term joins the optimizer.
        """

        def __init__(self, student: nn.Module, *, data, teacher: nn.Module | None = None,
                     distill: DistillSettings | None = None, overrides: dict | None = None, _callbacks=None):
            self._student = student
            self._teacher = teacher
            self._distill = distill if teacher is not None else None
            self._data_config = data
            self.projector: FeatureProjector | None = None
            self.distill_loss: DistillationLoss | None = None
            super().__init__(overrides=overrides, _callbacks=_callbacks)

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

        def get_model(self, cfg=None, weights=None, verbose=True):
            raise RuntimeError("PrunedModelTrainer trains the model it was handed; it never builds one from a YAML")

        def build_optimizer(self, model, *args, **kwargs):
            optimizer = super().build_optimizer(model, *args, **kwargs)
            if self._distill is not None and self._distill.neck_weight > 0:
                device = next(model.parameters()).device
                self.projector = FeatureProjector(detect_input_channels(model),
                                                  detect_input_channels(self._teacher)).to(device)
                like = next((g for g in optimizer.param_groups if g.get("param_group") in ("weight", "muon")),
                            optimizer.param_groups[0])
                optimizer.add_param_group({**{k: v for k, v in like.items() if k != "params"},
                                           "params": list(self.projector.parameters())})
            return optimizer

        def _setup_train(self):
            super()._setup_train()
            if self._distill is not None:
                # A private frozen copy: the caller's teacher keeps its device, mode and requires_grad flags.
                teacher = copy.deepcopy(self._teacher).to(self.device).eval()
                if self.device.type == "cuda":
                    teacher = teacher.to(memory_format=torch.channels_last)
                for p in teacher.parameters():
                    p.requires_grad_(False)
                student = self.model
                self.distill_loss = DistillationLoss(student, teacher, self._distill, self.projector)
                student.criterion = self.distill_loss

        def final_eval(self):
            # Ultralytics strips the optimizer from last.pt and best.pt, then validates best.pt again; `apply`
            # validates the result itself under the report's protocol, so only the stripping is kept.
            from ultralytics.utils.torch_utils import strip_optimizer

            ckpt = strip_optimizer(self.last) if self.last.exists() else {}
            if self.best.exists():
                strip_optimizer(self.best, updates={"train_results": ckpt.get("train_results")})

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
    """

    best: Path
    last: Path
    save_dir: Path
    loss_names: tuple
    amp: bool
    device: str
    seconds: float
    metrics: dict = field(default_factory=dict)


def ultralytics_device(device: torch.device) -> str:
    """Ultralytics' spelling of a device: 'cpu' or the CUDA index."""
    return "cpu" if device.type == "cpu" else str(device.index or 0)


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
) -> FinetuneResult:
    """Finetune `model` (the object itself) on `data` with Ultralytics' trainer; distil from `teacher` if given.

    `model` is trained in place (Ultralytics' trainer moves it to the device and updates it); pass a copy to keep
    the original. `data` is a `DataConfig`. AMP is used on CUDA when `amp` (Ultralytics' float16 autocast and grad
    scaler, checked offline by `check_amp_offline`) and never on the CPU, where it does nothing. nbs equals `batch`:
    one optimizer step per batch, which a short finetune on a small dataset needs. Ultralytics' own progress display
    shows when `verbose`. Nothing is downloaded. `label` is what the trainer records as its `model` argument (it
    never loads it); `extra` overrides any other trainer argument.
    """
    from autoprune._ultralytics import set_verbose
    from autoprune.devices import resolve_device

    dev = resolve_device(device)
    use_amp = bool(amp and dev.type == "cuda")
    save_dir = Path(save_dir).resolve()
    overrides = dict(
        task="detect", mode="train", model=label, data=str(data.yaml), epochs=epochs, imgsz=imgsz, batch=batch,
        nbs=batch, device=ultralytics_device(dev), amp=use_amp, workers=workers, seed=seed, deterministic=True,
        plots=False, save_dir=str(save_dir), val=True, verbose=verbose, cache=False, exist_ok=False,
    )  # fmt: skip
    overrides.update(extra or {})
    Trainer = _trainer_class()
    set_verbose(verbose)
    t0 = time.perf_counter()
    with offline_ultralytics():
        trainer = Trainer(model, data=data, teacher=teacher, distill=distill, overrides=overrides)
        try:
            trainer.train()
        finally:
            model.criterion = None  # never leave the teacher hanging off the model
    seconds = time.perf_counter() - t0
    best = trainer.best if trainer.best.exists() else trainer.last
    return FinetuneResult(
        best=Path(best), last=Path(trainer.last), save_dir=Path(trainer.save_dir), loss_names=tuple(trainer.loss_names),
        amp=bool(trainer.amp), device=str(dev), seconds=seconds,
        metrics={k: float(v) for k, v in (trainer.metrics or {}).items()},
    )


# ---------------------------------------------------------------------------------------------------- checks
def validate_checkpoint(path: str | Path, data, *, imgsz: int, batch: int = 16, device: torch.device | str = "cpu",
                        verbose: bool = False) -> dict:
    """mAP50 and mAP50-95 of a checkpoint on the data's val split, by Ultralytics' own validation (`YOLO.val`).

    The same protocol for every model: the checkpoint file as saved, Ultralytics' default conf 0.001 / IoU 0.7, at
    `imgsz`; nothing downloaded, nothing written outside a temporary folder.
    """
    from ultralytics import YOLO

    from autoprune.devices import resolve_device

    dev = resolve_device(device)
    with tempfile.TemporaryDirectory(prefix="autoprune-val-") as tmp, offline_ultralytics():
        t0 = time.perf_counter()
        m = YOLO(str(path)).val(data=str(data.yaml), imgsz=imgsz, batch=batch, device=ultralytics_device(dev),
                                plots=False, workers=0, project=tmp, name="val", verbose=verbose, save_json=False,
                                split="val")
        seconds = time.perf_counter() - t0
    return {"map50": float(m.box.map50), "map50_95": float(m.box.map), "seconds": round(seconds, 2)}


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
