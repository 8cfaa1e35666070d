"""From a plan to a model: kept channel counts and a channel ranking (and calibration batches) -> the candidate.

Every command that makes a pruned model goes through here, so a search's trial, `autoprune proxy --genome`,
`autoprune prune` and `autoprune apply --trial N` build the same model from the same plan:

1. rank: every group's channels from most to least important by a criterion (`rank`), once per model;
2. build: keep the first `count` of each part, prune physically, and with calibration batches refit the convs that
   lost inputs by least squares (`build`);
3. replay: a stored trial's counts and the study's ranking give back exactly the model the trial scored (`replay`),
   checked against the GFLOPs the trial recorded.

Kept counts may also hold a depth plan, `{"depth:<unit id>": kept elements}` (`autoprune.depth`): build prunes the
widths first, then removes the elements the plan drops from the width-pruned model (the unit's order from the
ranking's entry under the same key, else the first elements stay), so replay rebuilds the same model.
They may also hold a swap plan, `{"swap:<conv id>": kind code}` (`autoprune.swap`): after widths and depth, each
named k x k Conv becomes the cheaper operator, fitted to the pruned conv (by least squares on the calibration
batches when build has them, else on the weights), so the architecture is replayed exactly.

A ranking travels through a study as plain lists (`ranking_as_lists`) and comes back checked against the model
(`ranking_from_lists`).

Example:
    >>> from autoprune.candidate import build, rank
    >>> ranking = rank(model, graph, "l1")
    >>> candidate = build(model, {"2": 16, "4.cv1": 32}, graph=graph, ranking=ranking)
    >>> candidate.model  # a new, physically smaller model; `model` is unchanged
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from autoprune.channels import ChannelGraph
from autoprune.errors import UserError

Ranking = Mapping[str, list[torch.Tensor]]  # group id -> per part, channel indices from most to least important


@dataclass
class Candidate:
    """A built candidate: the pruned model, the kept channel indices per part of each pruned group, and, when it
    was refit, the `reconstruct.Reconstruction` (per-layer errors before and after)."""

    model: nn.Module
    indices: dict[str, list[torch.Tensor]]
    reconstruction: object | None = None


def rank(model: nn.Module, graph: ChannelGraph, criterion: str, *, batches: Iterable[dict] | None = None,
         ctx=None, kpt_oks_sigmas=None) -> dict[str, list[torch.Tensor]]:
    """Every group's channels per part, most important first, by `criterion` (`pruner.rank_channels`); a data
    criterion reads calibration `batches` (`batches.calibration_batches`) or a filled `ctx`, a pose model's keypoint
    loss weighted by the data's `kpt_oks_sigmas` when given."""
    from autoprune.pruner import rank_channels

    return rank_channels(model, graph, criterion, ctx, batches=batches, kpt_oks_sigmas=kpt_oks_sigmas)


