"""What a search stores in its Optuna study, and how to read it back.

Every candidate is a trial in one Optuna study, whichever engine drives the search. Its values are the objectives
(`OBJECTIVES`, in that order: maximize mAP50-95, minimize GFLOPs, minimize latency); everything needed to replay it
lives in the trial's user attributes under the keys below, so `autoprune apply --trial N` rebuilds exactly that
model. Study-level settings (model, data, budgets, search space, proxy settings) live in the study's user
attributes under `STUDY_*` keys.

A trial is **feasible** when it completed and meets every budget; only feasible trials make the Pareto front.
Trials that never reached the proxy (a genome over the FLOPs budget, repaired into another trial; a candidate over
the latency budget) are PRUNED with the reason in `REASON`; candidates that raised are FAIL with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

OBJECTIVES = ("mAP50-95", "GFLOPs", "latency_ms")
DIRECTIONS = ("maximize", "minimize", "minimize")
# The objectives as TrialRecord fields, with the sign that makes larger better
FRONT_FIELDS = (("map50_95", 1.0), ("gflops", -1.0), ("latency_ms", -1.0))

class TrialKind(str, Enum):
    """Every kind of trial the search writes under `KIND` (stored as its value)."""

    UNIFORM = "uniform"  # trial 0: one keep ratio everywhere, at the budget
    GLOBAL = "global"  # one-shot global pruning by the criterion (STUDY_GLOBAL), queued by trial 0
    GLOBAL_PER_FLOP = "global-per-flop"  # the same by importance per FLOP (STUDY_GLOBAL_PER_FLOP)
    SEARCH = "search"  # proposed by the sampler
    REPAIRED = "repaired"  # a proposal over the budget, repaired into it and queued
    FILLED = "filled"  # a proposal under the budget floor, filled up toward the budget and queued
    REJECTED = "rejected"  # a proposal not evaluated: a repaired or filled genome was queued instead
    DUPLICATE = "duplicate"  # prunes to the channels of a trial already scored; not evaluated again
    SURPLUS = "surplus"  # asked when other workers already filled the study's trial budget; not run


ONE_SHOT_KINDS = (TrialKind.GLOBAL.value, TrialKind.GLOBAL_PER_FLOP.value)  # the one-shot plans trial 0 queues

# Trial user attributes
GENOME = "genome"  # {gene name: keep ratio}
KEEP = "keep"  # {group id: keep ratio}, the genome expanded by the search space
KEPT_CHANNELS = "kept_channels"  # {group id: channels kept per part}; depth genes add {"depth:<unit id>": kept}
GFLOPS = "gflops"
PARAMS = "params"
LATENCY_MS = "latency_ms"
LATENCY_SPREAD_MS = "latency_spread_ms"  # p90 - p10 of the timed runs
LATENCY_LOAD = "latency_load"  # the 1-minute load average when the latency was measured (None: unknown)
LATENCY_SETUP = "latency_setup"  # what measured it: {backend, precision, executed_precision, batch, threads, device_name}
LATENCY_UNDER_LOAD = "latency_under_load"  # True: measured under load (`cost.timing.under_load`), noisy
LATENCY_PREDICTED_MS = "latency_predicted_ms"  # --latency-model predicted: the latency model's figure
LATENCY_SOURCE = "latency_source"  # "predicted" (LATENCY_MS is the prediction) or "measured"; absent: measured
MAP50 = "map50"
MAP50_95 = "map50_95"
MAP50_95_SE = "map50_95_se"  # the bootstrap standard error of MAP50_95 over val subsets (`autoprune.uncertainty`)
MAP50_95_BOOT = "map50_95_boot"  # MAP50_95 per bootstrap resample; trials under one proxy seed pair up
PROXY_SECONDS = "proxy_seconds"
SECONDS = "seconds"  # wall time of the whole candidate
MODEL_FINGERPRINT = "model_fingerprint"
IMGSZ = "imgsz"  # the image size GFLOPs and latency are measured at
CRITERION = "criterion"
SEED = "seed"
ROUND_TO = "round_to"
MIN_CHANNELS = "min_channels"
KIND = "kind"  # a TrialKind value
FEASIBLE = "feasible"
CONSTRAINTS = "constraints"  # [gflops - budget, latency - latency budget]; <= 0 is within budget
REASON = "reason"  # why a trial was pruned or failed
REPAIRED_INTO = "repaired_into"  # for a rejected genome: the genome evaluated instead (repaired or filled)

# Study user attributes
STUDY_MODEL = "model"  # what the user named
STUDY_MODEL_FINGERPRINT = "model_fingerprint"
STUDY_DATA = "data"
STUDY_TASK = "task"  # the model's Ultralytics task: what the proxy's figures are (`proxy.figure_names`)
STUDY_BUDGET_GFLOPS = "budget_gflops"
STUDY_BUDGET_LATENCY_MS = "budget_latency_ms"
STUDY_BUDGET_FLOOR = "budget_floor"
STUDY_LATENCY_BACKEND = "latency_backend"  # the runtime latency is measured in (absent in older studies: torch)
STUDY_LATENCY_BATCH = "latency_batch"  # (absent: 1)
STUDY_LATENCY_PRECISION = "latency_precision"  # fp32 or fp16 (absent: fp16 on a CUDA device, else fp32)
STUDY_GLOBAL = "global_genome"  # one-shot global pruning by the criterion, as a genome: trial 0 queues it
STUDY_GLOBAL_PER_FLOP = "global_per_flop_genome"  # the same by importance per FLOP (`strategies.per_flop_scores`)
STUDY_IMGSZ = "imgsz"
STUDY_DEVICE = "device"
STUDY_SPACE = "space"  # the search space, as the dict its YAML loads to
STUDY_CRITERION = "criterion"
STUDY_ENGINE = "engine"
STUDY_SAMPLER = "sampler"
STUDY_SEED = "seed"
STUDY_PROXY = "proxy"  # proxy settings as a dict
STUDY_POPULATION = "population"
STUDY_BASE = "base"  # the unpruned model: {gflops, params, latency_ms}
STUDY_RANKING = "ranking"  # {group id: [channel order per part]}: what every trial of the study slices
STUDY_VERSION = "autoprune_version"
STUDY_CONFIRM_PREFIX = "confirm:"  # "confirm:<trial>:<proxy seed>" -> mAP50-95 of the trial under that proxy seed
# {scale, offset_ms, steps}: the latency model's calibration by end-to-end timings (`search.plan.calibrate_latency`)
STUDY_LATENCY_CALIBRATION = "latency_calibration"
STUDY_LATENCY_MODEL = "latency_model"  # how candidates' latency was priced: measured or predicted (absent: measured)
# "measured_latency:<trial>" -> {ms, spread_ms, load, under_load, setup}: a predicted trial timed end to end after
# the search (`search.latency.remeasure_front`; a finished trial takes no new attribute)
STUDY_MEASURED_LATENCY_PREFIX = "measured_latency:"


def measured_latency_key(number: int) -> str:
    """The study attribute holding trial `number`'s latency measured end to end after a predicted search."""
    return f"{STUDY_MEASURED_LATENCY_PREFIX}{int(number)}"


