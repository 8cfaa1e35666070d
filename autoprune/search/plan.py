"""What a search plans with before its first trial: its budget (a share of the GFLOPs and/or latency budget, the
latency model behind the latter), the channel ranking every trial slices, and the one-shot global genomes trial 0
queues. Functions of a `driver.Search` (its settings, model, graph, space and evaluator)."""

from __future__ import annotations

from autoprune.errors import UserError
from autoprune.search import records
from autoprune.search.study import version


def make_budget(search):
    """The one budget repair, fill and the one-shot plans work toward: a genome's cost is the largest share it
    uses of the GFLOPs budget (the space's prediction) and of the latency budget (the latency model,
    `latency_model.LatencyTable`, built once per runtime setting and kept in runs/latency_lut.json); it fits at 1."""
    from autoprune.budget import Budget

    s = search.settings
    costs = []
    if s.budget_gflops is not None:
        costs.append(lambda g: search.space.gflops(g, s.imgsz, base_gflops=search.base_gflops) / s.budget_gflops)
    if s.budget_latency_ms is not None:
        table = search.latency_table = latency_table(search)
        check_reachable(search, table, "predicted by the latency model")
        costs.append(lambda g: table.predict(search.space.counts(g)) / s.budget_latency_ms)
    return Budget(1.0, lambda g: max(c(g) for c in costs), unit="x the budget")

def calibrate_latency(search, stored: dict):
    """The latency model's calibration (`latency_calibration`): the one a resumed study stored (none for a study made
    without one), else with `--latency-calibration N` measured now by timing the one-shot global plan at the latency
    budget end to end N times (each re-planned with the calibration so far), so that repair, fill, the uniform trial
    and the one-shot plans aim at the budget as the runtime measures it, not where the table alone puts them; else
    None. A budget the calibrated table says the space cannot reach is one `UserError`.
    `search.latency_table.calibration` holds the (scale, offset_ms) pair."""
    import autoprune.cost
    from autoprune.candidate import build, ranking_from_lists
    from autoprune.latency_calibration import Calibration, calibrate
    from autoprune.search.settings import SEARCH_TIMING

    s = search.settings
    table = search.latency_table
    if stored or not s.latency_calibration:  # a resumed study plans as it did; a study without one, uncalibrated
        if not stored.get(records.STUDY_LATENCY_CALIBRATION):
            table.calibration = (1.0, 0.0)
            return None
        cal = Calibration.from_dict(stored[records.STUDY_LATENCY_CALIBRATION])
        table.calibration = (cal.scale, cal.offset_ms)
        return cal
    scores = search.channel_scores
    ranking = ranking_from_lists(compute_ranking(search, scores), search.graph)

    def measure(counts):
        pruned = build(search.loaded.model, counts, graph=search.graph, ranking=ranking).model
        return autoprune.cost.measure_latency(pruned, imgsz=s.imgsz, device=search.device, cache=False,
                                              protocol=SEARCH_TIMING, backend=s.latency_backend,
                                              batch=s.latency_batch, precision=search.latency_precision).median_ms

    search.log(f"calibrating the latency model: the one-shot global plan at {s.budget_latency_ms:g} ms, timed end to "
               "end...")
    cal = calibrate(table, s.budget_latency_ms, lambda: search.space.counts(global_genome(search, scores)), measure,
                    steps=s.latency_calibration)
    search.log(cal.text(s.budget_latency_ms, f"{s.latency_backend}, {search.latency_precision}, batch "
                                             f"{s.latency_batch}, {table.threads} thread(s), "
                                             f"{table.setup()['device_name']}"))
    check_reachable(search, table, "predicted by the latency model calibrated by end-to-end timings")
    return cal


def check_reachable(search, table, how: str) -> None:
    """A `UserError` when the latency budget is below the fastest model the space allows, as `table` predicts it."""
    s = search.settings
    lows = table.predict(search.space.counts(fastest_lows(search.space, table)))
    if lows > s.budget_latency_ms:
        raise UserError(
            f"--budget-latency-ms {s.budget_latency_ms:g} is below what the search space can reach: the smallest "
            f"model it allows runs in {lows:.2f} ms ({how}; {s.latency_backend}, {search.latency_precision}, batch "
            f"{s.latency_batch}, {table.threads} thread(s), at {s.imgsz}; the unpruned one "
            f"{table.predict(calibrated=False):.2f} ms)")


