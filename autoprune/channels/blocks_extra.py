"""Channel rules of the YOLOv9, YOLOv10, YOLO12 attention and Ghost blocks (the common blocks' are in `blocks`).

YOLOv9: RepConv (3x3 and 1x1 branches summed before the activation), RepNCSPELAN4 and ELAN1 (a C2f-like split
with two stages), ADown (the input cut into two halves), AConv, SPPELAN, and YOLOv9-E's auxiliary branch: CBLinear
(one conv split into pieces) and CBFuse (pieces of several CBLinears summed into a stream, a residual coupling);
RepCSP and RepBottleneck keep C3's and Bottleneck's forward, so their rules apply. YOLOv10: SCDown, CIB (a
residual through depthwise and 1x1 convs), RepVGGDW (two depthwise branches summed before the activation); C2fCIB
is a C2f. Ghost: GhostConv (its depthwise half repeats the channels of its first half, so both halves share one
index) and GhostBottleneck (a residual whose two sides may be cut differently: the side that is one part is cut to
match). YOLO12: AAttn's head dim (the number of heads stays) and ABlock's residuals.

Each rule is `rule(tracer, path, module, x)`, as in `blocks`; `handlers` lists them for `trace.builtin_handlers`.
"""

from __future__ import annotations

from torch import nn

from autoprune.channels.blocks import _conv, _conv_parts, _split_conv, _width, add_aligned, cut
from autoprune.channels.graph import AttentionInfo
from autoprune.channels.symbolic import Handler, Segment, Sym, Tracer, handler_for


def _is_plain_conv(m: nn.Module, depthwise: bool = False) -> bool:
    """An Ultralytics Conv (traced by `_conv`) with a BatchNorm: dense, or depthwise when `depthwise`."""
    if handler_for(m) is not _conv or not isinstance(getattr(m, "bn", None), nn.BatchNorm2d):
        return False
    c = m.conv
    return c.groups == c.in_channels == c.out_channels if depthwise else c.groups == 1


