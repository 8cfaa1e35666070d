"""The channel rules of Ultralytics' own blocks: how channels couple through each of them.

Here: Conv (plain, depthwise; grouped ones are kept whole), transposed convs (`nn.ConvTranspose2d` and Ultralytics'
`ConvTranspose`, groups 1; grouped ones are kept whole), Concat, Bottleneck, C1, C2, C2f (C3k2, C2fPSA), C3, SPP,
SPPF, A2C2f and Detect, and the channel-wise torch layers (upsampling, max pooling, zero padding). The attention of
C2PSA, PSA and PSABlock is in `autoprune.channels.psa`; the rules of YOLOv9 (RepConv, RepNCSPELAN4, ELAN1, ADown,
AConv, SPPELAN, CBLinear, CBFuse), YOLOv10 (SCDown, CIB, RepVGGDW), Ghost (GhostConv, GhostBottleneck) and YOLO12's
area attention (AAttn, ABlock) in `autoprune.channels.blocks_extra`. Each rule is called as
`rule(tracer, path, module, x)` on the symbolic input `x` and returns the symbolic output; `handlers` lists them for
`autoprune.channels.trace.builtin_handlers`.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from autoprune.channels.symbolic import Handler, Opaque, Sym, Tracer, handler_for


def _conv_parts(tr: Tracer, path: str, m: nn.Module) -> tuple[str, str | None, str | None, nn.Conv2d]:
    """(conv path, bn path or None, act path or None, the nn.Conv2d) of an Ultralytics Conv block."""
    bn = f"{path}.bn" if isinstance(getattr(m, "bn", None), nn.BatchNorm2d) else None
    act = f"{path}.act" if isinstance(getattr(m, "act", None), nn.Module) else None
    return f"{path}.conv", bn, act, m.conv


def _width(x: Sym) -> int:
    return sum(s.size for s in x)


def cut(tr: Tracer, x: Sym, at: int) -> tuple[Sym, Sym] | None:
    """`x` cut after its first `at` channels; a segment across the cut has its part split (`Tracer.split_part`).

    None when that part cannot be split (it is tied to another part).
    """
    offset = 0
    for s in x:
        if offset < at < offset + s.size:
            if not tr.split_part(s.part, at - offset):
                return None
            x = tr.refresh(x)
            break
        offset += s.size
    head, width = [], 0
    for s in x:
        if width >= at:
            break
        head.append(s)
        width += s.size
    return head, x[len(head):]


def add_aligned(tr: Tracer, a: Sym, b: Sym, why: str) -> Sym:
    """`a + b` where the two sides may be made of segments of different sizes: each is cut at the other's
    segment boundaries first (splitting parts), so that aligned segments can be joined; else both are fixed."""
    if _width(a) != _width(b):
        return tr.add(a, b, why)
    for _ in range(len(a) + len(b)):
        if [s.size for s in a] == [s.size for s in b]:
            break
        bounds_a, bounds_b, o = set(), set(), 0
        for s in a:
            o += s.size
            bounds_a.add(o)
        o = 0
        for s in b:
            o += s.size
            bounds_b.add(o)
        at = min((bounds_a ^ bounds_b) - {_width(a)})
        side = a if at not in bounds_a else b
        pieces = cut(tr, side, at)
        if pieces is None:
            break
        a, b = tr.refresh(a), tr.refresh(b)
    return tr.add(a, b, why)


def _conv(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    conv_path, bn, act, conv = _conv_parts(tr, path, m)
    if _width(x) != conv.in_channels:
        return tr.boundary(path, m, x)
    if conv.groups == 1:
        tr.consume(conv_path, x)
        return tr.produce(conv_path, bn, act, conv.out_channels)
    if conv.groups == conv.in_channels == conv.out_channels:
        return tr.depthwise(conv_path, bn, act, x)
    return tr.boundary(path, m, x, "a grouped conv (not depthwise) ties channels across its groups")


def _plain_conv(tr: Tracer, path: str, m: nn.Conv2d, x: Sym) -> Sym:
    if _width(x) != m.in_channels or m.groups != 1:
        return tr.boundary(path, m, x)
    tr.consume(path, x)
    return tr.produce(path, None, None, m.out_channels)


def _transposed(tr: Tracer, path: str, m: nn.Module, conv_path: str, bn: str | None, act: str | None, x: Sym) -> Sym:
    """The transposed conv at `conv_path` (block `m` at `path`) consumes `x` and produces a new part, as a conv does;
    its weight is (in, out, kh, kw), which the pruner and the criteria read the other way round."""
    conv = tr.modules.get(conv_path)
    if not isinstance(conv, nn.ConvTranspose2d) or _width(x) != conv.in_channels:
        return tr.boundary(path, m, x)
    if conv.groups != 1:
        return tr.boundary(path, m, x, "a grouped transposed conv ties channels across its groups")
    tr.consume(conv_path, x)
    return tr.produce(conv_path, bn, act, conv.out_channels)


def _plain_transposed(tr: Tracer, path: str, m: nn.ConvTranspose2d, x: Sym) -> Sym:
    return _transposed(tr, path, m, path, None, None, x)


def _conv_transpose(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    """Ultralytics' ConvTranspose: transposed conv, BatchNorm (an Identity when bn=False, gone once fused), act."""
    bn = f"{path}.bn" if isinstance(getattr(m, "bn", None), nn.BatchNorm2d) else None
    act = f"{path}.act" if isinstance(getattr(m, "act", None), nn.Module) else None
    return _transposed(tr, path, m, f"{path}.conv_transpose", bn, act, x)


