"""The search engines as Optuna samplers: DEAP NSGA-II with constrained domination, and the uniform first trial."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from autoprune.errors import UserError
from autoprune.search import records as R
from autoprune.search.engines import DeapNSGA2Sampler, FirstTrialSampler, fitness_class, make_sampler


@dataclass(frozen=True)
class _Gene:
    name: str
    low: float = 0.25
    high: float = 1.0
    step: float = 0.05


class GridSpace:
    """The few SearchSpace operations the engines use, on a plain grid."""

    genes = tuple(_Gene(f"g{i}") for i in range(5))

    def distributions(self):
        return {g.name: FloatDistribution(g.low, g.high, step=g.step) for g in self.genes}

    def snap(self, genome):
        out = {}
        for g in self.genes:
            v = min(max(genome[g.name], g.low), g.high)
            out[g.name] = round(g.low + round((v - g.low) / g.step) * g.step, 6)
        return out

    def random(self, rng):
        return self.snap({g.name: float(rng.uniform(g.low, g.high)) for g in self.genes})


def _add(study, number_seed, params, map_, gflops, lat, constraints, state=TrialState.COMPLETE, kind=None):
    attrs = {R.MAP50_95: map_, R.GFLOPS: gflops, R.LATENCY_MS: lat, R.CONSTRAINTS: constraints,
             R.FEASIBLE: all(c <= 0 for c in constraints), R.SECONDS: 1.0, **({R.KIND: kind} if kind else {})}
    values = [map_, gflops, lat] if state == TrialState.COMPLETE else None
    study.add_trial(create_trial(state=state, params=params, distributions=GridSpace().distributions(),
                                 values=values, user_attrs=attrs))


def _study(sampler):
    return optuna.create_study(directions=list(R.DIRECTIONS), sampler=sampler)


def test_constrained_domination_ranks_feasible_first():
    F = fitness_class()
    good_but_infeasible = F((0.9, 1.0), violation=0.5)  # (mAP50-95, GFLOPs): the objectives parents are chosen on
    poor_but_feasible = F((0.1, 9.0), violation=0.0)
    less_violation = F((0.0, 9.0), violation=0.1)
    assert poor_but_feasible.dominates(good_but_infeasible)
    assert not good_but_infeasible.dominates(poor_but_feasible)
    assert less_violation.dominates(good_but_infeasible)
    assert F((0.5, 2.0)).dominates(F((0.4, 2.0)))
    assert not F((0.5, 2.0)).dominates(F((0.6, 3.0)))  # a trade-off: neither dominates


def test_deap_sampler_draws_on_the_grid_then_breeds_from_the_best():
    space = GridSpace()
    sampler = DeapNSGA2Sampler(space, population=4, seed=3)
    study = _study(sampler)
    rng = np.random.default_rng(0)
    # a population where high keep ratios score well: children should be bred from those
    for i in range(8):
        params = space.random(rng)
        quality = float(np.mean(list(params.values())))
        _add(study, i, params, quality, 10 * quality, 5 * quality, [10 * quality - 6.0])
    proposals = []
    for _ in range(6):
        trial = study.ask()
        params = {g.name: trial.suggest_float(g.name, g.low, g.high, step=g.step) for g in space.genes}
        proposals.append(params)
        study.tell(trial, state=TrialState.FAIL)
    for p in proposals:
        assert p == space.snap(p)  # on the grid, within bounds
        assert all(0.25 <= v <= 1.0 for v in p.values())
    assert len({tuple(p.values()) for p in proposals}) > 1


def test_deap_sampler_is_reproducible_for_a_seed():
    def proposals(seed):
        space = GridSpace()
        study = _study(DeapNSGA2Sampler(space, population=4, seed=seed))
        rng = np.random.default_rng(1)
        for i in range(4):
            p = space.random(rng)
            _add(study, i, p, sum(p.values()), 1.0, 1.0, [-1.0])
        out = []
        for _ in range(3):
            t = study.ask()
            out.append(tuple(t.suggest_float(g.name, g.low, g.high, step=g.step) for g in space.genes))
            study.tell(t, state=TrialState.FAIL)
        return out

    assert proposals(7) == proposals(7)
    assert proposals(7) != proposals(8)


def test_deap_population_prefers_feasible_parents():
    """With one feasible region (low ratios) and an infeasible one (high ratios, better mAP), NSGA-II's
    constrained selection must keep breeding near the feasible parents."""
    space = GridSpace()
    study = _study(DeapNSGA2Sampler(space, population=4, seed=0))
    for i in range(4):
        _add(study, i, {g.name: 0.3 for g in space.genes}, 0.2 + 0.01 * i, 2.0, 1.0, [-1.0])
    for i in range(4):
        _add(study, i, {g.name: 1.0 for g in space.genes}, 0.9, 9.0, 5.0, [4.0])
    means = []
    for _ in range(8):
        t = study.ask()
        p = [t.suggest_float(g.name, g.low, g.high, step=g.step) for g in space.genes]
        means.append(np.mean(p))
        study.tell(t, state=TrialState.FAIL)
    assert np.mean(means) < 0.6


def test_first_trial_sampler_fixes_trial_zero_only():
    space = GridSpace()
    uniform = {g.name: 0.55 for g in space.genes}
    sampler = FirstTrialSampler(optuna.samplers.RandomSampler(seed=0), uniform, space.distributions())
    study = _study(sampler)
    seen = []
    for _ in range(3):
        t = study.ask()
        seen.append({g.name: t.suggest_float(g.name, g.low, g.high, step=g.step) for g in space.genes})
        study.tell(t, [0.1, 1.0, 1.0])
    assert seen[0] == uniform
    assert seen[1] != uniform and seen[2] != uniform


# Grids that differ per gene (step, low, high, one gene fixed), for checking that proposals land on each gene's own
# grid: (low, high, step), cycled over the yolov8 space's genes.
_MIXED_GRIDS = ((0.5, 1.0, 0.1), (0.35, 0.95, 0.15), (0.25, 0.75, 0.125), (0.4, 1.0, 0.2), (0.3, 0.9, 0.025),
                (0.6, 0.6, 0.05))
_ENGINES = [("deap", None), ("optuna", "nsga2"), ("optuna", "tpe"), ("optuna", "random")]


@pytest.fixture(scope="module")
def mixed_space():
    """The yolov8 family space of a 2-class yolov8n at 128 px with the grids of `_MIXED_GRIDS`."""
    from pathlib import Path

    import ultralytics
    import yaml
    from ultralytics.nn.tasks import DetectionModel

    from autoprune.channels import analyze
    from autoprune.space import SPACES_DIR, load_space, read_space_file

    cfg = yaml.safe_load((Path(ultralytics.__file__).parent / "cfg/models/v8/yolov8.yaml").read_text())
    cfg.update(nc=2, scale="n")
    model = DetectionModel(cfg, verbose=False).eval()
    graph = analyze(model, imgsz=128)
    source = read_space_file(SPACES_DIR / "yolov8.yaml")
    for i, spec in enumerate(source["genes"].values()):
        spec["low"], spec["high"], spec["step"] = _MIXED_GRIDS[i % len(_MIXED_GRIDS)]
    space = load_space(source, graph, model)
    assert {(g.low, g.high, g.step) for g in space.genes} == set(_MIXED_GRIDS)
    return space


def _on_grid(gene, v: float) -> bool:
    """`v` is one of the gene's values low, low + step, ..., high (up to float noise)."""
    k = (v - gene.low) / gene.step
    return gene.low - 1e-9 <= v <= gene.high + 1e-9 and abs(k - round(k)) < 1e-6


