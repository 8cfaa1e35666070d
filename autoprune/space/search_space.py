"""Search spaces: which genes a genome has, and how each gene's keep ratio maps to the model's channel groups.

A **genome** is `{gene name: keep ratio}`. A **search space** (a YAML file, see `docs/SEARCH_SPACES.md`) says which
genes exist and which channel groups (`autoprune groups` lists them) each one drives: one gene can tie many groups
together by id pattern (`fnmatch`), by stage (`backbone`, `neck`, `head`), by layer range, by the class of the layer
(`C2f`, `SPPF`, ...) and by the role of the channels (`residual`, `output`, `inner`). Every prunable group ends up in
exactly one gene or in the never-pruned set. Each gene has a range and a step: a genome's values lie on that grid.

`load_space(spec, graph, model)` binds a space to one analysed model and returns a `SearchSpace`, which turns genomes
into keep ratios, kept channel counts and GFLOPs in microseconds, so a search can price a candidate before it builds
it. Each model family has a shipped default space (`autoprune/search_spaces/*.yaml`); `default_space_name(model)`
picks it, and `generic` serves any other detector.

GFLOPs: `SearchSpace.gflops(genome, imgsz)` is the conv count of the channel analysis (2 x multiply-adds of every
conv, exact). The budget a search enforces is the full fvcore count (`autoprune.cost.count_gflops`), which adds
batch norms and a few fixed layers. Pass `base_gflops=count_gflops(unpruned_model, imgsz)` to any cost or budget
method and the space predicts that full count instead: conv GFLOPs + norm GFLOPs (linear in the kept channels,
computed from the graph) + a constant remainder (what pruning cannot touch). The prediction matches fvcore to
rounding error on pruned yolov8n/yolo11n; a scale factor full/conv would not be safe, because pruning shrinks convs
(channels squared) faster than norms (channels), so the full/conv ratio grows as a model is pruned.

Example:
    >>> from autoprune.models import load_model
    >>> from autoprune.channels import analyze
    >>> m = load_model("yolov8n.yaml").model
    >>> space = load_space(None, analyze(m), m)
    >>> space.name, len(space.genes)
    ('yolov8', 12)
    >>> g = space.uniform(0.75)
    >>> space.gflops(g, 640) < space.max_gflops(640)
    True
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoprune.errors import UserError
from autoprune.pruner import rounded_count

SPACES_DIR = Path(__file__).parent / "search_spaces"
FORMAT_VERSION = 1

# The full GFLOPs count charges an affine batch norm 4 multiply-adds per element (thop's rule, adopted by
# `autoprune.cost._flop_handles`), i.e. 8 FLOPs per output element of a conv followed by a BatchNorm.
NORM_FLOPS_PER_ELEMENT = 8

STAGES = ("backbone", "neck", "head")
ROLES = ("residual", "output", "inner")
SPLITS = ("none", "layer", "group")
REST_MODES = ("error", "never")

TOP_KEYS = ("name", "description", "version", "round_to", "min_channels", "defaults", "genes", "never", "rest")
RANGE_KEYS = ("low", "high", "step")
SELECT_KEYS = ("groups", "exclude", "stage", "layers", "modules", "role")
GENE_KEYS = SELECT_KEYS + RANGE_KEYS + ("split", "optional")
NEVER_KEYS = SELECT_KEYS + ("optional",)
REST_KEYS = ("name",) + RANGE_KEYS + ("split",)

DEFAULT_RANGE = {"low": 0.25, "high": 1.0, "step": 0.05}
DEFAULT_ROUND_TO = 8
DEFAULT_MIN_CHANNELS = 8

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_TOL = 1e-9  # float slack when comparing genome values with ranges and grids


# ---------------------------------------------------------------------------------------------------------------------
# Genes


@dataclass(frozen=True)
class Gene:
    """One searched keep ratio and the channel groups it drives.

    Its values are the grid `low, low + step, ..., high`; a gene with `low == high` is fixed at that ratio.

    Example:
        >>> g = Gene("neck.out", ("12.cv2", "15.cv2"), 0.25, 1.0, 0.05)
        >>> g.n, g.snap(0.512), g.snap(2.0)
        (15, 0.5, 1.0)
    """

    name: str
    groups: tuple[str, ...]
    low: float
    high: float
    step: float

    def __post_init__(self):
        if not (0 < self.low <= self.high + _TOL <= 1 + 2 * _TOL) or not self.step > 0:
            raise ValueError(f"gene {self.name!r}: need 0 < low <= high <= 1 and step > 0, got {self}")
        if self.high - self.low > _TOL:
            k = (self.high - self.low) / self.step
            if k < 1 - _TOL or abs(k - round(k)) > 1e-6:
                raise ValueError(f"gene {self.name!r}: step {self.step:g} does not divide high - low")

    @property
    def n(self) -> int:
        """Number of steps from `low` to `high` (the grid has `n + 1` values)."""
        return 0 if self.high - self.low <= _TOL else int(round((self.high - self.low) / self.step))

    def value(self, k: int) -> float:
        """The `k`-th grid value, `0 <= k <= n`, free of float noise (`0.7`, not `0.7000000000000001`)."""
        k = min(max(int(k), 0), self.n)
        return self.high if k == self.n else round(self.low + k * self.step, 12)

    def grid(self) -> tuple[float, ...]:
        """Every value the gene can take, ascending."""
        return tuple(self.value(k) for k in range(self.n + 1))

    def index(self, v: float) -> int:
        """The grid index nearest to `v`, clipped to the range."""
        if self.n == 0:
            return 0
        return min(max(int(math.floor((v - self.low) / self.step + 0.5)), 0), self.n)

    def snap(self, v: float) -> float:
        """The grid value nearest to `v`, clipped to `[low, high]`."""
        return self.value(self.index(v))

    def snap_down(self, v: float) -> float:
        """The largest grid value not above `v` (`low` when `v` is below the range)."""
        if self.n == 0:
            return self.low
        k = int(math.floor((v - self.low) / self.step + 1e-9))
        return self.value(k)


# ---------------------------------------------------------------------------------------------------------------------
# What a space can see of the model: layers, stages, P levels, group roles


@dataclass(frozen=True)
class _ModelView:
    n_layers: int
    layer_types: tuple[str, ...]  # class name of each top-level layer
    stages: dict  # stage -> frozenset of layer indices
    levels: dict  # "P3" -> layer index feeding the head at stride 8
    group_layer: dict  # group id -> layer
    group_role: dict  # group id -> role
    group_size: dict  # group id -> channels per part


def _unwrap(model):
    """The Ultralytics `DetectionModel` inside a `LoadedModel` or `ultralytics.YOLO` wrapper (or the model itself)."""
    from torch import nn

    for _ in range(3):
        inner = getattr(model, "model", None)
        if isinstance(inner, nn.Sequential) or inner is None:
            return model
        model = inner
    return model


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


def _model_view(graph, model) -> _ModelView:
    from torch import nn

    net = _unwrap(model)
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
    return _ModelView(
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

    net = _unwrap(model)
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


def shipped_spaces() -> list[str]:
    """Names of the spaces shipped in `autoprune/search_spaces/`."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


