"""Budgets: fitting a genome, or whatever a target knob makes, within a cost limit, by one bisection.

A `Budget` is a limit and the cost it bounds: any callable `genome -> number` that never falls when a gene rises.
`gflops_budget` prices a genome with the space's GFLOPs prediction (`SearchSpace.gflops`); a latency predictor plugs
in the same way (`Budget(limit=4.0, cost=predict_ms, unit="ms")`). Every function here works for any such cost:

- `largest_uniform`: the largest genome with every gene at one ratio that fits (a search's trial 0);
- `repair`: a genome that is over the budget moved down into it, close to where it was (`fill` gives back what
  rounding left over);
- `fit`: a genome brought to the budget from either side (`repair` when over, moved toward the highs when under);
- `fit_target`: the result of the largest target a knob can be set to within the budget, for knobs whose results
  are priced differently from the knob itself (a conv-GFLOPs target of a pruning plan, priced in full GFLOPs);
- `bisect`: the one bisection all of them and `autoprune.strategies` use.

Genomes are `{gene name: keep ratio}` on the space's grid; the space is any object with `genes` (each with `low`,
`high`, `value`, `index`, `snap_down`), `check_genome`, `snap`, `lows`, `highs`, `uniform` and `uniform_ratios`, as
`autoprune.space.SearchSpace` has. This module imports nothing of the space, so the space can delegate to it.

Example:
    >>> b = gflops_budget(space, 5.0, 640, base_gflops=base)  # doctest: +SKIP
    >>> b.fits(repair(space, space.highs(), b))  # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from autoprune.errors import UserError

_TOL = 1e-9  # float slack when comparing grid values (the same as `autoprune.space.gene.GRID_TOL`)

Genome = Mapping[str, float]


@dataclass(frozen=True)
class Budget:
    """A limit on what a genome costs: a genome fits when `cost(genome) <= limit`.

    Attributes:
        limit: the most a genome may cost.
        cost: genome -> cost; it must never fall when a gene rises (GFLOPs, a latency prediction).
        unit: the cost's unit, for messages ("GFLOPs", "ms").
        where: how the cost is measured, for messages ("at 640").

    Example:
        >>> Budget(5.0, lambda g: 10 * sum(g.values())).fits({"a": 0.25, "b": 0.25})
        True
    """

    limit: float
    cost: Callable[[Genome], float]
    unit: str = "GFLOPs"
    where: str = ""

    def fits(self, genome: Genome) -> bool:
        """Whether `genome` costs at most the limit."""
        return self.cost(genome) <= self.limit


def gflops_budget(space, limit: float, imgsz: int, *, base_gflops: float | None = None) -> Budget:
    """A budget of `limit` GFLOPs at `imgsz`, priced by `space.gflops` (conv GFLOPs, or the predicted full count
    given the unpruned model's `base_gflops`; see `autoprune.space`).

    Example:
        >>> gflops_budget(space, 5.0, 640).fits(space.lows())  # doctest: +SKIP
        True
    """

    def cost(genome: Genome) -> float:
        return space.gflops(genome, imgsz, base_gflops=base_gflops)

    return Budget(float(limit), cost, "GFLOPs", f"at {imgsz}")


def bisect(fits: Callable[[Any], bool], lo, hi, *, tol: float = 0.0, steps: int = 60):
    """The last point found where `fits` holds, between `lo` (where it holds) and `hi` (where it does not).

    `fits` must hold up to some point and fail beyond it; neither end is evaluated. With `lo` and `hi` both ints the
    search is over the integers between them and exact: the largest `k` with `fits(k)`. Otherwise the interval is
    halved `steps` times, or until it is narrower than `tol`.

    Example:
        >>> bisect(lambda k: k * k <= 50, 0, 100)
        7
        >>> round(bisect(lambda x: x * x <= 2.0, 1.0, 2.0, tol=1e-9), 6)
        1.414214
    """
    if isinstance(lo, int) and isinstance(hi, int):
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        if hi - lo < tol:
            break
    return lo


def largest_uniform(space, budget: Budget) -> dict[str, float] | None:
    """The largest uniform genome (`space.uniform(r)`, `r` over `space.uniform_ratios()`) within `budget`, or None
    when even the smallest one is over it.

    Example:
        >>> budget.fits(largest_uniform(space, budget))  # doctest: +SKIP
        True
    """
    ratios = space.uniform_ratios()
    if not ratios:
        return {}

    def fits(i: int) -> bool:
        return budget.fits(space.uniform(ratios[i]))

    if not fits(0):
        return None
    if fits(len(ratios) - 1):
        return space.uniform(ratios[-1])
    return space.uniform(ratios[bisect(fits, 0, len(ratios) - 1)])


def check_reachable(space, budget: Budget) -> float:
    """The cost of the space's smallest genome (every gene at its low); a `UserError` naming it when it is over the
    budget, since then no genome of the space fits."""
    floor = budget.cost(space.lows())
    if floor > budget.limit:
        where = f" {budget.where}" if budget.where else ""
        raise UserError(
            f"budget {budget.limit:g} {budget.unit} is below the smallest model of search space {space.name!r} "
            f"({floor:.3f} {budget.unit}{where} with every gene at its low); raise the budget or lower the lows"
        )
    return floor


def repair(space, genome: Genome, budget: Budget) -> dict[str, float]:
    """A genome within `budget` close to `genome`: `genome` itself (snapped) when it is within budget.

    Otherwise every gene is moved toward its low by one common factor `t` (`low + t * (value - low)`), snapped down
    to its grid, with the largest `t` in [0, 1] that meets the budget (`bisect`, 20 halvings; the cost only grows
    with `t`). The budget left over by the snapping is then given back by `fill`. No gene ends above its value in
    `genome`, and the result is deterministic. `UserError` when the budget is below the space's smallest genome.
    Depth genes (`_held`) keep their values while the other genes at their lows meet the budget.

    Example:
        >>> budget.fits(repair(space, space.highs(), budget))  # doctest: +SKIP
        True
    """
    genome = space.check_genome(genome)
    if budget.fits(genome):
        return genome
    check_reachable(space, budget)

    held = _held(space)

    def at(t: float, hold: frozenset = held) -> dict[str, float]:
        return {g.name: genome[g.name] if g.name in hold else g.snap_down(g.low + t * (genome[g.name] - g.low))
                for g in space.genes}

    if not (held and budget.fits(at(0.0))):  # the widths alone cannot get there: every gene comes down
        held = frozenset()
    t = bisect(lambda t: budget.fits(at(t, held)), 0.0, 1.0, tol=1e-6)
    return fill(space, at(t, held), genome, budget)


def _held(space) -> frozenset:
    """Names of the depth and swap genes (`kind` depth or swap): a few whole numbers each, so one common factor would
    snap them to their low or high at once; `repair` and `fit` move the widths and keep the proposed depth and
    swaps where they can."""
    return frozenset(g.name for g in space.genes if getattr(g, "kind", "width") in ("depth", "swap"))


def fill(space, current: Genome, ceiling: Genome, budget: Budget) -> dict[str, float]:
    """`current` with genes raised one grid step at a time toward their values in `ceiling` while the budget holds:
    in each round the genes furthest below their ceiling first, until no gene can rise.

    Example:
        >>> filled = fill(space, space.lows(), space.highs(), budget)  # doctest: +SKIP
        >>> budget.fits(filled) and all(filled[n] <= 1.0 for n in filled)  # doctest: +SKIP
        True
    """
    current = dict(current)
    changed = True
    while changed:
        changed = False
        order = sorted(
            (g for g in space.genes if current[g.name] < ceiling[g.name] - _TOL),
            key=lambda g: -(ceiling[g.name] - current[g.name]),
        )
        for g in order:
            trial = {**current, g.name: g.value(g.index(current[g.name]) + 1)}
            if trial[g.name] > ceiling[g.name] + _TOL:
                continue
            if budget.fits(trial):
                current, changed = trial, True
    return current


def fit(space, genome: Genome, budget: Budget) -> dict[str, float]:
    """`genome` brought close to the budget: `repair`ed down when it is over, else every gene moved toward its
    high by one common factor `t` (`value + t * (high - value)`, snapped), with the largest `t` in [0, 1] that
    fits (`bisect`, 20 halvings). A search fills up a candidate that is far under its budget with it. Depth genes
    (`_held`) keep their values when it fills up.

    Example:
        >>> budget.fits(fit(space, space.lows(), budget))  # doctest: +SKIP
        True
    """
    genome = space.snap(genome)
    if not budget.fits(genome):
        return repair(space, genome, budget)
    highs = space.highs()

    held = _held(space)

    def at(t: float) -> dict[str, float]:
        return space.snap({k: v if k in held else v + t * (highs[k] - v) for k, v in genome.items()})

    if budget.fits(at(1.0)):
        return at(1.0)
    return at(bisect(lambda t: budget.fits(at(t)), 0.0, 1.0, steps=20))


def fit_target(make: Callable[[float], Any], cost: Callable[[Any], float], limit: float, *, full_target: float,
               full_cost: float, tries: int = 20) -> tuple[Any, bool]:
    """`make(target)` for about the largest `target` whose result costs at most `limit`, and True; or the last
    result tried and False when no target gets within (`make` raises `UserError` below the smallest target it can
    meet).

    For a knob that is priced by another measure than its own: a plan made for a conv-GFLOPs target, priced in the
    full GFLOPs of the pruned model (norms and layers pruning cannot touch included). `full_target` and `full_cost`
    are the knob and the cost of the unpruned model. The target starts at `limit`'s share of `full_target` and
    comes down by what the cost is over (times `full_target / full_cost`) until a result fits. Results move in
    jumps (channels come in multiples of `round_to`), so after `tries` such steps the target is halved until a
    result fits and then bisected (40 halvings) between that target and the last one over.

    Example:
        >>> plan, fits = fit_target(lambda t: plan_counts(graph, "uniform", target_gflops=t),  # doctest: +SKIP
        ...                         lambda p: full_gflops(p.counts), 4.0, full_target=graph.conv_gflops(),
        ...                         full_cost=count_gflops(model, 640))
    """
    made: dict[float, Any] = {}

    def at(target: float):
        if target not in made:
            made[target] = make(target)
        return made[target]

    target = full_target * min(1.0, limit / full_cost)
    result = None
    for _ in range(tries):
        try:
            result = at(target)
        except UserError:
            if result is None:
                raise
            return result, False  # below the smallest target: nothing lower to ask for
        over = cost(result) - limit
        if over <= 0:
            return result, True
        high, target = target, target - (over + 1e-6) * full_target / full_cost
    # the steps stalled on a result just over the limit: halve the target until a result fits, then bisect
    low = high
    while True:
        low /= 2
        try:
            fitting = at(low)
        except UserError:
            return result, False
        if cost(fitting) <= limit:
            break
    return at(bisect(lambda t: cost(at(t)) <= limit, low, high, steps=40)), True


__all__ = [
    "Budget",
    "bisect",
    "check_reachable",
    "fill",
    "fit",
    "fit_target",
    "gflops_budget",
    "largest_uniform",
    "repair",
]
