"""Budgets: fitted genomes stay within the budget, on the grid and within bounds; the bisection finds the boundary;
an impossible budget is one error line that names the smallest reachable cost."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from autoprune.budget import (
    Budget,
    bisect,
    fill,
    fit,
    fit_target,
    gflops_budget,
    largest_uniform,
    repair,
)
from autoprune.channels import analyze
from autoprune.errors import UserError
from autoprune.space import load_space


@functools.lru_cache(maxsize=None)
def space_of(name: str):
    """The named shipped space bound to yolov8n.yaml (fixed weights; only the channel analysis matters here)."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", verbose=False).eval()
    return load_space(name, analyze(model, imgsz=640), model)


def on_grid_within_bounds(space, genome) -> bool:
    return set(genome) == set(space.names) and all(
        space.gene(n).low <= v <= space.gene(n).high and space.gene(n).snap(v) == v for n, v in genome.items()
    )


def latency_like(space):
    """A cost that is not GFLOPs (a weighted sum of the genes, as a per-layer latency table would give): the budget
    functions must work with any cost that grows with the genes."""
    weights = {n: 1.0 + i % 3 for i, n in enumerate(space.names)}
    return lambda genome: sum(weights[n] * v for n, v in genome.items())


@pytest.mark.parametrize("name", ["yolov8", "fine"])
@pytest.mark.parametrize("kind", ["gflops", "latency"])
def test_fitted_genomes_are_within_budget_on_the_grid_and_within_bounds(name, kind):
    space = space_of(name)
    rng = np.random.default_rng(0)
    cost = latency_like(space) if kind == "latency" else functools.partial(space.gflops, imgsz=640)
    lo, hi = cost(space.lows()), cost(space.highs())
    for _ in range(6 if name == "fine" else 15):
        genome = space.random(rng)
        budget = Budget(float(rng.uniform(lo, hi)), cost)
        for fitted in (repair(space, genome, budget), fit(space, genome, budget), largest_uniform(space, budget),
                       fill(space, space.lows(), space.check_genome(genome), budget)):
            assert budget.fits(fitted)
            assert on_grid_within_bounds(space, fitted)
        repaired = repair(space, genome, budget)
        assert all(repaired[n] <= genome[n] for n in genome)  # repair only lowers genes
        if budget.fits(genome):
            assert repaired == genome
            assert all(v >= genome[n] for n, v in fit(space, genome, budget).items())  # fit only raises them then


def test_repair_leaves_no_gene_that_could_still_rise_within_budget():
    space = space_of("yolov8")
    rng = np.random.default_rng(1)
    for _ in range(10):
        genome = space.random(rng)
        budget = gflops_budget(space, float(rng.uniform(space.min_gflops(640), space.gflops(genome, 640))), 640)
        repaired = repair(space, genome, budget)
        for gene in space.genes:
            if repaired[gene.name] < genome[gene.name]:
                up = gene.value(gene.index(repaired[gene.name]) + 1)
                assert not budget.fits({**repaired, gene.name: up}), gene.name


def test_largest_uniform_is_the_largest_uniform_within_budget():
    space = space_of("yolov8")
    budget = gflops_budget(space, 5.0, 640)
    best = largest_uniform(space, budget)
    ratios = space.uniform_ratios()
    fitting = [r for r in ratios if budget.fits(space.uniform(r))]
    assert best == space.uniform(max(fitting))
    assert largest_uniform(space, gflops_budget(space, 0.5 * space.min_gflops(640), 640)) is None


@pytest.mark.parametrize("n", [1, 2, 3, 10, 1000, 2**40])
def test_bisect_finds_the_largest_integer_that_fits(n):
    rng = np.random.default_rng(n % 1000)
    for edge in {0, n - 1, *(int(x) for x in rng.integers(0, n, 5))}:
        probes = []

        def fits(k, edge=edge):
            probes.append(k)
            return k <= edge

        assert bisect(fits, 0, n) == edge
        assert all(0 < k < n for k in probes)  # neither end is evaluated
        assert len(probes) <= math.ceil(math.log2(n)) + 1 if n > 1 else not probes


def test_bisect_over_floats_stops_within_the_tolerance_below_the_edge():
    for edge in (0.1234567, 0.5, 0.999):
        found = bisect(lambda t, edge=edge: t <= edge, 0.0, 1.0, tol=1e-6)
        assert found <= edge < found + 1e-6
        found = bisect(lambda t, edge=edge: t <= edge, 0.0, 1.0, steps=10)
        assert found <= edge < found + 2**-10


def test_an_impossible_budget_is_one_error_naming_the_smallest_reachable_gflops():
    space = space_of("yolov8")
    floor = space.min_gflops(640)
    budget = gflops_budget(space, 0.9 * floor, 640)
    for call in (lambda: repair(space, space.highs(), budget), lambda: fit(space, space.highs(), budget)):
        with pytest.raises(UserError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg
        assert f"{floor:.3f} GFLOPs at 640" in msg and f"budget {0.9 * floor:g} GFLOPs" in msg
    at_floor = gflops_budget(space, floor, 640)
    assert at_floor.fits(repair(space, space.highs(), at_floor))  # the floor itself fits


def test_fit_target_finds_the_largest_result_within_the_limit():
    # a knob that moves in jumps (whole units, like channels in multiples of round_to), priced by another measure
    def make(t):
        if t < 1:
            raise UserError("below the smallest target")
        return int(t)

    def cost(k):
        return 3 * k + 2 + (k % 4) * 0.5  # roughly proportional, not exactly

    full = cost(100)
    for limit in range(6, int(full)):
        for tries in (20, 1):  # tries=1 forces the halving and the final bisection
            k, ok = fit_target(make, cost, limit, full_target=100, full_cost=full, tries=tries)
            assert ok and cost(k) <= limit, (limit, tries)
            if tries == 1:
                assert cost(k + 1) > limit, (limit, k)  # the bisection ends on the largest that fits
    k, ok = fit_target(make, cost, 4.5, full_target=100, full_cost=full)  # even the smallest result (5) is over
    assert not ok and k == 1


def test_fill_rises_to_the_ceiling_and_never_above_it():
    space = space_of("yolov8")
    rng = np.random.default_rng(2)
    for _ in range(5):
        ceiling = space.random(rng)
        assert fill(space, space.lows(), ceiling, Budget(math.inf, latency_like(space))) == ceiling
        tight = gflops_budget(space, float(rng.uniform(space.min_gflops(640), space.gflops(ceiling, 640))), 640)
        filled = fill(space, space.lows(), ceiling, tight)
        assert tight.fits(filled) and all(filled[n] <= ceiling[n] for n in ceiling)
