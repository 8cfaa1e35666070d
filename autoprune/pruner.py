"""Structural pruning: a keep ratio per channel group in, a physically smaller model of stock classes out.

The pruned model is made of the same Ultralytics modules as the original (`Conv`, `C2f`, `Detect`, ...) with smaller
`nn.Conv2d`, `nn.ConvTranspose2d` and `nn.BatchNorm2d` inside, so it saves as a normal Ultralytics checkpoint and
loads without autoprune. A transposed conv's weight is (in, out, kh, kw): its input channels are sliced on the first
dimension, its output channels on the second.

A removed channel is not zero: after BN and activation it emits the constant `act(beta)` (exactly so when its BN
gamma is 0). That constant is folded into every consumer, into the BN running mean that follows it (or its bias), so
pruning channels whose gamma is 0 leaves the output unchanged: exactly for 1x1 consumers, and up to the zero-padded
border for larger kernels. A transposed conv turns a constant input into a pattern that repeats every stride (the
kernel, tiled), which no bias can hold: its mean is folded, and the output is unchanged only where the removed
channels' kernels are flat.
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from copy import deepcopy

import torch
from torch import nn

from autoprune.channels import ChannelGraph, ChannelGroup, analyze
from autoprune.errors import UserError
from autoprune.wrappers import detection_model
from autoprune.importance import ScoringContext, get_criterion

Keep = float | Mapping[str, float]


def resolve_keep(graph: ChannelGraph, keep: Keep) -> dict[str, float]:
    """Turn `keep` (one ratio, or {group id: ratio}) into a ratio for every group; unknown ids are a UserError."""
    if isinstance(keep, Mapping):
        unknown = [k for k in keep if k not in set(graph.ids)]
        if unknown:
            hint = difflib.get_close_matches(unknown[0], graph.ids, n=1)
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise UserError(f"unknown channel group {unknown[0]!r}{more}; `autoprune groups` lists them")
        ratios = {gid: float(keep.get(gid, 1.0)) for gid in graph.ids}
    else:
        ratios = {gid: float(keep) for gid in graph.ids}
    for gid, r in ratios.items():
        if not (0.0 < r <= 1.0) or math.isnan(r):
            where = "" if not isinstance(keep, Mapping) else f" for group {gid!r}"
            raise UserError(f"keep ratio must lie in (0, 1], got {r:g}{where}")
    return ratios


def rounded_count(size: int, ratio: float, round_to: int = 8, min_channels: int = 8) -> int:
    """Channels to keep of `size` at `ratio`: the nearest multiple of `round_to`, never below `min_channels`.

    The floor is the smallest multiple of `round_to` that is at least `min_channels`; a group smaller than that is
    kept whole. A ratio of 1 keeps everything, even when `size` is not a multiple of `round_to`.

    Example:
        >>> rounded_count(64, 0.5), rounded_count(64, 0.3), rounded_count(16, 0.1), rounded_count(24, 1.0)
        (32, 16, 8, 24)
    """
    if ratio >= 1.0:
        return size
    floor = min(size, math.ceil(min_channels / round_to) * round_to)
    n = math.floor(ratio * size / round_to + 0.5) * round_to
    return max(floor, min(size, n))


def keep_counts(graph: ChannelGraph, keep: Keep, *, round_to: int = 8, min_channels: int = 8) -> dict[str, int]:
    """Kept channels per part for every group: `{group id: count}`."""
    if round_to < 1 or min_channels < 1:
        raise UserError(f"round_to and min_channels must be at least 1, got {round_to} and {min_channels}")
    ratios = resolve_keep(graph, keep)
    return {g.id: rounded_count(g.size, ratios[g.id], round_to, min_channels) for g in graph.groups}


def prune(
    model: nn.Module,
    keep: Keep,
    *,
    criterion: str = "l1",
    round_to: int = 8,
    min_channels: int = 8,
    graph: ChannelGraph | None = None,
    ctx: ScoringContext | None = None,
) -> nn.Module:
    """Return a pruned copy of `model` keeping `keep` of every channel group (or `keep[group id]` per group).

    `model` is never modified. `criterion` names an importance from `autoprune.importance.CRITERIA`. Pass the
    `graph` from `analyze(model)` when pruning the same model many times.

    Example:
        >>> from ultralytics.nn.tasks import DetectionModel
        >>> small = prune(DetectionModel("yolov8n.yaml", verbose=False), 0.5)
        >>> small.model[0].conv.out_channels
        8
    """
    model = detection_model(model)
    graph = graph or analyze(model)
    counts = keep_counts(graph, keep, round_to=round_to, min_channels=min_channels)
    return prune_to_counts(model, counts, criterion=criterion, graph=graph, ctx=ctx)


def rank_channels(
    model: nn.Module,
    graph: ChannelGraph,
    criterion: str = "l1",
    ctx: ScoringContext | None = None,
    *,
    batches: Iterable[dict] | None = None,
    kpt_oks_sigmas: Sequence[float] | None = None,
) -> dict[str, list[torch.Tensor]]:
    """For every group, its channels per part from most to least important by `criterion`.

    Scores depend only on the unpruned model, so a search ranks once and every candidate only slices.
    A data criterion (`taylor`, `hessian`) needs gradients: pass calibration `batches` (the collated dicts of
    `ProxyEvaluator.calibration_batches()`), or a `ctx` already filled by `accumulate_gradients`; a pose dataset's
    `kpt_oks_sigmas` weight the keypoint loss.
    """
    fn = get_criterion(criterion)
    ctx = score_context(model, graph, criterion, ctx, batches=batches, kpt_oks_sigmas=kpt_oks_sigmas)
    return {g.id: [s.argsort(descending=True, stable=True) for s in fn(ctx, g)] for g in graph.groups}


def score_context(
    model: nn.Module,
    graph: ChannelGraph,
    criterion: str = "l1",
    ctx: ScoringContext | None = None,
    *,
    batches: Iterable[dict] | None = None,
    seed: int | None = None,
    device: torch.device | str | None = None,
    kpt_oks_sigmas: Sequence[float] | None = None,
) -> ScoringContext:
    """The `ScoringContext` a criterion scores `model` with: `ctx` if given, else a fresh one.

    For a data criterion without gradients in the context, they are accumulated from `batches` (a `UserError`
    saying to pass data when there are none), on `device` (default: the model's), a pose model's keypoint loss
    weighted by the data's `kpt_oks_sigmas` when given. `seed` sets `extra["seed"]` (the `random` criterion's seed).
    """
    from autoprune.importance import DATA_CRITERIA, accumulate_gradients

    get_criterion(criterion)
    ctx = ctx or ScoringContext.for_model(detection_model(model), graph)
    if seed is not None:
        ctx.extra["seed"] = int(seed)
    if criterion in DATA_CRITERIA and not ctx.grads:
        if batches is None:
            raise UserError(
                f"criterion {criterion!r} needs calibration data for the gradients of the detection loss: pass "
                "--data (a detection data YAML), or batches= in Python"
            )
        accumulate_gradients(model, batches, ctx, device=device, kpt_oks_sigmas=kpt_oks_sigmas)
    return ctx


def channel_scores(
    model: nn.Module, graph: ChannelGraph, criterion: str = "l1", ctx: ScoringContext | None = None, **kw
) -> dict[str, list[torch.Tensor]]:
    """Every group's scores per part by `criterion` (what `rank_channels` sorts; the `global` strategy thresholds
    them). Keywords as `score_context`."""
    fn = get_criterion(criterion)
    ctx = score_context(model, graph, criterion, ctx, **kw)
    return {g.id: [s.float().cpu() for s in fn(ctx, g)] for g in graph.groups}


def select_indices(
    graph: ChannelGraph, counts: Mapping[str, int], ranking: Mapping[str, list[torch.Tensor]]
) -> dict[str, list[torch.Tensor]]:
    """The kept channel indices (sorted) per part of every group pruned by `counts`, from a `rank_channels` ranking.

    What `prune_to_counts` keeps; with it, `apply_indices(model, graph, indices)` gives the same model, and the
    indices are at hand for `conv_masks` and `autoprune.reconstruct`.
    """
    indices = {}
    for gid, n in counts.items():
        g = graph.group(gid)
        if not 1 <= n <= g.size:
            raise UserError(f"group {gid!r} has {g.size} channels per part; cannot keep {n}")
        if n == g.size:
            continue
        indices[gid] = [torch.sort(o[:n]).values for o in ranking[gid]]
    return indices


def _removed_channels(graph: ChannelGraph, indices: Mapping[str, list[torch.Tensor]]):
    """Yield `(part, removed channel indices)` for every part of every listed group that loses channels."""
    for gid, per_part in indices.items():
        group = graph.group(gid)
        if len(per_part) != len(group.parts) or len({len(k) for k in per_part}) != 1:
            raise ValueError(f"group {gid!r} needs one index list per part, all of one length")
        for pi, kept in zip(group.parts, per_part):
            part = graph.parts[pi]
            removed = torch.ones(part.size, dtype=torch.bool)
            removed[kept] = False
            rm = removed.nonzero().flatten()
            if rm.numel():
                yield part, rm


def conv_masks(
    graph: ChannelGraph, indices: Mapping[str, list[torch.Tensor]]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For every conv that `apply_indices(model, graph, indices)` slices: (kept output mask, kept input mask).

    Masks are boolean over the unpruned conv's channels (a depthwise conv's input mask is its output mask), so
    `original_output[:, out_mask]` lines up with the pruned conv's output channels.
    """
    out_keep: dict[str, torch.Tensor] = {}
    in_keep: dict[str, torch.Tensor] = {}
    for part, rm in _removed_channels(graph, indices):
        for prod in part.producers:
            p = graph.producers[prod]
            info = graph.convs[p.conv]
            out_keep.setdefault(p.conv, torch.ones(info.out_channels, dtype=torch.bool))[p.offset + rm] = False
        for c in part.consumers:
            info = graph.convs[c.conv]
            in_keep.setdefault(c.conv, torch.ones(info.in_channels, dtype=torch.bool))[c.offset + rm] = False
    result = {}
    for path in set(out_keep) | set(in_keep):
        info = graph.convs[path]
        om = out_keep.get(path, torch.ones(info.out_channels, dtype=torch.bool))
        im = om if info.depthwise else in_keep.get(path, torch.ones(info.in_channels, dtype=torch.bool))
        result[path] = (om, im)
    return result


