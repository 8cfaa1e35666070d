"""Trace the channels of an Ultralytics model through its blocks, symbolically.

`analyze(model)` walks `model.model` the way `DetectionModel._predict_once` does, but instead of tensors it passes
lists of channel segments. Each Ultralytics block it knows has a handler that says how channels flow through it
(which convs read and write them, where they are split, concatenated and added). A block without a handler is a
fixed boundary: its input and output channels are kept and nothing inside it is touched.

A handler is chosen by the block's `forward` function, not only its class: a subclass that keeps its parent's
`forward` (`C3k2` of `C2f`, `C3k` of `C3`, `DWConv` of `Conv`) has the same channel flow, and its children are traced
by their own handlers. Custom blocks join through `register_handler`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from autoprune.channels.graph import ChannelGraph, ChannelGroup, Consumer, ConvInfo, Part, Producer
from autoprune.wrappers import detection_model

# ---------------------------------------------------------------------------------------------------------------------
# Symbolic tensors


@dataclass(frozen=True)
class Segment:
    """A run of channels of a symbolic tensor: all of part `part`, summed from producers `sources`."""

    part: int
    size: int
    sources: tuple[int, ...]


Sym = list  # a symbolic tensor: list[Segment]; a block's input may also be a list of them (Concat, Detect)


class Opaque:
    """A value the tracer cannot follow (a list output of an unknown block); whatever reads it is a boundary."""


class _Tracer:
    """Mutable state of one analysis: producers, parts (a union-find), ties between parts, recorded shapes."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], modules: dict[str, nn.Module]):
        self.shapes = shapes  # module path -> output shape (tensors only), from one real forward pass
        self.modules = modules
        self.producers: list[Producer] = []
        self.parts: list[Part] = []
        self.parent: list[int] = []  # union-find over parts
        self.ties: list[tuple[int, int]] = []  # parts whose kept counts must be equal
        self.fixed_blocks: dict[str, str] = {}

    # -- parts ----------------------------------------------------------------------------------------------------

    def find(self, p: int) -> int:
        while self.parent[p] != p:
            self.parent[p] = self.parent[self.parent[p]]
            p = self.parent[p]
        return p

    def new_part(self, size: int, *, fixed_by: str | None = None) -> int:
        self.parts.append(Part(size=size, fixed=fixed_by is not None, fixed_by=fixed_by))
        self.parent.append(len(self.parts) - 1)
        return len(self.parts) - 1

    def union(self, a: int, b: int, why: str) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        pa, pb = self.parts[a], self.parts[b]
        if pa.size != pb.size:  # cannot share an index; keep both whole
            self.fix_part(a, why)
            self.fix_part(b, why)
            return a
        self.parent[b] = a
        pa.producers += pb.producers
        pa.consumers += pb.consumers
        if pb.fixed and not pa.fixed:
            pa.fixed, pa.fixed_by = True, pb.fixed_by
        return a

    def fix_part(self, p: int, why: str) -> None:
        part = self.parts[self.find(p)]
        if not part.fixed:
            part.fixed, part.fixed_by = True, why

    def fix(self, x, why: str) -> None:
        """Mark every part reachable in `x` (a symbolic tensor, a list of them, or Opaque) fixed."""
        if isinstance(x, Opaque):
            return
        for item in x:
            if isinstance(item, Segment):
                self.fix_part(item.part, why)
            else:
                self.fix(item, why)

    # -- producers and consumers ------------------------------------------------------------------------------------

    def produce(self, conv: str, bn: str | None, act: str | None, size: int, offset: int = 0) -> Sym:
        part = self.new_part(size)
        self.producers.append(Producer(conv=conv, bn=bn, act=act, offset=offset))
        idx = len(self.producers) - 1
        self.parts[part].producers.append(idx)
        return [Segment(part, size, (idx,))]

    def consume(self, conv: str, x: Sym) -> None:
        offset = 0
        for s in x:
            self.parts[self.find(s.part)].consumers.append(Consumer(conv=conv, offset=offset, sources=s.sources))
            offset += s.size

    def depthwise(self, conv: str, bn: str | None, act: str | None, x: Sym) -> Sym:
        out, offset = [], 0
        for s in x:
            self.producers.append(Producer(conv=conv, bn=bn, act=act, offset=offset, depthwise=True))
            idx = len(self.producers) - 1
            self.parts[self.find(s.part)].producers.append(idx)
            out.append(Segment(s.part, s.size, (idx,)))
            offset += s.size
        return out

    def add(self, a: Sym, b: Sym, why: str) -> Sym:
        """Elementwise sum of two symbolic tensors: aligned segments become one part (a residual coupling)."""
        if [s.size for s in a] != [s.size for s in b]:
            self.fix(a, why)
            self.fix(b, why)
            return a
        out = []
        for sa, sb in zip(a, b):
            root = self.union(sa.part, sb.part, why)
            out.append(Segment(root, sa.size, tuple(sorted(set(sa.sources) | set(sb.sources)))))
        return out

    def boundary(self, path: str, module: nn.Module, x) -> Sym | Opaque:
        """An unknown block: keep its input channels, and make its output a new fixed part."""
        self.fixed_blocks[path] = type(module).__name__
        self.fix(x, path)
        shape = self.shapes.get(path)
        if shape is None or len(shape) != 4:
            return Opaque()
        return [Segment(self.new_part(shape[1], fixed_by=path), shape[1], ())]

    # -- dispatch --------------------------------------------------------------------------------------------------

    def __call__(self, path: str, module: nn.Module, x):
        if isinstance(x, Opaque) or (isinstance(x, list) and any(isinstance(i, Opaque) for i in x)):
            return self.boundary(path, module, x)
        handler = _handler_for(module)
        if handler is None:
            return self.boundary(path, module, x)
        return handler(self, path, module, x)

    def child(self, path: str, module: nn.Module, name: str, x):
        return self(f"{path}.{name}", getattr(module, name), x)


