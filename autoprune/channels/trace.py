"""Find the channel groups of an Ultralytics model: the walk over its layers (`analyze`) and the graph it builds.

`analyze(model)` walks `model.model` the way `DetectionModel._predict_once` does, but instead of tensors it passes
symbolic tensors (`autoprune.channels.symbolic`), lists of channel segments. Each block goes to the rule registered
for it, which says how channels flow through it (which convs read and write them, where they are split, concatenated
and added); the rules for Ultralytics' own blocks are in `autoprune.channels.blocks`. A block without a rule is a
fixed boundary: its input and output channels are kept and nothing inside it is touched.

A rule is chosen by the block's `forward` function, not only its class: a subclass that keeps its parent's
`forward` (`C3k2` of `C2f`, `C3k` of `C3`, `DWConv` of `Conv`) has the same channel flow, and its children are traced
by their own rules. Custom blocks join through `register_handler`.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from autoprune.channels import blocks, blocks_extra, heads, psa
from autoprune.channels.graph import ChannelGraph, ChannelGroup, ConvInfo, block_of
from autoprune.channels.symbolic import Segment, Tracer, install_builtin_handlers, register_handler
from autoprune.wrappers import detection_model

__all__ = ["analyze", "register_handler"]


_CONVS = (nn.Conv2d, nn.ConvTranspose2d)  # the layers `ChannelGraph.convs` prices, besides the consumed linear ones


def builtin_handlers() -> list:
    """(class, rule) for every Ultralytics and torch block the analysis knows. A rule serves the instances of its
    class that keep the class's forward, first match first: the task heads come before Detect (Pose and OBB keep
    its forward), the extra blocks after the common ones (RepCSP and RepBottleneck keep C3's and Bottleneck's)."""
    return [*heads.handlers(), *blocks.handlers(), *psa.handlers(), *blocks_extra.handlers()]


def _record(model: nn.Module, imgsz: int) -> tuple[dict[str, tuple[int, ...]], dict[str, ConvInfo]]:
    """One real forward pass: output shape of every module, and every conv's (and transposed conv's) cost at `imgsz`.

    It runs on the model itself (a copy would cost more than the pass) in eval mode without gradients, and puts back
    what the pass touches: the training flag and the anchors a Detect head caches for the last input shape. Convs
    that only training runs (Pose26's keypoint sigmas, Proto26's semantic branch) are recorded by a second pass in
    training mode with every BatchNorm kept in eval mode, so no running statistic moves.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    convs: dict[str, ConvInfo] = {}
    hooks = []
    second_pass = False

    def hook(name, module):
        def fn(_, inp, out):
            if second_pass and name in shapes:
                return
            if isinstance(out, torch.Tensor):
                shapes[name] = tuple(out.shape)
                if isinstance(module, _CONVS):
                    k = module.kernel_size[0] * module.kernel_size[1]
                    transposed = isinstance(module, nn.ConvTranspose2d)
                    convs[name] = ConvInfo(
                        in_channels=module.in_channels,
                        out_channels=module.out_channels,
                        groups=module.groups,
                        kernel=k,
                        out_pixels=int(out.shape[-1] * out.shape[-2]),
                        bias=module.bias is not None,
                        transposed=transposed,
                        in_pixels=int(inp[0].shape[-1] * inp[0].shape[-2]) if transposed else 0,
                    )
                elif isinstance(module, nn.Linear):  # Classify's: a 1x1 conv on one position
                    convs[name] = ConvInfo(
                        in_channels=module.in_features,
                        out_channels=module.out_features,
                        groups=1,
                        kernel=1,
                        out_pixels=int(out.numel() // (out.shape[0] * out.shape[-1])),
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
            if any(isinstance(m, _CONVS) and n not in convs for n, m in model.named_modules()):
                second_pass = True
                model.train()
                for m in model.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
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
    install_builtin_handlers(builtin_handlers())
    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential):
        raise TypeError(f"expected an Ultralytics model with a .model Sequential, got {type(model).__name__}")

    stride = int(max(getattr(model, "stride", torch.tensor([32.0])).max().item(), 32))
    probe = max(2 * stride, 64)
    shapes, convs_small = _record(model, probe)
    scale = (imgsz / probe) ** 2
    modules = dict(model.named_modules())
    convs = {  # a linear layer reads pooled features: its positions do not grow with the image
        name: replace(c, out_pixels=round(c.out_pixels * scale), in_pixels=round(c.in_pixels * scale))
        if isinstance(modules[name], _CONVS) else c
        for name, c in convs_small.items()
    }
    tr = Tracer(shapes, modules)

    ch = model.yaml.get("channels", 3) if isinstance(getattr(model, "yaml", None), dict) else 3
    x = [Segment(tr.new_part(ch, fixed_by="image input"), ch, ())]
    outputs = []
    for i, m in enumerate(layers):
        f = getattr(m, "f", -1)
        if f != -1:
            x = outputs[f] if isinstance(f, int) else [x if j == -1 else outputs[j] for j in f]
        x = tr(f"model.{i}", m, x)
        outputs.append(x)

    consumed = {c.conv for part in tr.parts for c in part.consumers}
    convs = {name: c for name, c in convs.items() if isinstance(modules[name], _CONVS) or name in consumed}
    attention = {  # queries x keys: the product grows with the square of the area
        path: replace(a, queries=round(a.queries * scale), keys=round(a.keys * scale))
        for path, a in tr.attention.items()
    }
    return _build_graph(tr, convs, imgsz, attention)


def _build_graph(tr: Tracer, convs: dict[str, ConvInfo], imgsz: int, attention: dict) -> ChannelGraph:
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

    named: list[tuple[int, ChannelGroup]] = []  # (the producer that names it, the group)
    for members in clusters.values():
        ps = [tr.parts[r] for r in members]
        if any(p.fixed for p in ps) or any(p.size != ps[0].size for p in ps) or not all(p.producers for p in ps):
            for p in ps:
                if not p.fixed:
                    p.fixed, p.fixed_by = True, p.fixed_by or "tied to a fixed part"
            continue
        every = [i for p in ps for i in p.producers]
        first = min((i for i in every if i not in tr.side), default=min(every))  # the stream's own producer
        members = sorted(members, key=lambda r: min(tr.parts[r].producers))
        producer_paths = []
        for p in ps:
            producer_paths += [tr.producers[i].block for i in p.producers]
        consumer_paths = sorted({block_of(c.conv) for p in ps for c in p.consumers})
        name = tr.producers[first].block
        gid = name[len("model."):] if name.startswith("model.") else name
        named.append((first, ChannelGroup(
            id=gid,
            size=ps[0].size,
            parts=tuple(index[r] for r in members),
            layer=int(gid.split(".")[0]) if gid.split(".")[0].isdigit() else -1,
            producers=tuple(dict.fromkeys(producer_paths)),
            consumers=tuple(consumer_paths),
        )))
    named.sort(key=lambda t: t[0])
    for i, (first, g) in enumerate(named):  # a later group named after the same conv: by its offset there
        if any(h.id == g.id for _, h in named[:i]):
            named[i] = (first, replace(g, id=f"{g.id}@{tr.producers[first].offset}"))
    groups = [g for _, g in named]
    ids = [g.id for g in groups]
    if len(set(ids)) != len(ids):
        raise AssertionError(f"duplicate group ids: {sorted(i for i in ids if ids.count(i) > 1)}")
    return ChannelGraph(
        producers=tr.producers, parts=parts, groups=groups, convs=convs, fixed_blocks=tr.fixed_blocks, imgsz=imgsz,
        fixed_why=tr.fixed_why, attention=attention,
    )