def fastest_lows(space, table) -> dict[str, float]:
    """The space's smallest genome (every width and depth gene at its low) with each swap gene at the kind the
    latency `table` predicts fastest there: the lowest latency the space reaches. A swap kind's GFLOPs order is not
    its latency order (a depthwise-separable or grouped conv can run slower than the dense one), so the lows alone
    can refuse a latency budget the space reaches. Swap sites' times add up, so one gene at a time finds it."""
    genome = space.lows()
    for g in space.swap_genes:
        best = min(range(len(g.choices)),
                   key=lambda i: (table.predict(space.counts({**genome, g.name: float(i)})), i))
        genome[g.name] = float(best)
    return genome


def budget_text(search) -> str:
    s = search.settings
    parts = ([f"{s.budget_gflops:g} GFLOPs"] if s.budget_gflops is not None else []) + (
        [f"{s.budget_latency_ms:g} ms ({s.latency_backend})"] if s.budget_latency_ms is not None else [])
    return " and ".join(parts)

def latency_table(search):
    """The latency model of this model in the search's runtime setting (measured once; kept on disk)."""
    from autoprune.latency_model import LatencyTable
    from autoprune.runs import RUNS_ROOT

    s = search.settings
    search.log(f"latency model: {s.latency_backend} at {s.imgsz}, batch {s.latency_batch} (measured once, cached)...")
    # every kind the space's swap genes can choose, at every conv they drive: measured with the rest
    swaps = {sid: [k for k in g.choices if k != "keep"] for g in search.space.swap_genes for sid in g.units}
    table = LatencyTable(search.loaded.model, search.graph, imgsz=s.imgsz, batch=s.latency_batch,
                         device=search.device, backend=s.latency_backend, precision=search.latency_precision,
                         path=RUNS_ROOT / "latency_lut.json", round_to=search.space.round_to,
                         min_channels=search.space.min_channels, swaps=swaps).build()
    table.element_orders = search.space.element_orders  # the same dict: depth genes remove the same elements
    note = table.load_note()
    if note:
        import sys

        print(f"warning: {note}", file=sys.stderr, flush=True)
    return table

def channel_scores(search) -> dict:
    """Every group's channel scores by the criterion (data criteria use the proxy's calibration batches)."""
    from autoprune.importance import DATA_CRITERIA
    from autoprune.pruner import channel_scores as score_channels

    c = search.settings.criterion
    batches = search.evaluator.calibration_batches() if c in DATA_CRITERIA else None
    return score_channels(search.loaded.model, search.graph, c, batches=batches,
                          kpt_oks_sigmas=search.evaluator.data.kpt_oks_sigmas)

def compute_ranking(search, scores: dict | None = None) -> dict:
    """Every group's channel order by the criterion (`candidate.rank`'s order), as plain lists, and the element
    order of every depth unit the space's depth genes drive (`element_orders`)."""
    from autoprune.candidate import order_of, ranking_as_lists

    channels = ranking_as_lists(order_of(scores if scores is not None else channel_scores(search)))
    return {**channels, **search.space.element_orders}

def element_orders(search) -> dict:
    """{depth key: element order, most important first} of the units the space's depth genes drive, measured on
    the proxy's calibration batches (`depth.rank_elements`: the change of the block's output when an element
    goes; non-residual units keep the natural order, as only their last elements can go)."""
    from autoprune.depth import rank_elements

    driven = {u for g in search.space.depth_genes for u in g.units}
    units = [u for u in search.space.units if u.id in driven]
    if not units:
        return {}
    search.log("ranking the depth units' elements on the calibration batches...")
    return rank_elements(search.loaded.model, search.evaluator.calibration_batches(), units)