def with_measured_latency(study_attrs: dict, recs: list) -> list:
    """`recs` with each re-measured latency (`measured_latency_key`) in place of its prediction: `latency_ms`, the
    attributes `LATENCY_MS`, spread, load and setup measured, `LATENCY_SOURCE` "measured", `LATENCY_PREDICTED_MS`
    kept; a trial the measurement puts over the study's latency budget becomes infeasible, with its reason.

    Example:
        >>> r = TrialRecord(3, "COMPLETE", 0.41, 0.6, 4.1, 11.0, 1000, True, "search", None,
        ...                 attrs={"latency_source": "predicted", "latency_predicted_ms": 11.0})
        >>> [(x.latency_ms, x.feasible) for x in with_measured_latency(
        ...     {"budget_latency_ms": 12.0, "measured_latency:3": {"ms": 12.5}}, [r])]
        [(12.5, False)]
    """
    import dataclasses

    budget = study_attrs.get(STUDY_BUDGET_LATENCY_MS)
    out = []
    for r in recs:
        m = study_attrs.get(measured_latency_key(r.number))
        if not isinstance(m, dict) or not isinstance(m.get("ms"), (int, float)):
            out.append(r)
            continue
        ms = float(m["ms"])
        attrs = {**r.attrs, LATENCY_MS: ms, LATENCY_SPREAD_MS: m.get("spread_ms"), LATENCY_LOAD: m.get("load"),
                 LATENCY_UNDER_LOAD: bool(m.get("under_load")), LATENCY_SOURCE: "measured"}
        if m.get("setup"):
            attrs[LATENCY_SETUP] = m["setup"]
        feasible, reason = r.feasible, r.reason
        if budget is not None and ms > budget:
            constraints = list(attrs.get(CONSTRAINTS) or [0.0])
            attrs[CONSTRAINTS] = [constraints[0], ms - budget]
            attrs[FEASIBLE] = feasible = False
            reason = attrs[REASON] = (f"over the latency budget measured end to end after the search ({ms:.1f} > "
                                      f"{budget:g} ms; predicted {r.latency_ms:.1f})")
        out.append(dataclasses.replace(r, latency_ms=ms, feasible=feasible, reason=reason, attrs=attrs))
    return out