# ---------------------------------------------------------------------------------------------------------------------
# Reading YAML


def _yaml_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader that rejects duplicate keys (PyYAML would silently keep the last one)."""

    def construct_mapping(loader, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen[key] = True
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return Loader


def read_space_file(path: str | Path) -> dict:
    """The YAML mapping in `path`; UserError for a missing file, a parse error (with its line) or a non-mapping."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"search space file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read search space {path}: {e}") from e
    try:
        data = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"search space {path}:{where}: YAML error: {problem}") from e
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise UserError(f"search space {path}: expected a mapping of keys (name, genes, ...), the file is {kind}")
    return data


# ---------------------------------------------------------------------------------------------------------------------
# Validation helpers: every error names the field and what is allowed


class _Ctx:
    def __init__(self, label: str):
        self.label = label

    def fail(self, field: str, msg: str):
        raise UserError(f"search space {self.label}: {field}: {msg}")

    def keys(self, field: str, d: Mapping, allowed: tuple[str, ...]) -> None:
        for k in d:
            if not isinstance(k, str) or k not in allowed:
                hint = difflib.get_close_matches(str(k), allowed, n=1)
                more = f" (did you mean {hint[0]!r}?)" if hint else ""
                where = f"{field}." if field else ""
                raise UserError(
                    f"search space {self.label}: unknown key {where}{k}{more}; allowed: {', '.join(allowed)}"
                )

    def mapping(self, field: str, v) -> Mapping:
        if not isinstance(v, Mapping):
            self.fail(field, f"must be a mapping, got {_show(v)}")
        return v

    def ratio(self, field: str, v) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v <= 1:
            self.fail(field, f"must be a number in (0, 1], got {_show(v)}")
        return float(v)

    def step(self, field: str, v) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v <= 1:
            self.fail(field, f"must be a number in (0, 1] (e.g. 0.05), got {_show(v)}")
        return float(v)

    def count(self, field: str, v) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4096:
            self.fail(field, f"must be an integer from 1 to 4096, got {_show(v)}")
        return v

    def choice(self, field: str, v, allowed: tuple[str, ...]) -> str:
        if not isinstance(v, str) or v not in allowed:
            hint = difflib.get_close_matches(str(v), allowed, n=1) if isinstance(v, str) else []
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            self.fail(field, f"must be one of {', '.join(allowed)}, got {_show(v)}{more}")
        return v

    def strings(self, field: str, v, what: str) -> list[str]:
        items = v if isinstance(v, list) else [v]
        if not items or not all(isinstance(s, str) and s for s in items):
            self.fail(field, f"must be {what} or a list of them, got {_show(v)}")
        return items

    def name(self, field: str, v) -> str:
        if not isinstance(v, str) or not _NAME_RE.match(v):
            self.fail(field, f"must be a name of letters, digits, '_', '.', '-' starting with a letter, got {_show(v)}")
        return v


