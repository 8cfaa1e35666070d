"""Distillation from the unpruned teacher: the settings, the head and neck losses, and the training criterion.

`DistillationLoss` is installed as the student's `criterion` (the hook Ultralytics' `DetectionModel.loss` calls) by
`autoprune.finetune` for the length of the training only: detection loss + `weight` x head distillation
(+ `neck_weight` x neck feature distillation). The proxy scores a finetune with the same head term (`head_term`).

The head distillation (see `head_distillation`) works on what the Detect head emits in training, per anchor:

- class logits: the binary KL divergence between teacher and student class probabilities at temperature T, per class
  (YOLO's classes are independent sigmoids, not a softmax), weighted per anchor by max(teacher confidence, student
  confidence): the teacher's detections must be reproduced and the student's own false positives suppressed, while
  the thousands of background anchors where both are quiet cost nothing;
- box distributions (DFL): the KL divergence of the reg_max-bin distribution of each box side at temperature T
  (localization distillation, Zheng et al., CVPR 2022), weighted per anchor by the teacher's confidence: a box is only
  worth copying where the teacher sees an object. Heads without DFL (reg_max 1) get an L1 on the side distances.
- masks (Segment heads, `mask_distillation`, added to the box term): the squared difference of each anchor's mask
  coefficients weighted by the teacher's confidence, and of the prototypes, each relative to the teacher's scale.
- keypoints (Pose heads, `keypoint_distillation`, added to the box term): the squared difference of each anchor's
  raw keypoint outputs (offsets and visibility logits), weighted by the teacher's confidence, relative to the
  teacher's scale.
- angles (OBB heads, `angle_distillation`, added to the box term): sin^2 of the difference of each anchor's box
  angles (a rectangle turned by pi is the same rectangle), weighted by the teacher's confidence.

A Classify head has one output per image, its class logits (softmax classes, not sigmoids): its head term is the KL
divergence of the softmaxes at temperature T (`logit_distillation`, Hinton et al.), times T^2, averaged over the
images, with no gain (its loss is the plain cross-entropy, the same scale).

Both are normalized by the sum of the teacher's per-anchor confidences (the role `target_scores_sum` plays in
Ultralytics' loss) and scaled by the `cls` and `dfl` gains of the detection loss, so `weight=1` gives the teacher's
soft targets the same standing as the ground truth. Both are exactly zero when student and teacher outputs agree.

The channel-matched feature distillation (`FeatureMatch`) compares feature maps of chosen layers (by default the
Detect inputs) channel for channel: the student's kept channels are a subset of the teacher's, known from the
pruning (`pruner.select_indices`), so each student map is matched to the same channels of the teacher's, with no
learned projector. Per level, the mean squared difference divided by the mean square of the teacher's selected
channels (scale-free, zero when they agree), weighted per level.

The optional neck distillation compares the Detect inputs. Pruned widths differ from the teacher's, so a 1x1 conv
projector (training-only) maps the student's maps to the teacher's widths; both are standardized per sample and
channel over space before an MSE (as PKD, Cao et al., NeurIPS 2022), so only the pattern is matched, not the scale.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.errors import UserError

__all__ = [
    "DistillSettings",
    "DistillationLoss",
    "FeatureMatch",
    "FeatureProjector",
    "feature_distillation",
    "parse_levels",
    "detect_input_channels",
    "head_branches",
    "head_distillation",
    "head_term",
    "angle_distillation",
    "keypoint_distillation",
    "logit_distillation",
    "mask_distillation",
    "neck_distillation",
    "raw_head_outputs",
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
        feature_weight: weight of the channel-matched feature distillation (`FeatureMatch`). 0 (default) turns it
            off.
        feature_levels: ((layer index, weight), ...) of the feature distillation; empty: the Detect inputs, weight 1
            each.
    """

    weight: float = 1.0
    temperature: float = 2.0
    neck_weight: float = 0.0
    feature_weight: float = 0.0
    feature_levels: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "feature_levels", tuple(tuple(x) for x in self.feature_levels))
        for name, flag in (("weight", "--kd-weight"), ("neck_weight", "--kd-neck"),
                           ("feature_weight", "--kd-features")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise UserError(f"{flag} must be a number >= 0, got {v!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise UserError(f"--kd-temperature must be a number > 0, got {t!r}")
        if self.weight == 0 and self.neck_weight == 0 and self.feature_weight == 0:
            raise UserError("distillation with --kd-weight 0, --kd-neck 0 and --kd-features 0 does nothing; use "
                            "--no-distill instead")
        for level in self.feature_levels:
            if (len(level) != 2 or isinstance(level[0], bool) or not isinstance(level[0], int)
                    or not isinstance(level[1], (int, float)) or not math.isfinite(level[1]) or level[1] <= 0):
                raise UserError(f"--kd-levels takes layer indices with optional weights > 0 (15,18:2), got {level!r}")

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------- the losses
def raw_head_outputs(preds) -> dict | torch.Tensor:
    """The head's raw training outputs: the dict Detect returns in training (the logits Classify returns), or the
    second item of (y, raw) in eval."""
    return preds[1] if isinstance(preds, (tuple, list)) else preds


def head_branches(preds) -> dict[str, dict]:
    """{branch name: raw outputs}: one2many and one2one for end-to-end heads, else the single branch; a Classify
    head's logits as {"classify": {"logits": logits}}."""
    p = raw_head_outputs(preds)
    if isinstance(p, torch.Tensor):
        return {"classify": {"logits": p}}
    if "classify" in p:  # already by branch (the proxy's cached teacher outputs)
        return p
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
    if "mask_coefficient" in student and "mask_coefficient" in teacher:  # a Segment head: its masks are located too
        box_term = box_term + mask_distillation(student, teacher, t_conf, norm)
    if "kpts" in student and "kpts" in teacher:  # a Pose head: its keypoints
        box_term = box_term + keypoint_distillation(student, teacher, t_conf, norm)
    if "angle" in student and "angle" in teacher:  # an OBB head: its boxes' angles
        box_term = box_term + angle_distillation(student, teacher, t_conf, norm)
    return cls_term, box_term


def logit_distillation(student: torch.Tensor, teacher: torch.Tensor, *, temperature: float = 2.0) -> torch.Tensor:
    """The head term of a Classify head: KL(teacher || student) of the class softmaxes at `temperature` T, times
    T^2, averaged over the images; exactly 0 when the logits are equal. Gradients flow into `student` only.

    Example:
        >>> x = torch.randn(4, 8)
        >>> float(logit_distillation(x, x))
        0.0
    """
    T = float(temperature)
    s, t = student.float(), teacher.detach().float()
    if s.shape != t.shape:
        raise ValueError(f"class logits differ in shape: student {tuple(s.shape)}, teacher {tuple(t.shape)}")
    lt = F.log_softmax(t / T, dim=1)
    kl = (lt.exp() * (lt - F.log_softmax(s / T, dim=1))).sum(1)
    return kl.mean() * (T * T)


def keypoint_distillation(student: dict, teacher: dict, t_conf: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """The keypoint term of a Pose head, added to the box term: the mean squared difference of each anchor's raw
    keypoint outputs ("kpts", batch, keypoints x (2 or 3), anchors: x and y offsets from the anchor in grid cells,
    and visibility logits), weighted by the teacher's confidence there and divided by `norm` as the box term is,
    relative to the mean square of the teacher's outputs: scale-free, and exactly 0 when the outputs agree. The
    keypoint count is fixed by the task, so pruning never changes the outputs' shape."""
    s_k, t_k = student["kpts"].float(), teacher["kpts"].detach().float()
    if s_k.shape != t_k.shape:
        raise ValueError(f"keypoint outputs differ in shape: student {tuple(s_k.shape)}, teacher {tuple(t_k.shape)}")
    return ((s_k - t_k).pow(2).mean(1) * t_conf).sum() / norm / t_k.pow(2).mean().clamp(min=1e-6)


def angle_distillation(student: dict, teacher: dict, t_conf: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """The angle term of an OBB head, added to the box term: sin^2 of the difference of each anchor's box angle
    ("angle", batch, 1, anchors, radians), weighted by the teacher's confidence there and divided by `norm` as the
    box term is. sin^2 is 0 when the angles agree or differ by pi (the same rectangle), at most 1, and smooth, so
    the student is never pushed the long way round."""
    s_a, t_a = student["angle"].float(), teacher["angle"].detach().float()
    if s_a.shape != t_a.shape:
        raise ValueError(f"angle outputs differ in shape: student {tuple(s_a.shape)}, teacher {tuple(t_a.shape)}")
    return (torch.sin(s_a - t_a).pow(2).mean(1) * t_conf).sum() / norm


def mask_distillation(student: dict, teacher: dict, t_conf: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """The mask term of a Segment head, added to the box term: the squared difference of each anchor's mask
    coefficients (batch, nm, anchors), weighted by the teacher's confidence there and divided by `norm` as the box
    term is, plus the mean squared difference of the prototypes (batch, nm, h, w); each relative to the mean square of
    the teacher's values, so the term is scale-free, and exactly 0 when the outputs agree. The student's kept channels
    do not change either output's shape (the coefficient count and the prototypes' are fixed by the task)."""
    s_mc, t_mc = student["mask_coefficient"].float(), teacher["mask_coefficient"].detach().float()
    if s_mc.shape != t_mc.shape:
        raise ValueError(f"mask coefficients differ in shape: student {tuple(s_mc.shape)}, teacher {tuple(t_mc.shape)}")
    coef = ((s_mc - t_mc).pow(2).mean(1) * t_conf).sum() / norm / t_mc.pow(2).mean().clamp(min=1e-6)
    s_p, t_p = student.get("proto"), teacher.get("proto")
    if isinstance(s_p, (tuple, list)):  # heads that return (prototypes, semantic output): the prototypes
        s_p, t_p = s_p[0], t_p[0]
    if not (isinstance(s_p, torch.Tensor) and isinstance(t_p, torch.Tensor)) or s_p.shape != t_p.shape:
        return coef
    t_p = t_p.detach().float()
    return coef + (s_p.float() - t_p).pow(2).mean() / t_p.pow(2).mean().clamp(min=1e-6)


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


def parse_levels(text: str | None) -> tuple:
    """'15,18,21:2' -> ((15, 1.0), (18, 1.0), (21, 2.0)): layer indices with optional weights; None or '' -> ()."""
    if not text:
        return ()
    out = []
    for item in text.split(","):
        layer, _, weight = item.strip().partition(":")
        try:
            out.append((int(layer), float(weight) if weight else 1.0))
        except ValueError:
            raise UserError(f"--kd-levels takes layer indices with optional weights (15,18:2), got {text!r}") from None
    return tuple(out)


class FeatureMatch:
    """Which channels of the teacher's feature maps each student map is compared with, per level.

    `levels` are model layer indices, `masks` boolean masks over the teacher's channels at each (the channels the
    student kept), `weights` the per-level weights. Made by `FeatureMatch.build` from the teacher, its channel
    graph and the kept indices of the pruning (`pruner.select_indices`).
    """

    def __init__(self, levels: list[int], masks: list[torch.Tensor], weights: list[float]):
        self.levels, self.masks, self.weights = list(levels), list(masks), list(weights)

    def as_dict(self) -> dict:
        return {"levels": self.levels, "weights": self.weights,
                "channels": [[int(m.sum()), int(m.numel())] for m in self.masks]}

    @classmethod
    def build(cls, teacher: nn.Module, graph, indices, levels=()) -> "FeatureMatch":
        """The match at `levels` ((layer, weight), ...; empty: the Detect inputs, weight 1) for the student that
        keeps `indices` of the teacher's channels. A level that is not a layer of the model, is the head, or whose
        output is not made by one conv (a Concat, an Upsample) is a `UserError`."""
        from autoprune.pruner import conv_masks
        from autoprune.wrappers import detection_model

        model = detection_model(teacher)
        layers = model.model
        head = len(layers) - 1
        inputs = [layers[-1].f] if isinstance(layers[-1].f, int) else layers[-1].f  # a Classify head's is -1
        inputs = [int(j) if j >= 0 else head + int(j) for j in inputs]
        levels = tuple(levels) or tuple((j, 1.0) for j in inputs)
        for j, _ in levels:
            if not 0 <= j < head:
                raise UserError(f"--kd-levels: the model has no feature level {j} (its layers are 0-{head - 1}; "
                                f"{head} is the head)")
        producer = _level_producers(model, graph, [j for j, _ in levels])
        masks = conv_masks(graph, indices)
        out = []
        for j, _ in levels:
            path = producer.get(j)
            if path is None:
                raise UserError(f"--kd-levels: layer {j} ({type(layers[j]).__name__}) is not the output of one conv; "
                                f"pick layers that end in a conv (the head's inputs are {inputs})")
            n = graph.convs[path].out_channels
            out.append(masks[path][0].clone() if path in masks else torch.ones(n, dtype=torch.bool))
        return cls([j for j, _ in levels], out, [float(w) for _, w in levels])


def _level_producers(model: nn.Module, graph, levels: list[int]) -> dict[int, str]:
    """{layer index: the graph conv whose block output is that layer's output}, found by one small forward pass."""
    modules = dict(model.named_modules())
    outputs, hooks = {}, []

    def note(path):
        def hook(module, inputs, output):  # returns None: the output is left as it is
            outputs.setdefault(id(output), (path, output))  # kept alive: a freed tensor's id is reused
        return hook

    for name in graph.convs:
        block = name.rsplit(".", 1)[0]  # 'model.15.cv2.conv' -> the Conv block 'model.15.cv2'
        if block in modules:
            hooks.append(modules[block].register_forward_hook(note(name)))
    layer_out = {}
    for j in levels:
        hooks.append(model.model[j].register_forward_hook(lambda m, i, o, j=j: layer_out.__setitem__(j, o)))
    p = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, 64, 64, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return {j: outputs[id(o)][0] for j, o in layer_out.items() if isinstance(o, torch.Tensor) and id(o) in outputs}


def feature_distillation(student_feats, teacher_feats, match: FeatureMatch) -> torch.Tensor:
    """Weighted mean over levels of |student - teacher[kept channels]|^2 / |teacher[kept channels]|^2 (means over
    all elements); 0 when every student map equals the teacher's kept channels."""
    losses = []
    for s, t, m in zip(student_feats, teacher_feats, match.masks):
        t = t.detach().float()[:, m.to(t.device)]
        if s.shape != t.shape:
            raise ValueError(f"student map {tuple(s.shape)} against the teacher's kept channels {tuple(t.shape)}")
        losses.append(F.mse_loss(s.float(), t) / t.pow(2).mean().clamp(min=1e-6))
    w = torch.tensor(match.weights, device=losses[0].device)
    return (torch.stack(losses) * w).sum() / w.sum()


class _Recorder:
    """Forward hooks keeping the last output of some layers of a model (removed by `close`)."""

    def __init__(self, model: nn.Module, levels: list[int]):
        self.outputs: dict[int, torch.Tensor] = {}
        layers = model.model
        self.hooks = [layers[j].register_forward_hook(lambda m, i, o, j=j: self.outputs.__setitem__(j, o))
                      for j in levels]
        self.levels = levels

    def take(self) -> list[torch.Tensor]:
        feats = [self.outputs[j] for j in self.levels]
        self.outputs = {}
        return feats

    def close(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []
        self.outputs = {}


def detect_input_channels(model: nn.Module) -> list[int]:
    """Channels of each Detect input (the neck outputs), read from the head's first box conv per level. A head
    without them (Classify) is a `UserError`: the neck term compares Detect inputs."""
    head = model.model[-1]
    if not hasattr(head, "cv2"):
        raise UserError(f"--kd-neck distils the Detect head's inputs, and this model's head is {type(head).__name__}: "
                        "use --kd-weight (its outputs) or --kd-features (feature maps) instead")
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
                 projector: FeatureProjector | None = None, features: FeatureMatch | None = None):
        self.base = student.init_criterion()
        self.teacher = teacher
        self.settings = settings
        self.projector = projector
        hyp = getattr(student, "args", None)  # the detection trainers set it; the gains do not apply to Classify
        self.cls_gain = float(getattr(hyp, "cls", 0.5))
        self.box_gain = float(getattr(hyp, "dfl", 1.5))
        if settings.neck_weight > 0 and projector is None:
            raise ValueError("neck distillation needs a projector")
        if settings.feature_weight > 0 and features is None:
            raise ValueError("feature distillation needs a FeatureMatch")
        self.features = features if settings.feature_weight > 0 else None
        self._recorders = []
        if self.features is not None:  # hooks on the student from now on: after the trainer's EMA copy was made
            self._recorders = [_Recorder(student, self.features.levels), _Recorder(teacher, self.features.levels)]

    def close(self) -> None:
        """Remove the feature hooks from the student and the teacher."""
        for r in self._recorders:
            r.close()

    def update(self) -> None:
        if hasattr(self.base, "update"):
            self.base.update()

    def __call__(self, preds, batch: dict):
        loss, items = self.base(preds, batch)
        with torch.no_grad():
            t_preds = self.teacher(batch["img"])  # eval mode: (decoded, raw)
        kd, neck = self.terms(preds, t_preds)
        # the detection criteria give per-term sums scaled by the batch size, the classification one its mean
        bs = 1 if loss.dim() == 0 else batch["img"].shape[0]
        loss = loss.reshape(-1)
        extra = [kd * bs]
        items = {**items, "kd_loss": kd.detach()}
        if self.settings.neck_weight > 0:
            extra.append(neck * bs)
            items["kd_neck"] = neck.detach()
        if self.features is not None:
            s_rec, t_rec = self._recorders
            feat = feature_distillation(s_rec.take(), t_rec.take(), self.features) * self.settings.feature_weight
            extra.append(feat * bs)
            items["kd_feat"] = feat.detach()
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
            s_br, t_br = head_branches(s_preds), head_branches(t_preds)
            first = next(iter(s_br.values()))
            neck = neck_distillation(first["feats"], next(iter(t_br.values()))["feats"], self.projector) * s.neck_weight
        return kd, neck


def head_term(s_preds, t_preds, *, cls_gain: float, box_gain: float, temperature: float = 2.0) -> torch.Tensor:
    """The unweighted head distillation between student and teacher predictions (raw, or eval-mode (y, raw)
    tuples): `cls_gain` x class term + `box_gain` x box term (`head_distillation`), averaged over the branches both
    have (one2many and one2one for end-to-end heads); for a Classify head, `logit_distillation` (no gains)."""
    s_br, t_br = head_branches(s_preds), head_branches(t_preds)
    heads = []
    for name in s_br:
        if name == "classify" and name in t_br:  # the Classify head's logits: a softmax KL, no gains
            heads.append(logit_distillation(s_br[name]["logits"], t_br[name]["logits"], temperature=temperature))
        elif name in t_br:
            c, b = head_distillation(s_br[name], t_br[name], temperature=temperature)
            heads.append(cls_gain * c + box_gain * b)
    return torch.stack(heads).mean() if heads else _zero(s_preds)


def _zero(preds) -> torch.Tensor:
    out = next(iter(head_branches(preds).values()))
    return torch.zeros((), device=out["logits" if "logits" in out else "scores"].device)