def confirm_key(number: int, seed: int) -> str:
    """The study attribute holding trial `number`'s score under proxy seed `seed` (`Search.confirm`); one key per
    score, so workers confirming at once never overwrite each other."""
    return f"{STUDY_CONFIRM_PREFIX}{int(number)}:{int(seed)}"


def confirmed_scores(study_attrs: dict, records: list) -> dict[int, dict[int, float]]:
    """{trial number: {proxy seed: mAP50-95}} for every trial re-scored under other proxy seeds, its search score
    (under the study's proxy seed) included; empty when nothing was confirmed.

    Example:
        >>> r = TrialRecord(3, "COMPLETE", 0.41, 0.6, 4.1, 12.0, 1_500_000, True, "search", None)
        >>> confirmed_scores({"proxy": {"seed": 0}, "confirm:3:1": 0.39}, [r])
        {3: {0: 0.41, 1: 0.39}}
    """
    seed = int((study_attrs.get(STUDY_PROXY) or {}).get("seed", 0))
    scores = {r.number: r.map50_95 for r in records if r.map50_95 is not None}
    out: dict[int, dict[int, float]] = {}
    for key, value in study_attrs.items():
        if not key.startswith(STUDY_CONFIRM_PREFIX):
            continue
        number, other = (int(x) for x in key[len(STUDY_CONFIRM_PREFIX):].split(":"))
        if number in scores:
            out.setdefault(number, {seed: scores[number]})[other] = float(value)
    return {n: dict(sorted(v.items())) for n, v in sorted(out.items())}


@dataclass(frozen=True)
class TrialRecord:
    """One trial as reports and `apply` see it: a flat view of its state, values and attributes."""

    number: int
    state: str  # "COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"
    map50_95: float | None
    map50: float | None
    gflops: float | None
    latency_ms: float | None
    params: int | None
    feasible: bool
    kind: str
    reason: str | None
    genome: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    map50_95_se: float | None = None  # MAP50_95_SE: how far map50_95 would move with another val subset

    @classmethod
    def from_trial(cls, trial) -> TrialRecord:
        """From an `optuna.trial.FrozenTrial`."""
        a = trial.user_attrs
        return cls(
            number=trial.number,
            state=trial.state.name,
            map50_95=_num(a.get(MAP50_95)),
            map50=_num(a.get(MAP50)),
            gflops=_num(a.get(GFLOPS)),
            latency_ms=_num(a.get(LATENCY_MS)),
            params=a.get(PARAMS),
            feasible=bool(a.get(FEASIBLE, False)) and trial.state.name == "COMPLETE",
            kind=a.get(KIND, "search"),
            reason=a.get(REASON),
            genome=dict(a.get(GENOME) or trial.params),
            attrs=dict(a),
            map50_95_se=_num(a.get(MAP50_95_SE)),
        )