@pytest.mark.parametrize("engine, sampler", _ENGINES)
def test_every_proposal_lies_on_the_grids_and_repairs_into_the_budget(mixed_space, engine, sampler):
    """Property check over 40 proposals of each engine, as the driver asks for them: every value lies on its gene's
    grid, trial 0 is the fixed uniform genome, a proposal over the budget repairs into a genome on the grid within it
    (no gene raised), NSGA-II's first generation (DEAP, fitted toward the budget) is within the budget, and DEAP never
    proposes a genome the study already holds."""
    from autoprune.search.engines import InitialPopulation

    space = mixed_space

    def cost(genome):  # conv GFLOPs, the space's own count
        return space.gflops(genome, 128)

    uniform = space.uniform_for_budget(0.5 * space.max_gflops(128), 128)
    budget = cost(uniform)  # right at the budget: about half of the unfitted perturbations around it are over
    fitted = []

    def fit(genome, target):  # the driver moves a genome toward a GFLOPs target; a repair stands in for that here
        fitted.append(target)
        return space.repair(genome, target, 128)

    population = 8
    init = InitialPopulation(center=uniform, fit=fit, budget=budget)
    study = _study(make_sampler(engine, sampler, space, seed=0, population=population, first_params=uniform,
                                init=init))
    rng = np.random.default_rng(0)
    proposals = []
    for i in range(40):
        t = study.ask()
        p = {g.name: t.suggest_float(g.name, g.low, g.high, step=g.step) for g in space.genes}
        off = {g.name: p[g.name] for g in space.genes if not _on_grid(g, p[g.name])}
        assert not off, (i, off)
        if i == 0 or engine == "deap":  # the whole genome is the engine's proposal: none of it fell back to Optuna's
            assert t.relative_params == p, i  # independent sampling, as an off-grid or out-of-range value would
        if i == 0:
            assert p == uniform
        gflops = cost(p)
        if engine == "deap" and 0 < i <= population:  # the first generation: fitted to [0.75, 1] x the budget
            assert gflops <= budget + 1e-9, (i, gflops, budget)
        if gflops > budget:
            repaired = space.repair(p, budget, 128)
            assert cost(repaired) <= budget and all(_on_grid(g, repaired[g.name]) for g in space.genes)
            assert all(repaired[k] <= p[k] + 1e-9 for k in p)
        proposals.append(p)
        quality = float(np.mean(list(p.values()))) + 0.05 * float(rng.random())  # bigger scores better, with noise
        constraints = [gflops - budget]
        for k, v in {R.MAP50_95: quality, R.GFLOPS: gflops, R.LATENCY_MS: gflops * 10, R.CONSTRAINTS: constraints,
                     R.FEASIBLE: constraints[0] <= 0, R.SECONDS: 1.0}.items():
            t.set_user_attr(k, v)
        t.set_constraint("gflops", constraints[0])
        study.tell(t, [quality, gflops, gflops * 10])
    assert len({tuple(p.values()) for p in proposals}) >= 20  # the samplers explore, not one genome over and over
    if engine == "deap":
        assert fitted and all(0.75 * budget - 1e-9 <= x <= budget for x in fitted)
        assert len({tuple(p.values()) for p in proposals}) == len(proposals)  # nothing the study holds proposed again


