"""What a search space can see of a model: its layers, stages, head input levels and the role of each channel
group; and which shipped space fits a model's family (`default_space_name`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelView:
    """What a space's selections can read of one model (`model_view` builds it)."""

    n_layers: int
    layer_types: tuple[str, ...]  # class name of each top-level layer
    stages: dict  # stage -> frozenset of layer indices
    levels: dict  # "P3" -> layer index feeding the head at stride 8
    group_layer: dict  # group id -> layer
    group_role: dict  # group id -> role
    group_size: dict  # group id -> channels per part


def _layer_of_path(path: str) -> int:
    head = path.removeprefix("model.").split(".", 1)[0]
    return int(head) if head.lstrip("-").isdigit() else -1


def _group_role(graph, g) -> str:
    """`residual` when the channels are summed from two or more convs (a residual add), else `output` when a conv of
    another top-level layer reads them (a block's output), else `inner` (hidden channels inside one block)."""
    convs, readers = set(), set()
    for pi in g.parts:
        part = graph.parts[pi]
        for idx in part.producers:
            p = graph.producers[idx]
            if not p.depthwise:
                convs.add(p.conv)
        for c in part.consumers:
            readers.add(_layer_of_path(c.conv))
    if len(convs) >= 2:
        return "residual"
    if readers - {g.layer}:
        return "output"
    return "inner"


def model_view(graph, model) -> ModelView:
    from torch import nn

    from autoprune.wrappers import detection_model

    net = detection_model(model)
    layers = getattr(net, "model", None)
    if not isinstance(layers, nn.Sequential):
        raise TypeError(f"expected an Ultralytics DetectionModel, got {type(net).__name__}")
    n = len(layers)
    types = tuple(type(m).__name__ for m in layers)
    try:
        from ultralytics.nn.modules import Detect

        heads = [i for i, m in enumerate(layers) if isinstance(m, Detect)]
    except ImportError:  # pragma: no cover - Ultralytics is a dependency
        heads = []
    if not heads:
        heads = [n - 1]
    head = heads[-1]
    cfg = getattr(net, "yaml", None) or {}
    nb = len(cfg.get("backbone", [])) if isinstance(cfg, dict) else 0
    nb = min(nb, head) if nb else head
    stages = {
        "backbone": frozenset(range(nb)),
        "neck": frozenset(range(nb, head)),
        "head": frozenset({head}),
    }
    levels = {}
    det = layers[head]
    f = getattr(det, "f", None)
    stride = getattr(net, "stride", None)
    if isinstance(f, (list, tuple)) and stride is not None:
        strides = [float(s) for s in (stride.tolist() if hasattr(stride, "tolist") else stride)]
        if len(strides) == len(f):
            for src, s in zip(f, strides):
                if s > 0 and float(math.log2(s)).is_integer():
                    levels[f"P{int(math.log2(s))}"] = src if src >= 0 else head + src
    return ModelView(
        n_layers=n,
        layer_types=types,
        stages=stages,
        levels=levels,
        group_layer={g.id: g.layer for g in graph.groups},
        group_role={g.id: _group_role(graph, g) for g in graph.groups},
        group_size={g.id: g.size for g in graph.groups},
    )


# ---------------------------------------------------------------------------------------------------------------------
# Family detection

_FAMILY_MODULES = {
    "yolo11": {"C3k2", "C2PSA"},
    "yolov8": {"C2f", "C2"},
    "yolov5": {"C3", "Bottleneck", "SPP"},
}
_COMMON_MODULES = {"Conv", "SPPF", "Concat", "Upsample", "Detect", "Sequential", "ZeroPad2d", "MaxPool2d", "Identity"}
_FAMILY_NAMES = (  # (regex on the model YAML's file name, family); first match wins
    (r"yolo11", "yolo11"),
    (r"yolov8", "yolov8"),
    (r"yolov5", "yolov5"),
    (r"yolov3", "yolov5"),
)


def default_space_name(model) -> str:
    """The shipped space for `model`'s family: `"yolov8"`, `"yolo11"`, `"yolov5"` (also yolov3u and yolov3-tinyu), or
    `"generic"` for anything else.

    The model YAML's file name decides when it names a family (`yolov8n-p2.yaml` -> yolov8, `yolo12n.yaml` ->
    generic), the modules present otherwise (a checkpoint of a custom YAML); either way the model's top-level layers
    must be ones the family's space is written for, so `yolov8n-ghost.yaml` (GhostConv, C3Ghost) gets `generic`.

    Example:
        >>> from autoprune.models import load_model
        >>> default_space_name(load_model("yolov3-tinyu.yaml").model)
        'yolov5'
    """
    from torch import nn

    from autoprune.wrappers import detection_model

    net = detection_model(model)
    layers = getattr(net, "model", None)
    types = {type(m).__name__ for m in layers} if isinstance(layers, nn.Sequential) else set()
    if not types or type(layers[-1]).__name__ != "Detect":
        return "generic"

    def fits(family: str) -> bool:
        allowed = _FAMILY_MODULES[family] | _COMMON_MODULES
        if not types <= allowed:
            return False
        # the family's signature block must be there (or, for v3/v5, at least nothing of the other families)
        return bool(types & _FAMILY_MODULES[family]) or family == "yolov5"

    cfg = getattr(net, "yaml", None)
    file = Path(str(cfg.get("yaml_file", "") or "")).name.lower() if isinstance(cfg, dict) else ""
    if file:
        for pattern, family in _FAMILY_NAMES:
            if re.search(pattern, file):
                return family if fits(family) else "generic"
        if re.search(r"yolo", file):  # a named family without a space of its own (yolov9, yolov10, yolo12, ...)
            return "generic"
    for family in ("yolo11", "yolov8", "yolov5"):
        if fits(family):
            return family
    return "generic"