def prune_to_counts(
    model: nn.Module,
    counts: Mapping[str, int],
    *,
    criterion: str = "l1",
    graph: ChannelGraph | None = None,
    ctx: ScoringContext | None = None,
    ranking: Mapping[str, list[torch.Tensor]] | None = None,
) -> nn.Module:
    """Return a pruned copy of `model` keeping exactly `counts[group id]` channels per part (others whole).

    This is what replays a search trial: the kept counts are stored with it, so rounding rules cannot drift.
    `ranking` (from `rank_channels`) skips scoring when the same model is pruned many times.
    """
    model = detection_model(model)
    graph = graph or analyze(model)
    if ranking is None:
        get_criterion(criterion)
    indices = {}
    for gid, n in counts.items():
        g = graph.group(gid)
        if not 1 <= n <= g.size:
            raise UserError(f"group {gid!r} has {g.size} channels per part; cannot keep {n}")
        if n == g.size:
            continue
        if ranking is None:
            ctx = ctx or ScoringContext.for_model(model, graph)
            order = [s.argsort(descending=True, stable=True) for s in get_criterion(criterion)(ctx, g)]
        else:
            order = ranking[gid]
        indices[gid] = [torch.sort(o[:n]).values for o in order]
    return apply_indices(model, graph, indices)