def order_of(scores: Mapping[str, list[torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
    """The ranking that sorts `scores` (`pruner.channel_scores`) from most to least important, ties by index."""
    return {gid: [s.argsort(descending=True, stable=True) for s in per] for gid, per in scores.items()}


def ranking_as_lists(ranking: Ranking) -> dict[str, list[list[int]]]:
    """A ranking as plain lists, as a study stores it."""
    return {gid: list(orders) if gid.startswith("depth:") else [o.tolist() for o in orders]
            for gid, orders in ranking.items()}


def ranking_from_lists(stored: Mapping, graph: ChannelGraph, counts: Mapping[str, int] | None = None) -> dict:
    """A stored ranking as tensors. With `counts`, every group they prune must have one permutation per part of
    this model (a `UserError` otherwise: the study was made with another model)."""
    depth_orders = {k: list(v) for k, v in stored.items() if k.startswith("depth:")}
    if counts is None:
        return {**{gid: [torch.tensor(o, dtype=torch.long) for o in orders] for gid, orders in stored.items()
                   if not gid.startswith("depth:")}, **depth_orders}
    out = dict(depth_orders)
    for gid, n in counts.items():
        if gid.startswith(("depth:", "swap:")):
            continue
        g = graph.group(gid)
        orders = stored.get(gid)
        if n == g.size:
            continue
        if not isinstance(orders, list) or len(orders) != len(g.parts) or any(
                sorted(o) != list(range(g.size)) for o in orders):
            raise UserError(f"the study's stored channel ranking does not fit group {gid!r} of this model "
                            f"({len(g.parts)} part(s) of {g.size} channels)")
        out[gid] = [torch.tensor(o, dtype=torch.long) for o in orders]
    return out


def build(model: nn.Module, counts: Mapping[str, int], *, graph: ChannelGraph, ranking: Ranking,
          batches: Iterable[dict] | None = None, swap_batches: Iterable[dict] | None = None, seed: int = 0,
          ridge: float = 1e-3, max_samples: int = 8192) -> Candidate:
    """The candidate keeping `counts[group id]` channels per part, the first of each part in `ranking`.

    With calibration `batches`, the convs that lost inputs are refit by least squares on them
    (`reconstruct.reconstruct`, sampling positions with `seed`): the architecture is the same, the weights of those
    convs and their BatchNorms differ. The swaps of `counts` are fitted on `batches`, or without them on
    `swap_batches` (the swaps alone; nothing else is refit), or on the weights alone when neither is given.
    `model` is never changed; the fits run on `model`'s device.
    """
    from autoprune.depth import apply_depth, split_counts
    from autoprune.pruner import apply_indices, select_indices
    from autoprune.swap import split_counts as split_swaps
    from autoprune.swap import swap_convs

    counts, swaps = split_swaps(counts)
    counts, depth = split_counts(counts)
    indices = select_indices(graph, counts, ranking)
    pruned = apply_indices(model, graph, indices)
    if batches is None:
        pruned = apply_depth(pruned, depth, ranking, inplace=True)
        if swaps:
            fit_on = list(swap_batches) if swap_batches is not None else None
            pruned = swap_convs(pruned, swaps, fit_on, inplace=True, max_samples=max_samples, seed=seed)[0]
        return Candidate(pruned, indices)
    from autoprune.reconstruct import reconstruct

    batches = list(batches)
    fit = reconstruct(model, pruned, graph, indices, batches, ridge=ridge, max_samples=max_samples, seed=seed)
    pruned = apply_depth(fit.model, depth, ranking, inplace=True)
    if swaps:
        pruned = swap_convs(pruned, swaps, batches, inplace=True, max_samples=max_samples, seed=seed)[0]
    return Candidate(pruned, indices, fit)


def replay(model: nn.Module, counts: Mapping[str, int], *, criterion: str, imgsz: int, expected_gflops: float,
           ranking: Mapping | None = None, batches: Iterable[dict] | None = None,
           swap_batches: Iterable[dict] | None = None, seed: int = 0,
           what: str = "the trial") -> tuple[nn.Module, dict[str, int], float]:
    """(pruned model, kept counts, GFLOPs at `imgsz`) of a stored plan: `counts` and the study's stored `ranking`
    (plain lists) give back the model a trial scored; with `batches`, refit as a `--reconstruct` search did; with
    `swap_batches`, its swaps fitted as a search without --reconstruct fitted them (`build`).

    Without a stored ranking the order is recomputed with `criterion` (a data criterion cannot be: its calibration
    batches are not stored). Raises `UserError` when the counts or the ranking do not fit the model, and
    `RuntimeError` when the rebuilt model's GFLOPs differ from `expected_gflops`: the counts fully determine the
    architecture, so a mismatch is a bug.
    """
    from autoprune.channels import analyze
    from autoprune.cost import count_gflops
    from autoprune.importance import DATA_CRITERIA, get_criterion

    from autoprune.depth import check_plan, find_units, split_counts

    counts = {str(k): int(v) for k, v in counts.items()}
    get_criterion(criterion)
    from autoprune.swap import check_plan as check_swaps
    from autoprune.swap import find_sites
    from autoprune.swap import split_counts as split_swaps

    check_swaps(find_sites(model), split_swaps(counts)[1], what=what)
    check_plan(find_units(model), split_counts(split_swaps(counts)[0])[1], ranking, what=what)
    if ranking is None and criterion in DATA_CRITERIA:  # its order depends on calibration batches
        raise UserError(f"{what} ranked channels by the data criterion {criterion!r} and the study stores no channel "
                        "ranking (made by an older autoprune); apply cannot replay it")
    graph = analyze(model, imgsz=imgsz)
    unknown = sorted(set(split_counts(split_swaps(counts)[0])[0]) - set(graph.ids))
    if unknown:
        raise UserError(f"{what} keeps channels of groups this model does not have ({unknown[0]!r}, "
                        f"{len(unknown)} in all); it was made with another model")
    order = rank(model, graph, criterion) if ranking is None else ranking_from_lists(ranking, graph, counts)
    pruned = build(model, counts, graph=graph, ranking=order, batches=batches, swap_batches=swap_batches,
                   seed=seed).model
    gflops = count_gflops(pruned, imgsz)
    if not math.isclose(gflops, expected_gflops, rel_tol=1e-9, abs_tol=1e-12):
        raise RuntimeError(f"rebuilt {what} has {gflops!r} GFLOPs at {imgsz}, the trial {expected_gflops!r}")
    return pruned, counts, gflops


__all__ = ["Candidate", "Ranking", "build", "order_of", "rank", "ranking_as_lists", "ranking_from_lists", "replay"]