# ---------------------------------------------------------------------------------------------------------------------
# Handlers: how channels flow through each known block

Handler = Callable[[_Tracer, str, nn.Module, object], object]
_HANDLERS: list[tuple[type, Callable, Handler]] = []  # (base class, its forward, handler)


def register_handler(cls: type, handler: Handler | None = None):
    """Teach the analysis how channels flow through `cls` (and any subclass that keeps `cls.forward`).

    A handler is called as `handler(tracer, path, module, x)` with `x` the symbolic input and returns the symbolic
    output. Usable as a decorator: `@register_handler(MyBlock)`.
    """

    def deco(fn: Handler) -> Handler:
        _HANDLERS.insert(0, (cls, cls.forward, fn))
        return fn

    return deco(handler) if handler is not None else deco


def _handler_for(module: nn.Module) -> Handler | None:
    if "forward" in vars(module):  # an instance-level forward (a fused Conv) must be one we know
        fwd = getattr(module.forward, "__func__", None)
    else:
        fwd = type(module).forward
    for cls, cls_forward, handler in _HANDLERS:
        if isinstance(module, cls) and (fwd is cls_forward or _is_fused_conv(module, cls, fwd)):
            return handler
    return None


def _is_fused_conv(module, cls, fwd) -> bool:
    from ultralytics.nn.modules import Conv

    return cls is Conv and fwd is Conv.forward_fuse and isinstance(module, Conv)


def _conv_parts(tr: _Tracer, path: str, m: nn.Module) -> tuple[str, str | None, str | None, nn.Conv2d]:
    """(conv path, bn path or None, act path or None, the nn.Conv2d) of an Ultralytics Conv block."""
    bn = f"{path}.bn" if isinstance(getattr(m, "bn", None), nn.BatchNorm2d) else None
    act = f"{path}.act" if isinstance(getattr(m, "act", None), nn.Module) else None
    return f"{path}.conv", bn, act, m.conv


def _width(x: Sym) -> int:
    return sum(s.size for s in x)