def _num(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def load_records(study) -> list[TrialRecord]:
    """Every trial of an Optuna study as a `TrialRecord`, by trial number (running and waiting ones included).

    Example:
        >>> import optuna
        >>> load_records(optuna.create_study(directions=["maximize", "minimize", "minimize"]))
        []
    """
    trials = study.get_trials(deepcopy=False)
    recs = sorted((TrialRecord.from_trial(t) for t in trials), key=lambda r: r.number)
    if any(t.user_attrs.get(LATENCY_SOURCE) == "predicted" for t in trials):  # a --latency-model predicted study
        recs = with_measured_latency(study.user_attrs, recs)
    return recs


def _objectives(r: TrialRecord) -> tuple[float, float, float]:
    """Objectives as values to maximize; a missing one counts as the worst possible."""
    inf = float("inf")
    return (
        -inf if r.map50_95 is None else r.map50_95,
        -inf if r.gflops is None else -r.gflops,
        -inf if r.latency_ms is None else -r.latency_ms,
    )


def dominates(a: TrialRecord, b: TrialRecord) -> bool:
    """Pareto dominance on the three objectives (higher mAP, lower GFLOPs, lower latency)."""
    va, vb = _objectives(a), _objectives(b)
    return all(x >= y for x, y in zip(va, vb)) and any(x > y for x, y in zip(va, vb))


def front_candidates(records: list[TrialRecord]) -> tuple[tuple[str, ...], list[TrialRecord]]:
    """The objectives the front is computed over (TrialRecord fields) and the records that may be on it.

    The objectives are mAP50-95 and each cost that some feasible, scored record carries (a study without latency
    values has a front over mAP50-95 and GFLOPs). The candidates are the feasible records with a value for every
    one of them; a feasible record missing one is left off the front.

    Example:
        >>> r = TrialRecord(3, "COMPLETE", 0.41, 0.6, 4.1, None, 1_500_000, True, "search", None)
        >>> objectives, candidates = front_candidates([r])
        >>> objectives, [c.number for c in candidates]
        (('map50_95', 'gflops'), [3])
    """
    scored = [r for r in records if r.feasible and r.map50_95 is not None]
    objectives = tuple(a for a, _ in FRONT_FIELDS if a == "map50_95" or any(getattr(r, a) is not None for r in scored))
    return objectives, [r for r in scored if all(getattr(r, a) is not None for a in objectives)]


def pareto_front(records: list[TrialRecord]) -> list[TrialRecord]:
    """The front candidates (`front_candidates`) that no other candidate dominates, by trial number.

    Example:
        >>> def rec(n, m, g, lat):
        ...     return TrialRecord(n, "COMPLETE", m, None, g, lat, None, True, "search", None)
        >>> [r.number for r in pareto_front([rec(0, 0.3, 4.0, 10.0), rec(1, 0.35, 4.0, 11.0), rec(2, 0.2, 5.0, 12.0)])]
        [0, 1]
    """
    objectives, candidates = front_candidates(records)
    keep = _non_dominated(candidates, objectives)
    return sorted((r for r, k in zip(candidates, keep) if k), key=lambda r: r.number)


def ranked_trials(records: list[TrialRecord]) -> list[TrialRecord]:
    """The front candidates (`front_candidates`), best first: highest mAP50-95, then fewer GFLOPs, then lower
    latency, then the lower trial number. The first is `best_trial`; `Search.confirm` re-scores the first N.

    Example:
        >>> def rec(n, m, g, lat):
        ...     return TrialRecord(n, "COMPLETE", m, None, g, lat, None, True, "search", None)
        >>> [r.number for r in ranked_trials([rec(0, 0.5, 3.0, 12.0), rec(1, 0.5, 3.0, 11.0), rec(2, 0.6, 4.0, 9.0)])]
        [2, 1, 0]
    """
    inf = float("inf")
    _, candidates = front_candidates(records)
    return sorted(candidates, key=lambda r: (
        -r.map50_95, inf if r.gflops is None else r.gflops, inf if r.latency_ms is None else r.latency_ms, r.number))


def best_trial(records: list[TrialRecord]) -> TrialRecord | None:
    """The first of `ranked_trials`: the feasible trial with the highest mAP50-95; ties go to fewer GFLOPs, then
    lower latency, then the lower trial number. None without a feasible, scored trial.

    It is always on the front: no trial beats its mAP50-95, and one that ties it there has at least its GFLOPs
    and latency.

    Example:
        >>> def rec(n, m, g, lat):
        ...     return TrialRecord(n, "COMPLETE", m, None, g, lat, None, True, "search", None)
        >>> best_trial([rec(0, 0.5, 3.0, 12.0), rec(1, 0.5, 3.0, 11.0), rec(2, 0.4, 2.0, 9.0)]).number
        1
    """
    ranked = ranked_trials(records)
    return ranked[0] if ranked else None


def ranked_confirmations(study_attrs: dict, records: list[TrialRecord]) -> list[tuple[int, dict[int, float], float]]:
    """The confirmed trials (`confirmed_scores`) as (number, {proxy seed: mAP50-95}, mean), the trials scored under
    the most seeds first, then by mean (highest first), then by number: the first is the trial to recommend.

    Example:
        >>> recs = [TrialRecord(n, "COMPLETE", m, 0.6, 4.1, 12.0, 1000, True, "search", None)
        ...         for n, m in ((1, 0.50), (2, 0.49))]
        >>> [n for n, _, _ in ranked_confirmations({"confirm:1:1": 0.47, "confirm:2:1": 0.495}, recs)]
        [2, 1]
    """
    by_trial = confirmed_scores(study_attrs, records)
    return sorted(((n, v, sum(v.values()) / len(v)) for n, v in by_trial.items()),
                  key=lambda c: (-len(c[1]), -c[2], c[0]))


NOISE_FACTOR = 2.0  # a searched trial must lead the best one-shot plan by this many standard errors of the difference

# How far a paired difference of two proxy scores moves with another proxy seed (another BN-recalibration draw and
# finetune order, on the same validation images), as a multiple of its paired bootstrap SE (which covers another
# validation subset only). Measured on the demo's issue-24 studies (docs/BENCHMARKS.md): over the 12 trial pairs
# that auto-confirmation scored under 3 proxy seeds, pooled SD over seeds / paired bootstrap SE = 1.43 (9 pairs with
# 12 validation images, where every seed sees the same images: 1.43; 3 on the default 200-image subset: 0.88); with
# the 3 pairs confirmed since under this rule, 1.44 over 15.
PROXY_SEED_RATIO = 1.4


@dataclass(frozen=True)
class Recommendation:
    """The trial to apply and why (`recommendation`).

    Attributes:
        trial: the recommended trial (None without a feasible, scored trial).
        reason: one sentence a user reads: which trials were weighed and what decided.
        leader: the trial ranked first by score (by mean over the confirming seeds when there are confirmations).
        plan: the best one-shot plan (`ONE_SHOT_KINDS`), None when none was scored feasible.
        lead: leader's score minus plan's (means over the shared seeds when both were confirmed).
        se: the standard error of `lead` (None when the scores carry no uncertainty).
        within_noise: a searched leader whose lead is at most `NOISE_FACTOR` x `se`: the plan is recommended, and a
            search re-scores them under more proxy seeds (`search.confirm.auto_confirm`).
    """

    trial: TrialRecord | None
    reason: str
    leader: TrialRecord | None = None
    plan: TrialRecord | None = None
    lead: float | None = None
    se: float | None = None
    within_noise: bool = False


def recommendation(study_attrs: dict, records: list[TrialRecord]) -> Recommendation:
    """The one rule for the trial to apply: the leader (the first of `ranked_confirmations` when the search
    confirmed trials, else `best_trial`) unless it is a searched trial whose lead over the best one-shot plan is
    within noise (at most `NOISE_FACTOR` standard errors of the difference), in which case the plan.

    The standard error of the difference has two parts. Another validation subset: a paired bootstrap over the same
    validation images (`uncertainty.difference_se` on the trials' `MAP50_95_BOOT`), or both trials' `MAP50_95_SE`
    combined. Another proxy seed (recalibration draw and finetune order): from one score per trial it cannot be
    seen, so it is taken as `PROXY_SEED_RATIO` times the first part, as measured; a lead within noise is then
    re-scored under more seeds by the search (`search.confirm.auto_confirm`). With the two trials confirmed under
    k >= 2 proxy seeds, the lead is the mean of the per-seed differences and the second part is measured: the
    spread of the differences over sqrt(k). The first part is not divided by sqrt(k), since seeds drawing from a
    small split see mostly the same images. Scores stored without an uncertainty (studies from before it was kept)
    leave the leader recommended.

    Example:
        >>> def rec(n, kind, m, se):
        ...     return TrialRecord(n, "COMPLETE", m, None, 4.0, None, None, True, kind, None, map50_95_se=se)
        >>> r = recommendation({}, [rec(1, "global", 0.40, 0.01), rec(5, "search", 0.41, 0.01)])
        >>> r.trial.number, r.within_noise
        (1, True)
    """
    import statistics

    from autoprune.uncertainty import difference_se

    confirmed = ranked_confirmations(study_attrs, records)
    by_number = {r.number: r for r in records}
    scores = {n: v for n, v, _ in confirmed}
    if confirmed:
        leader = by_number[confirmed[0][0]]
        means = {n: m for n, _, m in confirmed}
    else:
        leader = best_trial(records)
        means = {}
    if leader is None:
        return Recommendation(None, "no feasible trial has a score")

    def score(r):
        return means.get(r.number, r.map50_95)

    plans = [r for r in ranked_trials(records) if r.kind in ONE_SHOT_KINDS]
    plan = max(plans, key=lambda r: (score(r), -r.number)) if plans else None
    if leader.kind not in (TrialKind.SEARCH.value, TrialKind.REPAIRED.value, TrialKind.FILLED.value):
        return Recommendation(leader, f"trial {leader.number} ({leader.kind}) has the best score", leader, plan)
    if plan is None:
        return Recommendation(leader, f"trial {leader.number} has the best score; no one-shot plan was scored "
                                      "to compare it with", leader)
    subset_se = difference_se(leader.attrs.get(MAP50_95_BOOT), plan.attrs.get(MAP50_95_BOOT), leader.map50_95_se,
                              plan.map50_95_se)
    lead = leader.map50_95 - plan.map50_95
    shared = sorted(set(scores.get(leader.number, {})) & set(scores.get(plan.number, {})))
    over, se = "", None
    if len(shared) >= 2:
        d = [scores[leader.number][k] - scores[plan.number][k] for k in shared]
        lead = sum(d) / len(d)
        se = math.sqrt((subset_se or 0.0) ** 2 + statistics.variance(d) / len(d))
        over = f" (mean over proxy seeds {', '.join(map(str, shared))})"
    elif subset_se is not None:
        se = subset_se * math.sqrt(1.0 + PROXY_SEED_RATIO**2)
    if se is None:
        return Recommendation(leader, f"trial {leader.number} has the best score; its score carries no uncertainty "
                                      "to weigh it against the one-shot plans", leader, plan, lead)
    what = (f"searched trial {leader.number} leads the best one-shot plan, trial {plan.number} ({plan.kind}), by "
            f"{lead:+.4f} mAP50-95{over}")
    if lead > NOISE_FACTOR * se:
        return Recommendation(leader, f"{what}, more than {NOISE_FACTOR:g} x the standard error of the difference "
                                      f"({se:.4f}, validation subset and proxy seed)", leader, plan, lead, se)
    return Recommendation(plan, f"{what}, within {NOISE_FACTOR:g} x the standard error of the difference "
                                f"({se:.4f}, validation subset and proxy seed): the one-shot plan is recommended",
                          leader, plan, lead, se, True)


def recommended_trial(study_attrs: dict, records: list[TrialRecord]) -> TrialRecord | None:
    """The trial to apply (`recommendation`)."""
    return recommendation(study_attrs, records).trial


def _non_dominated(records: list[TrialRecord], objectives: tuple[str, ...]) -> list[bool]:
    """For each record, whether no other record dominates it on `objectives` (numpy, in row blocks)."""
    import numpy as np

    if not records:
        return []
    sign = dict(FRONT_FIELDS)
    v = np.array([[sign[a] * float(getattr(r, a)) for a in objectives] for r in records])
    keep = np.ones(len(records), dtype=bool)
    for start in range(0, len(v), 512):  # bounded memory: a (block, n, k) comparison at a time
        block = v[start:start + 512, None, :]  # the candidates ...
        ge = (v[None, :, :] >= block).all(axis=2)  # ... against every other record
        gt = (v[None, :, :] > block).any(axis=2)
        keep[start:start + 512] = ~(ge & gt).any(axis=1)
    return keep.tolist()
