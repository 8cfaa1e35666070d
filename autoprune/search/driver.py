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
import datetime
from functools import partial
import math
import time
import warnings
from dataclasses import asdict

import optuna
from optuna.trial import TrialState

from autoprune.errors import UserError
from autoprune.search import records
from autoprune.search.engines import InitialPopulation, count_in_generation, make_sampler
from autoprune.search.latency import candidate_latency, latency_attrs, remeasure_front
from autoprune.search import plan
from autoprune.search.progress import progress_line
from autoprune.search.settings import (MAX_REJECTED_IN_A_ROW, SearchResult, SearchSettings,
                                       check_resumable, check_settings)
from autoprune.runs import run_dir_path
from autoprune.search.storage import STALE_RETRIES, STUDY_FILE, make_storage, mask_url, storage_url
from autoprune.search.study import heartbeat, next_name, settled_attrs, study_exists

optuna.logging.set_verbosity(optuna.logging.WARNING)


class Search:
    """One search process (one worker). Construction checks everything and creates the study; `run()` works.

    Example:
        >>> result = Search(SearchSettings(budget_gflops=5.0, trials=24)).run()
        >>> [r.number for r in result.front]
    """

    def __init__(self, settings: SearchSettings, *, log=print):
        from autoprune.channels import analyze
        from autoprune.cost import check_runtime, count_gflops, count_params
        from autoprune.data import check_task, load_data_config
        from autoprune.devices import resolve_device
        from autoprune.importance import check_calibration, get_criterion
        from autoprune.budget import largest_uniform
        from autoprune.models import head_classes, keypoint_shape, load_model, require_task
        from autoprune.space import load_space

        s = self.settings = settings
        self.log = log
        check_settings(s)
        get_criterion(s.criterion)
        check_calibration(s.criterion, s.calib_batches)
        if s.reconstruct and s.calib_batches == 0:
            raise UserError("--reconstruct refits convs on the calibration batches, and --calib-batches 0 leaves none: "
                            "pass --calib-batches N")
        self.device = resolve_device(s.device)
        self.latency_precision = check_runtime(s.latency_backend, self.device, s.latency_precision)

        # Where the study lives: the run folder PROJECT/NAME (default runs/search/expN) and its study (default named
        # as the folder, in the folder's study.db); a study that exists needs --resume. Checked before anything is
        # written.
        run_name = s.name or s.study or next_name(s.project)
        self.name = s.study or run_name
        self.run_dir = run_dir_path("search", s.project, run_name, exist_ok=True)
        self.url = s.storage if s.storage is not None else f"sqlite:///{self.run_dir / STUDY_FILE}"
        storage_url(s.storage, self.name)  # checks a --storage URL's form
        if (s.storage is None and self.run_dir.exists() and not (self.run_dir / STUDY_FILE).exists()
                and not (s.exist_ok or s.resume)):
            raise UserError(f"{self.run_dir} already exists; pass --exist-ok to start the search in it, or pick "
                            "another --name")
        exists = study_exists(self.settings.storage, self.name, self.url, self.run_dir / STUDY_FILE)
        if exists and not s.resume:
            raise UserError(f"a study named {self.name!r} already exists ({mask_url(self.url)}); "
                            "pass --resume to continue it")

        self.loaded = load_model(s.model)
        require_task(self.loaded, "search")
        self.graph = analyze(self.loaded.model, imgsz=s.imgsz)
        self.space = load_space(s.space, self.graph, self.loaded.model)
        self.data = load_data_config(s.data)
        check_task(self.data, self.loaded.task, keypoint_shape(self.loaded.model))  # e.g. a segment model: polygons
        nc = head_classes(self.loaded.model)
        if nc != self.data.nc:
            raise UserError(f"the model predicts {nc} classes but {self.data.yaml} has {self.data.nc}; "
                            "search a model trained on this dataset")

        # Budgets are in full GFLOPs (fvcore, Ultralytics' convention). The space predicts them in microseconds from
        # the channel counts, given the unpruned model's full count measured once.
        base_gflops = self.base_gflops = count_gflops(self.loaded.model, s.imgsz)
        min_gflops = self.space.min_gflops(s.imgsz, base_gflops=base_gflops)
        if s.budget_gflops is not None and s.budget_gflops < min_gflops:
            raise UserError(
                f"--budget-gflops {s.budget_gflops:g} is below what the search space can reach: the smallest "
                f"model it allows has {min_gflops:.2f} GFLOPs at {s.imgsz} (the unpruned one {base_gflops:.2f})"
            )
        if s.budget_gflops is not None and s.budget_gflops >= base_gflops:
            raise UserError(
                f"--budget-gflops {s.budget_gflops:g} is not below the unpruned model's {base_gflops:.2f} GFLOPs at "
                f"{s.imgsz}: nothing to prune; give a budget below it"
            )
        self._evaluator = None
        self._ranking = None
        self.base = {"gflops": base_gflops, "params": count_params(self.loaded.model)}
        self._channel_scores = None
        # resumed with other settings: say so before the calibration and the latency table take minutes
        stored = self._check_resumable_early() if exists else {}
        # which elements a depth gene removes: those whose removal changes their block's output least on the
        # calibration batches (stored with the channel ranking; a resumed study keeps the orders it stored)
        self.space.element_orders = plan.element_orders(self) if self.space.depth_genes else {}
        self.budget = plan.make_budget(self)
        # the latency model's level at the latency budget, from end-to-end timings (stored with the study)
        self.latency_calibration = (plan.calibrate_latency(self, stored) if s.budget_latency_ms is not None
                                    else None)
        self.uniform = largest_uniform(self.space, self.budget)

        self._refit_source = None  # the unpruned model on the proxy's device, for --reconstruct (made once)
        # What a new study stores, computed before anything is written: an error here (data the criterion cannot
        # use, say) leaves no half-made study behind that the same --name would then need --resume for.
        described = None if exists else plan.describe_study(self)

        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not (self.run_dir / "args.yaml").exists():
            from autoprune.runs import save_args

            save_args(self.run_dir, asdict(s), project=str(self.run_dir.parent), name=self.run_dir.name,
                      study=self.name, storage_url=self.url, model=self.loaded.source,
                      data=str(self.data.yaml))  # the resolved values, not a default's None
        self.storage = make_storage(self.url, heartbeat=(s.heartbeat_interval, s.grace_period))
        self.study = self._open_study(described)

    # ------------------------------------------------------------------------------------------------------------
    # The study

    def _check_resumable_early(self) -> dict:
        """`check_resumable` against the existing study's stored settings, read without opening it for writing, and
        those settings; nothing checked and {} returned when it is still being described by another worker
        (`_open_study` checks again)."""
        storage = make_storage(self.url, heartbeat=None, read_only=True)
        try:
            stored = optuna.load_study(study_name=self.name, storage=storage).user_attrs
        except KeyError:  # a local run folder without its study yet
            return {}
        if records.STUDY_VERSION not in stored:
            return {}
        check_resumable(self.name, stored, plan.study_attrs(self))
        return stored

    def _open_study(self, described: dict | None):
        """Create or load the study; a new one gets `described` (computed now when None: another worker's study
        vanished, or none existed when this one looked), an existing one must have been made with these settings."""
        s = self.settings
        init = InitialPopulation(center=self.uniform, fit=partial(plan.fit_to_share, self), budget=1.0)
        sampler = make_sampler(s.engine, s.sampler, self.space, seed=s.seed, population=s.population,
                               first_params=self.uniform, init=init)
        study = optuna.create_study(
            study_name=self.name,
            storage=self.storage,
            directions=list(records.DIRECTIONS),
            sampler=sampler,
            load_if_exists=True,
        )
        attrs = plan.study_attrs(self)
        stored = settled_attrs(study)
        if records.STUDY_VERSION not in stored:  # a new study: describe it
            study.set_metric_names(list(records.OBJECTIVES))
            for k, v in (described or plan.describe_study(self)).items():
                study.set_user_attr(k, v)
            stored = study.user_attrs
        check_resumable(self.name, stored, attrs)
        theirs = stored.get(records.STUDY_LATENCY_CALIBRATION)
        ours = self.latency_calibration.to_dict() if self.latency_calibration is not None else None
        if theirs != ours:
            # another worker described the study first: plan with its calibration, as every worker must
            from autoprune.budget import largest_uniform

            self.latency_calibration = plan.calibrate_latency(self, stored)
            self.uniform = largest_uniform(self.space, self.budget)
        orders = self.space.element_orders  # updated in place: a latency model holds the same dict
        orders.clear()
        orders.update({k: v for k, v in (stored.get(records.STUDY_RANKING) or {}).items()
                       if k.startswith("depth:")})  # a study of an older version stored none
        return study

    # ------------------------------------------------------------------------------------------------------------
    # Candidates

    @property
    def evaluator(self):
        if self._evaluator is None:
            from autoprune.proxy import ProxyEvaluator

            s = self.settings
            self.log(f"building the proxy evaluator ({s.proxy_imgsz}px, {s.val_images} val images)...")
            self._evaluator = ProxyEvaluator(self.data, self._proxy_settings(s.seed), task=self.loaded.task)
            if s.proxy_distill:
                self._evaluator.set_teacher(self.loaded.model)
        return self._evaluator

    @property
    def _figure(self) -> str:
        """What the proxy's score is called for this model's task ('mAP50-95', 'mask mAP50-95', 'top-1 accuracy')."""
        from autoprune.proxy import figure_names

        return figure_names(self.loaded.task)[1]

    @property
    def channel_scores(self) -> dict:
        """Every group's channel scores by the criterion (`plan.channel_scores`), computed once."""
        if self._channel_scores is None:
            self._channel_scores = plan.channel_scores(self)
        return self._channel_scores

    @property
    def ranking(self):
        """The channel order every trial slices, as stored in the study (the same for every worker and resume)."""
        if self._ranking is None:
            from autoprune.candidate import ranking_from_lists

            stored = self.study.user_attrs.get(records.STUDY_RANKING) or plan.compute_ranking(self)
            self._ranking = ranking_from_lists(stored, self.graph)
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
        trials = self.study.get_trials(deepcopy=False)
        superseded = _retried(trials)
        for t in trials:
            if t.number != trial.number and t.number not in superseded and records.SECONDS in t.user_attrs and (
                    t.user_attrs.get(records.KEPT_CHANNELS) == counts or t.user_attrs.get(records.GENOME) == genome):
                return t.number
        return None

    def _replace(self, trial, genome: dict, replacement: dict, kind: str, reason: str) -> None:
        """Queue `replacement` (of `kind`) in place of `trial`'s genome, and end the trial as rejected."""
        self.study.enqueue_trial(replacement, user_attrs={records.KIND: kind})
        trial.set_user_attr(records.GENOME, genome)
        trial.set_user_attr(records.KIND, records.TrialKind.REJECTED.value)
        trial.set_user_attr(records.REPAIRED_INTO, replacement)
        trial.set_user_attr(records.REASON, reason)
        self.study.tell(trial, state=TrialState.PRUNED)

    def _reject_over_budget(self, trial, genome: dict, estimate: float) -> None:
        from autoprune.budget import repair

        repaired = repair(self.space, genome, self.budget)
        self._replace(trial, genome, repaired, records.TrialKind.REPAIRED.value,
                      f"over the budget ({plan.budget_text(self)} at {estimate:.2f} x); a repaired genome was queued "
                      "instead")

    def _reject_under_floor(self, trial, genome: dict, estimate: float) -> bool:
        """Queue `genome` filled up toward the budget (`fit_to_gflops`) instead of spending a proxy on it.

        A model far under the budget gives away accuracy the user has paid for, and a short proxy mostly ranks such
        candidates by their size; filling keeps the proposed shape (every gene moves toward its high by one common
        factor) and spends the evaluation at the budget. False (evaluate it as it is) when filling changes nothing.
        """
        s = self.settings
        filled = plan.fit_to_share(self, genome, 1.0)
        if self.space.counts(filled) == self.space.counts(genome):
            return False
        self._replace(trial, genome, filled, records.TrialKind.FILLED.value,
                      f"under the budget floor ({estimate:.2f} < {s.budget_floor:g} x {plan.budget_text(self)}); a "
                      "genome filled up to the budget was queued")
        return True

    def evaluate(self, trial) -> str:
        """Evaluate one asked trial and tell the study; returns the state it ended in (or "rejected")."""
        from autoprune.cost import count_gflops, count_params
        from autoprune.cost.timing import under_load

        s = self.settings
        t0 = time.perf_counter()
        genome = self.space.check_genome(self._genome(trial))
        count_in_generation(self.study.sampler, self.study, trial)  # trial 0 and queued replacements count too
        if trial.number == 0:  # trial 0 is the uniform genome; the global plans follow it, so the front starts from
            if genome == self.uniform:  # its kind is stored now: a retry of it (its worker died) inherits it
                trial.set_user_attr(records.KIND, records.TrialKind.UNIFORM.value)
            queued = [genome]  # the classic answers (queued here: exactly once)
            for key, kind in zip((records.STUDY_GLOBAL, records.STUDY_GLOBAL_PER_FLOP), records.ONE_SHOT_KINDS):
                plan = self.study.user_attrs.get(key)  # absent in a study made before it existed
                if plan and plan not in queued:
                    self.study.enqueue_trial(plan, user_attrs={records.KIND: kind})
                    queued.append(plan)
        twin = self._evaluated_twin(trial, genome)
        if twin is not None:  # the proxy is deterministic: the same genome would score the same again
            trial.set_user_attr(records.GENOME, genome)
            trial.set_user_attr(records.KIND, records.TrialKind.DUPLICATE.value)
            trial.set_user_attr(records.REASON, f"duplicate of trial {twin}; not evaluated again")
            self.study.tell(trial, state=TrialState.PRUNED)
            return "rejected"
        estimate = self.budget.cost(genome)  # the share of the budget it uses (predicted)
        if estimate > 1 + 1e-6:
            self._reject_over_budget(trial, genome, estimate)
            return "rejected"
        if estimate < s.budget_floor and self._reject_under_floor(trial, genome, estimate):
            return "rejected"

        kind = trial.user_attrs.get(records.KIND) or (
            records.TrialKind.UNIFORM.value if trial.number == 0 and genome == self.uniform
            else records.TrialKind.SEARCH.value)
        counts = self.space.counts(genome)
        attrs = {
            records.GENOME: genome, records.KEEP: self.space.keep(genome), records.KEPT_CHANNELS: counts,
            records.KIND: kind, records.MODEL_FINGERPRINT: self.loaded.fingerprint, records.IMGSZ: s.imgsz,
            records.CRITERION: s.criterion, records.SEED: s.seed, records.ROUND_TO: self.space.round_to,
            records.MIN_CHANNELS: self.space.min_channels,
        }
        try:
            pruned = self.prune_candidate(counts, self.evaluator)
            gflops, params = count_gflops(pruned, s.imgsz), count_params(pruned)
            lat = candidate_latency(self, pruned, counts)  # measured, or predicted (--latency-model)
            constraints = [gflops - s.budget_gflops if s.budget_gflops is not None else 0.0]
            if s.budget_latency_ms is not None:
                constraints.append(lat.median_ms - s.budget_latency_ms)
            attrs.update({records.GFLOPS: gflops, records.PARAMS: params, records.LATENCY_MS: lat.median_ms,
                          records.LATENCY_SPREAD_MS: lat.p90_ms - lat.p10_ms, records.CONSTRAINTS: constraints,
                          records.LATENCY_LOAD: lat.load, records.LATENCY_UNDER_LOAD: under_load(lat.load, lat.device),
                          records.LATENCY_SETUP: {k: getattr(lat, k) for k in (
                              "backend", "precision", "executed_precision", "batch", "threads", "device_name")},
                          records.FEASIBLE: all(c <= 0 for c in constraints), **latency_attrs(self, lat)})
            if s.budget_latency_ms is not None and lat.median_ms > s.budget_latency_ms:
                attrs[records.REASON] = (f"over the latency budget ({lat.median_ms:.1f} > {s.budget_latency_ms:g} ms); "
                                   "not scored")
                attrs[records.SECONDS] = time.perf_counter() - t0
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
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            attrs[records.REASON] = f"{type(e).__name__}: {first}"[:500]
            attrs[records.SECONDS] = time.perf_counter() - t0
            _set_attrs(trial, attrs)
            self.study.tell(trial, state=TrialState.FAIL)
            self._failures.append(e)
            return "FAIL"
        attrs.update({records.MAP50: result.map50, records.MAP50_95: result.map50_95,
                      records.PROXY_SECONDS: result.seconds, records.SECONDS: time.perf_counter() - t0, records.MAP50_95_SE: result.map50_95_se,
                      records.MAP50_95_BOOT: [round(x, 6) for x in result.map50_95_boot]})
        _set_attrs(trial, attrs)
        self.study.tell(trial, values=[result.map50_95, gflops, lat.median_ms])
        return "COMPLETE"

    # ------------------------------------------------------------------------------------------------------------
    # The loop

    def _progress(self) -> tuple[int, int]:
        """(evaluated trials, trials being evaluated now) in the whole study, all workers together."""
        done = running = 0
        trials = self.study.get_trials(deepcopy=False)
        superseded = _retried(trials)
        now = datetime.datetime.now()
        for t in trials:
            if t.state == TrialState.RUNNING or _awaiting_retry(t, superseded, now):
                running += 1
            elif t.state.is_finished() and records.SECONDS in t.user_attrs and t.number not in superseded:
                done += 1
        return done, running

    def _claim(self, trial) -> bool:
        """After asking: drop this trial if other workers already fill the study's trial budget."""
        done, _ = self._progress()
        running = sorted(t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if done + running.index(trial.number) < self.settings.target_trials:
            return True
        trial.set_user_attr(records.KIND, records.TrialKind.SURPLUS.value)
        trial.set_user_attr(records.REASON, "not run: other workers already fill the study's trial budget")
        self.study.tell(trial, state=TrialState.PRUNED)
        return False

    def run(self) -> SearchResult:
        from autoprune.cost import LatencyCache

        s = self.settings
        target = s.target_trials
        self.latency_cache = LatencyCache(self.run_dir / "latency.json")
        self._failures: list[Exception] = []
        self._warned = False
        successes = rejected_in_a_row = 0
        started = time.perf_counter()
        evaluated_here = 0
        self.log(f"search {self.name!r}: {target} candidates, budget {plan.budget_text(self)} at {s.imgsz}"
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
                except optuna.exceptions.UpdateFinishedTrialError:
                    # Another worker failed this trial for a stale heartbeat (this process stalled past the grace
                    # period) and queued its retry, which stands for it: this worker moves on.
                    self.log(f"trial #{trial.number} was finished by another worker; moving on")
                    continue
                except BaseException:
                    with contextlib.suppress(Exception):
                        trial.set_user_attr(records.REASON, "interrupted")
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
            self._warn_small_data(trial.number)

        self._confirm_cost = {"evaluations": 0, "seconds": 0.0}
        if s.confirm:
            self.confirm()
        elif s.auto_confirm:
            from autoprune.search.confirm import auto_confirm

            self._confirm_cost = auto_confirm(self)
        self._remeasure_cost = remeasure_front(self)  # --latency-model predicted: the front timed end to end
        return self.finish()

    def _warn_small_data(self, number: int) -> None:
        """One `warning:` line on stderr, once, when trial `number` (the first evaluated: the uniform genome) says
        that the validation subset is too small to rank candidates (`uncertainty.too_small`)."""
        import sys

        from autoprune.uncertainty import too_small

        if self._warned:
            return
        t = self.study.trials[number]
        if t.user_attrs.get(records.KIND) != records.TrialKind.UNIFORM.value or t.state != TrialState.COMPLETE:
            return
        ev = self.evaluator
        text = too_small(ev.val_images, ev.val_boxes, t.user_attrs.get(records.MAP50_95_SE), self._figure)
        if text:
            self._warned = True
            print(f"warning: {text}", file=sys.stderr, flush=True)

    def confirm(self) -> dict[int, dict[int, float]]:
        """Re-score the best trials and the one-shot plans under more proxy seeds (`confirm.confirm_trials`)."""
        from autoprune.search.confirm import confirm_trials

        return confirm_trials(self)

    def prune_candidate(self, counts: dict, evaluator):
        """The candidate keeping `counts`, sliced by the study's ranking (`candidate.build`); with --reconstruct,
        refit on `evaluator`'s calibration batches: each proxy seed refits on its own images. Swaps (`swap:` genes)
        are fitted on those batches with or without --reconstruct, as `apply` fits them."""
        from autoprune.candidate import build
        from autoprune.swap import split_counts as split_swaps

        swaps = bool(split_swaps(counts)[1]) and self.settings.calib_batches > 0  # with no batches: on the weights
        if not (self.settings.reconstruct or swaps):
            return build(self.loaded.model, counts, graph=self.graph, ranking=self.ranking).model
        from copy import deepcopy

        home = next(self.loaded.model.parameters()).device
        if self._refit_source is None:  # refit where the proxy runs, from one copy there for the whole search
            self._refit_source = (self.loaded.model if evaluator.device == home
                                  else deepcopy(self.loaded.model).to(evaluator.device))
        batches = evaluator.calibration_batches()
        fit = {"batches": batches} if self.settings.reconstruct else {"swap_batches": batches}
        return build(self._refit_source, counts, graph=self.graph, ranking=self.ranking, seed=evaluator.settings.seed,
                     **fit).model.to(home)

    def _proxy_settings(self, seed: int):
        from autoprune.proxy import ProxySettings

        s = self.settings
        return ProxySettings(imgsz=s.proxy_imgsz, steps=s.proxy_steps, calib_batches=s.calib_batches,
                             val_images=s.val_images, seed=seed, device=str(self.device),
                             distill=float(s.proxy_distill))

    def seeded_evaluator(self, seed: int):
        """An evaluator like the search's own (`evaluator`) under another proxy seed."""
        from autoprune.proxy import ProxyEvaluator

        ev = ProxyEvaluator(self.data, self._proxy_settings(seed), task=self.loaded.task)
        if self.settings.proxy_distill:
            ev.set_teacher(self.loaded.model)
        return ev

    def _heartbeat(self, trial):
        return heartbeat(self.study, trial, self.settings.heartbeat_interval)

    def _report_progress(self, number, outcome, n, target, started, evaluated_here) -> None:
        elapsed = time.perf_counter() - started
        eta = elapsed / max(evaluated_here, 1) * max(target - n, 0)
        self.log(progress_line(self.study.trials[number], outcome, n, target, self._best(), eta, self._figure))

    def _best(self) -> records.TrialRecord | None:
        done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return records.best_trial([records.TrialRecord.from_trial(t) for t in done])

    def finish(self) -> SearchResult:
        """Summarize the study as it is now (the caller writes the reports: `report.write_reports`)."""
        recs = records.load_records(self.study)
        recommendation = records.recommendation(self.study.user_attrs, recs)
        uniform = next((r for r in recs if r.kind == records.TrialKind.UNIFORM and r.state == "COMPLETE"), None)
        return SearchResult(
            name=self.name,
            run_dir=self.run_dir,
            storage=mask_url(self.url),
            evaluated=sum(1 for r in recs if records.SECONDS in r.attrs),
            feasible=sum(1 for r in recs if r.feasible),
            front=records.pareto_front(recs),
            uniform=uniform,
            best=records.best_trial(recs),
            confirmed={n: by_seed for n, by_seed, _ in records.ranked_confirmations(self.study.user_attrs, recs)},
            recommended=recommendation.trial,
            recommendation_reason=recommendation.reason,
            confirm_cost=getattr(self, "_confirm_cost", {"evaluations": 0, "seconds": 0.0}),
            remeasure_cost=getattr(self, "_remeasure_cost", {}),
        )


def _retried(trials) -> set[int]:
    """The numbers of the trials failed for a stale heartbeat and queued again (the storage's
    RetryHeartbeatStaleTrialCallback records each in its retry's `retry_history`). The retry stands for such a trial:
    a worker failed while it was still writing its results (alive, but its heartbeat late) may have left some of them,
    and neither the trial counts as evaluated nor is its retry a duplicate of it."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", ())}


RETRY_WINDOW_S = 60.0  # the longest a worker waits for the retry of a trial another worker has just failed


def _awaiting_retry(t, superseded: set[int], now) -> bool:
    """Whether `t` has just been failed for a stale heartbeat and its retry is still to be queued. Optuna fails such a
    trial first and queues its retry after (`fail_stale_trials`, then `RetryHeartbeatStaleTrialCallback`); a worker
    that asked in between would take a new trial in the retry's place and fill the study's budget without it, leaving
    the retry waiting for a resume. Such a trial counts as running until its retry is queued, for at most
    `RETRY_WINDOW_S` (a worker killed in between never queues it; Optuna stamps the failure with the failing
    worker's local clock, so a clock hours apart waits for nothing). Only a dead worker's trial fails without a
    reason: every failure the driver records has one."""
    return (t.state == TrialState.FAIL and t.number not in superseded and records.SECONDS not in t.user_attrs
            and records.REASON not in t.user_attrs and len(t.system_attrs.get("retry_history", ())) < STALE_RETRIES
            and t.datetime_complete is not None and abs((now - t.datetime_complete).total_seconds()) < RETRY_WINDOW_S)


def _set_attrs(trial, attrs: dict) -> None:
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    constraints = attrs.get(records.CONSTRAINTS)
    if constraints:  # what Optuna's samplers and optuna-dashboard read as feasibility
        for key, value in zip(("gflops", "latency_ms"), constraints):
            trial.set_constraint(key, value)
