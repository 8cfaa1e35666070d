"""Depth: the repeated blocks of a model ("depth units") and removing some of their elements physically.

A **depth unit** is the container of repeated elements inside an Ultralytics block:

- `concat` units: the `m` ModuleList of a `C2f` or `C3k2` (Bottlenecks or C3k blocks). Every element's output is
  one slot of the concat that the block's `cv2` reads, so removing element `i` removes `m[i]` and the matching input
  channels of `cv2` (one slot, as wide as element `i`'s output after width pruning). When the elements are residual
  (Bottlenecks with a shortcut) every element reads and writes the same channels, so any of them may go (the next
  one then reads the previous one's output); otherwise only the last ones may go, since element `i + 1` reads
  channels shaped by element `i`.
- `chain` units: the `m` Sequential of a `C3`, `C3k` or `C3x` whose Bottlenecks are all residual. An element that
  goes leaves the identity in its place (`x + f(x)` without `f`); a chain may become empty (`nn.Sequential()` is the
  identity, so `cv3(cat(cv1(x), cv2(x)))` still holds). Chains of non-residual Bottlenecks are not units: dropping
  one would feed the next reader channels of another width.

Unit ids are module paths without the `model.` prefix: `"2.m"`, and `"2.m.0.m"` for the chain inside a C3k2's C3k.

A depth plan travels inside kept counts as `{"depth:<unit id>": kept elements}` entries next to the channel groups'
counts (`depth_key`, `split_counts`), so a trial's `kept_channels` replays it; which elements stay is the first
`kept` of the unit's order: the natural order (keep the first ones) unless a ranking gives an order for the unit
under the same key (`rank_elements` measures one for residual units). Order of operations, the one every command
uses (`candidate.build`): widths first (channel ranking on the unpruned model), then the depth removal on the
width-pruned model; BatchNorm recalibration and finetuning come after, as for widths alone.

Example:
    >>> from autoprune.models import load_model
    >>> m = load_model("yolov8n.yaml").model
    >>> [(u.id, u.n) for u in find_units(m)][:2]
    [('2.m', 1), ('4.m', 2)]
    >>> smaller = remove_elements(m, {"4.m": [0]})  # a new model; `m` is unchanged
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from autoprune.errors import UserError

DEPTH_PREFIX = "depth:"


@dataclass(frozen=True)
class DepthUnit:
    """One container of repeated elements (see the module docstring).

    Attributes:
        id: the container's path without `model.` (`"2.m"`).
        layer: the top-level layer it belongs to.
        block: class name of the block that owns the container (`C2f`).
        kind: `concat` (C2f/C3k2 ModuleList) or `chain` (C3/C3k Sequential).
        n: number of elements in the unpruned model.
        residual: every element adds its input to its output (any element may go), else only the last ones may.
        elements: module paths (with `model.`) of the elements, in order.
        out_convs: per element, the path of the conv that makes its output (a concat unit's `cv2` slot width).
        reader: for a concat unit the path of the conv reading the concat (`model.2.cv2.conv`), else None.
    """

    id: str
    layer: int
    block: str
    kind: str
    n: int
    residual: bool
    elements: tuple[str, ...]
    out_convs: tuple[str, ...]
    reader: str | None

    @property
    def path(self) -> str:
        return f"model.{self.id}"

    @property
    def block_path(self) -> str:
        return self.path.rsplit(".", 1)[0]


def depth_key(unit_id: str) -> str:
    """The key of a unit's kept element count inside kept counts (`"depth:2.m"`)."""
    return DEPTH_PREFIX + unit_id


def split_counts(counts: Mapping) -> tuple[dict, dict[str, int]]:
    """(channel counts, {unit id: kept elements}) of kept counts that may hold depth entries."""
    width, depth = {}, {}
    for k, v in counts.items():
        if isinstance(k, str) and k.startswith(DEPTH_PREFIX):
            depth[k[len(DEPTH_PREFIX):]] = int(v)
        else:
            width[k] = v
    return width, depth


def _element_out_conv(elem: nn.Module) -> str | None:
    """The path (relative to the element) of the conv that makes an element's output, or None when unknown."""
    from ultralytics.nn.modules.block import C3, Bottleneck

    if type(elem) is Bottleneck:
        return "cv2.conv"
    if isinstance(elem, C3) and type(elem).forward is C3.forward:
        return "cv3.conv"
    return None


def find_units(model: nn.Module) -> list[DepthUnit]:
    """Every depth unit of `model` (a DetectionModel or a wrapper), in module order.

    Example:
        >>> from autoprune.models import load_model
        >>> [u.id for u in find_units(load_model("yolo11n.yaml").model)][:3]
        ['2.m', '4.m', '6.m']
    """
    from ultralytics.nn.modules.block import C2f, C3, Bottleneck

    from autoprune.wrappers import detection_model

    net = detection_model(model)
    units = []
    for path, mod in net.named_modules():
        if not path.startswith("model.") or not isinstance(getattr(mod, "m", None), (nn.ModuleList, nn.Sequential)):
            continue
        elems = list(mod.m)
        if not elems:
            continue
        layer = int(path.split(".")[1])
        if isinstance(mod, C2f) and type(mod).forward is C2f.forward and isinstance(mod.m, nn.ModuleList):
            outs = [_element_out_conv(e) for e in elems]
            if any(o is None for o in outs):
                continue
            residual = all(type(e) is Bottleneck and e.add for e in elems)
            kind, reader = "concat", f"{path}.cv2.conv"
        elif isinstance(mod, C3) and type(mod).forward is C3.forward and isinstance(mod.m, nn.Sequential):
            if not all(type(e) is Bottleneck and e.add for e in elems):
                continue
            outs, residual, kind, reader = ["cv2.conv"] * len(elems), True, "chain", None
        else:
            continue
        units.append(DepthUnit(
            id=f"{path.removeprefix('model.')}.m", layer=layer, block=type(mod).__name__, kind=kind, n=len(elems),
            residual=residual, elements=tuple(f"{path}.m.{i}" for i in range(len(elems))),
            out_convs=tuple(f"{path}.m.{i}.{o}" for i, o in enumerate(outs)), reader=reader,
        ))
    return units


def check_plan(units: Iterable[DepthUnit], depth: Mapping[str, int], orders: Mapping | None = None,
               what: str = "the depth plan") -> dict[str, list[int]]:
    """{unit id: kept element indices (sorted)} of a plan `{unit id: kept count}`; `orders` may give a unit's element
    order (most important first, as `rank_elements` makes it), else the first elements stay.

    `UserError` for a unit the model lacks, a count outside `0..n`, or an order that is not a permutation of the
    unit's elements (or that drops a middle element of a non-residual unit).
    """
    by_id = {u.id: u for u in units}
    kept = {}
    for uid, k in depth.items():
        u = by_id.get(uid)
        if u is None:
            have = ", ".join(by_id) or "none"
            raise UserError(f"{what} names depth unit {uid!r}, which this model does not have (its units: {have})")
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= u.n:
            raise UserError(f"{what} keeps {k!r} elements of depth unit {uid!r}; it has {u.n} (keep 0 to {u.n})")
        order = list(range(u.n))
        given = (orders or {}).get(depth_key(uid))
        if given is not None:
            order = [int(i) for i in given]
            if sorted(order) != list(range(u.n)):
                raise UserError(f"{what}: the element order {order} of depth unit {uid!r} is not a permutation "
                                f"of its {u.n} elements")
        chosen = sorted(order[:k])
        if not u.residual and chosen != list(range(k)):
            raise UserError(f"{what}: depth unit {uid!r} is not residual; only its last elements can go")
        kept[uid] = chosen
    return kept


def _remove_in_block(block: nn.Module, unit: DepthUnit, keep: list[int]) -> None:
    """Keep only elements `keep` of `unit` inside `block` (the module owning the container), in place."""
    elems = list(block.m)
    if unit.kind == "chain":
        block.m = nn.Sequential(*(elems[i] for i in keep))
        return
    conv = block.cv2.conv
    widths = [block.c, block.c] + [elem.get_submodule(_element_out_conv(elem)).out_channels for elem in elems]
    starts = [0]
    for w in widths:
        starts.append(starts[-1] + w)
    if starts[-1] != conv.in_channels:
        raise RuntimeError(f"{unit.reader} reads {conv.in_channels} channels, the concat of {unit.id} has {starts[-1]}")
    slots = [0, 1] + [2 + i for i in keep]
    idx = torch.cat([torch.arange(starts[s], starts[s + 1]) for s in slots]).to(conv.weight.device)
    conv.weight = nn.Parameter(conv.weight.data.index_select(1, idx).clone(), requires_grad=conv.weight.requires_grad)
    conv.in_channels = int(idx.numel())
    block.m = nn.ModuleList(elems[i] for i in keep)


def remove_elements(model: nn.Module, kept: Mapping[str, list[int]], *, units: list[DepthUnit] | None = None,
                    inplace: bool = False) -> nn.Module:
    """`model` with only the elements `kept[unit id]` (indices) of each listed unit; a new model unless `inplace`.

    Inner units (the chain inside a C3k) are cut before the units that hold them, so paths stay valid; the widths
    may be pruned already (a concat slot is as wide as its element's output conv).
    """
    from autoprune.wrappers import detection_model

    out = model if inplace else copy.deepcopy(model)
    net = detection_model(out)
    by_id = {u.id: u for u in (units if units is not None else find_units(net))}
    for uid in sorted(kept, key=lambda u: -u.count(".")):
        u = by_id[uid]
        keep = sorted(int(i) for i in kept[uid])
        if keep == list(range(u.n)):
            continue
        _remove_in_block(net.get_submodule(u.block_path), u, keep)
    return out


def apply_depth(model: nn.Module, depth: Mapping[str, int], orders: Mapping | None = None, *,
                inplace: bool = False) -> nn.Module:
    """`model` with `depth[unit id]` elements kept per listed unit (`check_plan` chooses which)."""
    if not depth:
        return model
    units = find_units(model)
    return remove_elements(model, check_plan(units, depth, orders), units=units, inplace=inplace)


def parse_spec(spec: str, units: list[DepthUnit], flag: str = "--depth") -> dict[str, int]:
    """A depth plan from `--depth`: a share such as `0.5` (every unit keeps floor(share x n) elements) or
    `UNIT=K[,UNIT=K...]` (those units keep K elements, the others all).

    Example:
        >>> parse_spec("0.5", units)  # doctest: +SKIP
        {'2.m': 0, '4.m': 1, ...}
    """
    text = str(spec).strip()
    if not units:
        raise UserError(f"{flag}: this model has no repeated blocks (C2f, C3k2, C3, C3k with residual bottlenecks)")
    by_id = {u.id: u for u in units}
    if "=" not in text:
        try:
            share = float(text)
        except ValueError:
            raise UserError(f"{flag} must be a share of elements kept in [0, 1] such as 0.5, or UNIT=K[,UNIT=K] "
                            f"(units: {', '.join(by_id)}), got {spec!r}") from None
        if not 0 <= share <= 1 or math.isnan(share):
            raise UserError(f"{flag} share must be in [0, 1], got {spec!r}")
        return {u.id: int(math.floor(share * u.n + 1e-9)) for u in units}
    plan = {}
    for item in text.split(","):
        uid, _, k = item.partition("=")
        uid = uid.strip().removeprefix(DEPTH_PREFIX)
        if uid not in by_id:
            import difflib

            hint = difflib.get_close_matches(uid, list(by_id), n=1)
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise UserError(f"{flag}: no depth unit {uid!r}{more}; this model's units: {', '.join(by_id)}")
        try:
            plan[uid] = int(k)
        except ValueError:
            raise UserError(f"{flag}: {item.strip()!r} needs a whole number of elements after '='") from None
        if not 0 <= plan[uid] <= by_id[uid].n:
            raise UserError(f"{flag}: unit {uid!r} has {by_id[uid].n} elements; keep 0 to {by_id[uid].n}, "
                            f"got {plan[uid]}")
    return plan


# ------------------------------------------------------------------------------------------------- costs


def conv_channels(graph, units: list[DepthUnit], counts: Mapping,
                  orders: Mapping | None = None) -> dict[str, tuple[int, int]]:
    """(in, out) channels of every conv that remains after the widths and the depth plan in `counts` (convs of
    removed elements are absent; a concat reader loses the removed slots' channels). The elements that go are
    those `check_plan` removes: the last ones, or the last of a unit's order in `orders` (`rank_elements`); which
    ones matters when the elements' hidden widths differ."""
    width, depth = split_counts(counts)
    ch = dict(graph.conv_channels(width))
    by_id = {u.id: u for u in units}
    for uid, k in sorted(depth.items(), key=lambda kv: kv[0].count(".")):  # outer units first
        u = by_id[uid]
        if k >= u.n or u.elements[0] + ".cv1.conv" not in ch and u.out_convs[0] not in ch:
            continue  # nothing removed, or the unit sits inside an element removed already
        order = (orders or {}).get(depth_key(uid)) or range(u.n)
        for i in sorted(int(j) for j in list(order)[k:]):
            if u.reader is not None:
                cin, cout = ch[u.reader]
                ch[u.reader] = (cin - ch[u.out_convs[i]][1], cout)
            prefix = u.elements[i] + "."
            for name in [c for c in ch if c.startswith(prefix)]:
                del ch[name]
    return ch


def conv_gflops(graph, channels: Mapping[str, tuple[int, int]], imgsz: int | None = None) -> float:
    """GFLOPs of the convs in `channels` (`conv_channels`) at `imgsz`: `ChannelGraph.conv_gflops`'s rule."""
    from autoprune.cost.flops import conv_flops

    scale = ((imgsz or graph.imgsz) / graph.imgsz) ** 2
    total = 0.0
    for name, (cin, cout) in channels.items():
        info = graph.convs[name]
        per_output = 1 if info.depthwise else cin // info.groups
        total += conv_flops(cout, per_output, info.kernel, info.positions)
    return total * scale / 1e9


# ------------------------------------------------------------------------------------------------- ranking


@torch.no_grad()
def rank_elements(model: nn.Module, batches: Iterable[dict], units: list[DepthUnit] | None = None) -> dict:
    """{`depth_key(unit id)`: element order, most important first} for every residual unit: the measured cost of
    removing each element alone is the relative change of its block's output (squared error over squared norm,
    summed over the calibration `batches`), on the block's real inputs. Non-residual units keep the natural order
    (only their last elements can go). Deterministic for the same batches."""
    from autoprune.wrappers import detection_model

    net = detection_model(model)
    units = find_units(net) if units is None else units
    residual = [u for u in units if u.residual and u.n > 1]
    orders = {depth_key(u.id): list(range(u.n)) for u in units}
    if not residual:
        return orders
    from autoprune.batches import module_inputs

    captured = module_inputs(net, [u.block_path for u in residual], batches)
    inputs = {u.id: captured[u.block_path] for u in residual}
    for u in residual:
        block = net.get_submodule(u.block_path)
        was = block.training
        block.eval()
        with torch.no_grad():
            base = [block(x) for x in inputs[u.id]]
            norm = sum(float(y.pow(2).sum()) for y in base) or 1.0
            costs = []
            for i in range(u.n):
                cut = copy.deepcopy(block)
                _remove_in_block(cut, u, [j for j in range(u.n) if j != i])
                err = sum(float((cut(x) - y).pow(2).sum()) for x, y in zip(inputs[u.id], base))
                costs.append(err / norm)
        block.train(was)
        orders[depth_key(u.id)] = sorted(range(u.n), key=lambda i: (-costs[i], i))
    return orders


__all__ = [
    "DEPTH_PREFIX",
    "DepthUnit",
    "apply_depth",
    "check_plan",
    "conv_channels",
    "conv_gflops",
    "depth_key",
    "find_units",
    "parse_spec",
    "rank_elements",
    "remove_elements",
    "split_counts",
]
