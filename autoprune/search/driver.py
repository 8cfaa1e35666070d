"""The search loop: ask a genome, price it, prune, measure, score, tell; until the study has its trials.

Order of work per candidate, cheapest first, so no proxy work is spent on a genome that cannot win:

1. the genome's conv GFLOPs from the channel analysis (microseconds): over the budget, it is rejected and a
   repaired genome within budget is queued in its place; under `budget_floor` x the budget, it is rejected and the
   same shape filled up toward the budget is queued instead; a genome that prunes to the channels of a trial
   already scored is skipped;
2. prune (a fraction of a second), GFLOPs (fvcore) and latency (measured; cached by architecture): over a latency
   budget, the candidate is recorded as infeasible without a proxy score;
3. the proxy (BN recalibration, a short finetune, mAP on a validation subset): seconds.

Everything lives in the Optuna study (see `records`), so a killed search resumes where it stopped and many
workers pointed at one storage share the work: each asks for a trial, the storage hands out trial numbers
atomically, heartbeats reveal a dead worker's trial, which is then failed and queued again.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autoprune.errors import UserError
from autoprune.search import records as R
from autoprune.search.engines import ENGINES, SAMPLERS, InitialPopulation, count_in_generation, make_sampler
from autoprune.search.storage import make_storage, mask_url, run_dir_for, storage_url, study_names

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _search_timing():
    from autoprune.cost import TimingProtocol

    # A search times every candidate: half a second of samples is enough to rank them (a few percent), and a busy
    # machine must not stall it. `apply` reports the final model with the full protocol.
    return TimingProtocol(min_time_s=0.5, max_time_s=8.0)


SEARCH_TIMING = _search_timing()
MAX_REJECTED_IN_A_ROW = 200  # proposals in a row that were duplicates or over budget: the space is exhausted


@dataclass(frozen=True)
class SearchSettings:
    """Everything a search needs; validated by `Search` before anything is created or written."""

    budget_gflops: float
    budget_latency_ms: float | None = None
    budget_floor: float = 0.8  # candidates under this share of the GFLOPs budget are filled up to it first
    model: str | None = None  # None: the embedded demo model
    data: str | None = None  # None: the embedded demo dataset
    engine: str = "deap"
    sampler: str | None = None
    trials: int | None = None
    generations: int | None = None
    population: int = 8
    proxy_steps: int = 50
    proxy_distill: float = 0.0  # head distillation from the unpruned model in the proxy's finetune (0: off)
    reconstruct: bool = False  # refit each candidate's convs that lost inputs by least squares before its proxy
    calib_batches: int = 20
    proxy_imgsz: int = 320
    val_images: int = 200
    imgsz: int = 640  # GFLOPs and latency are measured at the deployment size
    criterion: str = "hessian"  # gradient criteria keep a pruned model working; docs/BENCHMARKS.md "Methods"
    space: str | None = "fine"  # one gene per group; None or "family": the model family's space (`load_space`)
    storage: str | None = None
    name: str | None = None
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    heartbeat_interval: int = 10
    grace_period: int = 40
    confirm: int = 0  # re-score the best N feasible trials under more proxy seeds once the trials are done
    confirm_seeds: int = 2  # how many more: seeds seed+1 .. seed+confirm_seeds

    @property
    def target_trials(self) -> int:
        """Candidates to evaluate in all: --trials, or --generations x --population, or 3 generations."""
        if self.trials is not None:
            return self.trials
        return (self.generations or 3) * self.population


@dataclass
class SearchResult:
    name: str
    run_dir: Path
    storage: str
    evaluated: int
    feasible: int
    front: list[R.TrialRecord]
    uniform: R.TrialRecord | None
    best: R.TrialRecord | None
    outputs: dict = field(default_factory=dict)
    confirmed: dict = field(default_factory=dict)  # {trial: {proxy seed: mAP50-95}} (`Search.confirm`)
    recommended: R.TrialRecord | None = None  # the best by mean over the confirming seeds, else `best`

    def as_dict(self) -> dict:
        def rec(r):
            return None if r is None else {k: v for k, v in asdict(r).items() if k != "attrs"}

        beats = None
        if self.best is not None and self.uniform is not None and self.uniform.feasible:
            beats = self.best.map50_95 - self.uniform.map50_95
        return {
            "name": self.name,
            "run_dir": str(self.run_dir),
            "storage": self.storage,
            "evaluated": self.evaluated,
            "feasible": self.feasible,
            "front": [rec(r) for r in self.front],
            "uniform": rec(self.uniform),
            "best": rec(self.best),
            "best_beats_uniform_by": beats,
            "confirmed": {str(n): {str(k): v for k, v in by_seed.items()} for n, by_seed in self.confirmed.items()},
            "recommended": rec(self.recommended),
            "outputs": {k: str(v) for k, v in self.outputs.items()},
        }


def _check_settings(s: SearchSettings) -> None:
    def positive(name, value, integer=False):
        if value is None:
            return
        bad = isinstance(value, bool) or (integer and not isinstance(value, int)) or not value > 0
        if bad or (isinstance(value, float) and not math.isfinite(value)):
            raise UserError(f"--{name.replace('_', '-')} must be a positive {'integer' if integer else 'number'}, got {value}")

    positive("budget_gflops", s.budget_gflops)
    positive("budget_latency_ms", s.budget_latency_ms)
    if not 0 <= s.budget_floor < 1:
        raise UserError(f"--budget-floor must be in [0, 1), got {s.budget_floor}")
    for name in ("trials", "generations", "population"):
        positive(name, getattr(s, name), integer=True)
    if s.proxy_steps < 0:
        raise UserError(f"--proxy-steps must be 0 or more, got {s.proxy_steps}")
    if isinstance(s.confirm, bool) or not isinstance(s.confirm, int) or s.confirm < 0:
        raise UserError(f"--confirm must be an integer >= 0, got {s.confirm}")
    positive("confirm_seeds", s.confirm_seeds, integer=True)
    if not (isinstance(s.proxy_distill, (int, float)) and math.isfinite(s.proxy_distill) and s.proxy_distill >= 0):
        raise UserError(f"--proxy-distill must be a number >= 0, got {s.proxy_distill}")
    for name in ("imgsz", "proxy_imgsz"):
        v = getattr(s, name)
        if v <= 0 or v % 32:
            raise UserError(f"--{name.replace('_', '-')} must be a positive multiple of 32, got {v}")
    if s.engine not in ENGINES:
        raise UserError(f"--engine must be one of {', '.join(ENGINES)}, got {s.engine!r}")
    if s.sampler is not None and s.sampler not in SAMPLERS:
        raise UserError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {s.sampler!r}")
    if s.engine == "deap" and s.sampler not in (None, "nsga2"):
        raise UserError(f"--engine deap runs NSGA-II; --sampler {s.sampler} needs --engine optuna")
    if s.trials is not None and s.generations is not None:
        raise UserError("give --trials or --generations (with --population), not both")
    if s.resume and s.name is None:
        raise UserError("--resume needs the --name of the study to continue")


class Search:
    """One search process (one worker). Construction checks everything and creates the study; `run()` works.

    Example:
        >>> result = Search(SearchSettings(budget_gflops=5.0, trials=24)).run()
        >>> [r.number for r in result.front]
    """

    def __init__(self, settings: SearchSettings, *, log=print):
        from autoprune.channels import analyze
        from autoprune.cost import count_gflops, count_params
        from autoprune.data import load_data_config
        from autoprune.devices import resolve_device
        from autoprune.importance import check_calibration, get_criterion
        from autoprune.models import load_model
        from autoprune.space import load_space

        s = self.settings = settings
        self.log = log
        _check_settings(s)
        get_criterion(s.criterion)
        check_calibration(s.criterion, s.calib_batches)
        if s.reconstruct and s.calib_batches == 0:
            raise UserError("--reconstruct refits convs on the calibration batches, and --calib-batches 0 leaves none: "
                            "pass --calib-batches N")
        self.device = resolve_device(s.device)

        # Where the study lives; a name that exists needs --resume. Checked before anything is written.
        self.name = s.name or _next_name()
        self.url = storage_url(s.storage, self.name)
        self.run_dir = run_dir_for(self.name)
        exists = self._study_exists()
        if exists and not s.resume:
            raise UserError(f"a study named {self.name!r} already exists ({mask_url(self.url)}); "
                            "pass --resume to continue it")

        self.loaded = load_model(s.model)
        self.graph = analyze(self.loaded.model, imgsz=s.imgsz)
        self.space = load_space(s.space, self.graph, self.loaded.model)
        self.data = load_data_config(s.data)
        nc = self.loaded.model.model[-1].nc
        if nc != self.data.nc:
            raise UserError(f"the model predicts {nc} classes but {self.data.yaml} has {self.data.nc}; "
                            "search a model trained on this dataset")

        # Budgets are in full GFLOPs (fvcore, Ultralytics' convention). The space predicts them in microseconds from
        # the channel counts, given the unpruned model's full count measured once.
        base_gflops = self.base_gflops = count_gflops(self.loaded.model, s.imgsz)
        min_gflops = self.space.min_gflops(s.imgsz, base_gflops=base_gflops)
        if s.budget_gflops < min_gflops:
            raise UserError(
                f"--budget-gflops {s.budget_gflops:g} is below what the search space can reach: the smallest "
                f"model it allows has {min_gflops:.2f} GFLOPs at {s.imgsz} (the unpruned one {base_gflops:.2f})"
            )
        self.uniform = self.space.uniform_for_budget(s.budget_gflops, s.imgsz, base_gflops=base_gflops)
        self.base = {"gflops": base_gflops, "params": count_params(self.loaded.model)}

        self._evaluator = None
        self._ranking = None
        self._refit_source = None  # the unpruned model on the proxy's device, for --reconstruct (made once)
        # What a new study stores, computed before anything is written: an error here (data the criterion cannot
        # use, say) leaves no half-made study behind that the same --name would then need --resume for.
        described = None if exists else self._describe_new_study()

        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not (self.run_dir / "args.yaml").exists():
            from autoprune.runs import save_args

            save_args(self.run_dir, asdict(s), name=self.name, storage_url=self.url)
        self.storage = make_storage(self.url, heartbeat=(s.heartbeat_interval, s.grace_period))
        self.study = self._open_study(described)

    # ------------------------------------------------------------------------------------------------------------
    # The study

    def _study_exists(self) -> bool:
        if self.settings.storage is None:
            return self.run_dir.exists()
        try:
            return self.name in study_names(make_storage(self.url, heartbeat=None, read_only=True))
        except UserError as e:
            if "no such table" in str(e) or "does not exist" in str(e):
                return False  # a database Optuna has not used yet
            raise

    def _study_attrs(self) -> dict:
        s = self.settings
        return {
            R.STUDY_MODEL: self.loaded.source,
            R.STUDY_MODEL_FINGERPRINT: self.loaded.fingerprint,
            R.STUDY_DATA: str(self.data.yaml),
            R.STUDY_BUDGET_GFLOPS: s.budget_gflops,
            R.STUDY_BUDGET_LATENCY_MS: s.budget_latency_ms,
            R.STUDY_BUDGET_FLOOR: s.budget_floor,
            R.STUDY_IMGSZ: s.imgsz,
            R.STUDY_DEVICE: str(self.device),
            R.STUDY_SPACE: self.space.source,
            R.STUDY_CRITERION: s.criterion,
            R.STUDY_ENGINE: s.engine,
            R.STUDY_SAMPLER: s.sampler or "nsga2",
            R.STUDY_SEED: s.seed,
            R.STUDY_PROXY: self._proxy_settings_dict(),
            R.STUDY_POPULATION: s.population,
            R.STUDY_BASE: self.base,
            R.STUDY_VERSION: _version(),
        }

    def _proxy_settings_dict(self) -> dict:
        s = self.settings
        out = {"imgsz": s.proxy_imgsz, "steps": s.proxy_steps, "calib_batches": s.calib_batches,
               "val_images": s.val_images, "seed": s.seed}
        if s.proxy_distill:  # only when on: studies made before the option resume unchanged
            out["distill"] = float(s.proxy_distill)
        if s.reconstruct:  # likewise
            out["reconstruct"] = True
        return out

    def _describe_new_study(self) -> dict:
        """The user attributes a new study gets: the settings, the channel ranking and the one-shot global genomes."""
        from autoprune.strategies import per_flop_scores

        scores = self._channel_scores()  # scored once: the ranking and the global plans all come from them
        attrs = self._study_attrs()
        return {
            **{k: v for k, v in attrs.items() if k != R.STUDY_VERSION},
            R.STUDY_RANKING: self._compute_ranking(scores),
            # one-shot global pruning by the criterion, as close as the space can express it, and the same by
            # importance per FLOP: trial 0 queues both
            R.STUDY_GLOBAL: self._global_genome(scores),
            R.STUDY_GLOBAL_PER_FLOP: self._global_genome(per_flop_scores(self.graph, scores)),
            R.STUDY_VERSION: attrs[R.STUDY_VERSION],  # last: it marks a study completely described
        }

    def _open_study(self, described: dict | None):
        """Create or load the study; a new one gets `described` (computed now when None: another worker's study
        vanished, or none existed when this one looked), an existing one must have been made with these settings."""
        s = self.settings
        init = InitialPopulation(center=self.uniform, fit=self.fit_to_gflops, budget=s.budget_gflops)
        sampler = make_sampler(s.engine, s.sampler, self.space, seed=s.seed, population=s.population,
                               first_params=self.uniform, init=init)
        study = optuna.create_study(
            study_name=self.name,
            storage=self.storage,
            directions=list(R.DIRECTIONS),
            sampler=sampler,
            load_if_exists=True,
        )
        attrs = self._study_attrs()
        stored = self._settled_attrs(study)
        if R.STUDY_VERSION not in stored:  # a new study: describe it
            study.set_metric_names(list(R.OBJECTIVES))
            for k, v in (described or self._describe_new_study()).items():
                study.set_user_attr(k, v)
            stored = study.user_attrs
        differ = [key for key in (R.STUDY_MODEL_FINGERPRINT, R.STUDY_BUDGET_GFLOPS, R.STUDY_BUDGET_LATENCY_MS,
                                  R.STUDY_BUDGET_FLOOR, R.STUDY_IMGSZ, R.STUDY_SPACE, R.STUDY_CRITERION, R.STUDY_ENGINE,
                                  R.STUDY_SAMPLER, R.STUDY_SEED, R.STUDY_PROXY, R.STUDY_POPULATION)
                  if stored.get(key) != attrs[key]]
        if differ:
            what = "; ".join(_difference(key, stored.get(key), attrs[key]) for key in differ)
            flags = " ".join(f for f in (_resume_flag(key, stored.get(key), attrs[key]) for key in differ) if f)
            raise UserError(f"study {self.name!r} was made with other settings: {what}; resume it with the same "
                            f"settings{f' ({flags})' if flags else ''} or pick a new --name")
        return study

    @staticmethod
    def _settled_attrs(study, wait_s: float = 30.0) -> dict:
        """The study's attributes once no other worker is midway through writing them (see `_open_study`)."""
        deadline = time.monotonic() + wait_s
        stored = study.user_attrs
        while stored and R.STUDY_VERSION not in stored and time.monotonic() < deadline:
            time.sleep(0.5)
            stored = study.user_attrs
        return stored

    # ------------------------------------------------------------------------------------------------------------
    # Candidates

    @property
    def evaluator(self):
        if self._evaluator is None:
            from autoprune.proxy import ProxyEvaluator

            s = self.settings
            self.log(f"building the proxy evaluator ({s.proxy_imgsz}px, {s.val_images} val images)...")
            self._evaluator = ProxyEvaluator(self.data, self._proxy_settings(s.seed))
            if s.proxy_distill:
                self._evaluator.set_teacher(self.loaded.model)
        return self._evaluator

    def _channel_scores(self) -> dict:
        """Every group's channel scores by the criterion (data criteria use the proxy's calibration batches)."""
        from autoprune.importance import DATA_CRITERIA
        from autoprune.pruner import channel_scores

        c = self.settings.criterion
        batches = self.evaluator.calibration_batches() if c in DATA_CRITERIA else None
        return channel_scores(self.loaded.model, self.graph, c, batches=batches)

    def _compute_ranking(self, scores: dict | None = None) -> dict:
        """Every group's channel order by the criterion (`pruner.rank_channels`' order), as plain lists."""
        scores = scores if scores is not None else self._channel_scores()
        return {gid: [s.argsort(descending=True, stable=True).tolist() for s in per] for gid, per in scores.items()}

    def _global_genome(self, scores: dict) -> dict:
        """The genome of one-shot global pruning (one threshold over the criterion's normalized `scores`): the
        largest such plan whose predicted full GFLOPs fit the budget (`strategies.plan_within`), projected onto the
        space's genes (`SearchSpace.from_counts`; channel for channel in `fine`); a space too coarse to get within
        is repaired into it."""
        from autoprune.strategies import plan_within

        s = self.settings

        def cost(counts):
            return self.space.gflops(self.space.from_counts(counts), s.imgsz, base_gflops=self.base_gflops)

        plan, fits = plan_within(self.graph, "global", s.budget_gflops, cost, full_cost=self.base_gflops,
                                 scores=scores, round_to=self.space.round_to, min_channels=self.space.min_channels)
        genome = self.space.from_counts(plan.counts)
        return genome if fits else self.fit_to_gflops(genome, s.budget_gflops)

    @property
    def ranking(self):
        """The channel order every trial slices, as stored in the study (the same for every worker and resume)."""
        if self._ranking is None:
            import torch

            stored = self.study.user_attrs.get(R.STUDY_RANKING) or self._compute_ranking()
            self._ranking = {gid: [torch.tensor(o) for o in orders] for gid, orders in stored.items()}
        return self._ranking

    def fit_to_gflops(self, genome: dict, target: float) -> dict:
        """The genome moved toward the space's highs (or repaired down) to come close to `target` GFLOPs, as the
        space predicts the full count (`autoprune.budget.fit`)."""
        from autoprune.budget import fit, gflops_budget

        budget = gflops_budget(self.space, target, self.settings.imgsz, base_gflops=self.base_gflops)
        return fit(self.space, genome, budget)

    def _genome(self, trial) -> dict:
        return {g.name: trial.suggest_float(g.name, g.low, g.high, step=g.step) for g in self.space.genes}

    def _evaluated_twin(self, trial, genome: dict) -> int | None:
        """The number of an earlier evaluated trial with the same kept channel counts, if any.

        Counts, not genomes: distinct genomes can round to the same channels in every group (tied genes, `round_to`),
        and then prune to the same model, which the deterministic proxy would score the same again.
        """
        counts = self.space.counts(genome)
        for t in self.study.get_trials(deepcopy=False):
            if t.number != trial.number and R.SECONDS in t.user_attrs and (
                    t.user_attrs.get(R.KEPT_CHANNELS) == counts or t.user_attrs.get(R.GENOME) == genome):
                return t.number
        return None

    def _replace(self, trial, genome: dict, replacement: dict, kind: str, reason: str) -> None:
        """Queue `replacement` (of `kind`) in place of `trial`'s genome, and end the trial as rejected."""
        self.study.enqueue_trial(replacement, user_attrs={R.KIND: kind})
        trial.set_user_attr(R.GENOME, genome)
        trial.set_user_attr(R.KIND, "rejected")
        trial.set_user_attr(R.REPAIRED_INTO, replacement)
        trial.set_user_attr(R.REASON, reason)
        self.study.tell(trial, state=TrialState.PRUNED)

    def _reject_over_budget(self, trial, genome: dict, estimate: float) -> None:
        s = self.settings
        repaired = self.space.repair(genome, s.budget_gflops, s.imgsz, base_gflops=self.base_gflops)
        self._replace(trial, genome, repaired, "repaired", f"over the GFLOPs budget ({estimate:.2f} > "
                      f"{s.budget_gflops:g}); a repaired genome was queued instead")

    def _reject_under_floor(self, trial, genome: dict, estimate: float) -> bool:
        """Queue `genome` filled up toward the budget (`fit_to_gflops`) instead of spending a proxy on it.

        A model far under the budget gives away accuracy the user has paid for, and a short proxy mostly ranks such
        candidates by their size; filling keeps the proposed shape (every gene moves toward its high by one common
        factor) and spends the evaluation at the budget. False (evaluate it as it is) when filling changes nothing.
        """
        s = self.settings
        filled = self.fit_to_gflops(genome, s.budget_gflops)
        if self.space.counts(filled) == self.space.counts(genome):
            return False
        self._replace(trial, genome, filled, "filled", f"under the budget floor ({estimate:.2f} < "
                      f"{s.budget_floor:g} x {s.budget_gflops:g} GFLOPs); a genome filled up to the budget was queued")
        return True

    def evaluate(self, trial) -> str:
        """Evaluate one asked trial and tell the study; returns the state it ended in (or "rejected")."""
        from autoprune.cost import count_gflops, count_params, measure_latency

        s = self.settings
        t0 = time.perf_counter()
        genome = self.space.check_genome(self._genome(trial))
        count_in_generation(self.study.sampler, self.study, trial)  # trial 0 and queued replacements count too
        if trial.number == 0:  # trial 0 is the uniform genome; the global plans follow it, so the front starts from
            queued = [genome]  # the classic answers (queued here: exactly once)
            for key, kind in zip((R.STUDY_GLOBAL, R.STUDY_GLOBAL_PER_FLOP), R.SEED_KINDS):
                seed = self.study.user_attrs.get(key)  # absent in a study made before it existed
                if seed and seed not in queued:
                    self.study.enqueue_trial(seed, user_attrs={R.KIND: kind})
                    queued.append(seed)
        twin = self._evaluated_twin(trial, genome)
        if twin is not None:  # the proxy is deterministic: the same genome would score the same again
            trial.set_user_attr(R.GENOME, genome)
            trial.set_user_attr(R.KIND, "duplicate")
            trial.set_user_attr(R.REASON, f"duplicate of trial {twin}; not evaluated again")
            self.study.tell(trial, state=TrialState.PRUNED)
            return "rejected"
        estimate = self.space.gflops(genome, s.imgsz, base_gflops=self.base_gflops)
        if estimate > s.budget_gflops * (1 + 1e-6):
            self._reject_over_budget(trial, genome, estimate)
            return "rejected"
        if estimate < s.budget_floor * s.budget_gflops and self._reject_under_floor(trial, genome, estimate):
            return "rejected"

        kind = trial.user_attrs.get(R.KIND) or ("uniform" if trial.number == 0 and genome == self.uniform else "search")
        counts = self.space.counts(genome)
        attrs = {
            R.GENOME: genome, R.KEEP: self.space.keep(genome), R.KEPT_CHANNELS: counts, R.KIND: kind,
            R.MODEL_FINGERPRINT: self.loaded.fingerprint, R.IMGSZ: s.imgsz, R.CRITERION: s.criterion,
            R.SEED: s.seed, R.ROUND_TO: self.space.round_to, R.MIN_CHANNELS: self.space.min_channels,
        }
        try:
            pruned = self._prune(counts, self.evaluator)
            gflops, params = count_gflops(pruned, s.imgsz), count_params(pruned)
            lat = measure_latency(pruned, imgsz=s.imgsz, device=self.device, cache=self.latency_cache,
                                  protocol=SEARCH_TIMING)
            constraints = [gflops - s.budget_gflops]
            if s.budget_latency_ms is not None:
                constraints.append(lat.median_ms - s.budget_latency_ms)
            attrs.update({R.GFLOPS: gflops, R.PARAMS: params, R.LATENCY_MS: lat.median_ms,
                          R.LATENCY_SPREAD_MS: lat.p90_ms - lat.p10_ms, R.CONSTRAINTS: constraints,
                          R.FEASIBLE: all(c <= 0 for c in constraints)})
            if s.budget_latency_ms is not None and lat.median_ms > s.budget_latency_ms:
                attrs[R.REASON] = (f"over the latency budget ({lat.median_ms:.1f} > {s.budget_latency_ms:g} ms); "
                                   "not scored")
                attrs[R.SECONDS] = time.perf_counter() - t0
                _set_attrs(trial, attrs)
                self.study.tell(trial, state=TrialState.PRUNED)
                return "PRUNED"
            result = self.evaluator.evaluate(pruned)
            losses = list(result.train_loss)
            if not all(math.isfinite(x) for x in [result.map50_95, result.map50, *losses]):
                raise FloatingPointError(f"the proxy produced a non-finite value (loss {losses})")
        except (Exception, FloatingPointError) as e:  # a failed candidate is recorded; the search goes on
            if isinstance(e, UserError):
                raise
            attrs[R.REASON] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500]
            attrs[R.SECONDS] = time.perf_counter() - t0
            _set_attrs(trial, attrs)
            self.study.tell(trial, state=TrialState.FAIL)
            self._failures.append(e)
            return "FAIL"
        attrs.update({R.MAP50: result.map50, R.MAP50_95: result.map50_95, R.PROXY_SECONDS: result.seconds,
                      R.SECONDS: time.perf_counter() - t0})
        _set_attrs(trial, attrs)
        self.study.tell(trial, values=[result.map50_95, gflops, lat.median_ms])
        return "COMPLETE"

    # ------------------------------------------------------------------------------------------------------------
    # The loop

    def _progress(self) -> tuple[int, int]:
        """(evaluated trials, trials being evaluated now) in the whole study, all workers together."""
        done = running = 0
        for t in self.study.get_trials(deepcopy=False):
            if t.state == TrialState.RUNNING:
                running += 1
            elif t.state.is_finished() and R.SECONDS in t.user_attrs:
                done += 1
        return done, running

    def _claim(self, trial) -> bool:
        """After asking: drop this trial if other workers already fill the study's trial budget."""
        done, _ = self._progress()
        running = sorted(t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if done + running.index(trial.number) < self.settings.target_trials:
            return True
        trial.set_user_attr(R.KIND, "surplus")
        trial.set_user_attr(R.REASON, "not run: other workers already fill the study's trial budget")
        self.study.tell(trial, state=TrialState.PRUNED)
        return False

    def run(self) -> SearchResult:
        from autoprune.cost import LatencyCache

        s = self.settings
        target = s.target_trials
        self.latency_cache = LatencyCache(self.run_dir / "latency.json")
        self._failures: list[Exception] = []
        successes = rejected_in_a_row = 0
        started = time.perf_counter()
        evaluated_here = 0
        self.log(f"search {self.name!r}: {target} candidates, budget {s.budget_gflops:g} GFLOPs at {s.imgsz}"
                 + (f" and {s.budget_latency_ms:g} ms" if s.budget_latency_ms else "")
                 + f", engine {s.engine}" + (f"/{s.sampler}" if s.sampler else "")
                 + f", {len(self.space.genes)} genes; storage {mask_url(self.url)}")
        while True:
            optuna.storages.fail_stale_trials(self.study)
            done, running = self._progress()
            if done >= target:
                break
            if done + running >= target:
                time.sleep(2)  # the last trials run in other workers (or a dead one's will be failed and queued)
                continue
            with warnings.catch_warnings():  # our own heartbeat thread runs per trial (see _heartbeat)
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                trial = self.study.ask()
            with self._heartbeat(trial):
                if not self._claim(trial):
                    continue
                try:
                    outcome = self.evaluate(trial)
                except BaseException:
                    with contextlib.suppress(Exception):
                        trial.set_user_attr(R.REASON, "interrupted")
                        self.study.tell(trial, state=TrialState.FAIL)
                    raise
            if outcome == "rejected":
                rejected_in_a_row += 1
                if rejected_in_a_row >= MAX_REJECTED_IN_A_ROW:
                    self.log(f"stopping: the last {rejected_in_a_row} proposals were all duplicates or over budget "
                             "(the search space is exhausted at this budget)")
                    break
                continue
            rejected_in_a_row = 0
            evaluated_here += 1
            successes += outcome == "COMPLETE"
            if outcome == "FAIL" and successes == 0 and len(self._failures) >= 3:
                raise RuntimeError("the first candidates all failed; the last error follows") from self._failures[-1]
            self._report_progress(trial.number, outcome, done + 1, target, started, evaluated_here)

        if s.confirm:
            self.confirm()
        return self.finish()

    def confirm(self) -> dict[int, dict[int, float]]:
        """Re-score the `confirm` best feasible trials (by search score), and the one-shot trials the search started
        from (`records.SEED_KINDS`), under `confirm_seeds` more proxy seeds; return every confirmed trial's scores
        by seed (`records.confirmed_scores`). With the one-shot plans among them, a searched trial is recommended
        over them only when it beats them on the mean over the same seeds.

        Each proxy seed draws its own val subset, BN-recalibration images and batch order. The search keeps the
        maximum of many scores under one seed, so its best trial is partly that seed's luck (the winner's curse;
        docs/BENCHMARKS.md measures it on the demo); the mean over seeds ranks the top trials with less of it.
        Scores are stored as study attributes as they come (`records.confirm_key`), so an interrupted confirmation
        resumes and workers share the work.
        """
        s = self.settings
        done = [R.TrialRecord.from_trial(t)
                for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        ranked = sorted((r for r in done if r.feasible and r.map50_95 is not None),
                        key=lambda r: (-r.map50_95, r.gflops, r.number))
        top = ranked[: s.confirm] + [r for r in ranked[s.confirm:] if r.kind in R.SEED_KINDS]
        seeds = [s.seed + k for k in range(1, s.confirm_seeds + 1)]
        todo = [(seed, r) for seed in seeds for r in top if R.confirm_key(r.number, seed) not in self.study.user_attrs]
        if todo:
            self.log(f"confirming {len(top)} trials (the best {min(s.confirm, len(ranked))} and the one-shot plans) "
                     f"under proxy seeds {', '.join(map(str, seeds))} ({len(todo)} evaluations)...")
        evaluator, t0 = None, time.perf_counter()
        for k, (seed, r) in enumerate(todo, 1):
            if evaluator is None or evaluator.settings.seed != seed:
                evaluator = self._seeded_evaluator(seed)
            result = evaluator.evaluate(self._prune(r.attrs[R.KEPT_CHANNELS], evaluator))
            self.study.set_user_attr(R.confirm_key(r.number, seed), result.map50_95)
            eta = (time.perf_counter() - t0) / k * (len(todo) - k)
            self.log(f"[confirm {k}/{len(todo)}] trial #{r.number}, proxy seed {seed}: mAP50-95 "
                     f"{result.map50_95:.3f} (search score {r.map50_95:.3f}) | ETA {_duration(eta)}")
        return R.confirmed_scores(self.study.user_attrs, done)

    def _prune(self, counts: dict, evaluator):
        """The candidate keeping `counts`, sliced by the study's ranking; with --reconstruct, refit on `evaluator`'s
        calibration batches (`reconstruct.prune_reconstructed`): each proxy seed refits on its own images."""
        from autoprune.pruner import prune_to_counts

        if not self.settings.reconstruct:
            return prune_to_counts(self.loaded.model, counts, graph=self.graph, ranking=self.ranking)
        from copy import deepcopy

        from autoprune.reconstruct import prune_reconstructed

        home = next(self.loaded.model.parameters()).device
        if self._refit_source is None:  # refit where the proxy runs, from one copy there for the whole search
            self._refit_source = (self.loaded.model if evaluator.device == home
                                  else deepcopy(self.loaded.model).to(evaluator.device))
        return prune_reconstructed(self._refit_source, counts, self.graph, self.ranking,
                                   evaluator.calibration_batches(), seed=evaluator.settings.seed).to(home)

    def _proxy_settings(self, seed: int):
        from autoprune.proxy import ProxySettings

        s = self.settings
        return ProxySettings(imgsz=s.proxy_imgsz, steps=s.proxy_steps, calib_batches=s.calib_batches,
                             val_images=s.val_images, seed=seed, device=str(self.device),
                             distill=float(s.proxy_distill))

    def _seeded_evaluator(self, seed: int):
        """An evaluator like the search's own (`evaluator`) under another proxy seed."""
        from autoprune.proxy import ProxyEvaluator

        ev = ProxyEvaluator(self.data, self._proxy_settings(seed))
        if self.settings.proxy_distill:
            ev.set_teacher(self.loaded.model)
        return ev

    @contextlib.contextmanager
    def _heartbeat(self, trial):
        stop = threading.Event()
        storage = self.study._storage

        def beat():
            while not stop.wait(self.settings.heartbeat_interval):
                with contextlib.suppress(Exception):
                    storage.record_heartbeat(trial._trial_id)

        with contextlib.suppress(Exception):
            storage.record_heartbeat(trial._trial_id)
        thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{trial.number}")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _report_progress(self, number, outcome, n, target, started, evaluated_here) -> None:
        a = self.study.trials[number].user_attrs
        best = self._best()
        elapsed = time.perf_counter() - started
        eta = elapsed / max(evaluated_here, 1) * max(target - n, 0)
        what = (f"mAP50-95 {a.get(R.MAP50_95, float('nan')):.3f}" if outcome == "COMPLETE"
                else f"{outcome.lower()}: {a.get(R.REASON, '')}")
        gf = a.get(R.GFLOPS)
        lat = a.get(R.LATENCY_MS)
        costs = f" | {gf:.2f} GFLOPs, {lat:.1f} ms" if gf is not None and lat is not None else ""
        best_txt = f" | best {best.map50_95:.3f} (#{best.number})" if best else ""
        self.log(f"[{n}/{target}] trial #{number} {what}{costs} ({a.get(R.SECONDS, 0):.0f}s){best_txt} | "
                 f"ETA {_duration(eta)}")

    def _best(self) -> R.TrialRecord | None:
        done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return R.best_trial([R.TrialRecord.from_trial(t) for t in done])

    def finish(self) -> SearchResult:
        """Write the reports and summarize the study as it is now."""
        from autoprune import report

        records = report.load_records(self.study)
        front = R.pareto_front(records)
        uniform = next((r for r in records if r.kind == "uniform" and r.state == "COMPLETE"), None)
        outputs = report.write_reports(self.study, self.run_dir)
        info = report.pareto_info(records, self.study.user_attrs)
        best = self._best()
        return SearchResult(
            name=self.name,
            run_dir=self.run_dir,
            storage=mask_url(self.url),
            evaluated=sum(1 for r in records if R.SECONDS in r.attrs),
            feasible=sum(1 for r in records if r.feasible),
            front=front,
            uniform=uniform,
            best=best,
            outputs=outputs,
            confirmed={n: by_seed for n, by_seed, _ in info.confirmed},
            recommended=info.recommended if info.confirmed else best,
        )


def _set_attrs(trial, attrs: dict) -> None:
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    constraints = attrs.get(R.CONSTRAINTS)
    if constraints:  # what Optuna's samplers and optuna-dashboard read as feasibility
        for key, value in zip(("gflops", "latency_ms"), constraints):
            trial.set_constraint(key, value)


def _next_name() -> str:
    from autoprune.runs import RUNS_ROOT

    n = 1
    while (RUNS_ROOT / "search" / f"exp{n}").exists():
        n += 1
    return f"exp{n}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _resume_flag(key: str, value, mine=None) -> str | None:
    """The `autoprune search` flags that ask for the stored `value` of study attribute `key` (this run's: `mine`),
    where there are."""
    from autoprune.space import shipped_spaces

    if key == R.STUDY_CRITERION and isinstance(value, str):
        return f"--criterion {value}"
    if key == R.STUDY_SPACE and isinstance(value, dict) and value.get("name") in shipped_spaces():
        return f"--space {value['name']}"
    if key == R.STUDY_BUDGET_GFLOPS and isinstance(value, (int, float)):
        return f"--budget-gflops {value:g}"
    if key == R.STUDY_SEED and isinstance(value, int):
        return f"--seed {value}"
    if key == R.STUDY_PROXY and isinstance(value, dict):  # the proxy's seed is --seed's
        mine = mine if isinstance(mine, dict) else {}
        flags = [f"{flag} {value[k]}" for flag, k in (("--proxy-steps", "steps"), ("--proxy-imgsz", "imgsz"),
                                                      ("--calib-batches", "calib_batches"),
                                                      ("--val-images", "val_images")) if k in value and
                 value[k] != mine.get(k)]
        if value.get("distill", 0.0) != mine.get("distill", 0.0):
            flags.append(f"--proxy-distill {value.get('distill', 0.0):g}")
        if bool(value.get("reconstruct")) != bool(mine.get("reconstruct")):
            flags.append("--reconstruct" if value.get("reconstruct") else "without --reconstruct")
        return " ".join(flags) or None
    return None


def _difference(key: str, stored, mine) -> str:
    """`key stored (this run: mine)`, for a mapping only the entries that differ (`proxy.reconstruct ...`)."""
    if isinstance(stored, dict) and isinstance(mine, dict):
        return "; ".join(f"{key}.{k} {_short(stored.get(k))} (this run: {_short(mine.get(k))})"
                         for k in sorted(set(stored) | set(mine), key=str) if stored.get(k) != mine.get(k))
    return f"{key} {_short(stored)} (this run: {_short(mine)})"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _version() -> str:
    from autoprune import __version__

    return __version__