class CoarseGridSpace(GridSpace):
    """Four values per gene: bred children often snap back onto a parent."""

    genes = tuple(_Gene(f"g{i}", step=0.25) for i in range(5))


def test_deap_never_proposes_a_genome_the_study_holds():
    space = CoarseGridSpace()
    study = _study(DeapNSGA2Sampler(space, population=4, seed=0))
    seen = []
    for _ in range(40):
        t = study.ask()
        p = tuple(t.suggest_float(g.name, g.low, g.high, step=g.step) for g in space.genes)
        assert p not in seen, (len(seen), p)
        seen.append(p)
        q = float(np.mean(p))
        for k, v in {R.MAP50_95: q, R.GFLOPS: q, R.LATENCY_MS: q, R.CONSTRAINTS: [q - 0.8], R.SECONDS: 1.0}.items():
            t.set_user_attr(k, v)
        study.tell(t, [q, q, q])


def test_queued_replacements_count_toward_optuna_nsga2_generations():
    from autoprune.search.engines import count_in_generation

    space = GridSpace()
    s = make_sampler("optuna", "nsga2", space, seed=0, population=4, first_params={g.name: 1.0 for g in space.genes})
    study = _study(s)
    key = "NSGAIISampler:generation"
    for i in range(5):  # trial 0 (the fixed uniform genome), then queued replacements, as the driver makes them
        if i:
            study.enqueue_trial({g.name: 0.5 for g in space.genes}, user_attrs={R.KIND: "repaired"})
        t = study.ask()
        count_in_generation(study.sampler, study, t)
        for g in space.genes:
            t.suggest_float(g.name, g.low, g.high, step=g.step)
        t.set_constraint("gflops", -1.0)
        study.tell(t, [0.5, 1.0, 1.0])
    assert [t.system_attrs.get(key) for t in study.trials] == [0, 0, 0, 0, 1]
    t = study.ask()  # the generation that the queued trials completed is over: NSGA-II now breeds
    t.suggest_float("g0", 0.25, 1.0, step=0.05)
    assert study._storage.get_trial(t._trial_id).system_attrs.get(key) == 1


def test_engine_and_sampler_names_are_checked():
    space = GridSpace()
    with pytest.raises(UserError, match="--engine must be one of"):
        make_sampler("cma", None, space, seed=0, population=4)
    with pytest.raises(UserError, match="--sampler must be one of"):
        make_sampler("optuna", "grid", space, seed=0, population=4)
    with pytest.raises(UserError, match="needs --engine optuna"):
        make_sampler("deap", "tpe", space, seed=0, population=4)
    with pytest.raises(UserError, match="at least 4"):
        make_sampler("deap", None, space, seed=0, population=2)


def test_deap_first_generation_starts_around_the_uniform_genome_near_the_budget():
    from autoprune.search.engines import InitialPopulation

    space = GridSpace()
    center = {g.name: 0.6 for g in space.genes}
    targets = []

    def fit(genome, target):
        targets.append(target)
        return genome

    sampler = DeapNSGA2Sampler(space, population=4, seed=0,
                               init=InitialPopulation(center=center, fit=fit, budget=10.0, sigma=0.1))
    study = _study(sampler)
    genomes = []
    for _ in range(4):
        t = study.ask()
        genomes.append([t.suggest_float(g.name, g.low, g.high, step=g.step) for g in space.genes])
        study.tell(t, state=TrialState.FAIL)
    spread = np.abs(np.array(genomes) - 0.6)
    assert spread.max() <= 0.45 and spread.mean() <= 0.15  # around the center, not all over [0.25, 1]
    assert len({tuple(g) for g in genomes}) == 4
    assert targets and all(7.5 <= t <= 10.0 for t in targets)


