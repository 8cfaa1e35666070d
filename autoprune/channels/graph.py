"""The channel graph of a model: which output channels are coupled, who produces and who consumes them.

Vocabulary:

- A **part** is a set of channels that share one index: channel `k` of a part is output channel `offset + k` of every
  producer in it and input channel `offset + k` of every consumer of it. Removing channel `k` of a part removes that
  channel from all of them at once. Residual adds merge parts; a depthwise conv joins the part of its input.
- A **group** is what a keep ratio applies to: one part, or several parts whose kept counts must be equal (the two
  halves of a `C2f` split by `chunk(2, 1)`; an attention's heads, and the residual stream around it cut into as many
  pieces). Indices are chosen per part; the count is shared.
- A part is **fixed** when something the analysis does not understand reads or writes it (a block without a rule, the
  image input, the head's outputs). Fixed channels are never removed; groups are only made of free parts.

Everything here refers to modules by their dotted path (`model.2.cv1.conv`), never by object, so one analysis serves
any deep copy of the model it was made from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from autoprune.cost.flops import FLOPS_PER_MAC, conv_flops, conv_macs


@dataclass(frozen=True)
class Producer:
    """A conv whose output channels `[offset, offset + size)` are the part's channels.

    `bn` and `act` are the module paths of the BatchNorm and activation after it (None when absent). A removed
    channel of this producer emits the constant `act(bn.bias)` when its BN gamma is 0; that constant is what gets
    folded into consumers. `depthwise` marks a depthwise conv that only passes its input part through: it consumes
    and produces the same channel indices. `summed` lists the BatchNorms of branches whose outputs are added to
    this one's before `act` (a `RepConv`'s 1x1 branch): the constant is then `act(beta + their betas)`, and those
    branches' convs are producers of the part that no consumer counts as a source. `scale` is the dotted path of a
    per-channel parameter that multiplies the output after `act` (YOLO12's A2C2f `gamma` on its residual branch):
    indexed like the conv's output channels, sliced with them, and a removed channel's constant is scaled by it.
    """

    conv: str
    bn: str | None
    act: str | None
    offset: int
    depthwise: bool = False
    summed: tuple[str, ...] = ()  # norms (or biased convs) of parallel branches added before `act` (RepConv)
    scale: str | None = None  # a per-channel parameter multiplying act's output (A2C2f's gamma)

    @property
    def block(self) -> str:
        """The path of the block that owns the conv (`model.2.cv1` for `model.2.cv1.conv`)."""
        return block_of(self.conv)


def block_of(conv: str) -> str:
    """The path of the Ultralytics block around a conv: `model.2.cv1` for `model.2.cv1.conv`, `model.11` for a
    `ConvTranspose`'s `model.11.conv_transpose`; a bare torch conv is its own block."""
    for leaf in (".conv", ".conv_transpose"):
        if conv.endswith(leaf):
            return conv[: -len(leaf)]
    return conv


@dataclass(frozen=True)
class Consumer:
    """A conv that reads the part's channels as its input channels `[offset, offset + size)`.

    `sources` are the indices (into `ChannelGraph.producers`) of the producers whose outputs are summed into the
    tensor this conv reads: a residual chain sums several. A removed channel's constant input is the sum of their
    constants.
    """

    conv: str
    offset: int
    sources: tuple[int, ...]


@dataclass
class Part:
    """Channels that share one index across their producers and consumers (see the module docstring)."""

    size: int
    producers: list[int] = field(default_factory=list)  # indices into ChannelGraph.producers
    consumers: list[Consumer] = field(default_factory=list)
    fixed: bool = False
    fixed_by: str | None = None  # why, for the summary: the module path that made it fixed


@dataclass(frozen=True)
class ChannelGroup:
    """A prunable channel group: one keep ratio applies to it.

    Attributes:
        id: stable name, the path of its first producer without the `model.` prefix (`"2.cv1"`, `"22.cv3.0.1"`);
            a stream that CBLinear pieces are summed into is named after its own first producer, and a group named
            after a conv that already names another takes its offset there (`"5@128"`, a second unread piece).
        size: channels per part; the group has `len(parts)` parts of this size.
        parts: indices into `ChannelGraph.parts`.
        layer: index of the top-level layer (`model.model[layer]`) of the producer it is named after.
        producers: module paths of the convs that produce its channels.
        consumers: module paths of the convs that read them.
    """

    id: str
    size: int
    parts: tuple[int, ...]
    layer: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]

    @property
    def channels(self) -> int:
        """All channels of the group, over its parts."""
        return self.size * len(self.parts)


