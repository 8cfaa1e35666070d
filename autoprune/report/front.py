"""The data object every report reads: which trials are feasible, on the front, the uniform baseline, the best
trial, the budgets and the counts, computed once from the trial records and the study's user attributes.

The table, the PNG and the HTML all draw the same `ParetoInfo`, so they always agree. The front and the best trial
are `records.pareto_front` and `records.best_trial`, the ones the search reports.

Example:
    >>> info = pareto_info([], {"model": "yolov8n.pt", "budget_gflops": 4.0})
    >>> info.front, info.best, info.baseline
    ((), None, None)
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

from autoprune.report.text import cost_text, shorten
from autoprune.search.records import (
    LATENCY_SPREAD_MS,
    LATENCY_UNDER_LOAD,
    STUDY_BASE,
    STUDY_BUDGET_GFLOPS,
    STUDY_BUDGET_LATENCY_MS,
    STUDY_DATA,
    STUDY_DEVICE,
    STUDY_IMGSZ,
    STUDY_MODEL,
    STUDY_TASK,
    TrialRecord,
    best_trial,
    front_candidates,
    load_records,
    pareto_front,
    ranked_confirmations,
    recommendation,
)

UNFINISHED_STATES = ("RUNNING", "WAITING")


@dataclass(frozen=True)
class Panel:
    """One panel of the plots: mAP50-95 against one cost.

    `curve` is this panel's own front: the feasible trials no other feasible trial beats in its two dimensions
    (mAP50-95 and this cost), by cost; the trade-off line is drawn through them. A member of the three-objective
    front can be beaten here (it wins on the other cost), and the panel shows that.
    """

    attr: str  # the TrialRecord field on the x axis: "gflops" or "latency_ms"
    label: str  # axis label
    unit: str
    budget: float | None
    base: float | None  # the unpruned model's cost, when the study stored it
    curve: tuple[int, ...]


@dataclass(frozen=True)
class ParetoInfo:
    """Everything the table and the plots show, computed from the trial records and the study's user attributes.

    Categories of trials, each a tuple of records sorted by trial number (a record is in at most one of the first
    three): `front` (feasible, not dominated), `dominated` (feasible, dominated), `infeasible` (completed with an
    mAP but over a budget); `uniform` holds every uniform-baseline trial whatever its state. `baseline` is the
    uniform trial compared against (completed, feasible preferred, highest mAP50-95); `best` is the feasible
    trial with the highest mAP50-95 (ties: fewer GFLOPs, lower latency, lower number; `records.best_trial`),
    always on the front.

    Example:
        >>> info = pareto_info([], {})
        >>> info.counts["trials"], info.front_numbers
        (0, frozenset())
    """

    study_name: str | None
    model: str | None
    data: str | None
    budget_gflops: float | None
    budget_latency_ms: float | None
    device: str | None
    imgsz: int | None
    base: dict | None  # the unpruned model's {gflops, params, latency_ms}
    records: tuple[TrialRecord, ...]
    objectives: tuple[str, ...]  # the TrialRecord fields the front was computed over
    front: tuple[TrialRecord, ...]
    dominated: tuple[TrialRecord, ...]
    infeasible: tuple[TrialRecord, ...]
    uniform: tuple[TrialRecord, ...]
    baseline: TrialRecord | None
    best: TrialRecord | None
    panels: tuple[Panel, ...]
    counts: dict = field(default_factory=dict)  # trials, COMPLETE, PRUNED, FAIL, RUNNING, WAITING, feasible, ...
    reasons: tuple[tuple[str, int], ...] = ()  # the most common reasons of pruned and failed trials, with counts
    # trials re-scored under other proxy seeds (`Search.confirm`): (number, {seed: mAP50-95}, mean), the most
    # seeds first, then by mean; the first is the recommended trial
    confirmed: tuple[tuple[int, dict, float], ...] = ()
    recommended: TrialRecord | None = None  # the trial to apply, by the search's one rule (`records.recommendation`)
    recommendation_reason: str | None = None
    task: str = "detect"  # the model's task: which figures the mAP50-95 and mAP50 columns hold

    def figures(self) -> tuple[str, str]:
        """What the map50 and map50_95 figures are for this study's task ('mask mAP50', 'top-1 accuracy', ...)."""
        from autoprune.proxy import figure_names

        return figure_names(self.task)

    def figures_note(self) -> str | None:
        """One line saying what the mAP50-95 and mAP50 columns hold for a task other than detection, else None."""
        if self.task == "detect":
            return None
        m50, m5095 = self.figures()
        what = {"obb": "an OBB"}.get(self.task, f"a {self.task}")
        return f"({what} model: mAP50-95 is its {m5095}, mAP50 its {m50})"

    @property
    def front_numbers(self) -> frozenset[int]:
        return frozenset(r.number for r in self.front)

    @property
    def unfinished(self) -> int:
        """Trials still running or waiting: the study is (or was left) in progress and the front is provisional."""
        return sum(self.counts.get(s, 0) for s in UNFINISHED_STATES)

    @property
    def gain(self) -> float | None:
        """mAP50-95 of the best feasible trial minus the uniform baseline's; None when either is missing."""
        if self.best is None or self.baseline is None:
            return None
        return self.best.map50_95 - self.baseline.map50_95

    def headline(self) -> str:
        """`NAME: MODEL on DATA`, with what is known."""
        what = " on ".join(x for x in (self.model, self.data) if x)
        name = f"search {self.study_name!r}" if self.study_name else "search"
        return f"{name}: {what}" if what else name

    def budget_text(self) -> str:
        parts = []
        if self.budget_gflops is not None:
            parts.append(f"<= {cost_text(self.budget_gflops)} GFLOPs")
        if self.budget_latency_ms is not None:
            where = f" ({self.device})" if self.device else ""
            parts.append(f"<= {cost_text(self.budget_latency_ms)} ms{where}")
        return "budget " + ", ".join(parts) if parts else "no budget"

    def states_text(self) -> str:
        """`52 trials: 40 complete (35 feasible), 10 pruned, 2 failed, 1 running`."""
        c = self.counts
        if not c.get("trials"):
            return "0 trials"
        parts = [f"{c.get('COMPLETE', 0)} complete ({c.get('feasible', 0)} feasible)"]
        for state, word in (("PRUNED", "pruned"), ("FAIL", "failed"), ("RUNNING", "running"), ("WAITING", "waiting")):
            if c.get(state):
                parts.append(f"{c[state]} {word}")
        return f"{c['trials']} trials: {', '.join(parts)}"

    def counts_text(self) -> str:
        return f"{self.states_text()}; {len(self.front)} on the front"


