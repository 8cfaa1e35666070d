"""How a search prices a candidate's latency (`--latency-model`), and the re-measurement of its final front.

- `measured` (the default): every evaluated candidate is exported and timed end to end in the chosen runtime
  (`cost.measure_latency`, `settings.SEARCH_TIMING`), a second or more per candidate.
- `predicted`: every candidate is priced by the per-layer latency model (`latency_model.LatencyTable`, measured
  once per runtime setting and kept in runs/latency_lut.json): microseconds, and the same figure for the same
  channels whatever the machine's load. Once the trials (and any confirmation) are done, `remeasure_front` times
  every trial on the final Pareto front, and the recommended trial, end to end; their measured latency replaces the
  prediction in the reports and the front is computed again, until every trial on it was measured, so that every
  latency the front and the recommendation show is a measured one. The prediction stays beside it.

Finished Optuna trials take no new attributes, so a re-measurement is a study attribute under
`records.measured_latency_key(number)`; `records.load_records` reads it back into the trial's record
(`records.LATENCY_MS` measured, `records.LATENCY_PREDICTED_MS` predicted, `records.LATENCY_SOURCE` "measured").

The latency model ranks candidates less surely than end-to-end timing on a quiet machine (docs/BENCHMARKS.md,
"latency model": Kendall tau 0.86-0.93, below 0.9 on three of six model/runtime rows), which is why `measured`
stays the default.
"""

from __future__ import annotations

import time

from autoprune.search import records
from autoprune.search.settings import LATENCY_MODELS  # noqa: F401  (re-exported: the choices it serves)


def latency_table(search):
    """The search's latency model (`plan.latency_table`): the one its latency budget planned with, else built now
    (measured once per runtime setting, then read from runs/latency_lut.json)."""
    table = getattr(search, "latency_table", None)
    if table is None:
        from autoprune.search import plan

        table = search.latency_table = plan.latency_table(search)
    return table


def candidate_latency(search, pruned, counts: dict):
    """The latency (`cost.LatencyResult`) the search records for the candidate `pruned`, which keeps `counts`
    channels per group: measured end to end, or with `--latency-model predicted` the latency model's prediction
    (every percentile the prediction, `repeats` 0, no load: nothing was timed)."""
    import autoprune.cost

    s = search.settings
    if s.latency_model != "predicted":
        return autoprune.cost.measure_latency(pruned, imgsz=s.imgsz, device=search.device, cache=search.latency_cache,
                                              protocol=_search_timing(), backend=s.latency_backend,
                                              batch=s.latency_batch, precision=search.latency_precision)
    from autoprune.cost import LatencyResult
    from autoprune.cost.latency import device_label

    table = latency_table(search)
    ms = float(table.predict(counts))
    return LatencyResult(median_ms=ms, p10_ms=ms, p90_ms=ms, min_ms=ms, repeats=0, device=str(table.device),
                         device_name=device_label(table.device), backend=table.backend, precision=table.precision,
                         threads=table.threads, imgsz=table.imgsz, batch=table.batch,
                         signature="latency-model:" + table.fingerprint(), stable=True, load=None,
                         executed_precision=table.precision)


def latency_attrs(search, lat) -> dict:
    """The trial attributes a predicted latency adds to (or overrides in) the measured ones: the prediction, its
    source, and no spread or load (none was timed). Nothing with `--latency-model measured`."""
    if search.settings.latency_model != "predicted":
        return {}
    return {records.LATENCY_PREDICTED_MS: lat.median_ms, records.LATENCY_SOURCE: "predicted",
            records.LATENCY_SPREAD_MS: None, records.LATENCY_LOAD: None, records.LATENCY_UNDER_LOAD: False}


def remeasure_front(search) -> dict:
    """With `--latency-model predicted`: time end to end every trial on the final front and the recommended trial
    whose latency is still predicted, store each under `records.measured_latency_key`, and repeat on the front
    the measured figures make, until every trial on it and the recommended one carry a measured latency. Returns
    the cost the summary reports: {"measured": trials timed, "seconds": wall time}; nothing with `measured`.

    Each round times at least one trial not timed before, so it ends within the study's trial count.
    """
    if search.settings.latency_model != "predicted":
        return {}  # every latency was measured end to end already
    cost = {"measured": 0, "seconds": 0.0}
    t0 = time.perf_counter()
    study = search.study
    for _ in range(len(study.trials) + 1):
        recs = records.load_records(study)
        pick = records.recommendation(study.user_attrs, recs).trial
        want = records.pareto_front(recs) + ([pick] if pick is not None else [])
        todo = list({r.number: r for r in want if r.attrs.get(records.LATENCY_SOURCE) == "predicted"}.values())
        if not todo:
            break
        search.log(f"measuring {len(todo)} trial(s) of the front end to end (their latency was predicted)...")
        for r in todo:
            lat = measure_trial(search, r)
            study.set_user_attr(records.measured_latency_key(r.number), measured_dict(lat))
            cost["measured"] += 1
            search.log(f"  trial #{r.number}: {lat.median_ms:.2f} ms measured, {r.latency_ms:.2f} ms predicted")
    cost["seconds"] = round(time.perf_counter() - t0, 3)
    return cost


def measure_trial(search, record):
    """One trial's candidate timed end to end as `--latency-model measured` times every candidate (its architecture
    only matters: it is built without --reconstruct's refit)."""
    import autoprune.cost
    from autoprune.candidate import build

    s = search.settings
    pruned = build(search.loaded.model, record.attrs[records.KEPT_CHANNELS], graph=search.graph,
                   ranking=search.ranking).model
    return autoprune.cost.measure_latency(pruned, imgsz=s.imgsz, device=search.device, cache=search.latency_cache,
                                          protocol=_search_timing(), backend=s.latency_backend, batch=s.latency_batch,
                                          precision=search.latency_precision)


def measured_dict(lat) -> dict:
    """A re-measurement as stored under `records.measured_latency_key`."""
    from autoprune.cost.timing import under_load

    return {"ms": lat.median_ms, "spread_ms": lat.p90_ms - lat.p10_ms, "load": lat.load,
            "under_load": under_load(lat.load, lat.device),
            "setup": {k: getattr(lat, k) for k in ("backend", "precision", "executed_precision", "batch", "threads",
                                                    "device_name")}}


def _search_timing():
    from autoprune.search.settings import SEARCH_TIMING

    return SEARCH_TIMING


__all__ = ["LATENCY_MODELS", "candidate_latency", "latency_attrs", "latency_table", "measure_trial",
           "measured_dict", "remeasure_front"]