@dataclass(frozen=True)
class ConvInfo:
    """What a conv costs: its shape and resolution at the analysis image size.

    A transposed conv (`transposed`, an `nn.ConvTranspose2d`) scatters every input position through its whole
    kernel, so its weights run once per input position (`in_pixels`), where a conv's run once per output position.
    """

    in_channels: int
    out_channels: int
    groups: int
    kernel: int  # kh * kw
    out_pixels: int  # Hout * Wout at `ChannelGraph.imgsz`
    bias: bool
    transposed: bool = False
    in_pixels: int = 0  # Hin * Win at `ChannelGraph.imgsz`, recorded for a transposed conv

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    @property
    def positions(self) -> int:
        """How many times each weight is applied: the output positions of a conv, the input positions of a
        transposed conv (`autoprune.cost.flops.conv_macs`' positions)."""
        return self.in_pixels if self.transposed else self.out_pixels


@dataclass(frozen=True)
class AttentionInfo:
    """The matrix products of one attention block, whose cost follows the channels of two of its convs.

    Per head, each of `queries` positions meets `keys` positions over the head's query/key channels (`q^T k`), and
    the softmax weights mix the head's value channels (`v attn^T`): `queries x keys x heads x (key_dim + head_dim)`
    multiply-accumulates. `qkv` writes `heads x (2 key_dim + head_dim)` channels and `values` (the depthwise
    positional conv) `heads x head_dim`, so that count is `queries x keys x (qkv out + values out) / 2`.
    """

    qkv: str  # conv path
    values: str  # conv path of the conv whose output channels are the value channels
    queries: int  # positions at `ChannelGraph.imgsz`
    keys: float  # keys each query meets at `ChannelGraph.imgsz` (the positions of its area in area attention)


