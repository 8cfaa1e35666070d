"""Symbolic channel tensors and the tracer's state: parts, their coupling, and the registry of per-block rules.

A symbolic tensor is a list of `Segment`s, runs of channels that belong to one part. `Tracer` holds one analysis's
producers, parts (a union-find: parts added together become one), ties between parts whose kept counts must be equal,
and the blocks kept whole; a part can be cut in two after it was made (`split_part`, for a `chunk` or a residual
against concatenated halves). Calling a tracer on a block hands it to the rule registered for the block's `forward`
(`register_handler`); a block without a rule becomes a fixed boundary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from torch import nn

from autoprune.channels.graph import AttentionInfo, Consumer, Part, Producer

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


class Tracer:
    """Mutable state of one analysis: producers, parts (a union-find), ties between parts, recorded shapes."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], modules: dict[str, nn.Module]):
        self.shapes = shapes  # module path -> output shape (tensors only), from one real forward pass
        self.modules = modules
        self.producers: list[Producer] = []
        self.parts: list[Part] = []
        self.parent: list[int] = []  # union-find over parts
        self.ties: list[tuple[int, int]] = []  # parts whose kept counts must be equal
        self.fixed_blocks: dict[str, str] = {}
        self.fixed_why: dict[str, str] = {}  # path -> why that block is kept whole (what `autoprune groups` says)
        self.splits: dict[int, list[tuple[int, int, int, dict[int, int]]]] = {}  # see split_part
        self.attention: dict[str, AttentionInfo] = {}  # path -> matrix products that shrink with its convs
        self.side: set[int] = set()  # producers added into a stream another producer names (CBLinear's pieces)

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

    def produce(
        self, conv: str, bn: str | None, act: str | None, size: int, offset: int = 0, *, summed: tuple[str, ...] = ()
    ) -> Sym:
        part = self.new_part(size)
        self.producers.append(Producer(conv=conv, bn=bn, act=act, offset=offset, summed=summed))
        idx = len(self.producers) - 1
        self.parts[part].producers.append(idx)
        return [Segment(part, size, (idx,))]

    def consume(self, conv: str, x: Sym) -> None:
        offset = 0
        for s in x:
            self.parts[self.find(s.part)].consumers.append(Consumer(conv=conv, offset=offset, sources=s.sources))
            offset += s.size

    def silent_producer(self, part: int, conv: str, bn: str | None, offset: int = 0, depthwise: bool = False) -> None:
        """A conv that writes `part`'s channels but is no source of their value on its own: a parallel branch summed
        into another producer before its activation (listed in that producer's `summed`)."""
        self.producers.append(Producer(conv=conv, bn=bn, act=None, offset=offset, depthwise=depthwise))
        self.parts[self.find(part)].producers.append(len(self.producers) - 1)

    def depthwise(
        self, conv: str, bn: str | None, act: str | None, x: Sym, *, summed: tuple[str, ...] = ()
    ) -> Sym:
        out, offset = [], 0
        for s in x:
            self.producers.append(Producer(conv=conv, bn=bn, act=act, offset=offset, depthwise=True, summed=summed))
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

    def split_part(self, p: int, at: int) -> bool:
        """Cut the part of `p` after its first `at` channels: it keeps `[0, at)`, a new part gets the rest.

        For a tensor that is split after it was made (`chunk`, or a residual add against two concatenated halves):
        every producer and consumer of the part is split the same way (a second entry at `offset + at`), and
        segments made before the cut are cut too when a block next reads them (`refresh`). A part tied to another
        cannot be cut (its count would no longer match); returns False then.
        """
        root = self.find(p)
        part = self.parts[root]
        if not 0 < at < part.size or any(root in (self.find(a), self.find(b)) for a, b in self.ties):
            return False
        new = self.new_part(part.size - at, fixed_by=part.fixed_by if part.fixed else None)
        moved: dict[int, int] = {}
        for idx in part.producers:
            q = self.producers[idx]
            self.producers.append(replace(q, offset=q.offset + at))
            moved[idx] = len(self.producers) - 1
            if idx in self.side:
                self.side.add(moved[idx])
        self.parts[new].producers = sorted(moved.values())
        self.parts[new].consumers = [
            Consumer(c.conv, c.offset + at, tuple(moved.get(i, i) for i in c.sources)) for c in part.consumers
        ]
        record = (part.size, at, new, moved)
        for member in range(len(self.parts) - 1):
            if self.find(member) == root:
                self.splits.setdefault(member, []).append(record)
        part.size = at
        return True

    def refresh(self, x):
        """`x` with every segment made before a `split_part` of its part replaced by the pieces it was cut into."""
        if isinstance(x, Opaque):
            return x
        out = []
        for item in x:
            if not isinstance(item, Segment):
                out.append(self.refresh(item))
                continue
            for full, at, new, moved in self.splits.get(item.part, ()):
                if item.size == full:
                    head = Segment(item.part, at, item.sources)
                    tail = Segment(new, full - at, tuple(moved.get(i, i) for i in item.sources))
                    out.extend(self.refresh([head, tail]))
                    break
            else:
                out.append(item)
        return out

    def boundary(self, path: str, module: nn.Module, x, why: str = "its channels are not what its rule expects "
                 "(another form of the block)") -> Sym | Opaque:
        """An unknown block: keep its input channels, and make its output a new fixed part; `why` says why."""
        self.fixed_blocks[path] = type(module).__name__
        self.fixed_why[path] = why
        self.fix(x, path)
        shape = self.shapes.get(path)
        if shape is None or len(shape) != 4:
            return Opaque()
        return [Segment(self.new_part(shape[1], fixed_by=path), shape[1], ())]

    # -- dispatch --------------------------------------------------------------------------------------------------

    def __call__(self, path: str, module: nn.Module, x):
        x = self.refresh(x)
        if isinstance(x, Opaque) or (isinstance(x, list) and any(isinstance(i, Opaque) for i in x)):
            return self.boundary(path, module, x, "its input comes from a block whose outputs are not traced")
        handler = handler_for(module)
        if handler is None:
            return self.boundary(path, module, x, f"autoprune has no channel rule for {type(module).__name__} "
                                                  "(`autoprune.channels.register_handler` adds one)")
        return handler(self, path, module, x)

    def child(self, path: str, module: nn.Module, name: str, x):
        return self(f"{path}.{name}", getattr(module, name), x)