def _conv(tr: _Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    conv_path, bn, act, conv = _conv_parts(tr, path, m)
    if _width(x) != conv.in_channels:
        return tr.boundary(path, m, x)
    if conv.groups == 1:
        tr.consume(conv_path, x)
        return tr.produce(conv_path, bn, act, conv.out_channels)
    if conv.groups == conv.in_channels == conv.out_channels:
        return tr.depthwise(conv_path, bn, act, x)
    return tr.boundary(path, m, x)  # grouped, not depthwise: keep it whole


def _plain_conv(tr: _Tracer, path: str, m: nn.Conv2d, x: Sym) -> Sym:
    if _width(x) != m.in_channels or m.groups != 1:
        return tr.boundary(path, m, x)
    tr.consume(path, x)
    return tr.produce(path, None, None, m.out_channels)


def _passthrough(tr: _Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    return x  # channel-wise ops: a constant channel stays constant


def _sequential(tr: _Tracer, path: str, m: nn.Sequential, x):
    for name, child in m.named_children():
        x = tr(f"{path}.{name}", child, x)
    return x


def _concat(tr: _Tracer, path: str, m: nn.Module, x):
    if m.d != 1 or not isinstance(x, list) or not all(isinstance(t, list) for t in x):
        return tr.boundary(path, m, x)
    return [s for t in x for s in t]


def _bottleneck(tr: _Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    y = tr.child(path, m, "cv2", tr.child(path, m, "cv1", x))
    return tr.add(x, y, f"{path} (residual)") if m.add else y


def _split_conv(tr: _Tracer, path: str, m: nn.Module, x: Sym, name: str, half: int) -> tuple[Sym, Sym] | None:
    """Trace `m.<name>` (a Conv) whose output is split into two equal halves; the halves' counts are tied."""
    cv = getattr(m, name)
    if _handler_for(cv) is not _conv or cv.conv.groups != 1 or cv.conv.out_channels != 2 * half:
        return None
    if _width(x) != cv.conv.in_channels:
        return None
    conv_path, bn, act, conv = _conv_parts(tr, f"{path}.{name}", cv)
    tr.consume(conv_path, x)
    a = tr.produce(conv_path, bn, act, half, offset=0)
    b = tr.produce(conv_path, bn, act, half, offset=half)
    tr.ties.append((a[0].part, b[0].part))
    return a, b


def _c2f(tr: _Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    halves = _split_conv(tr, path, m, x, "cv1", m.c)
    if halves is None:
        return tr.boundary(path, m, x)
    y = list(halves)
    for i, block in enumerate(m.m):
        y.append(tr(f"{path}.m.{i}", block, y[-1]))
    return tr.child(path, m, "cv2", [s for t in y for s in t])


def _c2(tr: _Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    halves = _split_conv(tr, path, m, x, "cv1", m.c)
    if halves is None:
        return tr.boundary(path, m, x)
    a, b = halves
    return tr.child(path, m, "cv2", tr.child(path, m, "m", a) + b)


def _c3(tr: _Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    a = tr.child(path, m, "m", tr.child(path, m, "cv1", x))
    b = tr.child(path, m, "cv2", x)
    return tr.child(path, m, "cv3", a + b)


def _c1(tr: _Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    y = tr.child(path, m, "cv1", x)
    return tr.add(tr.child(path, m, "m", y), y, f"{path} (residual)")


def _spp(tr: _Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    y = tr.child(path, m, "cv1", x)
    return tr.child(path, m, "cv2", y * (len(m.m) + 1))  # max-pooling keeps channels


def _sppf(tr: _Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    y = tr.child(path, m, "cv1", x)
    out = tr.child(path, m, "cv2", y * (getattr(m, "n", 3) + 1))
    return tr.add(out, x, f"{path} (residual)") if getattr(m, "add", False) else out


def _split_attention(tr: _Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    """C2PSA / PSA: cv1 is split in two; one half runs through attention (kept whole), cv2 reads both halves.

    Attention reshapes channels by heads with sizes fixed at construction, so the hidden halves are kept; the
    block's input (read by cv1) and output (written by cv2) stay prunable.
    """
    halves = _split_conv(tr, path, m, x, "cv1", m.c)
    if halves is None:
        return tr.boundary(path, m, x)
    a, b = halves
    tr.fix(a + b, f"{path} (attention)")
    tr.fixed_blocks[f"{path}.attention"] = type(m).__name__
    return tr.child(path, m, "cv2", a + b)


def _a2c2f(tr: _Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    if getattr(m, "gamma", None) is not None:  # a learned per-channel scale on the residual: keep the block whole
        return tr.boundary(path, m, x)
    y = [tr.child(path, m, "cv1", x)]
    for i, block in enumerate(m.m):
        y.append(tr(f"{path}.m.{i}", block, y[-1]))
    return tr.child(path, m, "cv2", [s for t in y for s in t])


def _detect(tr: _Tracer, path: str, m: nn.Module, x) -> Opaque:
    """Detect: per level, a box branch (cv2) and a class branch (cv3), and their one-to-one copies if any."""
    if not isinstance(x, list) or len(x) != m.nl:
        return tr.boundary(path, m, x)
    for name in ("cv2", "cv3", "one2one_cv2", "one2one_cv3"):
        branches = getattr(m, name, None)
        if branches is None:
            continue
        for i, branch in enumerate(branches):
            out = tr(f"{path}.{name}.{i}", branch, x[i])
            tr.fix(out, f"{path} (outputs)")
    return Opaque()


def _register_ultralytics_handlers() -> None:
    from ultralytics.nn.modules import block, conv, head

    pairs = [
        (nn.Sequential, _sequential),
        (nn.Conv2d, _plain_conv),
        (nn.Upsample, _passthrough),
        (nn.MaxPool2d, _passthrough),
        (nn.Identity, _passthrough),
        (nn.Dropout, _passthrough),
        (conv.Conv, _conv),
        (conv.Concat, _concat),
        (block.Bottleneck, _bottleneck),
        (block.C1, _c1),
        (block.C2, _c2),
        (block.C2f, _c2f),
        (block.C3, _c3),
        (block.SPP, _spp),
        (block.SPPF, _sppf),
        (block.C2PSA, _split_attention),
        (block.PSA, _split_attention),
        (block.A2C2f, _a2c2f),
        (head.Detect, _detect),
    ]
    for cls, fn in pairs:
        _HANDLERS.append((cls, cls.forward, fn))


# ---------------------------------------------------------------------------------------------------------------------
# The analysis


def _record(model: nn.Module, imgsz: int) -> tuple[dict[str, tuple[int, ...]], dict[str, ConvInfo]]:
    """One real forward pass: output shape of every module, and every conv's cost at `imgsz`.

    It runs on the model itself (a copy would cost more than the pass) in eval mode without gradients, and puts back
    what the pass touches: the training flag and the anchors a Detect head caches for the last input shape.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    convs: dict[str, ConvInfo] = {}
    hooks = []

    def hook(name, module):
        def fn(_, __, out):
            if isinstance(out, torch.Tensor):
                shapes[name] = tuple(out.shape)
                if isinstance(module, nn.Conv2d):
                    k = module.kernel_size[0] * module.kernel_size[1]
                    convs[name] = ConvInfo(
                        in_channels=module.in_channels,
                        out_channels=module.out_channels,
                        groups=module.groups,
                        kernel=k,
                        out_pixels=int(out.shape[-1] * out.shape[-2]),
                        bias=module.bias is not None,
                    )

        return fn

    modes = {m: m.training for m in model.modules()}
    cached = {m: {k: m.__dict__[k] for k in ("shape", "anchors", "strides") if k in m.__dict__} for m in model.modules()}
    for name, module in model.named_modules():
        hooks.append(module.register_forward_hook(hook(name, module)))
    try:
        model.eval()
        with torch.no_grad():
            p = next(model.parameters())
            ch = model.yaml.get("channels", 3) if isinstance(getattr(model, "yaml", None), dict) else 3
            model(torch.zeros(1, ch, imgsz, imgsz, dtype=p.dtype, device=p.device))
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
        for m, attrs in cached.items():
            for k in ("shape", "anchors", "strides"):
                if k in attrs:
                    m.__dict__[k] = attrs[k]
                else:
                    m.__dict__.pop(k, None)
    return shapes, convs


def analyze(model: nn.Module, imgsz: int = 640) -> ChannelGraph:
    """Find the prunable channel groups of an Ultralytics detection model.

    The model is not changed. `imgsz` is the image size conv costs are recorded at (costs at other sizes scale by
    area); the analysis itself runs one forward pass at a small size.

    Example:
        >>> from ultralytics.nn.tasks import DetectionModel
        >>> graph = analyze(DetectionModel("yolov8n.yaml", verbose=False))
        >>> graph.groups[0].id, graph.groups[0].size
        ('0', 16)
    """
    model = detection_model(model)
    if not _HANDLERS:
        _register_ultralytics_handlers()
    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential):
        raise TypeError(f"expected an Ultralytics model with a .model Sequential, got {type(model).__name__}")

    stride = int(max(getattr(model, "stride", torch.tensor([32.0])).max().item(), 32))
    probe = max(2 * stride, 64)
    shapes, convs_small = _record(model, probe)
    scale = (imgsz / probe) ** 2
    convs = {
        name: ConvInfo(c.in_channels, c.out_channels, c.groups, c.kernel, round(c.out_pixels * scale), c.bias)
        for name, c in convs_small.items()
    }
    modules = dict(model.named_modules())
    tr = _Tracer(shapes, modules)

    ch = model.yaml.get("channels", 3) if isinstance(getattr(model, "yaml", None), dict) else 3
    x = [Segment(tr.new_part(ch, fixed_by="image input"), ch, ())]
    outputs = []
    for i, m in enumerate(layers):
        f = getattr(m, "f", -1)
        if f != -1:
            x = outputs[f] if isinstance(f, int) else [x if j == -1 else outputs[j] for j in f]
        x = tr(f"model.{i}", m, x)
        outputs.append(x)

    return _build_graph(tr, convs, imgsz)


def _build_graph(tr: _Tracer, convs: dict[str, ConvInfo], imgsz: int) -> ChannelGraph:
    # Ties: parts whose counts must match form one group; a fixed member fixes them all.
    roots = sorted({tr.find(i) for i in range(len(tr.parts))})
    tie_parent = {r: r for r in roots}

    def tfind(r):
        while tie_parent[r] != r:
            r = tie_parent[r]
        return r

    for a, b in tr.ties:
        ra, rb = tfind(tr.find(a)), tfind(tr.find(b))
        if ra != rb:
            tie_parent[max(ra, rb)] = min(ra, rb)
    clusters: dict[int, list[int]] = {}
    for r in roots:
        clusters.setdefault(tfind(r), []).append(r)

    # Renumber the root parts densely; keep fixed ones too (for the summary and for folding).
    index = {r: i for i, r in enumerate(roots)}
    parts = [tr.parts[r] for r in roots]
    for part in parts:
        part.producers = sorted(set(part.producers))

    groups = []
    for members in clusters.values():
        ps = [tr.parts[r] for r in members]
        if any(p.fixed for p in ps) or any(p.size != ps[0].size for p in ps) or not all(p.producers for p in ps):
            for p in ps:
                if not p.fixed:
                    p.fixed, p.fixed_by = True, p.fixed_by or "tied to a fixed part"
            continue
        first = min(min(p.producers) for p in ps)
        members = sorted(members, key=lambda r: min(tr.parts[r].producers))
        producer_paths = []
        for p in ps:
            producer_paths += [tr.producers[i].block for i in p.producers]
        consumer_paths = sorted({c.conv.rsplit(".", 1)[0] if c.conv.endswith(".conv") else c.conv for p in ps for c in p.consumers})
        name = tr.producers[first].block
        gid = name[len("model."):] if name.startswith("model.") else name
        groups.append(
            ChannelGroup(
                id=gid,
                size=ps[0].size,
                parts=tuple(index[r] for r in members),
                layer=int(gid.split(".")[0]) if gid.split(".")[0].isdigit() else -1,
                producers=tuple(dict.fromkeys(producer_paths)),
                consumers=tuple(consumer_paths),
            )
        )
    groups.sort(key=lambda g: min(min(parts[i].producers) for i in g.parts))
    ids = [g.id for g in groups]
    if len(set(ids)) != len(ids):
        raise AssertionError(f"duplicate group ids: {sorted(i for i in ids if ids.count(i) > 1)}")
    return ChannelGraph(
        producers=tr.producers, parts=parts, groups=groups, convs=convs, fixed_blocks=tr.fixed_blocks, imgsz=imgsz
    )