def pareto_info(records: list[TrialRecord], study_attrs: dict, *, study_name: str | None = None) -> ParetoInfo:
    """Classify the trials and find the front, the best trial and the uniform baseline.

    The front is `records.pareto_front`: over the three objectives of `records.OBJECTIVES` among feasible trials.
    Should no feasible trial carry a latency (or GFLOPs), the front is over the objectives they do carry; a feasible
    trial missing a value the others have is left off the front and counted under `counts["feasible_incomplete"]`.
    The best trial is `records.best_trial`.

    Example:
        >>> from autoprune.search.records import TrialRecord
        >>> def rec(n, m, g, lat, kind="search"):
        ...     return TrialRecord(n, "COMPLETE", m, m + 0.2, g, lat, 1000, True, kind, None)
        >>> info = pareto_info([rec(0, 0.30, 4.0, 10.0, "uniform"), rec(1, 0.35, 4.0, 11.0), rec(2, 0.20, 5.0, 12.0)],
        ...                    {"budget_gflops": 4.2})
        >>> sorted(info.front_numbers), info.best.number, info.baseline.number, round(info.gain, 2)
        ([0, 1], 1, 0, 0.05)
    """
    records = tuple(sorted(records, key=lambda r: r.number))
    objectives, candidates = front_candidates(records)
    front = tuple(pareto_front(records))
    on_front = {r.number for r in front}
    dominated = tuple(r for r in candidates if r.number not in on_front)
    infeasible = tuple(r for r in records if r.state == "COMPLETE" and not r.feasible and r.map50_95 is not None)
    uniform = tuple(r for r in records if r.kind == "uniform")

    best = best_trial(records)
    done_uniform = [r for r in uniform if r.state == "COMPLETE" and r.map50_95 is not None]
    baseline = max(done_uniform, key=lambda r: (r.feasible, r.map50_95, -r.number), default=None)

    states = Counter(r.state for r in records)
    counts = {"trials": len(records),
              **{s: states.get(s, 0) for s in ("COMPLETE", "PRUNED", "FAIL", *UNFINISHED_STATES)},
              "feasible": len(candidates), "feasible_incomplete": sum(r.feasible for r in records) - len(candidates),
              "front": len(front), "infeasible": len(infeasible),
              "latency_under_load": sum(r.latency_ms is not None and latency_under_load(r) for r in records)}
    reasons = Counter(_reason_kind(r.reason) for r in records if r.state in ("PRUNED", "FAIL") and r.reason)

    base = study_attrs.get(STUDY_BASE) if isinstance(study_attrs.get(STUDY_BASE), dict) else None
    device = study_attrs.get(STUDY_DEVICE)
    panels = tuple(
        Panel(attr, label, unit, _num(study_attrs.get(budget_key)), _num((base or {}).get(attr)),
              _curve(records, attr))
        for attr, label, unit, budget_key in (
            ("gflops", "GFLOPs", "GFLOPs", STUDY_BUDGET_GFLOPS),
            ("latency_ms", f"latency (ms{', ' + str(device) if device else ''})", "ms", STUDY_BUDGET_LATENCY_MS),
        )
    )
    confirmed = ranked_confirmations(study_attrs, records)
    advice = recommendation(study_attrs, list(records))
    return ParetoInfo(
        study_name=study_name,
        model=_str(study_attrs.get(STUDY_MODEL)),
        data=_str(study_attrs.get(STUDY_DATA)),
        task=_str(study_attrs.get(STUDY_TASK)) or "detect",
        budget_gflops=panels[0].budget,
        budget_latency_ms=panels[1].budget,
        device=_str(device),
        imgsz=study_attrs.get(STUDY_IMGSZ),
        base=base,
        records=records,
        objectives=objectives,
        front=front,
        dominated=dominated,
        infeasible=infeasible,
        uniform=uniform,
        baseline=baseline,
        best=best,
        panels=panels,
        counts=counts,
        reasons=tuple(reasons.most_common(3)),
        confirmed=tuple(confirmed),
        recommended=advice.trial,
        recommendation_reason=advice.reason,
    )


