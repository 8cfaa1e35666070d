"""Confirmation: the leaders of a finished search re-scored under more proxy seeds, so that the recommendation is
not one seed's luck (see `confirm_trials`)."""

from __future__ import annotations

import time

from optuna.trial import TrialState

from autoprune.search import records
from autoprune.search.progress import duration_text


AUTO_SEEDS = 2  # auto-confirmation: the leader and the one-shot plans under this many more proxy seeds (<= 6 scores)


def auto_confirm(search) -> dict:
    """When the search's leader is a searched trial whose lead over the best one-shot plan is within noise
    (`records.recommendation`), re-score it and the one-shot plans under `AUTO_SEEDS` more proxy seeds, so that
    the recommendation weighs means over seeds: at most 3 trials x 2 seeds. Returns the extra cost the summary
    reports: {"evaluations": scores computed, "seconds": wall time}; nothing is computed otherwise.
    """
    recs = records.load_records(search.study)
    if not records.recommendation(search.study.user_attrs, recs).within_noise:
        return {"evaluations": 0, "seconds": 0.0}
    t0 = time.perf_counter()
    evaluations = _confirm(search, 1, AUTO_SEEDS, why="the leader's lead over the one-shot plans is within noise")[1]
    return {"evaluations": evaluations, "seconds": round(time.perf_counter() - t0, 3)}


def confirm_trials(search) -> dict[int, dict[int, float]]:
    """Re-score the `confirm` best feasible trials (by search score), and the one-shot trials the search started
    from (`records.ONE_SHOT_KINDS`), under `confirm_seeds` more proxy seeds; return every confirmed trial's scores
    by seed (`records.confirmed_scores`). With the one-shot plans among them, a searched trial is recommended
    over them only when it beats them on the mean over the same seeds.

    Each proxy seed draws its own val subset, BN-recalibration images and batch order. The search keeps the
    maximum of many scores under one seed, so its best trial is partly that seed's luck (the winner's curse;
    docs/BENCHMARKS.md measures it on the demo); the mean over seeds ranks the top trials with less of it.
    Scores are stored as study attributes as they come (`records.confirm_key`), so an interrupted confirmation
    resumes and workers share the work.
    """
    s = search.settings
    return _confirm(search, s.confirm, s.confirm_seeds)[0]


def _confirm(search, best: int, n_seeds: int, why: str = "") -> tuple[dict[int, dict[int, float]], int]:
    """Re-score the `best` best feasible trials and the one-shot plans under `n_seeds` more proxy seeds; return the
    confirmed scores and how many evaluations ran."""
    s = search.settings
    done = [records.TrialRecord.from_trial(t)
            for t in search.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    ranked = records.ranked_trials(done)  # the one order: the first is best_trial
    top = ranked[:best] + [r for r in ranked[best:] if r.kind in records.ONE_SHOT_KINDS]
    seeds = [s.seed + k for k in range(1, n_seeds + 1)]
    stored = search.study.user_attrs
    todo = [(seed, r) for seed in seeds for r in top if records.confirm_key(r.number, seed) not in stored]
    if todo:
        search.log(f"confirming {len(top)} trials (the best {min(best, len(ranked))} and the one-shot plans) "
                   f"under proxy seeds {', '.join(map(str, seeds))} ({len(todo)} evaluations)"
                   + (f": {why}" if why else "") + "...")
    evaluator, t0 = None, time.perf_counter()
    for k, (seed, r) in enumerate(todo, 1):
        if evaluator is None or evaluator.settings.seed != seed:
            evaluator = search.seeded_evaluator(seed)
        result = evaluator.evaluate(search.prune_candidate(r.attrs[records.KEPT_CHANNELS], evaluator))
        search.study.set_user_attr(records.confirm_key(r.number, seed), result.map50_95)
        eta = (time.perf_counter() - t0) / k * (len(todo) - k)
        search.log(f"[confirm {k}/{len(todo)}] trial #{r.number}, proxy seed {seed}: mAP50-95 "
                   f"{result.map50_95:.3f} (search score {r.map50_95:.3f}) | ETA {duration_text(eta)}")
    return records.confirmed_scores(search.study.user_attrs, done), len(todo)
