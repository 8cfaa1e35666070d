"""Strategies: uniform (one ratio) and global (one score threshold), for a keep share or a GFLOPs target."""

from __future__ import annotations

import pytest
import torch
from conftest import SYNTH_C3K2, build_synthetic, randomize_bn

from autoprune.channels import analyze
from autoprune.errors import UserError
from autoprune.pruner import channel_scores, keep_counts, prune_to_counts
from autoprune.strategies import (
    channel_gflops,
    check_strategy,
    floor_counts,
    global_counts,
    global_for_gflops,
    keep_share,
    per_flop_scores,
    plan_counts,
    plan_within,
    uniform_for_gflops,
)


@pytest.fixture(scope="module")
def v8():
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", verbose=False).eval()
    randomize_bn(model)
    graph = analyze(model, imgsz=640)
    return model, graph


def test_uniform_for_gflops_is_the_largest_ratio_within_the_target(v8):
    _, graph = v8
    full = graph.conv_gflops()
    for share in (0.3, 0.5, 0.8):
        ratio, counts = uniform_for_gflops(graph, share * full)
        assert counts == keep_counts(graph, ratio)
        assert graph.conv_gflops(counts) <= share * full
        assert graph.conv_gflops(keep_counts(graph, min(1.0, ratio + 1e-6))) > share * full  # the next step does not fit
    assert uniform_for_gflops(graph, 2 * full) == (1.0, keep_counts(graph, 1.0))


@pytest.mark.parametrize("criterion", ["l1", "bn_scale", "lamp", "random"])
def test_global_meets_a_gflops_target_and_never_empties_a_group(v8, criterion):
    model, graph = v8
    scores = channel_scores(model, graph, criterion)
    full = graph.conv_gflops()
    floors = floor_counts(graph)
    for share in (0.2, 0.5):
        threshold, counts = global_for_gflops(graph, scores, share * full)
        assert graph.conv_gflops(counts) <= share * full
        assert graph.conv_gflops(counts) >= 0.9 * share * full  # close to the target, not far below
        assert all(counts[g.id] >= floors[g.id] >= 8 for g in graph.groups if g.size >= 8)
        assert all(counts[g.id] % 8 == 0 or counts[g.id] == g.size for g in graph.groups)


def test_global_removes_the_lowest_scores_first_across_groups(v8):
    """A group whose scores are all below every other group's loses channels first, down to its floor only."""
    model, graph = v8
    scores = {gid: [s.clone() for s in parts] for gid, parts in channel_scores(model, graph, "l1").items()}
    victim = next(g for g in graph.groups if g.size >= 64)
    scores[victim.id] = [torch.full((victim.size,), 1e-6) + torch.arange(victim.size) * 1e-9 for _ in victim.parts]
    counts = global_counts(graph, scores, threshold=1e-3)
    assert counts[victim.id] == 8  # emptied down to min_channels, never below
    assert all(counts[g.id] == g.size for g in graph.groups if g.id != victim.id)  # nothing else is below 1e-3
    _, counts = global_for_gflops(graph, scores, 0.99 * graph.conv_gflops())
    assert counts[victim.id] < victim.size and sum(counts[g.id] < g.size for g in graph.groups) == 1