def study_info(study) -> ParetoInfo:
    """`pareto_info` of an Optuna study: its records, its user attributes and its name."""
    return pareto_info(load_records(study), study.user_attrs, study_name=study.study_name)


def latency_spread(r: TrialRecord) -> float | None:
    """The spread (p90 - p10, ms) of the timed runs behind a trial's latency, when the search stored it."""
    return _num(r.attrs.get(LATENCY_SPREAD_MS))


def latency_under_load(r: TrialRecord) -> bool:
    """Whether a trial's latency was measured under load (`cost.timing.under_load`), so it is noisy."""
    return bool(r.attrs.get(LATENCY_UNDER_LOAD))


def _curve(records, attr: str) -> tuple[int, ...]:
    """Trial numbers of the feasible, scored records not beaten in (mAP50-95, `attr`), in increasing `attr`."""
    pts = sorted((r for r in records if r.feasible and r.map50_95 is not None and getattr(r, attr) is not None),
                 key=lambda r: (getattr(r, attr), -r.map50_95))
    out, best = [], -math.inf
    for r in pts:
        if r.map50_95 > best:
            out.append(r.number)
            best = r.map50_95
    return tuple(out)


def _num(x):
    try:
        return None if x is None else float(x)
    except (TypeError, ValueError):
        return None


def _str(x):
    return None if x is None else str(x)


def _reason_kind(reason: str) -> str:
    """A reason without its figures, so that alike reasons count together.

    Example:
        >>> _reason_kind("over the GFLOPs budget (4.49 > 4.4); a repaired genome was queued instead")
        'over the GFLOPs budget; a repaired genome was queued instead'
    """
    text = re.sub(r"\s*\([^()]*\)", "", " ".join(str(reason).split()))
    return shorten(re.sub(r"\d+(\.\d+)?", "N", text), 80)