@pytest.mark.parametrize(("seed_map", "explored"), [(0.5, True), (0.1, False)])
def test_deap_first_generation_explores_around_a_seeded_global_trial_that_beats_uniform(seed_map, explored):
    from autoprune.search.engines import InitialPopulation

    space = GridSpace()
    center = {g.name: 0.6 for g in space.genes}
    seed = {"g0": 1.0, "g1": 0.25, "g2": 1.0, "g3": 0.25, "g4": 1.0}  # far from the uniform center
    sampler = DeapNSGA2Sampler(space, population=12, seed=0,
                               init=InitialPopulation(center=center, fit=lambda g, t: g, budget=10.0, sigma=0.1,
                                                      one_shot_sigma=0.02))
    study = _study(sampler)
    _add(study, 0, center, 0.3, 5.0, 1.0, [-1.0], kind="uniform")
    _add(study, 1, seed, seed_map, 5.0, 1.0, [-1.0], kind="global")
    genomes = []
    for _ in range(10):
        t = study.ask()
        genomes.append(np.array([t.suggest_float(g.name, g.low, g.high, step=g.step) for g in space.genes]))
        study.tell(t, state=TrialState.FAIL)
    near_seed = [g for g in genomes if np.abs(g - np.array(list(seed.values()))).max() <= 0.1]
    near_center = [g for g in genomes if np.abs(g - 0.6).mean() <= 0.15]
    assert bool(near_seed) is explored and near_center  # a seed worse than uniform gets no children
    assert len(near_seed) + len(near_center) == 10


def test_deap_first_generation_explores_around_the_better_of_two_seeded_trials():
    from autoprune.search.engines import InitialPopulation

    space = GridSpace()
    center = {g.name: 0.6 for g in space.genes}
    worse = {"g0": 1.0, "g1": 0.25, "g2": 1.0, "g3": 0.25, "g4": 1.0}
    better = {"g0": 0.25, "g1": 1.0, "g2": 0.25, "g3": 1.0, "g4": 0.25}
    sampler = DeapNSGA2Sampler(space, population=12, seed=0,
                               init=InitialPopulation(center=center, fit=lambda g, t: g, budget=10.0, sigma=0.1,
                                                      one_shot_sigma=0.02))
    study = _study(sampler)
    _add(study, 0, center, 0.3, 5.0, 1.0, [-1.0], kind="uniform")
    _add(study, 1, worse, 0.4, 5.0, 1.0, [-1.0], kind="global")
    _add(study, 2, better, 0.5, 5.0, 1.0, [-1.0], kind="global-per-flop")
    genomes = []
    for _ in range(10):
        t = study.ask()
        genomes.append(np.array([t.suggest_float(g.name, g.low, g.high, step=g.step) for g in space.genes]))
        study.tell(t, state=TrialState.FAIL)

    def near(seed):
        return [g for g in genomes if np.abs(g - np.array(list(seed.values()))).max() <= 0.1]

    assert near(better) and not near(worse)


@pytest.mark.parametrize("sampler", ["nsga2", "tpe"])
def test_optuna_engine_proposes_the_same_genomes_for_a_seed_whatever_the_latencies(sampler):
    """Optuna's NSGA-II and TPE select on mAP50-95 and GFLOPs only (`LatencyBlindSampler`): two runs with the same
    seed whose measured latencies differ at random propose the same genomes, and the study keeps each run's own
    latency as its third value."""
    space = GridSpace()

    def run(latency_seed):
        study = _study(make_sampler("optuna", sampler, space, seed=5, population=4))
        rng = np.random.default_rng(latency_seed)
        proposals = []
        for _ in range(16):  # four generations of NSGA-II; TPE past its 4 startup trials
            t = study.ask()
            p = tuple(t.suggest_float(g.name, g.low, g.high, step=g.step) for g in space.genes)
            proposals.append(p)
            quality = float(np.mean(p) - np.std(p))  # deterministic trade-offs: larger and more even scores better
            gflops = float(np.sum(np.square(p)))
            t.set_constraint("gflops", gflops - 3.0)
            study.tell(t, [quality, gflops, float(rng.uniform(1.0, 100.0))])
        return proposals, [t.values[2] for t in study.trials]

    (a, lat_a), (b, lat_b) = run(1), run(2)
    assert lat_a != lat_b  # the latencies really differed
    assert a == b
    assert len(set(a)) > 8  # and the sampler explored