def _passthrough(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    return x  # channel-wise ops: a constant channel stays constant


def _sequential(tr: Tracer, path: str, m: nn.Sequential, x):
    for name, child in m.named_children():
        x = tr(f"{path}.{name}", child, x)
    return x


def _concat(tr: Tracer, path: str, m: nn.Module, x):
    if m.d != 1 or not isinstance(x, list) or not all(isinstance(t, list) for t in x):
        return tr.boundary(path, m, x)
    return [s for t in x for s in t]


def _bottleneck(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    y = tr.child(path, m, "cv2", tr.child(path, m, "cv1", x))
    return add_aligned(tr, tr.refresh(x), y, f"{path} (residual)") if m.add else y  # x may come in head-sized pieces


def _split_conv(
    tr: Tracer, path: str, m: nn.Module, x: Sym, name: str, half: int, pieces: int = 1
) -> tuple[Sym, Sym] | None:
    """Trace `m.<name>` (a Conv) whose output is split into two equal halves; the halves' counts are tied.

    With `pieces > 1` each half is made of that many parts of `half // pieces` channels, all tied: what an attention
    inside the block needs, whose input must hold `num_heads` equal shares (see `autoprune.channels.psa`).
    """
    cv = getattr(m, name)
    if handler_for(cv) is not _conv or cv.conv.groups != 1 or cv.conv.out_channels != 2 * half:
        return None
    if _width(x) != cv.conv.in_channels:
        return None
    pieces = pieces if pieces >= 1 and half % pieces == 0 else 1
    conv_path, bn, act, conv = _conv_parts(tr, f"{path}.{name}", cv)
    tr.consume(conv_path, x)
    size = half // pieces
    segs = [tr.produce(conv_path, bn, act, size, offset=i * size)[0] for i in range(2 * pieces)]
    tr.ties += [(segs[0].part, s.part) for s in segs[1:]]
    return segs[:pieces], segs[pieces:]


def attention_heads(m: nn.Module) -> int:
    """The head count of the `Attention` modules inside `m` when they all have one (1 if none, or if they differ):
    how many tied pieces a block's split should make so that its attention's input can be cut into heads."""
    from ultralytics.nn.modules.block import Attention

    counts = {a.num_heads for a in m.modules() if isinstance(a, Attention)}
    return counts.pop() if len(counts) == 1 else 1


def _c2f(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    """C2f, C3k2 (with C3k, Bottleneck or Bottleneck + PSABlock inside), C2fPSA: cv1's halves, the blocks on the
    second, cv2 reads them all."""
    halves = _split_conv(tr, path, m, x, "cv1", m.c, attention_heads(m.m))
    if halves is None:
        return tr.boundary(path, m, x)
    y = list(halves)
    for i, block in enumerate(m.m):
        y.append(tr(f"{path}.m.{i}", block, y[-1]))
    return tr.child(path, m, "cv2", [s for t in tr.refresh(y) for s in t])


def _c2(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    halves = _split_conv(tr, path, m, x, "cv1", m.c)
    if halves is None:
        return tr.boundary(path, m, x)
    a, b = halves
    return tr.child(path, m, "cv2", tr.child(path, m, "m", a) + b)


def _c3(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    a = tr.child(path, m, "m", tr.child(path, m, "cv1", x))
    b = tr.child(path, m, "cv2", x)
    return tr.child(path, m, "cv3", a + b)


def _c1(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    y = tr.child(path, m, "cv1", x)
    return tr.add(tr.child(path, m, "m", y), y, f"{path} (residual)")


def _spp(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    y = tr.child(path, m, "cv1", x)
    return tr.child(path, m, "cv2", y * (len(m.m) + 1))  # max-pooling keeps channels


def _sppf(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    y = tr.child(path, m, "cv1", x)
    out = tr.child(path, m, "cv2", y * (getattr(m, "n", 3) + 1))
    return tr.add(out, x, f"{path} (residual)") if getattr(m, "add", False) else out


def _a2c2f(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    """A2C2f: cv1, the blocks in a chain, cv2 reads them all; with `gamma` (YOLO12 l/x) the output is
    `x + gamma * cv2(...)`, a residual whose cv2 channels carry gamma as their scale (sliced with them)."""
    gamma = getattr(m, "gamma", None)
    if gamma is not None and (gamma.dim() != 1 or gamma.numel() != m.cv2.conv.out_channels or _width(x) != gamma.numel()):
        return tr.boundary(path, m, x, "a learned per-channel scale (gamma) of an unexpected shape on its residual")
    y = [tr.child(path, m, "cv1", x)]
    for i, block in enumerate(m.m):
        y.append(tr(f"{path}.m.{i}", block, y[-1]))
    out = tr.child(path, m, "cv2", [s for t in y for s in t])
    if gamma is None:
        return out
    for seg in out:
        for idx in seg.sources:
            tr.producers[idx] = replace(tr.producers[idx], scale=f"{path}.gamma")
    return tr.add(x, out, f"{path} (residual scaled by gamma)")


def _detect(tr: Tracer, path: str, m: nn.Module, x) -> Opaque:
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


def handlers() -> list[tuple[type, Handler]]:
    """(class, rule) for the blocks of this module (`trace.builtin_handlers` puts them with the others)."""
    from ultralytics.nn.modules import block, conv, head

    return [
        (nn.Sequential, _sequential),
        (nn.Conv2d, _plain_conv),
        (nn.ConvTranspose2d, _plain_transposed),
        (nn.Upsample, _passthrough),
        (nn.MaxPool2d, _passthrough),
        (nn.ZeroPad2d, _passthrough),  # a constant channel is folded exactly away from the border, as for convs
        (nn.Identity, _passthrough),
        (nn.Dropout, _passthrough),
        (conv.Conv, _conv),
        (conv.ConvTranspose, _conv_transpose),
        (conv.Concat, _concat),
        (block.Bottleneck, _bottleneck),
        (block.C1, _c1),
        (block.C2, _c2),
        (block.C2f, _c2f),
        (block.C3, _c3),
        (block.SPP, _spp),
        (block.SPPF, _sppf),
        (block.A2C2f, _a2c2f),
        (head.Detect, _detect),
    ]