# ---------------------------------------------------------------------------------------------------------------------
# The rules registry: how channels flow through each known block

Handler = Callable[[Tracer, str, nn.Module, object], object]
_HANDLERS: list[tuple[type, Callable, Handler]] = []  # (base class, its forward, handler)
_BUILTINS_INSTALLED = False  # the built-in rules are added on the first analysis, behind custom ones


def register_handler(cls: type, handler: Handler | None = None):
    """Teach the analysis how channels flow through `cls` (and any subclass that keeps `cls.forward`).

    A handler is called as `handler(tracer, path, module, x)` with `x` the symbolic input and returns the symbolic
    output. Usable as a decorator: `@register_handler(MyBlock)`.
    """

    def deco(fn: Handler) -> Handler:
        _HANDLERS.insert(0, (cls, cls.forward, fn))
        return fn

    return deco(handler) if handler is not None else deco


def handler_for(module: nn.Module) -> Handler | None:
    if "forward" in vars(module):  # an instance-level forward (a fused Conv) must be one we know
        fwd = getattr(module.forward, "__func__", None)
    else:
        fwd = type(module).forward
    for cls, cls_forward, handler in _HANDLERS:
        if isinstance(module, cls) and (fwd is cls_forward or _is_fused_conv(module, cls, fwd)):
            return handler
    return None


def _is_fused_conv(module, cls, fwd) -> bool:
    from ultralytics.nn.modules import Conv, ConvTranspose

    return cls in (Conv, ConvTranspose) and fwd is cls.forward_fuse and isinstance(module, cls)


def install_builtin_handlers(pairs: list[tuple[type, Handler]]) -> None:
    """Register `(class, rule)` pairs, the built-in rules, once, behind every custom rule (a custom rule wins)."""
    global _BUILTINS_INSTALLED
    if not _BUILTINS_INSTALLED:
        _HANDLERS.extend((cls, cls.forward, fn) for cls, fn in pairs)
        _BUILTINS_INSTALLED = True