def apply_indices(model: nn.Module, graph: ChannelGraph, indices: Mapping[str, list[torch.Tensor]]) -> nn.Module:
    """Return a copy of `model` keeping, for each listed group, the given channel indices of each of its parts."""
    new = deepcopy(detection_model(model))
    modules = dict(new.named_modules(remove_duplicate=False))  # activations are shared
    constants: dict[int, torch.Tensor] = {}
    delta: dict[str, torch.Tensor] = {}
    for part, rm in _removed_channels(graph, indices):  # what removed inputs contributed, from the original weights
        for c in part.consumers:
            const = sum(_constant(graph, modules, constants, s)[rm] for s in c.sources)
            if isinstance(const, torch.Tensor) and const.abs().max() > 0:
                w = _constant_response(modules[c.conv], c.offset + rm)
                delta[c.conv] = delta[c.conv] + w @ const if c.conv in delta else w @ const

    masks = conv_masks(graph, indices)
    bn_of = {p.conv: p.bn for p in graph.producers}
    for path in set(masks) | set(delta):
        conv = modules[path]
        bn = modules[bn_of[path]] if bn_of.get(path) else None
        if path in delta:
            _fold(conv, bn, delta[path])
        if path not in masks:
            continue
        om, im = masks[path]
        if graph.convs[path].depthwise:
            _slice_depthwise(conv, om)
        else:
            _slice_conv(conv, om, im)
        if bn is not None and not bool(om.all()):
            _slice_bn(bn, om)

    _fix_split_sizes(modules, masks)
    _slice_scales(graph, modules, masks)
    _fix_block_attributes(new)
    return new


