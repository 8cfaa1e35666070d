"""How many channels each group keeps: the same ratio everywhere (`uniform`) or one score threshold (`global`).

Both strategies take one of two targets:

- a keep share (`keep`): `uniform` keeps that ratio of every group (rounded as `keep_counts` rounds, today's
  behaviour); `global` keeps at most that share of all prunable channels (summed over groups and parts), removing
  the lowest-scored channels of the whole model first;
- a GFLOPs target (`target_gflops`, conv GFLOPs at the graph's image size, `ChannelGraph.conv_gflops`): the largest
  model within it. `uniform` finds the largest uniform ratio whose rounded counts fit; `global` the lowest score
  threshold whose counts fit. Both by bisection: counts only shrink as the ratio falls or the threshold rises, and
  pricing a set of counts takes microseconds.

`global` is network slimming's rule (Liu et al. 2017) generalised to any criterion: a channel is kept when its score
exceeds one threshold shared by all groups. Scores must then be comparable across groups; each criterion in
`autoprune.importance` says how its scores are scaled (mean-normalised per part for the magnitude criteria, raw
gammas for `bn_scale`, LAMP's own normalisation, loss units for `taylor`/`hessian`). A group keeps, per part, the
mean over its parts of the number of channels above the threshold, rounded to the nearest multiple of `round_to`
and never below `min_channels` (the same `rounded_count` as `uniform`), so no group is ever emptied.

A target below what `min_channels` allows (every group at its floor) is a `UserError` that names the minimum.

Example:
    >>> plan = plan_counts(graph, "global", scores=scores, target_gflops=0.5 * graph.conv_gflops())
    >>> plan.gflops <= 0.5 * graph.conv_gflops(), plan.threshold
    (True, 0.83...)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from autoprune.budget import bisect, fit_target
from autoprune.channels import ChannelGraph
from autoprune.errors import UserError
from autoprune.pruner import keep_counts, rounded_count

STRATEGIES = ("uniform", "global")


@dataclass(frozen=True)
class Plan:
    """The kept channel counts a strategy chose, and how.

    Attributes:
        strategy: "uniform" or "global".
        counts: kept channels per part, for every group.
        gflops: conv GFLOPs of the pruned model at the graph's image size.
        keep_share: kept share of all prunable channels (over groups and parts).
        ratio: the uniform ratio (uniform only).
        threshold: the score threshold (global only); channels scoring above it are kept.
        target: what was asked: {"keep": x} or {"gflops": x}.
    """

    strategy: str
    counts: dict[str, int]
    gflops: float
    keep_share: float
    ratio: float | None = None
    threshold: float | None = None
    target: dict = field(default_factory=dict)


def check_strategy(name: str) -> str:
    """`name` if it is a known strategy, else a `UserError` naming the known ones."""
    if name not in STRATEGIES:
        raise UserError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    return name


def floor_counts(graph: ChannelGraph, *, round_to: int = 8, min_channels: int = 8) -> dict[str, int]:
    """Every group at the fewest channels `min_channels` and `round_to` allow: the smallest model either
    strategy can reach."""
    return {g.id: rounded_count(g.size, 0.0, round_to, min_channels) for g in graph.groups}


def keep_share(graph: ChannelGraph, counts: Mapping[str, int]) -> float:
    """Kept share of all prunable channels: sum of kept x parts over sum of size x parts."""
    total = sum(g.size * len(g.parts) for g in graph.groups)
    kept = sum(counts.get(g.id, g.size) * len(g.parts) for g in graph.groups)
    return kept / total if total else 1.0


def _check_round(round_to: int, min_channels: int) -> None:
    if round_to < 1 or min_channels < 1:
        raise UserError(f"round_to and min_channels must be at least 1, got {round_to} and {min_channels}")


def check_gflops_target(graph: ChannelGraph, target: float, *, round_to: int = 8, min_channels: int = 8) -> float:
    """`target` if some pruned model can meet it, else a `UserError` that names the minimum reachable GFLOPs."""
    _check_round(round_to, min_channels)
    full = graph.conv_gflops()
    if not (target > 0) or math.isnan(target) or math.isinf(target):
        raise UserError(f"the GFLOPs target must be a positive number, got {target:g}")
    lowest = graph.conv_gflops(floor_counts(graph, round_to=round_to, min_channels=min_channels))
    if target < lowest:
        raise UserError(
            f"the GFLOPs target {target:.4g} is below the minimum {lowest:.4g} GFLOPs ({100 * lowest / full:.1f}% of "
            f"{full:.4g}) that min_channels={min_channels}, round_to={round_to} allow at imgsz {graph.imgsz}"
        )
    return target


def check_keep_target(graph: ChannelGraph, keep: float, *, round_to: int = 8, min_channels: int = 8) -> float:
    """`keep` if it is a ratio in (0, 1] that a global prune can reach, else a `UserError` naming the minimum share."""
    _check_round(round_to, min_channels)
    if not (0.0 < keep <= 1.0) or math.isnan(keep):
        raise UserError(f"keep ratio must lie in (0, 1], got {keep:g}")
    lowest = keep_share(graph, floor_counts(graph, round_to=round_to, min_channels=min_channels))
    if keep < lowest:
        raise UserError(
            f"a global keep of {keep:g} is below the minimum share {lowest:.4f} of channels that "
            f"min_channels={min_channels}, round_to={round_to} allow"
        )
    return keep


# ---------------------------------------------------------------------------------------------------------------------
# uniform


def uniform_for_gflops(
    graph: ChannelGraph, target: float, *, round_to: int = 8, min_channels: int = 8
) -> tuple[float, dict[str, int]]:
    """The largest uniform keep ratio whose rounded counts fit in `target` conv GFLOPs, and those counts."""
    check_gflops_target(graph, target, round_to=round_to, min_channels=min_channels)
    full = keep_counts(graph, 1.0, round_to=round_to, min_channels=min_channels)
    if graph.conv_gflops(full) <= target:
        return 1.0, full

    def fits(ratio: float) -> bool:
        return graph.conv_gflops(keep_counts(graph, ratio, round_to=round_to, min_channels=min_channels)) <= target

    ratio = bisect(fits, 1e-9, 1.0, tol=1e-7)  # 1e-9 fits (the floors fit, checked above), 1.0 does not
    return ratio, keep_counts(graph, ratio, round_to=round_to, min_channels=min_channels)


# ---------------------------------------------------------------------------------------------------------------------
# global


class _GlobalScores:
    """All channels of all groups in one order, lowest score first; pruning the first k of them is a global threshold.

    Ties (a model straight from a YAML has every gamma at 1) are broken by a fixed seeded shuffle, so tied channels
    leave all groups evenly rather than one group after another.
    """

    def __init__(self, graph: ChannelGraph, scores: Mapping[str, list[torch.Tensor]], round_to: int, min_channels: int):
        missing = [g.id for g in graph.groups if g.id not in scores]
        if missing:
            raise ValueError(f"no scores for group {missing[0]!r}")
        self.graph, self.round_to, self.min_channels = graph, round_to, min_channels
        flat, owner = [], []
        for i, g in enumerate(graph.groups):
            s = torch.cat([t.detach().double().cpu().flatten() for t in scores[g.id]])
            if s.numel() != g.size * len(g.parts):
                raise ValueError(f"group {g.id!r} needs {len(g.parts)} x {g.size} scores, got {s.numel()}")
            if torch.isnan(s).any():
                raise ValueError(f"group {g.id!r} has NaN scores")
            flat.append(s)
            owner.append(torch.full((s.numel(),), i, dtype=torch.long))
        flat, owner = torch.cat(flat), torch.cat(owner)
        shuffle = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))
        order = shuffle[flat[shuffle].argsort(stable=True)]  # by score, ties in the shuffled order
        self.scores_in_order = flat[order]
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel())
        self.ranks = {g.id: rank[owner == i].sort().values for i, g in enumerate(graph.groups)}
        self.total = flat.numel()

    def counts(self, pruned: int) -> dict[str, int]:
        """Counts after removing the `pruned` lowest channels of the global order (each group rounded, floored)."""
        out = {}
        k = torch.tensor([pruned])
        for g in self.graph.groups:
            r = self.ranks[g.id]
            above = r.numel() - int(torch.searchsorted(r, k))  # ranks >= pruned survive
            out[g.id] = rounded_count(g.size, above / len(g.parts) / g.size, self.round_to, self.min_channels)
        return out

    def threshold(self, pruned: int) -> float:
        """The score threshold of `pruned`: the highest score removed (-inf when none is)."""
        return -math.inf if pruned == 0 else float(self.scores_in_order[pruned - 1])

    def smallest_fitting(self, fits) -> tuple[float, dict[str, int]]:
        """The fewest channels to remove (lowest first) for the counts to satisfy `fits`, as (threshold, counts);
        removing all of them leaves every group at its floor, which fits when the floors do."""
        if fits(self.counts(0)):
            return self.threshold(0), self.counts(0)
        # the most channels whose removal still does not fit, between 0 (does not) and all of them (fits)
        pruned = bisect(lambda k: not fits(self.counts(k)), 0, self.total) + 1
        return self.threshold(pruned), self.counts(pruned)


def global_counts(
    graph: ChannelGraph,
    scores: Mapping[str, list[torch.Tensor]],
    threshold: float,
    *,
    round_to: int = 8,
    min_channels: int = 8,
) -> dict[str, int]:
    """Counts that keep, in every group, the channels scoring above `threshold` (mean over parts, rounded, floored)."""
    _check_round(round_to, min_channels)
    gs = _GlobalScores(graph, scores, round_to, min_channels)
    pruned = int(torch.searchsorted(gs.scores_in_order, torch.tensor([float(threshold)], dtype=torch.double),
                                    right=True))
    return gs.counts(pruned)


def global_for_gflops(
    graph: ChannelGraph,
    scores: Mapping[str, list[torch.Tensor]],
    target: float,
    *,
    round_to: int = 8,
    min_channels: int = 8,
) -> tuple[float, dict[str, int]]:
    """The lowest global threshold whose counts fit in `target` conv GFLOPs, and those counts."""
    check_gflops_target(graph, target, round_to=round_to, min_channels=min_channels)
    gs = _GlobalScores(graph, scores, round_to, min_channels)
    return gs.smallest_fitting(lambda c: graph.conv_gflops(c) <= target)


def global_for_keep(
    graph: ChannelGraph,
    scores: Mapping[str, list[torch.Tensor]],
    keep: float,
    *,
    round_to: int = 8,
    min_channels: int = 8,
) -> tuple[float, dict[str, int]]:
    """The lowest global threshold that keeps at most `keep` of all prunable channels, and its counts."""
    check_keep_target(graph, keep, round_to=round_to, min_channels=min_channels)
    gs = _GlobalScores(graph, scores, round_to, min_channels)
    return gs.smallest_fitting(lambda c: keep_share(graph, c) <= keep + 1e-12)


def channel_gflops(graph: ChannelGraph, step: int = 8) -> dict[str, float]:
    """Conv GFLOPs (at the graph's image size) one channel of each group costs: what removing `step` channels of
    that group alone, every other group at full width, saves, divided by `step`."""
    full = {g.id: g.size for g in graph.groups}
    total = graph.conv_gflops(full)
    out = {}
    for g in graph.groups:
        k = min(step, g.size)
        out[g.id] = (total - graph.conv_gflops({**full, g.id: g.size - k})) / k
    return out


def per_flop_scores(graph: ChannelGraph, scores: Mapping[str, list[torch.Tensor]], exponent: float = 1.0) -> dict:
    """Each group's scores divided by (`channel_gflops` of the group) ** `exponent`.

    One global threshold over them keeps the channels with the most importance per FLOP, a knapsack-style
    allocation (HALP, Shen et al. 2022, does the same with latency): a channel of a stride-32 layer costs 1/16 of
    one of a stride-8 layer of the same width, and keeps its place at a sixteenth of the importance. Non-negative
    scores (every criterion's) keep their order within a group.
    """
    cost = channel_gflops(graph)
    return {gid: [t / max(cost[gid], 1e-12) ** exponent for t in per] for gid, per in scores.items()}


# ---------------------------------------------------------------------------------------------------------------------
# one entry point


def plan_counts(
    graph: ChannelGraph,
    strategy: str = "uniform",
    *,
    keep: float | Mapping[str, float] | None = None,
    target_gflops: float | None = None,
    scores: Mapping[str, list[torch.Tensor]] | None = None,
    round_to: int = 8,
    min_channels: int = 8,
) -> Plan:
    """Kept counts per group by `strategy` for one target: `keep` (a ratio; for uniform also {group id: ratio}) or
    `target_gflops` (conv GFLOPs at `graph.imgsz`). `global` needs `scores` (`pruner.channel_scores`).

    Example:
        >>> plan_counts(graph, "uniform", target_gflops=0.5 * graph.conv_gflops()).ratio
        0.53...
    """
    check_strategy(strategy)
    if (keep is None) == (target_gflops is None):
        raise UserError("give exactly one target: a keep ratio or a GFLOPs target")
    if strategy == "global" and scores is None:
        raise ValueError("the global strategy needs scores (autoprune.pruner.channel_scores)")
    ratio = threshold = None
    if target_gflops is not None:
        target = {"gflops": float(target_gflops)}
        if strategy == "uniform":
            ratio, counts = uniform_for_gflops(graph, target_gflops, round_to=round_to, min_channels=min_channels)
        else:
            threshold, counts = global_for_gflops(graph, scores, target_gflops, round_to=round_to,
                                                  min_channels=min_channels)
    elif strategy == "uniform":
        target = {"keep": keep if not isinstance(keep, Mapping) else dict(keep)}
        counts = keep_counts(graph, keep, round_to=round_to, min_channels=min_channels)
        ratio = float(keep) if not isinstance(keep, Mapping) else None
    else:
        if isinstance(keep, Mapping):
            raise UserError("the global strategy takes one keep share, not per-group ratios")
        target = {"keep": float(keep)}
        threshold, counts = global_for_keep(graph, scores, float(keep), round_to=round_to, min_channels=min_channels)
    return Plan(strategy=strategy, counts=counts, gflops=graph.conv_gflops(counts),
                keep_share=keep_share(graph, counts), ratio=ratio, threshold=threshold, target=target)


def plan_within(
    graph: ChannelGraph,
    strategy: str,
    budget: float,
    cost: Callable[[dict[str, int]], float],
    *,
    full_cost: float,
    scores: Mapping[str, list[torch.Tensor]] | None = None,
    round_to: int = 8,
    min_channels: int = 8,
    tries: int = 20,
) -> tuple[Plan, bool]:
    """The largest plan of `strategy` whose `cost(counts)` is at most `budget`, and whether one was found.

    A search's budget counts the pruned model's full GFLOPs (fvcore: norms, the Detect's DFL and the other layers
    pruning does not touch as well as the convs), which no conv target states exactly. The conv target starts at
    `budget`'s share of the conv GFLOPs (`full_cost`: the unpruned model's cost) and comes down by what the cost is
    over until the plan fits, then is bisected (`autoprune.budget.fit_target`). False, with the last plan tried, when
    every group's floor is over the budget.

    Example:
        >>> plan, fits = plan_within(graph, "global", 4.0, lambda c: count_gflops(prune_to_counts(m, c), 640),
        ...                          full_cost=count_gflops(m, 640), scores=scores)
    """

    def at(t: float) -> Plan:
        return plan_counts(graph, strategy, target_gflops=t, scores=scores, round_to=round_to,
                           min_channels=min_channels)

    return fit_target(at, lambda plan: cost(plan.counts), budget, full_target=graph.conv_gflops(),
                      full_cost=full_cost, tries=tries)


__all__ = [
    "Plan",
    "STRATEGIES",
    "check_gflops_target",
    "check_keep_target",
    "channel_gflops",
    "check_strategy",
    "floor_counts",
    "global_counts",
    "global_for_gflops",
    "global_for_keep",
    "keep_share",
    "per_flop_scores",
    "plan_counts",
    "plan_within",
    "uniform_for_gflops",
]
