"""Search engines, all as Optuna samplers, so one ask/tell driver and one study serve every engine.

- `optuna`: Optuna's own samplers: `nsga2` (NSGAIISampler), `tpe` (multi-objective TPESampler), `random`,
  each behind `LatencyBlindSampler`, so that they select on mAP50-95 and GFLOPs only, as the DEAP engine does.
- `deap`: NSGA-II with DEAP's operators (`selNSGA2`, simulated binary crossover, polynomial mutation) and
  constrained domination, run inside Optuna's ask/tell: each new trial's genome is bred from the population that
  the study's finished trials form at that moment. The population state therefore lives in the storage, so a
  search resumes after a crash and many workers share it; with one worker it is the generational NSGA-II.

Whatever the engine, trial 0 is the uniform genome that meets the budget (`FirstTrialSampler`): the storage numbers
trials atomically, so exactly one trial of a study gets it, even with many workers starting at once.

Example:
    >>> sampler = make_sampler("deap", None, space, seed=0, population=8, first_params=uniform_genome)
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import TrialState

from autoprune.errors import UserError
from autoprune.search import records

ENGINES = ("deap", "optuna")
SAMPLERS = ("nsga2", "tpe", "random")


def make_sampler(
    engine: str,
    sampler: str | None,
    space,
    *,
    seed: int,
    population: int,
    first_params: dict | None = None,
    init: InitialPopulation | None = None,
) -> BaseSampler:
    """The sampler for `--engine`/`--sampler`, with trial 0 fixed to `first_params` (the uniform baseline).

    Budgets reach Optuna's samplers as constraints the driver sets on each trial (`Trial.set_constraint`), and the
    DEAP sampler reads the same violations from the trial's attributes.
    """
    if engine not in ENGINES:
        raise UserError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "deap":
        if sampler not in (None, "nsga2"):
            raise UserError(f"--engine deap runs NSGA-II; --sampler {sampler} needs --engine optuna")
        inner: BaseSampler = DeapNSGA2Sampler(space, population=population, seed=seed, init=init)
    else:
        sampler = sampler or "nsga2"
        if sampler == "nsga2":
            inner = optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
        elif sampler == "tpe":
            inner = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=population)
        elif sampler == "random":
            inner = optuna.samplers.RandomSampler(seed=seed)
        else:
            raise UserError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        inner = LatencyBlindSampler(inner)
    return FirstTrialSampler(inner, first_params, space.distributions()) if first_params else inner


@dataclass(frozen=True)
class InitialPopulation:
    """Where NSGA-II's first generation comes from: perturbations of `center` (the uniform genome at the budget),
    each fitted by `fit(genome, target_gflops)` to a GFLOPs target drawn from [`low_share`, 1] x `budget`. Once the
    better of the study's seeded trials (kinds "global" and "global-per-flop": one-shot global pruning by the
    criterion, and by its importance per FLOP) has scored at least as well as the uniform genome, every other child
    is a smaller perturbation (`one_shot_sigma`) of that genome instead: crossing
    a good non-uniform allocation with perturbed uniform genomes averages it away, so the first generation explores
    around both answers.

    Random genomes spread over the whole space mostly land far from the budget or cut one layer to its floor, and a
    short proxy cannot tell such wrecks apart; starting around the uniform genome at the budget spends the first
    generation where the answer is.
    """

    center: dict
    fit: Callable[[dict, float], dict]
    budget: float
    sigma: float = 0.15  # per-gene noise, as a share of the gene's range
    low_share: float = 0.75
    one_shot_sigma: float = 0.05  # noise around a seeded trial (`records.ONE_SHOT_KINDS`), already a good allocation


def count_in_generation(sampler: BaseSampler, study, trial) -> None:
    """Make a trial whose parameters were fixed (trial 0, a queued repaired or filled replacement) count toward
    Optuna NSGA-II's generations; a no-op for a trial it sampled itself, and for every other sampler.

    Optuna's genetic samplers put a trial in a generation only when they sample it themselves; fixed trials never
    get one, and a generation ends only when `population` trials of it have completed. With most proposals
    replaced, Optuna's NSGA-II would stay in its random first generation for the whole search. The replacement
    joins the generation in progress, as the proposal it replaces would have.
    """
    from optuna.samplers._ga import BaseGASampler

    inner = sampler._inner if isinstance(sampler, FirstTrialSampler) else sampler
    inner = inner.inner if isinstance(inner, LatencyBlindSampler) else inner
    if isinstance(inner, BaseGASampler):
        inner.get_trial_generation(study, study._storage.get_trial(trial._trial_id))


class FirstTrialSampler(BaseSampler):
    """Give trial 0 fixed parameters (the uniform baseline); every other trial goes to `inner`."""

    def __init__(self, inner: BaseSampler, first_params: dict, distributions: dict[str, BaseDistribution]):
        self._inner = inner
        self._first = dict(first_params)
        self._distributions = dict(distributions)

    def infer_relative_search_space(self, study, trial):
        if trial.number == 0:
            return dict(self._distributions)
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        if trial.number == 0:
            return {k: v for k, v in self._first.items() if k in search_space}
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        if trial.number == 0 and param_name in self._first:
            return self._first[param_name]
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self._inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


class _LatencyBlindStudy:
    """A study as `LatencyBlindSampler`'s inner sampler reads it: the same study, except that every trial it lists
    carries 0.0 as its latency value (`records.OBJECTIVES`' third). Everything else (directions, storage, system
    attributes, constraints, trial numbers and ids) is the study's own."""

    def __init__(self, study):
        self._study = study

    def __getattr__(self, name):
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states=None, use_cache: bool = False):
        return [_without_latency(t) for t in self._study._get_trials(deepcopy=deepcopy, states=states,
                                                                     use_cache=use_cache)]

    def get_trials(self, deepcopy: bool = True, states=None):
        return [_without_latency(t) for t in self._study.get_trials(deepcopy=deepcopy, states=states)]

    @property
    def trials(self):
        return self.get_trials()

    @property
    def best_trials(self):
        raise NotImplementedError("a latency-blind sampler has no use for the study's best trials")