def chunk2(tr: Tracer, x: Sym) -> tuple[Sym, Sym] | None:
    """`x.chunk(2, 1)`: the two halves, with their segments' counts tied pair by pair so the halves stay equal.

    `chunk` cuts at half the pruned width, so a channel removed from one half must be matched by one removed from
    the other: that holds when the halves are segments of equal sizes whose parts are tied in pairs. None when the
    halves do not line up that way (the caller keeps the block whole).
    """
    width = _width(x)
    if width % 2:
        return None
    halves = cut(tr, x, width // 2)
    if halves is None:
        return None
    a, b = halves
    if [s.size for s in a] != [s.size for s in b]:
        return None
    for sa, sb in zip(a, b):
        if tr.find(sa.part) != tr.find(sb.part):
            tr.ties.append((sa.part, sb.part))
    return a, b


def _repconv(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    """RepConv: `act(bn1(conv3x3(x)) + bn2(conv1x1(x)))`, both branches reading `x` and writing one part.

    A removed output channel emits `act(beta1 + beta2)` when both gammas are 0: the 3x3 branch is the producer the
    readers count, carrying the 1x1 branch's BatchNorm in `summed`; the 1x1 conv is sliced with it. The identity
    BatchNorm branch (`bn=True`, RT-DETR's RepC3) would tie input and output channels: kept whole.
    """
    if getattr(m, "bn", None) is not None or m.g != 1:
        return tr.boundary(path, m, x, "an identity BatchNorm branch (or groups) ties its input and output channels")
    if not (_is_plain_conv(m.conv1) and _is_plain_conv(m.conv2)) or _width(x) != m.conv1.conv.in_channels:
        return tr.boundary(path, m, x)
    p1, bn1, _, c1 = _conv_parts(tr, f"{path}.conv1", m.conv1)
    p2, bn2, _, _ = _conv_parts(tr, f"{path}.conv2", m.conv2)
    tr.consume(p1, x)
    tr.consume(p2, x)
    out = tr.produce(p1, bn1, f"{path}.act", c1.out_channels, summed=(bn2,))
    tr.silent_producer(out[0].part, p2, bn2)
    return out


def _repvggdw(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    """RepVGGDW: `act(dw7x7(x) + dw3x3(x))`, two depthwise branches summed before the activation."""
    if not (_is_plain_conv(m.conv, depthwise=True) and _is_plain_conv(m.conv1, depthwise=True)):
        return tr.boundary(path, m, x)
    if _width(x) != m.conv.conv.in_channels:
        return tr.boundary(path, m, x)
    p1, bn1, _, _ = _conv_parts(tr, f"{path}.conv", m.conv)
    p2, bn2, _, _ = _conv_parts(tr, f"{path}.conv1", m.conv1)
    out = tr.depthwise(p1, bn1, f"{path}.act", x, summed=(bn2,))
    offset = 0
    for s in out:
        tr.silent_producer(s.part, p2, bn2, offset, depthwise=True)
        offset += s.size
    return out


def _elan(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    """RepNCSPELAN4 / ELAN1: cv1 split in two tied halves; cv2 reads the second, cv3 reads cv2; cv4 reads all four."""
    halves = _split_conv(tr, path, m, x, "cv1", m.c)
    if halves is None:
        return tr.boundary(path, m, x)
    y = list(halves)
    for name in ("cv2", "cv3"):
        y.append(tr.child(path, m, name, y[-1]))
    return tr.child(path, m, "cv4", [s for t in y for s in t])


def _adown(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    """ADown: average pooling, the channels cut in two halves (`chunk`), cv1 on the first, max pooling and cv2 on
    the second, the outputs concatenated. Pooling without zero padding keeps a constant channel constant."""
    halves = chunk2(tr, x)
    if halves is None:
        return tr.boundary(path, m, x)
    a, b = halves
    return tr.child(path, m, "cv1", a) + tr.child(path, m, "cv2", b)


def _aconv(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    return tr.child(path, m, "cv1", x)  # average pooling without padding, then a conv


def _sppelan(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    y = tr.child(path, m, "cv1", x)
    return tr.child(path, m, "cv5", y * 4)  # three max-poolings of cv1's output, concatenated with it


def _cblinear(tr: Tracer, path: str, m: nn.Module, x: Sym) -> list[Sym] | Sym:
    """CBLinear: one conv (bias, no BatchNorm, no activation) whose output is split into pieces of `c2s` channels and
    returned as a tuple, here a list of symbolic tensors: each piece is a part of its own, produced by the conv at
    its offset. A removed channel emits the conv's bias, which the pruner folds into what reads it; the pruner sets
    `c2s` to what each piece keeps. A piece that nothing reads is a group of its own: removing its channels is exact."""
    conv = m.conv
    if isinstance(conv, nn.Conv2d) and conv.groups != 1:
        return tr.boundary(path, m, x, "a grouped conv ties channels across its groups")
    if not isinstance(conv, nn.Conv2d) or not _is_sym(x) or _width(x) != conv.in_channels:
        return tr.boundary(path, m, x)
    if sum(m.c2s) != conv.out_channels:
        return tr.boundary(path, m, x)
    tr.consume(f"{path}.conv", x)
    pieces, offset = [], 0
    for c in m.c2s:
        pieces.append(tr.produce(f"{path}.conv", None, None, c, offset=offset))
        offset += c
    return pieces


def _cbfuse(tr: Tracer, path: str, m: nn.Module, x) -> Sym:
    """CBFuse: piece `idx[i]` of the i-th input (a CBLinear's pieces), resized to the last input's size by nearest
    interpolation (a constant channel stays constant), summed with the last input: each piece joins the last input's
    channels as a residual does, cut to match where that input is made of several parts (an ADown's two halves).
    The pieces' producers are side inputs: the group is named after the last input's producer."""
    ok = isinstance(x, list) and len(x) >= 1 and _is_sym(x[-1]) and len(x) - 1 <= len(m.idx)
    ok = ok and all(isinstance(t, list) and all(_is_sym(p) for p in t) and 0 <= i < len(t)
                    for t, i in zip(x[:-1], m.idx))
    if not ok:
        return tr.boundary(path, m, x, "its inputs are not the pieces of CBLinears and one tensor")
    out = x[-1]
    for k, (t, i) in enumerate(zip(x[:-1], m.idx)):
        out = add_aligned(tr, tr.refresh(out), tr.refresh(t[i]), f"{path} (sum)")
        piece = tr.refresh(t[i])
        tr.side.update(j for s in piece for j in s.sources)
        if [s.size for s in tr.refresh(out)] != [s.size for s in piece]:
            tr.fixed_blocks[path] = type(m).__name__
            tr.fixed_why[path] = (f"piece {i} of input {k} and the last input cannot be cut to line up (their parts "
                                  "are tied to others), so both keep their channels")
    return tr.refresh(out)


def _is_sym(x) -> bool:
    return isinstance(x, list) and all(isinstance(s, Segment) for s in x)


def _scdown(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    return tr.child(path, m, "cv2", tr.child(path, m, "cv1", x))  # a 1x1 conv, then a depthwise strided conv


def _cib(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    y = tr.child(path, m, "cv1", x)
    return add_aligned(tr, x, y, f"{path} (residual)") if m.add else y


def _ghostconv(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    """GhostConv: `cat(y, dw(y))` with `y = cv1(x)`; the depthwise half writes the same channel indices as y."""
    if not _is_plain_conv(m.cv2, depthwise=True):
        return tr.boundary(path, m, x)
    y = tr.child(path, m, "cv1", x)
    return y + tr.child(path, m, "cv2", y)


def _ghost_bottleneck(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    """GhostBottleneck: `conv(x) + shortcut(x)`; the GhostConv side is two copies of one part, so the other side
    is cut into halves that join it."""
    a = tr.child(path, m, "conv", x)
    b = tr.child(path, m, "shortcut", x)
    return add_aligned(tr, tr.refresh(a), tr.refresh(b), f"{path} (residual)")


def _aattn(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    """AAttn (YOLO12's area attention): qkv writes, per head, `head_dim` query, key and value channels; the heads
    keep their number and all share one pruned head dim.

    A head's query and key channels share one part (channel j of q meets channel j of k in the dot product; when
    both are constant their product is the same for every key, which the softmax ignores); its value channels are
    another part, which the depthwise `pe` conv, the attention output (a convex mix of values) and `proj` read at
    the same index. All parts are tied, so every head keeps the same head dim; the pruner rescales the queries by
    `sqrt(new / old head dim)` so that `head_dim ** -0.5` in forward gives the same logits.
    """
    hd, nh = m.head_dim, m.num_heads
    ok = _is_plain_conv(m.qkv) and _is_plain_conv(m.proj) and _is_plain_conv(m.pe, depthwise=True)
    if not ok or m.qkv.conv.out_channels != 3 * hd * nh or _width(x) != m.qkv.conv.in_channels:
        return tr.boundary(path, m, x)
    shape = tr.shapes.get(path)
    if shape is not None and len(shape) == 4:
        n = shape[2] * shape[3]
        tr.attention[path] = AttentionInfo(f"{path}.qkv.conv", f"{path}.pe.conv", queries=n, keys=n / max(m.area, 1))
    conv_path, bn, act, _ = _conv_parts(tr, f"{path}.qkv", m.qkv)
    tr.consume(conv_path, x)
    v: Sym = []
    first = None
    for h in range(nh):
        o = 3 * hd * h
        qk = tr.produce(conv_path, bn, act, hd, offset=o)
        tr.silent_producer(qk[0].part, conv_path, bn, o + hd)
        vh = tr.produce(conv_path, bn, act, hd, offset=o + 2 * hd)
        first = first if first is not None else qk[0].part
        tr.ties += [(first, qk[0].part), (first, vh[0].part)]
        v += vh
    out = tr.add(v, tr.child(path, m, "pe", v), f"{path} (positional encoding)")
    return tr.child(path, m, "proj", out)


def _ablock(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    """ABlock: `x + attn(x)`, then `x + mlp(x)`."""
    x = add_aligned(tr, x, tr.child(path, m, "attn", x), f"{path} (residual)")
    return add_aligned(tr, tr.refresh(x), tr.child(path, m, "mlp", x), f"{path} (residual)")


def handlers() -> list[tuple[type, Handler]]:
    """(class, rule) for the blocks of this module."""
    from ultralytics.nn.modules import block, conv

    return [
        (conv.RepConv, _repconv),
        (block.RepVGGDW, _repvggdw),
        (block.RepNCSPELAN4, _elan),
        (block.ADown, _adown),
        (block.AConv, _aconv),
        (block.SPPELAN, _sppelan),
        (block.CBLinear, _cblinear),
        (block.CBFuse, _cbfuse),
        (block.SCDown, _scdown),
        (block.CIB, _cib),
        (conv.GhostConv, _ghostconv),
        (block.GhostBottleneck, _ghost_bottleneck),
        (block.AAttn, _aattn),
        (block.ABlock, _ablock),
    ]
