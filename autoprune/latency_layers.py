"""What the latency table measures: one layer configuration (`LayerConfig`), the convs of a model a pruning changes
(`_sites`, each with the anchor shapes it is measured at), the layers an operator swap replaces a conv with
(`swap_layers`), and the matrix products of an attention block (`AttentionConfig`, `AttentionCore`, and the blocks whose
head dims a pruning changes, `_attention_sites`). `autoprune.latency_model.LatencyTable` times them and sums them into
predictions."""

from __future__ import annotations

import bisect as _bisect
import json
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from autoprune.cost._model import input_channels

ANCHORS = (0.0, 0.25, 0.5, 0.75, 1.0)  # where each conv is measured, from its floor (0) to its full shape (1)


@dataclass(frozen=True)
class LayerConfig:
    """One distinct layer configuration: what an entry of the table is measured for."""

    op: str  # "conv" (nn.Conv2d) or "conv_transpose" (nn.ConvTranspose2d, output_padding 0)
    in_hw: tuple[int, int]
    cin: int
    cout: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    act: str  # the activation's class name ("Identity" for none)

    def key(self) -> str:
        """A stable text key (also the signature its latency is cached under)."""
        return json.dumps(asdict(self), sort_keys=True)

    def out_hw(self) -> tuple[int, int]:
        """The output's height and width."""
        if self.op == "conv_transpose":
            return tuple((self.in_hw[i] - 1) * self.stride[i] - 2 * self.padding[i]
                         + self.dilation[i] * (self.kernel[i] - 1) + 1 for i in (0, 1))
        return tuple((self.in_hw[i] + 2 * self.padding[i] - self.dilation[i] * (self.kernel[i] - 1) - 1)
                     // self.stride[i] + 1 for i in (0, 1))

    def macs(self) -> int:
        """Multiply-accumulates per image (a transposed conv's per input position, as fvcore counts them)."""
        oh, ow = self.in_hw if self.op == "conv_transpose" else self.out_hw()
        return self.cout * (self.cin // self.groups) * self.kernel[0] * self.kernel[1] * oh * ow

    def module(self) -> nn.Module:
        """The layer alone, as the deployed model runs it: conv with bias (BN folded) then the activation."""
        op = nn.ConvTranspose2d if self.op == "conv_transpose" else nn.Conv2d
        conv = op(self.cin, self.cout, self.kernel, self.stride, self.padding, dilation=self.dilation,
                  groups=self.groups)
        act = getattr(nn, self.act)() if self.act != "Identity" else nn.Identity()
        return nn.Sequential(conv, act).eval()


@dataclass(frozen=True)
class _Site:
    """One conv of the model: its fixed settings, full and floor channels, and its anchor configurations."""

    name: str
    full: LayerConfig
    floor: tuple[int, int]
    depthwise: bool

    def config(self, cin: int, cout: int) -> LayerConfig:
        groups = cin if self.depthwise else self.full.groups
        return LayerConfig(self.full.op, self.full.in_hw, cin, cout, self.full.kernel, self.full.stride,
                           self.full.padding, self.full.dilation, groups, self.full.act)

    def anchors(self) -> list[LayerConfig]:
        (c0, o0), c1, o1 = self.floor, self.full.cin, self.full.cout
        out = []
        for t in ANCHORS:
            cin = c0 + int(round(t * (c1 - c0)))
            cout = o0 + int(round(t * (o1 - o0)))
            if self.depthwise:
                cin = cout
            cfg = self.config(cin, cout)
            if cfg not in out:
                out.append(cfg)
        return out


@dataclass(frozen=True)
class AttentionConfig:
    """One attention core: what an attention block's forward does between its qkv conv and the convs that read the
    result (`AttentionCore`), measured and filed as an entry like a `LayerConfig`.

    `op` is "attention" (Ultralytics' `Attention`, the PSA family's) or "area_attention" (YOLO12's `AAttn`, whose
    positions are cut into `area` areas, each attending within itself).
    """

    op: str
    in_hw: tuple[int, int]
    heads: int
    key_dim: int
    head_dim: int
    area: int = 1

    @property
    def cin(self) -> int:
        """The channels the core reads: the qkv conv's outputs, `key_dim` queries and keys and `head_dim` values
        per head."""
        return self.heads * (2 * self.key_dim + self.head_dim)

    def key(self) -> str:
        """A stable text key (also the signature its latency is cached under)."""
        return json.dumps(asdict(self), sort_keys=True)

    def macs(self) -> int:
        """Multiply-accumulates per image of `q^T k` and of mixing the values (`channels.graph.AttentionInfo`)."""
        n = self.in_hw[0] * self.in_hw[1]
        return n * (n // self.area) * self.heads * (self.key_dim + self.head_dim)

    def module(self) -> nn.Module:
        """The core alone (`AttentionCore`)."""
        return AttentionCore(self.op, self.heads, self.key_dim, self.head_dim, self.area).eval()


class AttentionCore(nn.Module):
    """The forward of `Attention` ("attention") or `AAttn` ("area_attention") from the qkv conv's output
    (B, heads x (2 key_dim + head_dim), H, W) to what its convs read: the mixed values (B, heads x head_dim, H, W),
    for `proj`, and the values in that layout, for `pe`. Split per head into queries, keys and values, `q^T k` times
    the scale, softmax over the keys, `v attn^T`, as the block's forward does it (the same reshapes and permutes)."""

    def __init__(self, op: str, heads: int, key_dim: int, head_dim: int, area: int = 1):
        super().__init__()
        if op not in ("attention", "area_attention"):
            raise ValueError(f"unknown attention op {op!r} (ops: attention, area_attention)")
        self.op, self.heads, self.key_dim, self.head_dim, self.area = op, heads, key_dim, head_dim, area
        self.scale = max(key_dim, 1) ** -0.5

    def forward(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, _, H, W = qkv.shape
        N, nh, kd, hd = H * W, self.heads, self.key_dim, self.head_dim
        if self.op == "attention":  # Attention.forward
            q, k, v = qkv.view(B, nh, 2 * kd + hd, N).split([kd, kd, hd], dim=2)
            attn = ((q * self.scale).transpose(-2, -1) @ k).softmax(dim=-1)
            return (v @ attn.transpose(-2, -1)).view(B, nh * hd, H, W), v.reshape(B, nh * hd, H, W)
        qkv = qkv.flatten(2).transpose(1, 2)  # AAttn.forward
        if self.area > 1:
            qkv = qkv.reshape(B * self.area, N // self.area, nh * hd * 3)
            B, N, _ = qkv.shape
        q, k, v = qkv.view(B, N, nh, hd * 3).permute(0, 2, 3, 1).split([hd, hd, hd], dim=2)
        attn = ((q * self.scale).transpose(-2, -1) @ k).softmax(dim=-1)
        x = (v @ attn.transpose(-2, -1)).permute(0, 3, 1, 2)
        v = v.permute(0, 3, 1, 2)
        if self.area > 1:
            x = x.reshape(B // self.area, N * self.area, nh * hd)
            v = v.reshape(B // self.area, N * self.area, nh * hd)
            B, N, _ = x.shape
        x = x.reshape(B, H, W, nh * hd).permute(0, 3, 1, 2).contiguous()
        v = v.reshape(B, H, W, nh * hd).permute(0, 3, 1, 2).contiguous()
        return x, v


@dataclass(frozen=True)
class _AttentionSite:
    """One attention block whose head dims a pruning changes: its convs, full core and floor (key_dim, head_dim)."""

    name: str  # the block's path
    qkv: str  # conv paths (`channels.graph.AttentionInfo`)
    values: str
    full: AttentionConfig
    floor: tuple[int, int]

    def config(self, qkv_out: int, values_out: int) -> AttentionConfig:
        """The core at the channels its convs keep (the qkv conv's outputs, the value conv's outputs)."""
        key_dim, head_dim = _head_dims(self.full.heads, qkv_out, values_out)
        return replace(self.full, key_dim=key_dim, head_dim=head_dim)

    def anchors(self) -> list[AttentionConfig]:
        (k0, d0), k1, d1 = self.floor, self.full.key_dim, self.full.head_dim
        out = []
        for t in ANCHORS:
            cfg = replace(self.full, key_dim=k0 + int(round(t * (k1 - k0))), head_dim=d0 + int(round(t * (d1 - d0))))
            if cfg not in out:
                out.append(cfg)
        return out


def _attention_sites(model: nn.Module, configs: dict[str, LayerConfig], graph, round_to: int, min_channels: int,
                     units=()) -> list[_AttentionSite]:
    """Every attention block of `graph.attention` whose head dims pruning changes, or that a depth plan can remove
    (inside an element of `units`), with its input size from its qkv conv's entry in `configs`."""
    from autoprune.strategies import floor_counts

    modules = dict(model.named_modules())
    full, floors = graph.conv_channels(), graph.conv_channels(floor_counts(graph, round_to=round_to,
                                                                             min_channels=min_channels))
    in_elements = tuple(e + "." for u in units for e in u.elements)
    sites = []
    for path, info in graph.attention.items():
        block, qkv = modules.get(path), configs.get(info.qkv)
        if block is None or qkv is None:
            continue
        op = "area_attention" if type(block).__name__ == "AAttn" else "attention"
        area = max(1, int(round(info.queries / info.keys))) if info.keys else 1
        dims = _head_dims(block.num_heads, full[info.qkv][1], full[info.values][1])
        floor = _head_dims(block.num_heads, floors[info.qkv][1], floors[info.values][1])
        if floor == dims and not path.startswith(in_elements):
            continue  # pruning never changes it: its time is part of `rest_ms`
        sites.append(_AttentionSite(path, info.qkv, info.values,
                                    AttentionConfig(op, qkv.in_hw, block.num_heads, *dims, area), floor))
    return sites


def _head_dims(heads: int, qkv_out: int, values_out: int) -> tuple[int, int]:
    """(key_dim, head_dim) of an attention whose qkv conv writes `qkv_out` channels and value conv `values_out`."""
    return (qkv_out - values_out) // (2 * heads), values_out // heads


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _layer_configs(model: nn.Module, imgsz: int) -> dict[str, LayerConfig]:
    """{conv name: its `LayerConfig` in the unpruned model}, input sizes at `imgsz` (one forward pass records them):
    every nn.Conv2d and nn.ConvTranspose2d (without output padding) the forward pass runs, with the activation of
    the Ultralytics `Conv` or `ConvTranspose` it belongs to."""
    modules = dict(model.named_modules())
    in_hw: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: in_hw.__setitem__(n, tuple(inp[0].shape[-2:])))
             for n, m in modules.items() if isinstance(m, nn.Conv2d)
             or isinstance(m, nn.ConvTranspose2d) and not any(m.output_padding)]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros(1, input_channels(model), imgsz, imgsz, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(training)
    configs = {}
    for name, hw in in_hw.items():
        conv = modules[name]
        parent = modules.get(name.rsplit(".", 1)[0]) if "." in name else None
        owned = parent is not None and conv in (getattr(parent, "conv", None), getattr(parent, "conv_transpose", None))
        act = getattr(parent, "act", None) if owned else None
        act_name = type(act).__name__ if isinstance(act, nn.Module) and hasattr(nn, type(act).__name__) else "Identity"
        op = "conv_transpose" if isinstance(conv, nn.ConvTranspose2d) else "conv"
        configs[name] = LayerConfig(op, hw, conv.in_channels, conv.out_channels, _pair(conv.kernel_size),
                                    _pair(conv.stride), _pair(conv.padding), _pair(conv.dilation), conv.groups,
                                    act_name)
    return configs


def _sites(configs: dict[str, LayerConfig], graph, round_to: int, min_channels: int, units=()) -> list[_Site]:
    """Every conv of `configs` (`_layer_configs`) that `graph` knows and pruning changes. With depth `units`
    (`depth.find_units`), also every conv inside their elements (a depth plan removes it), and a concat reader's
    floor is its input with every element gone."""
    from autoprune.depth import conv_channels, depth_key
    from autoprune.strategies import floor_counts

    floor = floor_counts(graph, round_to=round_to, min_channels=min_channels)
    floors = graph.conv_channels(floor)
    in_elements = tuple(e + "." for u in units for e in u.elements)
    if units:
        emptied = conv_channels(graph, list(units), {**floor, **{depth_key(u.id): 0 for u in units}})
        for u in units:
            if u.reader is not None:
                floors[u.reader] = (emptied[u.reader][0], floors[u.reader][1])
    sites = []
    for name, info in graph.convs.items():
        full = configs.get(name)
        if full is None:  # not a layer the table measures (a classifier's nn.Linear): its time stays in `rest_ms`
            continue
        if floors[name] == (full.cin, full.cout) and not name.startswith(in_elements):
            continue  # pruning never changes it: its time is part of `rest_ms`
        sites.append(_Site(name, full, floors[name], info.depthwise))
    return sites


def swap_layers(cfg: LayerConfig, kind: str) -> list[LayerConfig]:
    """The layers that replace the conv `cfg` (a swap site at a candidate's channels, `autoprune.swap`) swapped to
    `kind`, as `swap.swap_convs` builds them and the runtime runs them (BatchNorm folded):

    - `dws`: the depthwise k x k (`groups = cin`, the site's stride and padding, no activation), then the 1x1 to
      `cout` with the site's activation;
    - `group2/4/8`: the k x k with G groups and the site's activation;
    - `factor`: the k x 1 to `cm = min(cin, cout)` (stride (s, 1), padding (k // 2, 0), no activation), then the
      1 x k on its (out height, in width) output (stride (1, s), padding (0, k // 2)) with the site's activation.

    `[cfg]` for `keep`, and for a group kind the channels do not divide (the conv stays, as `swap_convs` leaves it).

    Example:
        >>> cfg = LayerConfig("conv", (32, 32), 16, 32, (3, 3), (2, 2), (1, 1), (1, 1), 1, "SiLU")
        >>> [(c.kernel, c.groups, c.in_hw) for c in swap_layers(cfg, "factor")]
        [((3, 1), 1, (32, 32)), ((1, 3), 1, (16, 32))]
    """
    from autoprune.swap import GROUPS, KINDS

    (k, _), (s, _) = cfg.kernel, cfg.stride
    one = (1, 1)
    if kind == "dws":
        dw = replace(cfg, cout=cfg.cin, groups=cfg.cin, act="Identity")
        return [dw, LayerConfig(cfg.op, dw.out_hw(), cfg.cin, cfg.cout, one, one, (0, 0), one, 1, cfg.act)]
    if kind in GROUPS:
        g = GROUPS[kind]
        return [cfg] if cfg.cin % g or cfg.cout % g else [replace(cfg, groups=g)]
    if kind == "factor":
        cm = min(cfg.cin, cfg.cout)
        first = LayerConfig(cfg.op, cfg.in_hw, cfg.cin, cm, (k, 1), (s, 1), (k // 2, 0), one, 1, "Identity")
        return [first, LayerConfig(cfg.op, first.out_hw(), cm, cfg.cout, (1, k), (1, s), (0, k // 2), one, 1,
                                   cfg.act)]
    if kind == "keep":
        return [cfg]
    raise ValueError(f"unknown swap kind {kind!r} (kinds: {', '.join(KINDS)})")


def _interpolate(curve: tuple[list[int], list[float]], macs: int) -> float:
    """A curve's latency at `macs`: linear between its anchors, its first below them, its last above."""
    xs, ys = curve
    if macs <= xs[0]:
        return ys[0]
    if macs >= xs[-1]:
        return ys[-1]
    i = _bisect.bisect_right(xs, macs)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (macs - x0) / (x1 - x0) if x1 > x0 else y1


def _round_up(n: int, g: int) -> int:
    return max(g, -(-n // g) * g)


__all__ = ["ANCHORS", "AttentionConfig", "AttentionCore", "LayerConfig", "swap_layers"]