_LATENCY_INDEX = records.OBJECTIVES.index("latency_ms")


def _without_latency(trial):
    """`trial` with its latency value set to 0.0 (a shallow copy; the stored trial is untouched)."""
    values = trial.values
    if values is None or len(values) <= _LATENCY_INDEX:
        return trial
    import copy

    out = copy.copy(trial)
    out._values = [0.0 if i == _LATENCY_INDEX else v for i, v in enumerate(values)]
    return out


class LatencyBlindSampler(BaseSampler):
    """An Optuna sampler that selects on mAP50-95 and GFLOPs only: `inner` reads every trial with its latency value
    set to 0.0 (a constant objective ranks no trial above another, and Optuna's crowding distance and hypervolume
    skip it).

    Measured latency varies from run to run (the machine's load), and NSGA-II's and TPE's selection on it made the
    same seed propose different genomes; the proxy score and GFLOPs are repeatable on one machine, so with one
    worker the same command proposes the same genomes, as the DEAP engine does (`DeapNSGA2Sampler`). The study
    keeps the measured latency as its third objective value and attribute: the reports, the front and a latency
    budget (a constraint, which the inner sampler still reads) use it.
    """

    def __init__(self, inner: BaseSampler):
        self.inner = inner

    def infer_relative_search_space(self, study, trial):
        return self.inner.infer_relative_search_space(_LatencyBlindStudy(study), trial)

    def sample_relative(self, study, trial, search_space):
        return self.inner.sample_relative(_LatencyBlindStudy(study), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.inner.sample_independent(_LatencyBlindStudy(study), trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self.inner.before_trial(_LatencyBlindStudy(study), trial)

    def after_trial(self, study, trial, state, values):
        if values is not None and len(values) > _LATENCY_INDEX:
            values = [0.0 if i == _LATENCY_INDEX else v for i, v in enumerate(values)]
        self.inner.after_trial(_LatencyBlindStudy(study), trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


# ---------------------------------------------------------------------------------------------------------------------
# DEAP NSGA-II

_NOVELTY_TRIES = 20


def _key(genome: dict, names: list[str]) -> tuple:
    return tuple(round(float(genome[n]), 6) for n in names)


def _proposed(study, names: list[str], exclude: int) -> set[tuple]:
    """Genomes the study already holds (evaluated, running or queued), as keys."""
    out = set()
    for t in study.get_trials(deepcopy=False):
        if t.number != exclude and t.state != TrialState.FAIL and all(n in t.params for n in names):
            out.add(_key(t.params, names))
    return out


def _step_away(genome: dict, space, seen: set, names: list[str], rng) -> dict:
    """Move random genes one grid step at a time until the genome is new (or every step was tried)."""
    genome = dict(genome)
    genes = {g.name: g for g in space.genes}
    for _ in range(10 * len(names)):
        if _key(genome, names) not in seen:
            break
        g = genes[names[int(rng.integers(len(names)))]]
        v = genome[g.name] + g.step * (1 if rng.random() < 0.5 else -1)
        genome[g.name] = min(max(v, g.low), g.high)
        genome = space.snap(genome)
    return genome


def fitness_class():
    """A DEAP fitness whose domination is Deb's constrained domination: feasible beats infeasible, then less
    violation beats more, then Pareto dominance on (mAP up, GFLOPs down). Measured latency is left out (see
    `DeapNSGA2Sampler`)."""
    from deap import base

    class ConstrainedFitness(base.Fitness):
        weights = (1.0, -1.0)

        def __init__(self, values=(), violation: float = 0.0):
            super().__init__(values)
            self.violation = violation

        def dominates(self, other, obj=slice(None)):
            if self.violation <= 0 < other.violation:
                return True
            if other.violation <= 0 < self.violation:
                return False
            if self.violation > 0 and other.violation > 0:
                return self.violation < other.violation
            return super().dominates(other, obj)

    return ConstrainedFitness


class DeapNSGA2Sampler(BaseSampler):
    """NSGA-II with DEAP operators, proposing one child per trial from the population the study's trials form.

    Trials that finished (COMPLETE, or PRUNED for exceeding the latency budget) are the candidates; the population
    is the best `population` of them by constrained non-dominated sorting and crowding distance (`selNSGA2`) on
    mAP50-95 and GFLOPs. Until `population` trials have finished, genomes are drawn at random on the space's grid.
    A child's randomness is seeded by the study seed and its trial number, and selection reads only the proxy score
    and GFLOPs, both repeatable on one machine: with one worker the same command proposes the same genomes.
    Measured latency varies from run to run, so it never steers selection; it stays in the study as the third
    objective the reports and the front show, and a latency budget still makes a candidate infeasible.

    Crossover is simulated binary (eta 15, probability 0.9) and mutation polynomial (eta 20, each gene with
    probability 1/genes), both bounded by the genes' ranges, then the child is snapped to the genes' grids.
    """

    def __init__(self, space, *, population: int = 8, seed: int = 0, cxpb: float = 0.9, eta_cx: float = 15.0,
                 eta_mut: float = 20.0, init: InitialPopulation | None = None):
        if population < 4:
            raise UserError(f"--population must be at least 4 for NSGA-II, got {population}")
        self.space = space
        self.population = population
        self.seed = seed
        self.cxpb = cxpb
        self.eta_cx = eta_cx
        self.eta_mut = eta_mut
        self.init = init
        self._fitness = fitness_class()
        self._names = [g.name for g in space.genes]
        # DEAP's bounded operators divide by high - low: they see only the genes that vary, and a fixed gene
        # (low == high) keeps its value
        self._free = [i for i, g in enumerate(space.genes) if g.high > g.low]
        self._low = [space.genes[i].low for i in self._free]
        self._high = [space.genes[i].high for i in self._free]

    def infer_relative_search_space(self, study, trial):
        return self.space.distributions()

    def sample_relative(self, study, trial, search_space):
        if not search_space:
            return {}
        candidates = self._candidates(study)
        rng = np.random.default_rng([self.seed, trial.number])
        seen = _proposed(study, self._names, exclude=trial.number)
        for _ in range(_NOVELTY_TRIES):  # on a grid, a child often snaps back onto a parent: draw again
            if len(candidates) < self.population:
                child = self._initial(rng, study)
            else:
                child = self._breed(candidates, random.Random(int(rng.integers(2**63))))
            if _key(child, self._names) not in seen:
                return child
        return _step_away(child, self.space, seen, self._names, rng)

    def _initial(self, rng: np.random.Generator, study=None) -> dict:
        """A genome of the first generation (see `InitialPopulation`); uniformly random without one."""
        if self.init is None:
            return self.space.random(rng)
        center, sigma = self.init.center, self.init.sigma
        plan = None if study is None else self._good_one_shot(study)
        if plan is not None and rng.random() < 0.5:
            center, sigma = plan, self.init.one_shot_sigma
        genome = {}
        for g in self.space.genes:
            if getattr(g, "kind", "width") in ("depth", "swap"):  # a few whole numbers: noise never moves them
                genome[g.name] = g.value(int(rng.integers(0, g.n + 1)))
                continue
            v = center[g.name] + rng.normal(0.0, sigma) * (g.high - g.low)
            genome[g.name] = min(max(v, g.low), g.high)
        target = self.init.budget * rng.uniform(self.init.low_share, 1.0)
        return self.space.snap(self.init.fit(self.space.snap(genome), target))

    def _good_one_shot(self, study) -> dict | None:
        """The genome of the best-scored one-shot trial (`records.ONE_SHOT_KINDS`), once one has scored at least as
        well as the uniform genome."""
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

        def score(t):
            return t.user_attrs.get(records.MAP50_95) or 0.0

        seeds = [t for t in done if t.user_attrs.get(records.KIND) in records.ONE_SHOT_KINDS
                 and all(n in t.params for n in self._names)]
        if not seeds:
            return None
        best = max(seeds, key=lambda t: (score(t), -t.number))
        uniform = next((t for t in done if t.user_attrs.get(records.KIND) == "uniform"), None)
        if uniform is not None and score(best) < score(uniform):
            return None  # poor one-shot answers (global L1 often is): no generation spent around them
        return best.params

    def sample_independent(self, study, trial, param_name, param_distribution):
        rng = np.random.default_rng([self.seed, trial.number, zlib.crc32(param_name.encode())])
        return optuna.samplers.RandomSampler(seed=int(rng.integers(2**31))).sample_independent(
            study, trial, param_name, param_distribution
        )

    def _candidates(self, study) -> list:
        """Individuals for every trial that finished with a measured outcome, in trial order."""
        out = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            a = t.user_attrs
            if t.state == TrialState.PRUNED and a.get(records.LATENCY_MS) is None:
                continue  # a genome rejected before measurement (repaired into another trial)
            if not all(n in t.params for n in self._names):
                continue
            violation = sum(max(0.0, c) for c in a.get(records.CONSTRAINTS, [0.0]))
            if t.state == TrialState.PRUNED:
                violation = max(violation, 1e-9)  # never scored: infeasible by construction
            values = (a.get(records.MAP50_95) or 0.0, a.get(records.GFLOPS) or 0.0)  # no latency: see the class
            ind = [t.params[n] for n in self._names]
            out.append((ind, self._fitness(values, violation)))
        return out

    def _breed(self, candidates: list, rnd: random.Random) -> dict:
        from deap import tools

        class Individual(list):
            pass

        fixed = {g.name: g.low for g in self.space.genes}
        if not self._free:
            return self.space.snap(fixed)
        pool = []
        for genes, fitness in candidates:
            ind = Individual(genes[i] for i in self._free)
            ind.fitness = fitness
            pool.append(ind)
        state = random.getstate()
        random.setstate(rnd.getstate())  # DEAP's operators use the module-level `random`
        try:
            population = tools.selNSGA2(pool, self.population)
            k = len(population) - len(population) % 4
            parents = tools.selTournamentDCD(population[:k], 4) if k >= 4 else rnd.sample(population, 2)
            a, b = (Individual(list(p)) for p in parents[:2])
            if random.random() < self.cxpb:
                tools.cxSimulatedBinaryBounded(a, b, eta=self.eta_cx, low=self._low, up=self._high)
            child = a if random.random() < 0.5 else b
            tools.mutPolynomialBounded(child, eta=self.eta_mut, low=self._low, up=self._high,
                                       indpb=1.0 / len(child))
        finally:
            random.setstate(state)
        return self.space.snap({**fixed, **{self._names[i]: v for i, v in zip(self._free, child)}})