def global_genome(search, scores: dict) -> dict:
    """The genome of one-shot global pruning (one threshold over the criterion's normalized `scores`): the
    largest such plan whose predicted full GFLOPs fit the budget (`strategies.plan_within`), projected onto the
    space's genes (`SearchSpace.from_counts`; channel for channel in `fine`); a space too coarse to get within
    is repaired into it."""
    from autoprune.strategies import plan_within

    def cost(counts):  # the share of the budget used (GFLOPs and/or latency: `make_budget`)
        return search.budget.cost(search.space.from_counts(counts))

    plan, fits = plan_within(search.graph, "global", 1.0, cost, full_cost=search.budget.cost(search.space.highs()),
                             scores=scores, round_to=search.space.round_to, min_channels=search.space.min_channels)
    genome = search.space.from_counts(plan.counts)
    return genome if fits else fit_to_share(search, genome, 1.0)

def fit_to_share(search, genome: dict, share: float) -> dict:
    """The genome moved toward the space's highs (or repaired down) to use close to `share` of the budget
    (`make_budget`: GFLOPs, latency or both; `autoprune.budget.fit`)."""
    from autoprune.budget import Budget, fit

    return fit(search.space, genome, Budget(share, search.budget.cost, unit=search.budget.unit))


def describe_study(search) -> dict:
    """The user attributes a new study gets: the settings, the latency model's calibration, the channel ranking and
    the one-shot global genomes."""
    from autoprune.strategies import per_flop_scores

    scores = search.channel_scores  # scored once: the ranking and the global plans all come from them
    attrs = study_attrs(search)
    calibration = ({records.STUDY_LATENCY_CALIBRATION: search.latency_calibration.to_dict()}
                   if search.latency_calibration is not None else {})
    return {
        **{k: v for k, v in attrs.items() if k != records.STUDY_VERSION},
        **calibration,
        records.STUDY_RANKING: compute_ranking(search, scores),
        # one-shot global pruning by the criterion, as close as the space can express it, and the same by importance
        # per FLOP: trial 0 queues both
        records.STUDY_GLOBAL: global_genome(search, scores),
        records.STUDY_GLOBAL_PER_FLOP: global_genome(search, per_flop_scores(search.graph, scores)),
        records.STUDY_VERSION: attrs[records.STUDY_VERSION],  # last: it marks a study completely described
    }


def study_attrs(search) -> dict:
    """What a study records of the settings it was made with (and `check_resumable` compares on --resume)."""
    s = search.settings
    return {
        records.STUDY_MODEL: search.loaded.source,
        records.STUDY_MODEL_FINGERPRINT: search.loaded.fingerprint,
        records.STUDY_DATA: str(search.data.yaml),
        records.STUDY_TASK: search.loaded.task,
        records.STUDY_BUDGET_GFLOPS: s.budget_gflops,
        records.STUDY_BUDGET_LATENCY_MS: s.budget_latency_ms,
        records.STUDY_BUDGET_FLOOR: s.budget_floor,
        records.STUDY_IMGSZ: s.imgsz,
        records.STUDY_DEVICE: str(search.device),
        records.STUDY_LATENCY_BACKEND: s.latency_backend,
        records.STUDY_LATENCY_BATCH: s.latency_batch,
        records.STUDY_LATENCY_PRECISION: search.latency_precision,
        records.STUDY_LATENCY_MODEL: s.latency_model,
        records.STUDY_SPACE: search.space.source,
        records.STUDY_CRITERION: s.criterion,
        records.STUDY_ENGINE: s.engine,
        records.STUDY_SAMPLER: s.sampler or "nsga2",
        records.STUDY_SEED: s.seed,
        records.STUDY_PROXY: proxy_settings_dict(search),
        records.STUDY_POPULATION: s.population,
        records.STUDY_BASE: search.base,
        records.STUDY_VERSION: version(),
    }

def proxy_settings_dict(search) -> dict:
    """The proxy settings a study records (`records.STUDY_PROXY`)."""
    s = search.settings
    out = {"imgsz": s.proxy_imgsz, "steps": s.proxy_steps, "calib_batches": s.calib_batches,
           "val_images": s.val_images, "seed": s.seed}
    if s.proxy_distill:  # only when on: studies made before the option resume unchanged
        out["distill"] = float(s.proxy_distill)
    if s.reconstruct:  # likewise
        out["reconstruct"] = True
    return out