def test_global_with_tied_scores_spreads_evenly(v8):
    """A model fresh from its YAML has every gamma at 1: bn_scale ties everywhere; global then acts like uniform
    instead of emptying groups one after another."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", verbose=False).eval()
    graph = analyze(model)
    plan = plan_counts(graph, "global", keep=0.5, scores=channel_scores(model, graph, "bn_scale"))
    big = [g for g in graph.groups if g.size >= 64]
    assert all(0.25 <= plan.counts[g.id] / g.size <= 0.8 for g in big)  # floors would be 8 / 64 and less


def test_per_flop_scores_keep_the_cheapest_importance_first(v8):
    _, graph = v8
    cost = channel_gflops(graph)
    full = {g.id: g.size for g in graph.groups}
    for g in graph.groups[:6]:  # one channel's cost, measured the other way round: what adding it back costs
        fewer = {**full, g.id: g.size - 1}
        assert cost[g.id] == pytest.approx(graph.conv_gflops(full) - graph.conv_gflops(fewer), rel=0.05)
    ones = {g.id: [torch.ones(g.size) for _ in g.parts] for g in graph.groups}
    scaled = per_flop_scores(graph, ones)
    assert all(torch.allclose(t, torch.full_like(t, 1 / cost[gid])) for gid, per in scaled.items() for t in per)
    # every channel equally important: one threshold keeps the groups whose channels cost least, floors the dearest
    plan = plan_counts(graph, "global", target_gflops=0.5 * graph.conv_gflops(), scores=scaled)
    cheap, dear = min(graph.groups, key=lambda g: cost[g.id]), max(graph.groups, key=lambda g: cost[g.id])
    assert plan.counts[cheap.id] == cheap.size and plan.counts[dear.id] == 8
    assert plan.gflops <= 0.5 * graph.conv_gflops()


def test_global_keep_share(v8):
    model, graph = v8
    plan = plan_counts(graph, "global", keep=0.5, scores=channel_scores(model, graph, "l2"))
    assert 0.45 <= plan.keep_share <= 0.5 == plan.target["keep"]
    assert keep_share(graph, plan.counts) == plan.keep_share
    uni = plan_counts(graph, "uniform", keep=0.5)
    assert uni.counts == keep_counts(graph, 0.5) and uni.ratio == 0.5


def test_targets_below_the_floor_are_user_errors_naming_the_minimum(v8):
    model, graph = v8
    scores = channel_scores(model, graph, "l1")
    lowest = graph.conv_gflops(floor_counts(graph))
    for strategy in ("uniform", "global"):
        with pytest.raises(UserError, match=f"below the minimum {lowest:.4g} GFLOPs"):
            plan_counts(graph, strategy, target_gflops=0.9 * lowest, scores=scores)
        plan = plan_counts(graph, strategy, target_gflops=lowest, scores=scores)  # exactly the floor is reachable
        assert plan.gflops <= lowest
    with pytest.raises(UserError, match="below the minimum share"):
        plan_counts(graph, "global", keep=0.01, scores=scores)
    with pytest.raises(UserError, match="unknown strategy 'glob'; choose one of: uniform, global"):
        check_strategy("glob")
    with pytest.raises(UserError, match="exactly one target"):
        plan_counts(graph, "uniform", keep=0.5, target_gflops=1.0)
    with pytest.raises(UserError, match="one keep share"):
        plan_counts(graph, "global", keep={"0": 0.5}, scores=scores)


def test_planned_counts_prune_to_the_priced_gflops():
    model = build_synthetic(SYNTH_C3K2)
    randomize_bn(model)
    graph = analyze(model, imgsz=64)
    for strategy in ("uniform", "global"):
        plan = plan_counts(graph, strategy, target_gflops=0.6 * graph.conv_gflops(),
                           scores=channel_scores(model, graph, "lamp"))
        pruned = prune_to_counts(model, plan.counts, graph=graph, criterion="lamp")
        assert analyze(pruned, imgsz=64).conv_gflops() == pytest.approx(plan.gflops, rel=1e-9)
        assert plan.gflops <= 0.6 * graph.conv_gflops()


@pytest.mark.parametrize("strategy", ["uniform", "global"])
def test_plan_within_is_the_largest_plan_whose_own_cost_fits(v8, strategy):
    # a cost the conv count does not state: the convs plus what the unpruned model spends elsewhere (norms, DFL)
    model, graph = v8
    scores = channel_scores(model, graph, "l1") if strategy == "global" else None
    conv = graph.conv_gflops()
    full = 1.25 * conv

    def cost(counts):
        return graph.conv_gflops(counts) + 0.25 * conv

    budget = 0.5 * full
    plan, fits = plan_within(graph, strategy, budget, cost, full_cost=full, scores=scores)
    assert fits and cost(plan.counts) <= budget
    assert plan.gflops < 0.5 * conv  # the overhead came off the conv target
    t = plan.gflops
    while (bigger := plan_counts(graph, strategy, target_gflops=t, scores=scores)).counts == plan.counts:
        t += 0.002 * conv
    assert cost(bigger.counts) > budget  # the next larger plan of the strategy would not fit

    # where the proportional steps stall (here: after one, which is over), bisection finds the same plan
    assert cost(plan_counts(graph, strategy, target_gflops=0.5 * conv, scores=scores).counts) > budget
    bisected, fits = plan_within(graph, strategy, budget, cost, full_cost=full, scores=scores, tries=1)
    assert fits and bisected.counts == plan.counts

    floor = cost(floor_counts(graph))  # every group at its floor, plus the overhead
    plan, fits = plan_within(graph, strategy, 0.9 * floor, cost, full_cost=full, scores=scores)
    assert not fits and cost(plan.counts) > 0.9 * floor  # the floors stopped it: the last plan tried, flagged
    with pytest.raises(UserError, match="GFLOPs"):
        plan_within(graph, strategy, 0.01 * full, cost, full_cost=full, scores=scores)  # no plan at all