def _scale_param(modules: dict[str, nn.Module], path: str) -> nn.Parameter:
    """The parameter at dotted `path` (`model.8.gamma`): its owner module's attribute."""
    owner, _, name = path.rpartition(".")
    return getattr(modules[owner], name)


def _slice_scales(graph: ChannelGraph, modules: dict[str, nn.Module], masks) -> None:
    """A producer's per-channel output scale (A2C2f's gamma) keeps the channels its conv keeps."""
    for p in graph.producers:
        if p.scale is None or p.conv not in masks or bool(masks[p.conv][0].all()):
            continue
        owner, _, name = p.scale.rpartition(".")
        gamma = getattr(modules[owner], name)
        setattr(modules[owner], name, _param(gamma.detach()[masks[p.conv][0].to(gamma.device)], gamma))


def _fix_split_sizes(modules: dict[str, nn.Module], masks: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """A CBLinear splits its conv's output by the sizes it stores (`c2s`): each piece keeps what the conv's output
    mask keeps of it."""
    from ultralytics.nn.modules.block import CBLinear

    for path, m in modules.items():
        if isinstance(m, CBLinear) and f"{path}.conv" in masks:
            out = masks[f"{path}.conv"][0]
            ends = list(itertools.accumulate(m.c2s))
            m.c2s = [int(out[end - c : end].sum()) for c, end in zip(m.c2s, ends)]


def _constant(graph, modules, cache, prod_index: int) -> torch.Tensor:
    """The value a removed channel of producer `prod_index` emits when its BN gamma is 0: `act(beta)`, per channel
    (`act(beta + the summed branches' betas)` for a producer with `summed` branches)."""
    if prod_index not in cache:
        p = graph.producers[prod_index]
        conv = modules[p.conv]
        if p.bn is not None:
            beta = modules[p.bn].bias.detach().float()
        elif conv.bias is not None:
            beta = conv.bias.detach().float()
        else:
            beta = torch.zeros(conv.out_channels)
        for other in p.summed:  # parallel branches added before the activation (RepConv): their betas add
            beta = beta + modules[other].bias.detach().float()
        act = modules[p.act] if p.act is not None else nn.Identity()
        with torch.no_grad():
            value = act(beta.view(1, -1, 1, 1)).flatten()
            if p.scale is not None:  # A2C2f's gamma multiplies the activation's output
                value = value * _scale_param(modules, p.scale).detach().float()
        size = next(pt.size for pt in graph.parts if prod_index in pt.producers)
        cache[prod_index] = value[p.offset : p.offset + size]
    return cache[prod_index]


def _constant_response(layer: nn.Module, cols: torch.Tensor) -> torch.Tensor:
    """(out, len(cols)): what a constant 1 on input channels `cols` adds to each output channel of `layer`.

    A conv's kernel sum (exact away from the zero-padded border); a linear layer's (Classify's) weight columns; for a
    transposed conv, the mean of the pattern the constant makes (its kernel tiled every stride): the kernel's sum over
    the stride's area, the pattern's exact mean when kernel == stride without padding, as Ultralytics' upsampling is.
    """
    w = layer.weight.detach().float()
    if isinstance(layer, nn.ConvTranspose2d):  # weight (in, out, kh, kw)
        sh, sw = layer.stride
        return w[cols].sum((2, 3)).T / (sh * sw)
    w = w[:, cols]
    return w.sum((2, 3)) if w.dim() == 4 else w


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, delta: torch.Tensor) -> None:
    """The removed inputs contributed `delta` to each output: move it into the BN mean, or into the bias."""
    with torch.no_grad():
        if bn is not None:
            bn.running_mean.sub_(delta.to(bn.running_mean.dtype))
        elif conv.bias is not None:
            conv.bias.add_(delta.to(conv.bias.dtype))
        else:
            w = conv.weight
            conv.bias = nn.Parameter(delta.to(w.dtype).to(w.device), requires_grad=w.requires_grad)


