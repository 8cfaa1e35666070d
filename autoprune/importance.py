"""Channel importance criteria: a registry by name; each one scores the channels of a whole coupled group.

An importance is one call, `criterion(ctx, group) -> [scores per part]`: a tensor of `group.size` scores for each part
of the group, higher meaning more important. Which channels survive is then the top-k of each part.

Scores combine every member of a group: the output rows of its producers and the input columns of its consumers.
Members differ in scale (a 3x3 conv with 256 inputs has larger norms than a 1x1 conv with 16), so each member's
scores are divided by their mean before members are averaged.

Example:
    >>> from autoprune.importance import CRITERIA
    >>> sorted(CRITERIA)[:3]
    ['bn_scale', 'l1', 'l2']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from autoprune.channels import ChannelGraph, ChannelGroup
from autoprune.errors import UserError


@dataclass
class ScoringContext:
    """What a criterion may look at: the model's modules by path, the graph, and optional per-parameter data.

    `grads` maps a parameter's path (`model.2.cv1.conv.weight`) to the gradient accumulated on calibration batches,
    for data-driven criteria; `extra` holds whatever else such a criterion precomputes.
    """

    modules: dict[str, nn.Module]
    graph: ChannelGraph
    grads: dict[str, torch.Tensor] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @classmethod
    def for_model(cls, model: nn.Module, graph: ChannelGraph) -> ScoringContext:
        return cls(modules=dict(model.named_modules(remove_duplicate=False)), graph=graph)

    def members(self, part_index: int):
        """Yield `(kind, module path, weights)` for every member of a part, channel dimension first.

        kind is "out" (a producer's output rows, depthwise included), "in" (a consumer's input columns) or "bn"
        (a producer's BatchNorm gamma). "in" weights are a transposed view: reduce them with `channel_norms`,
        which does not copy.
        """
        part = self.graph.parts[part_index]
        n = part.size
        for pi in part.producers:
            p = self.graph.producers[pi]
            conv = self.modules[p.conv]
            yield "out", p.conv, conv.weight.detach()[p.offset : p.offset + n]
            if p.bn is not None:
                yield "bn", p.bn, self.modules[p.bn].weight.detach()[p.offset : p.offset + n]
        for c in part.consumers:
            conv = self.modules[c.conv]
            yield "in", c.conv, conv.weight.detach()[:, c.offset : c.offset + n].transpose(0, 1)


def channel_norms(w: torch.Tensor, p: int) -> torch.Tensor:
    """The p-norm of each slice `w[k]` (channel dimension first), without copying a transposed view."""
    dims = tuple(range(1, w.dim()))
    if p == 1:
        return w.abs().sum(dims)
    return w.pow(2).sum(dims).sqrt() if p == 2 else w.abs().pow(p).sum(dims).pow(1 / p)


Criterion = Callable[[ScoringContext, ChannelGroup], list[torch.Tensor]]
CRITERIA: dict[str, Criterion] = {}
DATA_CRITERIA: set[str] = set()  # criteria that need gradients from calibration batches


def register(name: str, *, needs_data: bool = False):
    """Register an importance criterion under `name` (a decorator)."""

    def deco(fn: Criterion) -> Criterion:
        CRITERIA[name] = fn
        if needs_data:
            DATA_CRITERIA.add(name)
        return fn

    return deco


def get_criterion(name: str) -> Criterion:
    """The criterion registered as `name`; a `UserError` naming the known ones otherwise."""
    try:
        return CRITERIA[name]
    except KeyError:
        raise UserError(f"unknown criterion {name!r}; choose one of: {', '.join(sorted(CRITERIA))}") from None


def _normalized_mean(vectors: list[torch.Tensor]) -> torch.Tensor:
    """Average member score vectors after scaling each to mean 1 (members with all-zero scores are skipped)."""
    acc, count = None, 0
    for v in vectors:
        v = v.float()
        m = v.mean()
        if m <= 0:
            continue
        acc = v / m if acc is None else acc + v / m
        count += 1
    if acc is None:
        return torch.zeros_like(vectors[0], dtype=torch.float32) if vectors else torch.zeros(0)
    return acc / count


def _norm_criterion(p: int) -> Criterion:
    def criterion(ctx: ScoringContext, group: ChannelGroup) -> list[torch.Tensor]:
        out = []
        for pi in group.parts:
            vecs = [channel_norms(w, p) for kind, _, w in ctx.members(pi) if kind in ("out", "in")]
            out.append(_normalized_mean(vecs))
        return out

    return criterion


register("l1")(_norm_criterion(1))
register("l2")(_norm_criterion(2))


@register("bn_scale")
def bn_scale(ctx: ScoringContext, group: ChannelGroup) -> list[torch.Tensor]:
    """Network slimming: |gamma| of the producers' BatchNorms, summed over the producers of a coupled part."""
    out = []
    for pi in group.parts:
        gammas = [w.abs().float() for kind, _, w in ctx.members(pi) if kind == "bn"]
        out.append(torch.stack(gammas).sum(0) if gammas else CRITERIA["l1"](ctx, group)[group.parts.index(pi)])
    return out


def score_groups(
    model: nn.Module, graph: ChannelGraph, groups: list[ChannelGroup], criterion: str = "l1", ctx=None
) -> dict[str, list[torch.Tensor]]:
    """Scores for each part of each group in `groups` with the named criterion: `{group id: [scores per part]}`."""
    fn = get_criterion(criterion)
    ctx = ctx or ScoringContext.for_model(model, graph)
    return {g.id: fn(ctx, g) for g in groups}
