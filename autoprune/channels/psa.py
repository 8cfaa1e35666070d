"""Channel rules of position-sensitive attention: Ultralytics' `Attention`, `PSABlock`, `PSA` (YOLOv10) and `C2PSA`
(YOLO11, YOLO26); C3k2's attention form and C2fPSA are C2f's rule around PSABlocks.

`Attention(dim, num_heads)` computes, per head, `key_dim` query and key channels and `head_dim` value channels with
one 1x1 conv (`qkv`, laid out per head as `[q, k, v]`), mixes the values by the softmax of `q^T k * scale`, adds a
depthwise conv of the values (`pe`) and projects (`proj`). Its forward reshapes by the sizes it stores, and views the
mixed values as its input's shape, so three things hold in a pruned block:

- every head keeps the same number of query/key channels (channel j of q meets channel j of k in the dot product:
  both are one part, and the heads' parts are tied). A pair whose key channel is constant adds the same logit to
  every key of a query, which the softmax ignores, so removing it is exact;
- every head keeps the same number of value channels (tied parts), which `pe` (depthwise), the mixed values (a
  convex mix of each channel over positions) and `proj`'s input read at the same index;
- the input's channel count equals `num_heads x head_dim`. The input is cut into `num_heads` pieces, each tied to
  the value parts: a pruned input keeps `num_heads x k` channels when each head keeps `k` values. In PSABlock the
  input is the residual stream (`x + attn(x)`, `x + ffn(x)`), so the pieces run through it: the split conv of
  C2PSA / PSA / C3k2 makes its halves in `num_heads` tied pieces (`blocks._split_conv`), and `proj`'s, the ffn's and
  a Bottleneck's outputs are cut to match where they join the stream.

Where the input cannot be cut that way (its channels come from parts tied otherwise, or from pieces of other sizes)
the input and the values are kept, `autoprune groups` says why, and the query/key channels and the ffn's hidden
channels still prune. The pruner sets `key_dim`, `head_dim` and `scale` (see `autoprune.pruner`).
"""

from __future__ import annotations

from torch import nn

from autoprune.channels.blocks import _conv_parts, _split_conv, _width, add_aligned, attention_heads, cut
from autoprune.channels.blocks_extra import _is_plain_conv
from autoprune.channels.graph import AttentionInfo
from autoprune.channels.symbolic import Handler, Sym, Tracer


def _as_heads(tr: Tracer, x: Sym, heads: int, size: int) -> Sym | None:
    """`x` as `heads` segments of `size` channels each, cutting its parts where needed; None when it cannot be."""
    for at in range(size, heads * size, size):
        pieces = cut(tr, x, at)
        if pieces is None:
            return None
        x = pieces[0] + pieces[1]
    return x if [s.size for s in x] == [size] * heads else None


def _attention(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    """Attention: query/key channels per head (one tied group), value channels per head tied to the input's pieces."""
    nh, kd, hd = m.num_heads, m.key_dim, m.head_dim
    per_head = 2 * kd + hd
    ok = _is_plain_conv(m.qkv) and _is_plain_conv(m.proj) and _is_plain_conv(m.pe, depthwise=True)
    if not ok or kd < 1 or m.qkv.conv.out_channels != nh * per_head or m.pe.conv.out_channels != nh * hd:
        return tr.boundary(path, m, x)
    if _width(x) != nh * hd or m.qkv.conv.in_channels != nh * hd or m.proj.conv.in_channels != nh * hd:
        return tr.boundary(path, m, x)
    shape = tr.shapes.get(path)
    if shape is not None and len(shape) == 4:
        n = shape[2] * shape[3]
        tr.attention[path] = AttentionInfo(qkv=f"{path}.qkv.conv", values=f"{path}.pe.conv", queries=n, keys=n)

    heads = _as_heads(tr, x, nh, hd)
    x = heads if heads is not None else tr.refresh(x)  # in pieces where it was cut before failing
    conv_path, bn, act, _ = _conv_parts(tr, f"{path}.qkv", m.qkv)
    tr.consume(conv_path, x)
    qk, v = [], []
    for h in range(nh):
        o = h * per_head
        qk += tr.produce(conv_path, bn, act, kd, offset=o)
        tr.silent_producer(qk[-1].part, conv_path, bn, o + kd)  # the keys: channel j of k pairs with j of q
        v += tr.produce(conv_path, bn, act, hd, offset=o + 2 * kd)
    tr.ties += [(qk[0].part, s.part) for s in qk[1:]] + [(v[0].part, s.part) for s in v[1:]]
    if heads is not None:
        tr.ties += [(v[0].part, s.part) for s in heads]
    else:
        why = (f"its input must keep num_heads x head_dim channels ({nh} x {hd}), and the input's channels cannot be "
               f"cut into {nh} pieces tied to the heads; the query/key channels still prune")
        tr.fix(x + v, f"{path} (attention input)")
        tr.fixed_blocks[path] = type(m).__name__
        tr.fixed_why[path] = why
    out = tr.add(v, tr.child(path, m, "pe", v), f"{path} (positional encoding)")
    return tr.child(path, m, "proj", out)


def _attention_then_ffn(tr: Tracer, path: str, m: nn.Module, x: Sym, shortcut: bool) -> Sym:
    """PSABlock's and PSA's `x + attn(x)`, then `x + ffn(x)` (without the adds when not `shortcut`)."""
    y = tr.child(path, m, "attn", x)
    x = add_aligned(tr, tr.refresh(x), y, f"{path} (residual)") if shortcut else y
    y = tr.child(path, m, "ffn", x)
    return add_aligned(tr, tr.refresh(x), y, f"{path} (residual)") if shortcut else y


def _psablock(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    return _attention_then_ffn(tr, path, m, x, m.add)


def _psa(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    """PSA: cv1 split in two (in head-sized pieces), attention and ffn on the second half, cv2 reads both."""
    halves = _split_conv(tr, path, m, x, "cv1", m.c, attention_heads(m.attn))
    if halves is None:
        return tr.boundary(path, m, x)
    a, b = halves
    b = _attention_then_ffn(tr, path, m, b, True)
    return tr.child(path, m, "cv2", tr.refresh(a + b))


def _c2psa(tr: Tracer, path: str, m: nn.Module, x: Sym) -> Sym:
    """C2PSA: cv1 split in two (in head-sized pieces), PSABlocks on the second half, cv2 reads both."""
    halves = _split_conv(tr, path, m, x, "cv1", m.c, attention_heads(m.m))
    if halves is None:
        return tr.boundary(path, m, x)
    a, b = halves
    b = tr.child(path, m, "m", b)
    return tr.child(path, m, "cv2", tr.refresh(a + b))


def handlers() -> list[tuple[type, Handler]]:
    """(class, rule) for the blocks of this module."""
    from ultralytics.nn.modules import block

    return [
        (block.Attention, _attention),
        (block.PSABlock, _psablock),
        (block.PSA, _psa),
        (block.C2PSA, _c2psa),
    ]