def _param(t: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    """A new parameter from `t`, which boolean-mask indexing already made a fresh, contiguous tensor."""
    return nn.Parameter(t.contiguous(), requires_grad=like.requires_grad)


def _slice_conv(conv: nn.Conv2d | nn.ConvTranspose2d | nn.Linear, out_mask: torch.Tensor,
                in_mask: torch.Tensor) -> None:
    if getattr(conv, "groups", 1) != 1:
        raise AssertionError(f"grouped conv {conv} reached the dense slicer")
    if isinstance(conv, nn.ConvTranspose2d):  # weight (in, out, kh, kw)
        w = conv.weight.data[in_mask][:, out_mask]
    else:
        w = conv.weight.data[out_mask][:, in_mask]
    conv.weight = _param(w, conv.weight)
    if conv.bias is not None:
        conv.bias = _param(conv.bias.data[out_mask], conv.bias)
    if isinstance(conv, nn.Linear):  # Classify's classifier: its inputs are the pooled conv channels
        conv.out_features, conv.in_features = int(out_mask.sum()), int(in_mask.sum())
    else:
        conv.out_channels, conv.in_channels = int(out_mask.sum()), int(in_mask.sum())


def _slice_depthwise(conv: nn.Conv2d, keep: torch.Tensor) -> None:
    conv.weight = _param(conv.weight.data[keep], conv.weight)
    if conv.bias is not None:
        conv.bias = _param(conv.bias.data[keep], conv.bias)
    n = int(keep.sum())
    conv.in_channels = conv.out_channels = conv.groups = n


def _slice_bn(bn: nn.BatchNorm2d, keep: torch.Tensor) -> None:
    if bn.weight is not None:
        bn.weight = _param(bn.weight.data[keep], bn.weight)
        bn.bias = _param(bn.bias.data[keep], bn.bias)
    if bn.running_mean is not None:
        bn.running_mean = bn.running_mean[keep]
        bn.running_var = bn.running_var[keep]
    bn.num_features = int(keep.sum())


def _fix_block_attributes(model: nn.Module) -> None:
    """Blocks that remember a channel count in an attribute read it in forward: bring it in line with the convs."""
    from ultralytics.nn.modules import block, conv

    for m in model.modules():
        if isinstance(m, (block.C2f, block.C2, block.C2PSA, block.PSA, block.RepNCSPELAN4)) and hasattr(m, "cv1"):
            out = m.cv1.conv.out_channels
            if out % 2:
                raise AssertionError(f"{type(m).__name__}.cv1 lost its equal halves ({out} channels)")
            m.c = out // 2
        elif isinstance(m, block.ADown):
            m.c = m.cv1.conv.out_channels
        elif isinstance(m, block.SPPELAN):
            m.c = m.cv1.conv.out_channels
        elif isinstance(m, conv.RepConv) and hasattr(m, "conv1"):
            m.c1, m.c2 = m.conv1.conv.in_channels, m.conv1.conv.out_channels
        elif isinstance(m, block.RepVGGDW):
            m.dim = m.conv.conv.out_channels
        elif isinstance(m, block.AAttn):
            _fix_area_attention(m)
        elif isinstance(m, block.Attention):
            _fix_attention(m)
    layers = getattr(model, "model", None)
    if isinstance(layers, nn.Sequential):
        for m in layers:
            if hasattr(m, "np"):
                m.np = sum(p.numel() for p in m.parameters())


def _fix_area_attention(m: nn.Module) -> None:
    """An AAttn whose head dim was pruned: set `head_dim`, and scale the queries by `sqrt(new / old)` so that the
    `head_dim ** -0.5` its forward applies gives the logits of the unpruned block (qkv has no activation, so
    scaling its BatchNorm's weight and bias scales the queries)."""
    all_head_dim = m.qkv.conv.out_channels // 3
    head_dim = all_head_dim // m.num_heads
    if head_dim == m.head_dim:
        return
    factor = math.sqrt(head_dim / m.head_dim)
    rows = torch.cat([torch.arange(h * 3 * head_dim, h * 3 * head_dim + head_dim) for h in range(m.num_heads)])
    with torch.no_grad():
        m.qkv.bn.weight[rows] *= factor
        m.qkv.bn.bias[rows] *= factor
    m.head_dim, m.all_head_dim = head_dim, all_head_dim


def _fix_attention(m: nn.Module) -> None:
    """An Attention (PSABlock's, PSA's) whose head dims were pruned: set `head_dim` and `key_dim` from its convs, and
    `scale` to `key_dim ** -0.5` as a fresh block has it, with the queries scaled so that the logits stay those of
    the unpruned block (`q * scale` in forward; CoreML export's scaled_dot_product_attention applies `key_dim ** -0.5`
    itself). qkv has no activation, so scaling its BatchNorm's weight and bias scales the queries."""
    nh = m.num_heads
    head_dim = m.pe.conv.out_channels // nh
    key_dim = (m.qkv.conv.out_channels // nh - head_dim) // 2
    if key_dim != m.key_dim:
        scale = key_dim**-0.5
        factor = m.scale / scale
        per_head = 2 * key_dim + head_dim
        rows = torch.cat([torch.arange(h * per_head, h * per_head + key_dim) for h in range(nh)])
        with torch.no_grad():
            m.qkv.bn.weight[rows] *= factor
            m.qkv.bn.bias[rows] *= factor
        m.scale = scale
    m.head_dim, m.key_dim = head_dim, key_dim


def group_summary(graph: ChannelGraph, counts: Mapping[str, int]) -> list[dict]:
    """Per group: id, channels before and after (per part), for reports."""
    return [{"id": g.id, "size": g.size, "kept": int(counts.get(g.id, g.size)), "parts": len(g.parts)} for g in graph.groups]


__all__ = [
    "ChannelGroup",
    "apply_indices",
    "channel_scores",
    "conv_masks",
    "group_summary",
    "keep_counts",
    "prune",
    "prune_to_counts",
    "rank_channels",
    "resolve_keep",
    "rounded_count",
    "score_context",
    "select_indices",
]