def _show(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _range(ctx: _Ctx, field: str, spec: Mapping, defaults: dict) -> tuple[float, float, float]:
    low = ctx.ratio(f"{field}.low", spec["low"]) if "low" in spec else defaults["low"]
    high = ctx.ratio(f"{field}.high", spec["high"]) if "high" in spec else defaults["high"]
    step = ctx.step(f"{field}.step", spec["step"]) if "step" in spec else defaults["step"]
    if low > high + _TOL:
        ctx.fail(field, f"low {low:g} is above high {high:g}; need low <= high")
    if high - low > _TOL:
        k = (high - low) / step
        if k < 1 - _TOL or abs(k - round(k)) > 1e-6:
            ctx.fail(
                f"{field}.step",
                f"{step:g} does not divide high - low = {high - low:g} into whole steps; "
                f"choose a step such that (high - low) / step is a whole number (e.g. 0.05)",
            )
    return low, high, step


# ---------------------------------------------------------------------------------------------------------------------
# Selecting groups


@dataclass
class _Selection:
    groups: list | None = None
    exclude: list | None = None
    stage: list | None = None
    layers: list | None = None  # parsed layer refs (kept as written for messages)
    modules: list | None = None
    role: list | None = None


_RANGE_RE = re.compile(r"^\s*(-?\d+)\s*-\s*(\d*)\s*$")


def _parse_selection(ctx: _Ctx, field: str, spec: Mapping) -> _Selection:
    sel = _Selection()
    if "groups" in spec:
        sel.groups = ctx.strings(f"{field}.groups", spec["groups"], "a group id pattern (fnmatch, e.g. '*.cv2')")
    if "exclude" in spec:
        items = spec["exclude"] if isinstance(spec["exclude"], list) else [spec["exclude"]]
        what = "a group id pattern (fnmatch, e.g. '*.m.*'), a selection mapping (e.g. {layers: P3}), or a list of them"
        if not items:
            ctx.fail(f"{field}.exclude", f"must be {what}, got []")
        sel.exclude = []
        for it in items:
            if isinstance(it, str) and it:
                sel.exclude.append(it)
            elif isinstance(it, Mapping):
                ctx.keys(f"{field}.exclude", it, SELECT_KEYS)
                sel.exclude.append(_parse_selection(ctx, f"{field}.exclude", it))
            else:
                ctx.fail(f"{field}.exclude", f"must be {what}, got {_show(it)}")
    if "stage" in spec:
        items = spec["stage"] if isinstance(spec["stage"], list) else [spec["stage"]]
        sel.stage = [ctx.choice(f"{field}.stage", s, STAGES) for s in items]
    if "role" in spec:
        items = spec["role"] if isinstance(spec["role"], list) else [spec["role"]]
        sel.role = [ctx.choice(f"{field}.role", s, ROLES) for s in items]
    if "modules" in spec:
        sel.modules = ctx.strings(f"{field}.modules", spec["modules"], "a layer class name (e.g. C2f)")
    if "layers" in spec:
        items = spec["layers"] if isinstance(spec["layers"], list) else [spec["layers"]]
        what = "a layer index, a range 'A-B' or 'A-', or a head input level 'P3'"
        if not items:
            ctx.fail(f"{field}.layers", f"must be {what} or a list of them, got []")
        for it in items:
            ok = (isinstance(it, int) and not isinstance(it, bool)) or (
                isinstance(it, str) and (_RANGE_RE.match(it) or re.match(r"^P\d$", it.strip()) or it.strip().isdigit())
            )
            if not ok:
                ctx.fail(f"{field}.layers", f"must be {what} or a list of them, got {_show(it)}")
        sel.layers = items
    return sel


def _layer_set(ctx: _Ctx, field: str, item, view: _ModelView, optional: bool) -> set[int]:
    n = view.n_layers
    if isinstance(item, int):
        i = item + n if item < 0 else item
        if not 0 <= i < n:
            if optional:
                return set()
            ctx.fail(f"{field}.layers", f"layer {item} does not exist; the model has layers 0-{n - 1} (-1: the last)")
        return {i}
    s = item.strip()
    if s.isdigit():
        return _layer_set(ctx, field, int(s), view, optional)
    if s.startswith("P"):
        if s not in view.levels:
            if optional:
                return set()
            have = ", ".join(sorted(view.levels)) or "none"
            ctx.fail(f"{field}.layers", f"{s} is not a head input of this model; it has {have}")
        return {view.levels[s]}
    m = _RANGE_RE.match(s)
    a = int(m.group(1))
    b = int(m.group(2)) if m.group(2) else n - 1
    if a < 0 or a > b:
        ctx.fail(f"{field}.layers", f"range {item!r} must be 'A-B' with 0 <= A <= B (or 'A-' to the last layer)")
    found = set(range(a, min(b, n - 1) + 1))
    if not found and not optional:
        ctx.fail(f"{field}.layers", f"range {item!r} selects no layer; the model has layers 0-{n - 1}")
    return found


@functools.lru_cache(maxsize=1)
def _known_modules() -> frozenset[str]:
    """Class names a `modules:` key may name: Ultralytics' blocks and torch.nn's layers."""
    from torch import nn

    names = {n for n in dir(nn) if isinstance(getattr(nn, n), type)}
    try:
        import ultralytics.nn.modules as um

        names |= set(getattr(um, "__all__", ()))
    except ImportError:  # pragma: no cover - Ultralytics is a dependency
        pass
    return frozenset(names)


def _select(ctx: _Ctx, field: str, sel: _Selection, view: _ModelView, ids: list[str], optional: bool,
            pattern_field: str | None = None) -> list[str]:
    """Group ids (in model order) that satisfy every key of the selection; unmatched patterns are errors."""
    cand = list(ids)
    scope = []
    if sel.stage is not None:
        layers = set().union(*(view.stages[s] for s in sel.stage))
        cand = [g for g in cand if view.group_layer[g] in layers]
        scope.append(f"stage {'/'.join(sel.stage)}")
    if sel.layers is not None:
        layers = set()
        for it in sel.layers:
            layers |= _layer_set(ctx, field, it, view, optional)
        cand = [g for g in cand if view.group_layer[g] in layers]
        scope.append(f"layers {', '.join(str(x) for x in sel.layers)}")
    if sel.modules is not None:
        known = _known_modules() | set(view.layer_types)
        for mod in sel.modules:
            if mod not in known:  # a typo; a real class the model lacks just selects nothing
                hint = difflib.get_close_matches(mod, sorted(known), n=1)
                more = f" (did you mean {hint[0]!r}?)" if hint else ""
                present = ", ".join(sorted(set(view.layer_types)))
                ctx.fail(f"{field}.modules", f"unknown layer class {mod!r}{more}; this model has {present}")
        wanted = set(sel.modules)
        cand = [g for g in cand if 0 <= view.group_layer[g] < view.n_layers
                and view.layer_types[view.group_layer[g]] in wanted]
        scope.append(f"modules {', '.join(sel.modules)}")
    if sel.role is not None:
        cand = [g for g in cand if view.group_role[g] in sel.role]
        scope.append(f"role {'/'.join(sel.role)}")
    if sel.exclude is not None:  # excluding nothing is fine: a variant of the model may lack what is excluded
        drop = set()
        for it in sel.exclude:
            if isinstance(it, str):
                drop |= {g for g in cand if fnmatch.fnmatchcase(g, it)}
            else:
                drop |= set(_select(ctx, f"{field}.exclude", it, view, cand, True))
        cand = [g for g in cand if g not in drop]
    if sel.groups is not None:
        matched = []
        for p in sel.groups:
            hits = [g for g in cand if fnmatch.fnmatchcase(g, p)]
            if not hits and not optional:
                within = f" within {'; '.join(scope)}" if scope else ""
                near = difflib.get_close_matches(p, cand, n=1, cutoff=0.5) or cand[:1]
                example = f" (ids look like {near[0]!r}; `autoprune groups` lists them)" if near else ""
                ctx.fail(pattern_field or f"{field}.groups", f"pattern {p!r} matches no channel group{within}{example}")
            matched += hits
        keep = set(matched)
        cand = [g for g in cand if g in keep]
    return cand


# ---------------------------------------------------------------------------------------------------------------------
# The bound space


class SearchSpace:
    """A search space bound to one analysed model: genes, their ranges, and what a genome costs.

    Attributes:
        name: the space's name (`yolov8`, or the file's `name:`).
        genes: the genes, in the order the space lists them (a `split` gene expands in model order).
        round_to, min_channels: how a keep ratio becomes a channel count (`autoprune.pruner.rounded_count`).
        never: ids of the groups that are never pruned (in model order).
        source: the space as loaded (plain YAML types); `space_from_source(source, graph, model)` rebuilds it.
        graph: the `ChannelGraph` the space is bound to.

    Genomes are `{gene name: ratio}` dicts. Every method that takes one validates it (`check_genome`): unknown or
    missing genes and values outside a gene's range are `UserError`s; values between grid points are snapped to the
    nearest one.

    GFLOPs: every cost and budget method takes `base_gflops`. Without it they use the conv GFLOPs of the channel
    analysis (`graph.conv_gflops`), a lower bound of the full count. With `base_gflops` = the full fvcore count of the
    unpruned model at the same `imgsz` (`autoprune.cost.count_gflops(model, imgsz)`), they use the predicted full
    count of the pruned model (see the module docstring), which is what a search should compare with its budget.
    """

    def __init__(self, *, name: str, genes: tuple[Gene, ...], round_to: int, min_channels: int,
                 never: tuple[str, ...], source: dict, graph):
        self.name = name
        self.genes = genes
        self.round_to = round_to
        self.min_channels = min_channels
        self.never = never
        self.source = source
        self.graph = graph
        self._by_name = {g.name: g for g in genes}
        self._gene_of = {gid: g.name for g in genes for gid in g.groups}
        self._norm_convs = tuple(sorted({p.conv for p in graph.producers if p.bn is not None}))

    def __repr__(self) -> str:
        return f"SearchSpace({self.name!r}, {len(self.genes)} genes, {len(self.never)} never pruned)"

    # -- genomes ----------------------------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Gene names in order."""
        return [g.name for g in self.genes]

    def gene(self, name: str) -> Gene:
        """The gene called `name` (KeyError if absent)."""
        return self._by_name[name]

    def gene_of(self, gid: str) -> str | None:
        """The name of the gene that drives group `gid`, or None for a never-pruned group."""
        return self._gene_of.get(gid)

    def check_genome(self, genome) -> dict[str, float]:
        """Validate `genome` against the space and return it snapped to the grid (in gene order).

        UserError when it is not a mapping, names an unknown gene (with a suggestion), misses a gene, or has a value
        that is not a number inside the gene's `[low, high]`.

        Example:
            >>> space.check_genome({**space.uniform(1.0), "stem": 0.98})["stem"]  # doctest: +SKIP
            1.0
        """
        if not isinstance(genome, Mapping):
            raise UserError(f"a genome must be a mapping of gene name to keep ratio, got {_show(genome)}")
        unknown = [k for k in genome if k not in self._by_name]
        if unknown:
            hint = difflib.get_close_matches(str(unknown[0]), self.names, n=1)
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise UserError(
                f"genome has gene {unknown[0]!r} that search space {self.name!r} does not{more}; "
                f"its genes: {', '.join(self.names)}"
            )
        missing = [n for n in self.names if n not in genome]
        if missing:
            raise UserError(f"genome misses gene(s) {', '.join(missing)} of search space {self.name!r}")
        out = {}
        for g in self.genes:
            v = genome[g.name]
            if isinstance(v, (np.floating, np.integer)):
                v = float(v)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise UserError(f"genome value of gene {g.name!r} must be a number, got {_show(v)}")
            if v < g.low - 1e-6 or v > g.high + 1e-6:
                raise UserError(
                    f"genome value {v:g} of gene {g.name!r} is outside its range [{g.low:g}, {g.high:g}]"
                )
            out[g.name] = g.snap(float(v))
        return out

    def snap(self, genome) -> dict[str, float]:
        """Every value moved to the nearest grid point of its gene and clipped to its range (genes must match)."""
        if not isinstance(genome, Mapping):
            raise UserError(f"a genome must be a mapping of gene name to keep ratio, got {_show(genome)}")
        clipped = {}
        for k, v in genome.items():
            g = self._by_name.get(k)
            if g is not None and isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
                v = min(max(float(v), g.low), g.high) if math.isfinite(v) else v
            clipped[k] = v
        return self.check_genome(clipped)

    def from_counts(self, counts: Mapping[str, int]) -> dict[str, float]:
        """The genome closest to kept channel counts per group (a one-shot plan): each gene's ratio is the kept
        share of the channels of its groups, snapped to its grid and clipped to its range."""
        genome = {}
        for g in self.genes:
            sizes = [self.graph.group(gid).size for gid in g.groups]
            kept = [min(int(counts.get(gid, size)), size) for gid, size in zip(g.groups, sizes)]
            genome[g.name] = sum(kept) / sum(sizes) if sum(sizes) else 1.0
        return self.snap(genome)

    def keep(self, genome) -> dict[str, float]:
        """Keep ratio of every channel group of the graph: its gene's value, 1.0 for never-pruned groups."""
        genome = self.check_genome(genome)
        return {gid: genome[self._gene_of[gid]] if gid in self._gene_of else 1.0 for gid in self.graph.ids}

    def counts(self, genome) -> dict[str, int]:
        """Kept channels per part of every group (`rounded_count` with the space's `round_to`, `min_channels`)."""
        genome = self.check_genome(genome)
        found = {}
        cache = self.__dict__.setdefault("_count_cache", {})  # (gene, grid index) -> {group id: count}
        for g in self.genes:
            key = (g.name, g.index(genome[g.name]))
            part = cache.get(key)
            if part is None:
                v = g.value(key[1])
                part = cache[key] = {
                    gid: rounded_count(self.graph.group(gid).size, v, self.round_to, self.min_channels)
                    for gid in g.groups
                }
            found.update(part)
        return {g.id: found.get(g.id, g.size) for g in self.graph.groups}

    # -- costs ------------------------------------------------------------------------------------------------------

    def _norm_gflops(self, counts: dict[str, int] | None, imgsz: int) -> float:
        channels = self.graph.conv_channels(counts)
        scale = (imgsz / self.graph.imgsz) ** 2
        elements = sum(channels[c][1] * self.graph.convs[c].out_pixels for c in self._norm_convs)
        return NORM_FLOPS_PER_ELEMENT * elements * scale / 1e9

    def _cost_of_counts(self, counts: dict[str, int] | None, imgsz: int, base_gflops: float | None) -> float:
        conv = self.graph.conv_gflops(counts, imgsz)
        if base_gflops is None:
            return conv
        return conv + self._norm_gflops(counts, imgsz) + self._remainder(imgsz, base_gflops)

    def _remainder(self, imgsz: int, base_gflops: float) -> float:
        """Full GFLOPs of the unpruned model that neither convs nor the norms after them account for."""
        if isinstance(base_gflops, bool) or not isinstance(base_gflops, (int, float)) or not base_gflops > 0:
            raise ValueError(f"base_gflops must be the unpruned model's GFLOPs (> 0), got {base_gflops!r}")
        key = (imgsz, float(base_gflops))
        cache = self.__dict__.setdefault("_remainders", {})
        if key not in cache:
            cache[key] = base_gflops - self.graph.conv_gflops(None, imgsz) - self._norm_gflops(None, imgsz)
        return cache[key]

    def gflops(self, genome, imgsz: int, *, base_gflops: float | None = None) -> float:
        """GFLOPs of the model pruned by `genome` at `imgsz`, in microseconds, without building it.

        Without `base_gflops`: the conv GFLOPs (`graph.conv_gflops`), exact for convs. With `base_gflops` (the full
        fvcore count of the unpruned model at `imgsz`): the predicted full count, what `count_gflops` would say.

        Example:
            >>> space.gflops(space.uniform(1.0), 640) == space.graph.conv_gflops(None, 640)  # doctest: +SKIP
            True
        """
        return self._cost_of_counts(self.counts(genome), imgsz, base_gflops)

    def lows(self) -> dict[str, float]:
        """The genome with every gene at its low."""
        return {g.name: g.low for g in self.genes}

    def highs(self) -> dict[str, float]:
        """The genome with every gene at its high."""
        return {g.name: g.high for g in self.genes}

    def min_gflops(self, imgsz: int, *, base_gflops: float | None = None) -> float:
        """The smallest GFLOPs any genome reaches (every gene at its low): budgets below it are infeasible."""
        return self.gflops(self.lows(), imgsz, base_gflops=base_gflops)

    def max_gflops(self, imgsz: int, *, base_gflops: float | None = None) -> float:
        """The largest GFLOPs any genome reaches (every gene at its high)."""
        return self.gflops(self.highs(), imgsz, base_gflops=base_gflops)

    # -- special genomes --------------------------------------------------------------------------------------------

    def uniform(self, ratio: float) -> dict[str, float]:
        """Every gene at `ratio`, snapped to its grid and clipped to its range."""
        return {g.name: g.snap(min(max(float(ratio), g.low), g.high)) for g in self.genes}

    def uniform_ratios(self) -> list[float]:
        """The ratios at which `uniform` is evaluated by `uniform_for_budget`: every grid value of every gene."""
        return sorted({v for g in self.genes for v in g.grid()})

    def uniform_for_budget(self, budget_gflops: float, imgsz: int, *,
                           base_gflops: float | None = None) -> dict[str, float] | None:
        """The largest uniform genome (`uniform(r)`, `r` over `uniform_ratios()`) within `budget_gflops`, or None
        when even the smallest one is over it.

        Example:
            >>> space.gflops(space.uniform_for_budget(5.0, 640), 640) <= 5.0  # doctest: +SKIP
            True
        """
        ratios = self.uniform_ratios()
        if not ratios:
            return {}

        def cost(i):
            return self.gflops(self.uniform(ratios[i]), imgsz, base_gflops=base_gflops)

        if cost(0) > budget_gflops:
            return None
        lo, hi = 0, len(ratios) - 1  # invariant: cost(lo) within budget
        if cost(hi) <= budget_gflops:
            return self.uniform(ratios[hi])
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if cost(mid) <= budget_gflops:
                lo = mid
            else:
                hi = mid
        return self.uniform(ratios[lo])

    def repair(self, genome, budget_gflops: float, imgsz: int, *, base_gflops: float | None = None) -> dict[str, float]:
        """A genome within `budget_gflops` close to `genome`: `genome` itself (snapped) when it is within budget.

        Otherwise every gene is moved toward its low by one common factor `t` (`low + t * (value - low)`), snapped
        down to its grid, with the largest `t` in [0, 1] that meets the budget (found by bisection; GFLOPs only grow
        with `t`). The budget left over by the snapping is then given back one grid step at a time, the genes
        furthest below their value in `genome` first, while the budget holds. No gene ends above its value in
        `genome`, and the result is deterministic. UserError when the budget is below `min_gflops` (no genome of the
        space meets it).
        """
        genome = self.check_genome(genome)
        if self.gflops(genome, imgsz, base_gflops=base_gflops) <= budget_gflops:
            return genome
        floor = self.min_gflops(imgsz, base_gflops=base_gflops)
        if floor > budget_gflops:
            raise UserError(
                f"budget {budget_gflops:g} GFLOPs is below the smallest model of search space {self.name!r} "
                f"({floor:.3f} GFLOPs at {imgsz} with every gene at its low); raise the budget or lower the lows"
            )

        def at(t: float) -> dict[str, float]:
            return {g.name: g.snap_down(g.low + t * (genome[g.name] - g.low)) for g in self.genes}

        lo, hi = 0.0, 1.0  # invariant: at(lo) within budget, at(hi) over it
        best = at(lo)
        for _ in range(60):
            mid = (lo + hi) / 2
            cand = at(mid)
            if self.gflops(cand, imgsz, base_gflops=base_gflops) <= budget_gflops:
                lo, best = mid, cand
            else:
                hi = mid
            if hi - lo < 1e-6:
                break
        return self._fill(best, genome, budget_gflops, imgsz, base_gflops)

    def _fill(self, current: dict, ceiling: dict, budget: float, imgsz: int, base_gflops: float | None) -> dict:
        """Raise genes of `current` one step at a time toward `ceiling` while the budget holds (largest gap first)."""
        current = dict(current)
        changed = True
        while changed:
            changed = False
            order = sorted(
                (g for g in self.genes if current[g.name] < ceiling[g.name] - _TOL),
                key=lambda g: -(ceiling[g.name] - current[g.name]),
            )
            for g in order:
                trial = {**current, g.name: g.value(g.index(current[g.name]) + 1)}
                if trial[g.name] > ceiling[g.name] + _TOL:
                    continue
                if self.gflops(trial, imgsz, base_gflops=base_gflops) <= budget:
                    current, changed = trial, True
        return current

    def to_indices(self, genome) -> list[int]:
        """The grid index of each gene's value, in gene order (an integer encoding for evolutionary engines)."""
        genome = self.check_genome(genome)
        return [g.index(genome[g.name]) for g in self.genes]

    def from_indices(self, indices) -> dict[str, float]:
        """The genome whose gene `i` is at grid index `indices[i]` (clipped to `0..n`)."""
        if len(indices) != len(self.genes):
            raise ValueError(f"expected {len(self.genes)} grid indices, got {len(indices)}")
        return {g.name: g.value(int(k)) for g, k in zip(self.genes, indices)}

    def random(self, rng: np.random.Generator) -> dict[str, float]:
        """A genome with each gene drawn uniformly from its grid."""
        return {g.name: g.value(int(rng.integers(0, g.n + 1))) for g in self.genes}

    def distributions(self) -> dict:
        """One `optuna.distributions.FloatDistribution(low, high, step=step)` per gene, for Optuna samplers."""
        from optuna.distributions import FloatDistribution

        # the same distribution `trial.suggest_float(g.name, g.low, g.high, step=g.step)` makes, fixed genes too
        return {g.name: FloatDistribution(g.low, g.high, step=g.step) for g in self.genes}

    # -- reporting --------------------------------------------------------------------------------------------------

    def describe(self, imgsz: int | None = None) -> list[dict]:
        """One row per gene: name, range, step, groups, and the conv GFLOPs its groups drive (its share when all
        of them go to its low with everything else whole), for tables and `--json`."""
        imgsz = imgsz or self.graph.imgsz
        full = self.max_gflops(imgsz)
        rows = []
        for g in self.genes:
            lowered = {**self.highs(), g.name: g.low}
            rows.append({
                "gene": g.name, "low": g.low, "high": g.high, "step": g.step, "groups": list(g.groups),
                "saves_at_low_gflops": round(full - self.gflops(lowered, imgsz), 6),
            })
        return rows


# ---------------------------------------------------------------------------------------------------------------------
# Loading


def load_space(spec: str | Path | dict | None, graph, model) -> SearchSpace:
    """Bind a search space to `model` (analysed as `graph`).

    `spec` is None or "family" (the default space of the model's family, `default_space_name`), the name of a
    shipped space (`"fine"`, `"yolov8"`, `"generic"`, ...), a path to a YAML file, or the dict such a file loads to
    (a study's stored source). Every mistake is a one-line `UserError` that names the field.

    Example:
        >>> from autoprune.models import load_model
        >>> from autoprune.channels import analyze
        >>> m = load_model("yolo11n.yaml").model
        >>> load_space(None, analyze(m), m).name
        'yolo11'
    """
    if spec is None or spec == "family":
        name = default_space_name(model)
        return _build(read_space_file(SPACES_DIR / f"{name}.yaml"), graph, model, label=name, default_name=name)
    if isinstance(spec, Mapping):
        return _build(copy.deepcopy(dict(spec)), graph, model, label="(dict)", default_name="custom")
    if isinstance(spec, (str, Path)):
        text = str(spec)
        path = Path(text).expanduser()
        if path.is_file():
            return _build(read_space_file(path), graph, model, label=text, default_name=path.stem)
        if text in shipped_spaces():
            return _build(read_space_file(SPACES_DIR / f"{text}.yaml"), graph, model, label=text, default_name=text)
        if text.endswith((".yaml", ".yml")) or "/" in text or path.suffix:
            raise UserError(f"search space file not found: {text}")
        hint = difflib.get_close_matches(text, shipped_spaces(), n=1)
        more = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise UserError(
            f"unknown search space {text!r}{more}; give a YAML file or one of: {', '.join(shipped_spaces())}"
        )
    raise TypeError(f"spec must be None, a name, a path or a dict, got {type(spec).__name__}")


def space_from_source(source: dict, graph, model) -> SearchSpace:
    """Rebuild a space from the `source` a study stored (`SearchSpace.source`); same genes for the same model."""
    return load_space(dict(source), graph, model)


def _build(src: dict, graph, model, *, label: str, default_name: str) -> SearchSpace:
    ctx = _Ctx(label)
    source = copy.deepcopy(src)
    ctx.keys("", src, TOP_KEYS)
    if "version" in src and src["version"] != FORMAT_VERSION:
        ctx.fail("version", f"must be {FORMAT_VERSION}, got {_show(src['version'])}")
    name = ctx.name("name", src["name"]) if "name" in src else default_name
    if "description" in src and not isinstance(src["description"], str):
        ctx.fail("description", f"must be a string, got {_show(src['description'])}")
    round_to = ctx.count("round_to", src["round_to"]) if "round_to" in src else DEFAULT_ROUND_TO
    min_channels = ctx.count("min_channels", src["min_channels"]) if "min_channels" in src else DEFAULT_MIN_CHANNELS
    defaults = dict(DEFAULT_RANGE)
    if "defaults" in src:
        d = ctx.mapping("defaults", src["defaults"])
        ctx.keys("defaults", d, RANGE_KEYS)
        low, high, step = _range(ctx, "defaults", d, DEFAULT_RANGE)
        defaults = {"low": low, "high": high, "step": step}
    if "genes" not in src:
        ctx.fail("genes", "is required: a mapping of gene name to its selection and range (see docs/SEARCH_SPACES.md)")
    genes_spec = src["genes"] if src["genes"] is not None else {}
    ctx.mapping("genes", genes_spec)

    view = _model_view(graph, model)
    ids = graph.ids
    owner: dict[str, str] = {}  # group id -> gene name

    # never: wins over genes
    never: set[str] = set()
    if "never" in src and src["never"] is not None:
        items = src["never"] if isinstance(src["never"], list) else [src["never"]]
        for i, item in enumerate(items):
            field = "never" if not isinstance(src["never"], list) else f"never[{i}]"
            if isinstance(item, str) and item:
                never |= set(_select(ctx, field, _Selection(groups=[item]), view, ids, False, pattern_field=field))
            elif isinstance(item, Mapping):
                ctx.keys(field, item, NEVER_KEYS)
                optional = _bool(ctx, f"{field}.optional", item.get("optional", False))
                never |= set(_select(ctx, field, _parse_selection(ctx, field, item), view, ids, optional))
            else:
                ctx.fail(field, f"must be a group id pattern, a selection mapping or a list of them, got {_show(item)}")

    genes: list[Gene] = []

    def add_genes(gname: str, field: str, selected: list[str], rng: tuple[float, float, float], split: str,
                  optional: bool):
        selected = [g for g in selected if g not in never]
        if not selected:
            if optional:
                return
            why = "selects no channel group of this model" + (" outside never:" if never else "")
            ctx.fail(field, f"{why}; fix its selection, or mark it optional: true if some models lack it")
        if split == "none":
            parts = [(gname, selected)]
        elif split == "layer":
            by_layer: dict[int, list[str]] = {}
            for g in selected:
                by_layer.setdefault(view.group_layer[g], []).append(g)
            parts = [(f"{gname}.{layer}", gs) for layer, gs in by_layer.items()]
        else:
            parts = [(f"{gname}.{g}", [g]) for g in selected]
        for n, gs in parts:
            for g in gs:
                if g in owner:
                    raise UserError(
                        f"search space {label}: group {g!r} is selected by both gene {owner[g]!r} and gene {n!r}; "
                        "each group may be in one gene only (narrow one with groups:, exclude:, layers:, ...)"
                    )
                owner[g] = n
            if any(x.name == n for x in genes):
                ctx.fail(f"genes.{gname}", f"gene name {n!r} is used twice")
            genes.append(Gene(n, tuple(gs), *rng))

    for gname, spec in genes_spec.items():
        field = f"genes.{gname}"
        ctx.name(f"genes.{gname!s}", gname)
        spec = {} if spec is None else spec
        ctx.mapping(field, spec)
        ctx.keys(field, spec, GENE_KEYS)
        rng = _range(ctx, field, spec, defaults)
        split = ctx.choice(f"{field}.split", spec.get("split", "none"), SPLITS)
        optional = _bool(ctx, f"{field}.optional", spec.get("optional", False))
        selected = _select(ctx, field, _parse_selection(ctx, field, spec), view, ids, optional)
        add_genes(gname, field, selected, rng, split, optional)

    rest = src.get("rest", "error")
    uncovered = [g for g in ids if g not in owner and g not in never]
    if isinstance(rest, Mapping):
        ctx.keys("rest", rest, REST_KEYS)
        rname = ctx.name("rest.name", rest.get("name", "rest"))
        rng = _range(ctx, "rest", rest, defaults)
        split = ctx.choice("rest.split", rest.get("split", "none"), SPLITS)
        add_genes(rname, "rest", uncovered, rng, split, True)
    else:
        if rest not in REST_MODES:
            hint = difflib.get_close_matches(rest, REST_MODES, n=1) if isinstance(rest, str) else []
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            ctx.fail("rest", f"must be error, never, or a gene mapping {{name, low, high, step, split}}, "
                             f"got {_show(rest)}{more}")
        mode = rest
        if mode == "never":
            never |= set(uncovered)
        elif uncovered:
            shown = ", ".join(uncovered[:8]) + (f", ... ({len(uncovered)} in all)" if len(uncovered) > 8 else "")
            raise UserError(
                f"search space {label}: groups not covered by any gene: {shown}; add them to a gene or to never:, "
                "or set rest: never (keep them whole) or rest: {name: rest} (one more gene)"
            )
    if not genes:
        raise UserError(f"search space {label}: no gene selects any channel group of this model; nothing to search")

    order = {gid: i for i, gid in enumerate(ids)}
    return SearchSpace(
        name=name,
        genes=tuple(genes),
        round_to=round_to,
        min_channels=min_channels,
        never=tuple(sorted(never, key=order.__getitem__)),
        source=source,
        graph=graph,
    )


def _bool(ctx: _Ctx, field: str, v) -> bool:
    if not isinstance(v, bool):
        ctx.fail(field, f"must be true or false, got {_show(v)}")
    return v