@dataclass
class ChannelGraph:
    """The result of `autoprune.channels.analyze(model)`.

    Attributes:
        producers: every producer, by index.
        parts: every part (free and fixed), by index.
        groups: the prunable groups, in model order.
        convs: cost information for every conv in the model, by path.
        fixed_blocks: paths of blocks the analysis treated as fixed boundaries, with their class names.
        fixed_why: for each of those paths, why its channels are kept.
        imgsz: the image size `convs[...].out_pixels` was recorded at.
        attention: the attention blocks whose matrix products shrink with their convs' channels, by path.
    """

    producers: list[Producer]
    parts: list[Part]
    groups: list[ChannelGroup]
    convs: dict[str, ConvInfo]
    fixed_blocks: dict[str, str]
    imgsz: int
    fixed_why: dict[str, str] = field(default_factory=dict)
    attention: dict[str, AttentionInfo] = field(default_factory=dict)

    def group(self, gid: str) -> ChannelGroup:
        """The group with id `gid` (KeyError with the known ids' count if absent)."""
        for g in self.groups:
            if g.id == gid:
                return g
        raise KeyError(f"no channel group {gid!r} (the model has {len(self.groups)} groups)")

    @property
    def ids(self) -> list[str]:
        """Group ids in model order."""
        return [g.id for g in self.groups]

    # ----------------------------------------------------------------------------------------------------------------
    # Costs, by the FLOP model of `autoprune.cost.flops` (Ultralytics' convention: 2 x multiply-accumulates).

    def conv_channels(self, counts: dict[str, int] | None = None) -> dict[str, tuple[int, int]]:
        """(in, out) channels of every conv after keeping `counts[gid]` channels per part of each listed group."""
        counts = counts or {}
        delta_in = {name: 0 for name in self.convs}
        delta_out = {name: 0 for name in self.convs}
        for g in self.groups:
            n = counts.get(g.id, g.size)
            if n == g.size:
                continue
            removed = g.size - n
            for pi in g.parts:
                part = self.parts[pi]
                for prod in part.producers:
                    p = self.producers[prod]
                    delta_out[p.conv] += removed
                    if p.depthwise:
                        delta_in[p.conv] += removed
                for c in part.consumers:
                    delta_in[c.conv] += removed
        return {
            name: (info.in_channels - delta_in[name], info.out_channels - delta_out[name])
            for name, info in self.convs.items()
        }

    def conv_gflops(self, counts: dict[str, int] | None = None, imgsz: int | None = None) -> float:
        """GFLOPs of all convs (2 x MACs) at `imgsz` with `counts` kept channels per group; exact for convs.

        Takes microseconds, so a search can price a genome before building it.
        """
        scale = ((imgsz or self.imgsz) / self.imgsz) ** 2
        total = 0.0
        for name, (cin, cout) in self.conv_channels(counts).items():
            info = self.convs[name]
            per_output = 1 if info.depthwise else cin // info.groups  # a depthwise conv shrinks with its channels
            total += conv_flops(cout, per_output, info.kernel, info.positions)
        return total * scale / 1e9

    def attention_gflops(
        self, counts: dict[str, int] | None = None, imgsz: int | None = None, *,
        channels: dict[str, tuple[int, int]] | None = None,
    ) -> float:
        """GFLOPs of the attention blocks' matrix products (`AttentionInfo`) at `imgsz` with `counts` kept channels
        per group, or with the conv `channels` given (`conv_channels`' form; an attention whose convs are absent
        from them is gone). Not part of `conv_gflops`: fvcore counts them, and a full count that shrinks with the
        channels must add them."""
        channels = self.conv_channels(counts) if channels is None else channels
        scale = ((imgsz or self.imgsz) / self.imgsz) ** 2
        total = 0.0
        for a in self.attention.values():
            if a.qkv in channels and a.values in channels:
                total += FLOPS_PER_MAC * a.queries * a.keys * (channels[a.qkv][1] + channels[a.values][1]) / 2
        return total * scale**2 / 1e9

    def flops_shares(self) -> dict[str, float]:
        """For each group, the share of the model's conv FLOPs that its channels drive.

        That is the FLOPs that would disappear if the group lost all its channels: the multiply-accumulates whose
        input or output channel belongs to it. Shares of different groups overlap (a conv between two groups counts
        for both), so they do not sum to one.
        """
        total = self.conv_gflops()
        shares = {}
        for g in self.groups:
            shares[g.id] = (total - self.conv_gflops({g.id: 0})) / total if total else 0.0
        return shares

    def prunable_flops_share(self) -> float:
        """The share of conv FLOPs that pruning can touch: MACs whose input or output channel is in a free part."""
        total = fixed = 0.0
        free_in = {name: 0 for name in self.convs}
        free_out = {name: 0 for name in self.convs}
        for g in self.groups:
            for pi in g.parts:
                part = self.parts[pi]
                for prod in part.producers:
                    p = self.producers[prod]
                    free_out[p.conv] += part.size
                    if p.depthwise:
                        free_in[p.conv] += part.size
                for c in part.consumers:
                    free_in[c.conv] += part.size
        for name, info in self.convs.items():
            macs = conv_macs(info.out_channels, info.in_channels // info.groups, info.kernel, info.positions)
            total += macs
            if info.depthwise:
                fixed += macs * (1 - free_out[name] / info.out_channels)
            else:
                fixed += macs * (1 - free_in[name] / info.in_channels) * (1 - free_out[name] / info.out_channels)
        return 1 - fixed / total if total else 0.0
