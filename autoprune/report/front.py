"""The reports of a search: `trials.csv`, `pareto.png`, `pareto.html` and the Pareto front as a terminal table.

Everything is computed once into a small frozen `ParetoInfo` (which trials are feasible, on the front, the uniform
baseline, the best trial, the budgets, the counts), and only then drawn: the PNG (matplotlib, Agg canvas, no
pyplot state), the self-contained HTML (plotly, plotly.js embedded, no CDN) and the table all read the same object,
so they always agree. The same functions serve a search that just finished (`write_reports`) and one that is still
running or was finished long ago (`autoprune trials`, `autoprune plot`).

Example:
    >>> info = pareto_info([], {"model": "yolov8n.pt", "budget_gflops": 4.0})
    >>> info.front, info.best, info.baseline
    ((), None, None)
    >>> print(format_front_table(info).splitlines()[0])
    Pareto front: no feasible trial yet (0 trials)
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from autoprune.errors import UserError
from autoprune.search import records as R
from autoprune.search.records import TrialRecord

CSV_COLUMNS = ("number", "state", "kind", "feasible", "on_front", "map50_95", "map50", "gflops", "params",
               "latency_ms", "reason")
# The objectives of the front, as TrialRecord fields, with the sign that makes larger better.
_OBJECTIVES = (("map50_95", 1.0), ("gflops", -1.0), ("latency_ms", -1.0))
_UNFINISHED = ("RUNNING", "WAITING")


# --------------------------------------------------------------------------------------------------- reading


def load_records(study) -> list[TrialRecord]:
    """Every trial of an Optuna study as a `TrialRecord`, by trial number (running and waiting ones included).

    Example:
        >>> import optuna
        >>> load_records(optuna.create_study(directions=["maximize", "minimize", "minimize"]))
        []
    """
    trials = study.get_trials(deepcopy=False)
    return sorted((TrialRecord.from_trial(t) for t in trials), key=lambda r: r.number)


def read_study(storage: str | None, name: str | None):
    """Open an existing study for reading, as `autoprune trials` and `autoprune plot` do.

    `storage` None means the run folder's SQLite file `runs/search/NAME/study.db`. Every mistake is a `UserError`:
    no `--name` (naming the studies there are), a malformed URL, a SQLite path that is not there or is not an
    Optuna database (checked first, so that reading never creates or changes a file), an unknown study.

    Example:
        >>> study = read_study(None, "exp1")  # doctest: +SKIP
        >>> study = read_study("postgresql://user:pw@host/db", "exp1")  # doctest: +SKIP
    """
    from autoprune.search.storage import make_storage, open_study, storage_url, study_names

    if storage is not None:
        url = storage_url(storage, name or "_")  # checks the URL's form first
        if url.lower().startswith("sqlite"):
            _check_sqlite_file(url)
        if not name:
            names = study_names(make_storage(url, heartbeat=None, read_only=True))
            hint = f"studies there: {', '.join(names)}" if names else "it holds no studies"
            raise UserError(f"--name is required: the study to read ({hint})")
        return open_study(storage, name)
    if not name:
        known = local_study_names()
        hint = f"studies in runs/search: {', '.join(known)}" if known else "no studies in runs/search"
        raise UserError(f"--name is required: the study to read ({hint})")
    url = storage_url(None, name)
    if Path(_sqlite_path(url)).is_file():
        _check_sqlite_file(url)
    return open_study(None, name)


def newest_local_study() -> str | None:
    """The name of the study under `runs/search` whose `study.db` changed last (the latest search), or None."""
    from autoprune.runs import RUNS_ROOT
    from autoprune.search.storage import STUDY_FILE

    files = [(p.stat().st_mtime, p.parent.name) for p in (RUNS_ROOT / "search").glob(f"*/{STUDY_FILE}")]
    return max(files)[1] if files else None


def local_study_names() -> list[str]:
    """Names of the studies in run folders under `runs/search` (those with a `study.db`)."""
    from autoprune.runs import RUNS_ROOT
    from autoprune.search.storage import STUDY_FILE

    return sorted(p.parent.name for p in (RUNS_ROOT / "search").glob(f"*/{STUDY_FILE}"))


def _sqlite_path(url: str) -> str:
    return url.split("://", 1)[1][1:].split("?", 1)[0]


def _check_sqlite_file(url: str) -> None:
    """A SQLite storage to read must be an existing Optuna database; otherwise SQLAlchemy would create one."""
    path = Path(_sqlite_path(url))
    if str(path) in ("", ":memory:") or not path.is_file():
        raise UserError(f"no SQLite study file at {path} (from --storage {url!r})")
    with open(path, "rb") as f:
        if f.read(16) != b"SQLite format 3\x00":
            raise UserError(f"{path} is not a SQLite database")
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
        try:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise UserError(f"cannot read {path}: {e}") from e
    if "studies" not in tables:
        raise UserError(f"{path} is a SQLite database but holds no Optuna studies")


# ------------------------------------------------------------------------------------------------ computing


@dataclass(frozen=True)
class Panel:
    """One panel of the plots: mAP50-95 against one cost.

    `curve` are the trial numbers of the front that are not beaten in this panel's two dimensions, by cost: the
    trade-off line drawn through them (a front member can be beaten here and still be on the three-objective front).
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
    trial with the highest mAP50-95 (ties: fewer GFLOPs, lower latency, lower number), always on the front.

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

    @property
    def recommended(self) -> TrialRecord | None:
        """The trial to apply: the best by mean score over the confirming proxy seeds when the search confirmed
        its top trials, else `best`."""
        if self.confirmed:
            return next(r for r in self.records if r.number == self.confirmed[0][0])
        return self.best

    @property
    def front_numbers(self) -> frozenset[int]:
        return frozenset(r.number for r in self.front)

    @property
    def unfinished(self) -> int:
        """Trials still running or waiting: the study is (or was left) in progress and the front is provisional."""
        return sum(self.counts.get(s, 0) for s in _UNFINISHED)

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
            parts.append(f"<= {_g(self.budget_gflops)} GFLOPs")
        if self.budget_latency_ms is not None:
            where = f" ({self.device})" if self.device else ""
            parts.append(f"<= {_g(self.budget_latency_ms)} ms{where}")
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

    The front is over the three objectives of `records.OBJECTIVES` among feasible trials (the same front as
    `records.pareto_front`). Should no feasible trial carry a latency (or GFLOPs), the front is over the
    objectives they do carry; a feasible trial missing a value the others have is left off the front and counted
    under `counts["feasible_incomplete"]`.

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
    scored = [r for r in records if r.feasible and r.map50_95 is not None]
    objectives = tuple(a for a, _ in _OBJECTIVES if a == "map50_95" or any(getattr(r, a) is not None for r in scored))
    candidates = [r for r in scored if all(getattr(r, a) is not None for a in objectives)]
    on_front = _non_dominated(candidates, objectives)
    front = tuple(r for r, keep in zip(candidates, on_front) if keep)
    dominated = tuple(r for r, keep in zip(candidates, on_front) if not keep)
    infeasible = tuple(r for r in records if r.state == "COMPLETE" and not r.feasible and r.map50_95 is not None)
    uniform = tuple(r for r in records if r.kind == "uniform")

    best = None
    if front:
        best = min(front, key=lambda r: (-r.map50_95, _or_inf(r.gflops), _or_inf(r.latency_ms), r.number))
    done_uniform = [r for r in uniform if r.state == "COMPLETE" and r.map50_95 is not None]
    baseline = max(done_uniform, key=lambda r: (r.feasible, r.map50_95, -r.number), default=None)

    states = Counter(r.state for r in records)
    counts = {"trials": len(records), **{s: states.get(s, 0) for s in ("COMPLETE", "PRUNED", "FAIL", *_UNFINISHED)},
              "feasible": len(candidates), "feasible_incomplete": len(scored) - len(candidates)
              + sum(1 for r in records if r.feasible and r.map50_95 is None),
              "front": len(front), "infeasible": len(infeasible)}
    reasons = Counter(_reason_kind(r.reason) for r in records if r.state in ("PRUNED", "FAIL") and r.reason)

    base = study_attrs.get(R.STUDY_BASE) if isinstance(study_attrs.get(R.STUDY_BASE), dict) else None
    device = study_attrs.get(R.STUDY_DEVICE)
    panels = tuple(
        Panel(attr, label, unit, _num(study_attrs.get(budget_key)), _num((base or {}).get(attr)),
              _curve(front, attr))
        for attr, label, unit, budget_key in (
            ("gflops", "GFLOPs", "GFLOPs", R.STUDY_BUDGET_GFLOPS),
            ("latency_ms", f"latency (ms{', ' + str(device) if device else ''})", "ms", R.STUDY_BUDGET_LATENCY_MS),
        )
    )
    by_trial = R.confirmed_scores(study_attrs, records)
    confirmed = sorted(((n, v, sum(v.values()) / len(v)) for n, v in by_trial.items()),
                       key=lambda c: (-len(c[1]), -c[2], c[0]))
    return ParetoInfo(
        study_name=study_name,
        model=_str(study_attrs.get(R.STUDY_MODEL)),
        data=_str(study_attrs.get(R.STUDY_DATA)),
        budget_gflops=panels[0].budget,
        budget_latency_ms=panels[1].budget,
        device=_str(device),
        imgsz=study_attrs.get(R.STUDY_IMGSZ),
        base=base,
        records=records,
        objectives=objectives,
        front=tuple(sorted(front, key=lambda r: r.number)),
        dominated=dominated,
        infeasible=infeasible,
        uniform=uniform,
        baseline=baseline,
        best=best,
        panels=panels,
        counts=counts,
        reasons=tuple(reasons.most_common(3)),
        confirmed=tuple(confirmed),
    )


def study_info(study) -> ParetoInfo:
    """`pareto_info` of an Optuna study: its records, its user attributes and its name."""
    return pareto_info(load_records(study), study.user_attrs, study_name=study.study_name)


def _non_dominated(records: list[TrialRecord], objectives: tuple[str, ...]) -> list[bool]:
    """For each record, whether no other record dominates it on `objectives` (numpy, in row blocks)."""
    import numpy as np

    if not records:
        return []
    sign = dict(_OBJECTIVES)
    v = np.array([[sign[a] * float(getattr(r, a)) for a in objectives] for r in records])
    keep = np.ones(len(records), dtype=bool)
    for start in range(0, len(v), 512):  # bounded memory: a (block, n, k) comparison at a time
        block = v[start:start + 512, None, :]  # the candidates ...
        ge = (v[None, :, :] >= block).all(axis=2)  # ... against every other record
        gt = (v[None, :, :] > block).any(axis=2)
        keep[start:start + 512] = ~(ge & gt).any(axis=1)
    return keep.tolist()


def _curve(front: tuple[TrialRecord, ...], attr: str) -> tuple[int, ...]:
    """Trial numbers of the front members not beaten in (mAP50-95, `attr`), in increasing `attr`."""
    pts = sorted((r for r in front if getattr(r, attr) is not None), key=lambda r: (getattr(r, attr), -r.map50_95))
    out, best = [], -math.inf
    for r in pts:
        if r.map50_95 > best:
            out.append(r.number)
            best = r.map50_95
    return tuple(out)


# -------------------------------------------------------------------------------------------------- tables


def format_front_table(info: ParetoInfo, apply_hint: str | None = None) -> str:
    """The Pareto front as a terminal table, the comparison with the uniform baseline, and how to apply a trial.

    Rows are front members by increasing GFLOPs; `*` marks the best feasible trial. The uniform baseline follows
    as a reference row when it is not on the front. `apply_hint` is the command to print with `N` for the trial
    (default: `autoprune apply --name NAME --trial N`).

    Example:
        >>> from autoprune.search.records import TrialRecord
        >>> r = TrialRecord(3, "COMPLETE", 0.41, 0.6, 4.1, 12.0, 1_500_000, True, "search", None)
        >>> print(format_front_table(pareto_info([r], {}, study_name="exp1")))  # doctest: +NORMALIZE_WHITESPACE
        Pareto front of search 'exp1': 1 trials: 1 complete (1 feasible); 1 on the front
            trial  kind      mAP50-95   mAP50  GFLOPs   params  latency ms
          *     3  search      0.4100  0.6000    4.10    1.50M       12.00
        no uniform baseline trial in this study: nothing to compare against
        apply one:  autoprune apply --name exp1 --trial N
    """
    lines = []
    if info.unfinished:
        busy = ", ".join(f"{info.counts[s]} {s.lower()}" for s in _UNFINISHED if info.counts.get(s))
        lines.append(f"study still in progress ({busy}): this front is provisional")
    if not info.front:
        lines.append(f"Pareto front: no feasible trial yet ({info.states_text()})")
        lines.extend(_reason_lines(info))
        if info.infeasible:
            nums = ", ".join(str(r.number) for r in info.infeasible[:10])
            lines.append(f"completed but over budget: trial {nums}{' ...' if len(info.infeasible) > 10 else ''}")
        return "\n".join(lines)

    lines.append(f"Pareto front of {info.headline()}: {info.counts_text()}")
    if info.budget_gflops is not None or info.budget_latency_ms is not None:
        lines.append(info.budget_text())
    pct_base = (info.base or {}).get("gflops")
    rows = sorted(info.front, key=lambda r: (_or_inf(r.gflops), -r.map50_95, r.number))
    show_ref = info.baseline is not None and info.baseline.number not in info.front_numbers
    lines.append(_row("", "trial", "kind", "mAP50-95", "mAP50", "GFLOPs", "params", "latency ms",
                      "vs uniform" if info.baseline else None))
    for r in rows + ([info.baseline] if show_ref else []):
        if r is info.baseline and show_ref:
            lines.append("  " + "-" * 8 + " uniform baseline, not on the front" + (
                "" if r.feasible else " (over budget)"))
        mark = "*" if info.best is not None and r.number == info.best.number else ""
        gflops = _g(r.gflops, 2)
        if pct_base and r.gflops is not None:
            gflops += f" ({100 * r.gflops / pct_base:.0f}%)"
        delta = f"{r.map50_95 - info.baseline.map50_95:+.4f}" if info.baseline else None
        lines.append(_row(mark, str(r.number), r.kind, _f(r.map50_95, 4), _f(r.map50, 4), gflops,
                          _params(r.params), _f(r.latency_ms, 2), delta))
    if pct_base:
        lines.append(f"(GFLOPs % of the unpruned model's {_g(pct_base)})")
    lines.append(comparison_line(info))
    lines.extend(confirmed_lines(info))
    if info.counts.get("feasible_incomplete"):
        lines.append(f"note: {info.counts['feasible_incomplete']} feasible trial(s) lack an objective value and are "
                     "left off the front")
    lines.append(f"apply one:  {apply_hint or _apply_hint(info)}")
    return "\n".join(lines)


def confirmed_lines(info: ParetoInfo) -> list[str]:
    """The trials the search re-scored under other proxy seeds, best mean first, and which one to apply.

    Example:
        >>> from autoprune.search.records import TrialRecord
        >>> recs = [TrialRecord(n, "COMPLETE", m, 0.6, 4.1, 12.0, 1000, True, "search", None)
        ...         for n, m in ((1, 0.50), (2, 0.49))]
        >>> info = pareto_info(recs, {"confirm:1:1": 0.47, "confirm:2:1": 0.495})
        >>> print("\\n".join(confirmed_lines(info)))
        confirmed under proxy seeds 0, 1 (mAP50-95 per seed -> mean):
          trial 2: 0.4900 0.4950 -> 0.4925  (apply this one)
          trial 1: 0.5000 0.4700 -> 0.4850
    """
    if not info.confirmed:
        return []
    seeds = sorted({k for _, v, _ in info.confirmed for k in v})
    lines = [f"confirmed under proxy seeds {', '.join(map(str, seeds))} (mAP50-95 per seed -> mean):"]
    for i, (number, scores, mean) in enumerate(info.confirmed):
        cells = " ".join(f"{scores[k]:.4f}" if k in scores else "     -" for k in seeds)
        lines.append(f"  trial {number}: {cells} -> {mean:.4f}" + ("  (apply this one)" if i == 0 else ""))
    return lines


def comparison_line(info: ParetoInfo) -> str:
    """How the best feasible trial compares with the uniform baseline, in mAP50-95, GFLOPs and latency."""
    if info.best is None:
        return "no feasible trial yet: nothing to compare with the uniform baseline"
    if not info.uniform:
        return "no uniform baseline trial in this study: nothing to compare against"
    b, u = info.best, info.baseline
    if u is None:
        first = info.uniform[0]
        why = f": {_short(first.reason, 80)}" if first.reason else ""
        return f"the uniform baseline (trial {first.number}) is {first.state}{why}: nothing to compare against"
    over = "" if u.feasible else " (itself over budget)"
    if b.number == u.number:
        return (f"the uniform baseline (trial {u.number}) is still the best feasible trial "
                f"(mAP50-95 {u.map50_95:.4f}{_at(u)}): no searched trial beats it yet")
    d = info.gain
    rel = f", {100 * d / u.map50_95:+.1f}%" if u.map50_95 else ""
    verb = "beats" if d > 0 else ("ties" if d == 0 else "trails")
    by = f" by {d:+.4f} mAP50-95" if d != 0 else " in mAP50-95"
    return (f"best feasible trial {b.number} {verb} the uniform baseline (trial {u.number}){over}{by} "
            f"({b.map50_95:.4f} vs {u.map50_95:.4f}{rel}){_at(b)}, uniform{_at(u)}")


def format_trials_table(info: ParetoInfo) -> str:
    """Every trial, one line each: state, kind, feasibility, front membership (`F`), values and reason."""
    lines = [_trow("trial", "state", "kind", "feas", "front", "mAP50-95", "mAP50", "GFLOPs", "params", "lat ms",
                   "reason")]
    front = info.front_numbers
    for r in info.records:
        lines.append(_trow(str(r.number), r.state, r.kind, "yes" if r.feasible else "no",
                           "F" if r.number in front else "", _f(r.map50_95, 4), _f(r.map50, 4), _f(r.gflops, 2),
                           _params(r.params), _f(r.latency_ms, 2), _short(r.reason, 60) or ""))
    return "\n".join(lines)


def _row(mark, trial, kind, m, m50, g, p, lat, delta):
    s = f"  {mark:1} {trial:>5}  {kind:<15} {m:>9} {m50:>7} {g:>11} {p:>8} {lat:>11}"
    return s + (f" {delta:>11}" if delta is not None else "")


def _trow(trial, state, kind, feas, front, m, m50, g, p, lat, reason):
    s = f"{trial:>5}  {state:<8} {kind:<15} {feas:>4} {front:>5} {m:>9} {m50:>7} {g:>7} {p:>8} {lat:>8}"
    return f"{s}  {reason}" if reason else s


def _reason_lines(info: ParetoInfo) -> list[str]:
    if not info.reasons:
        return []
    return ["most common reasons trials were pruned or failed:"] + [f"  {n} x {why}" for why, n in info.reasons]


def _at(r: TrialRecord) -> str:
    parts = [f"{_g(r.gflops)} GFLOPs" if r.gflops is not None else None,
             f"{_g(r.latency_ms)} ms" if r.latency_ms is not None else None]
    parts = [p for p in parts if p]
    return f" at {' and '.join(parts)}" if parts else ""


def _apply_hint(info: ParetoInfo) -> str:
    return f"autoprune apply --name {info.study_name or 'NAME'} --trial N"


# ------------------------------------------------------------------------------------------------------ CSV


def write_trials_csv(records: list[TrialRecord], path, front_numbers) -> Path:
    """One row per trial: `CSV_COLUMNS`, then one column per gene of the genome (in order of first appearance).

    A gene whose name collides with a fixed column is written as `gene_NAME`. Missing values are empty cells.

    Example:
        >>> import tempfile, pathlib
        >>> from autoprune.search.records import TrialRecord
        >>> r = TrialRecord(0, "PRUNED", None, None, 9.1, None, None, False, "search", "over the GFLOPs budget",
        ...                 genome={"backbone": 0.5})
        >>> p = write_trials_csv([r], pathlib.Path(tempfile.mkdtemp()) / "trials.csv", [])
        >>> print(p.read_text().splitlines()[1])
        0,PRUNED,search,False,False,,,9.1,,,over the GFLOPs budget,0.5
    """
    path = Path(path)
    front = set(front_numbers)
    genes = list(dict.fromkeys(g for r in records for g in r.genome))
    header = list(CSV_COLUMNS) + [f"gene_{g}" if g in CSV_COLUMNS else str(g) for g in genes]
    with _atomic(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in sorted(records, key=lambda r: r.number):
            row = [r.number, r.state, r.kind, r.feasible, r.number in front, r.map50_95, r.map50, r.gflops, r.params,
                   r.latency_ms, r.reason]
            w.writerow(["" if v is None else v for v in row + [r.genome.get(g) for g in genes]])
    return path


# -------------------------------------------------------------------------------------------------- drawing

_STYLE = {  # category -> matplotlib colour; the HTML uses the same
    "infeasible": "#9a9a9a",
    "dominated": "#7aa6d6",
    "front": "#d62728",
    "uniform": "#ffbf00",
    "budget": "#2b8a3e",
}


def _title(info: ParetoInfo) -> tuple[str, str]:
    sub = f"{info.budget_text()}  |  {info.counts_text()}"
    if info.unfinished:
        sub += "  (in progress)"
    return info.headline(), sub


def _points(records, attr):
    return [r for r in records if r.map50_95 is not None and getattr(r, attr) is not None]


def plot_pareto_png(info: ParetoInfo, path) -> Path:
    """Two panels, mAP50-95 against GFLOPs and against latency: every completed trial, the front highlighted and
    labelled with trial numbers, the trade-off line, the uniform baseline as a star, budgets as dashed lines.

    Drawn on a bare Agg canvas (no pyplot, no global backend switch), so it is safe inside any process.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(13, 5.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    title, sub = _title(info)
    fig.suptitle(f"{title}\n{sub}", fontsize=10.5)
    by_number = {r.number: r for r in info.records}
    for i, (ax, panel) in enumerate(zip(axes, info.panels)):
        a = panel.attr
        drawn = False
        for key, recs, kw in (
            ("infeasible", info.infeasible, dict(marker="x", s=22, linewidths=1.0, label="over budget")),
            ("dominated", info.dominated, dict(marker="o", s=20, alpha=0.75, edgecolors="none",
                                               label="feasible, dominated")),
            ("front", info.front, dict(marker="o", s=50, edgecolors="black", linewidths=0.6, zorder=4,
                                       label="Pareto front")),
        ):
            pts = _points(recs, a)
            if pts:
                drawn = True
                ax.scatter([getattr(r, a) for r in pts], [r.map50_95 for r in pts], color=_STYLE[key],
                           **{**kw, "label": f"{kw['label']} ({len(pts)})"})
        curve = [by_number[n] for n in panel.curve]
        if len(curve) > 1:
            ax.step([getattr(r, a) for r in curve], [r.map50_95 for r in curve], where="post", color=_STYLE["front"],
                    lw=1.1, alpha=0.6, zorder=3)
        for r in _points(info.front, a):
            bold = info.best is not None and r.number == info.best.number
            ax.annotate(str(r.number), (getattr(r, a), r.map50_95), xytext=(4, 4), textcoords="offset points",
                        fontsize=8, fontweight="bold" if bold else "normal", zorder=6)
        for r in _points(info.uniform, a):
            drawn = True
            ax.scatter([getattr(r, a)], [r.map50_95], marker="*", s=260, color=_STYLE["uniform"], edgecolors="black",
                       linewidths=0.8, zorder=5, label=f"uniform baseline ({r.number})")
            if r.number not in info.front_numbers:
                ax.annotate(str(r.number), (getattr(r, a), r.map50_95), xytext=(6, -11), textcoords="offset points",
                            fontsize=8, zorder=6)
        if panel.budget is not None:
            ax.axvline(panel.budget, color=_STYLE["budget"], ls="--", lw=1.3, zorder=2,
                       label=f"budget {_g(panel.budget)} {panel.unit}")
            lo, hi = ax.get_xlim()
            if drawn and hi > panel.budget:
                ax.axvspan(panel.budget, hi, color="0.5", alpha=0.08, lw=0)
                ax.set_xlim(lo, hi)
        if drawn and not info.front:
            ax.text(0.5, 0.97, "no feasible trial yet", transform=ax.transAxes, ha="center", va="top", color="0.3")
        if not drawn:
            what = f"no trial with a {panel.unit} value" if info.counts.get("COMPLETE") else "no completed trial yet"
            ax.text(0.5, 0.5, what, transform=ax.transAxes, ha="center", va="center", color="0.4")
        base = f" (unpruned: {_g(panel.base)})" if panel.base is not None else ""
        ax.set_xlabel(panel.label + base)
        ax.grid(True, alpha=0.3)
        if i == 0:
            ax.set_ylabel("mAP50-95 (search proxy)")
        if drawn or panel.budget is not None:
            ax.legend(fontsize=8, loc="best", title="labels: trial numbers (apply --trial N)",
                      title_fontsize=7.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_pareto_html(info: ParetoInfo, path) -> Path:
    """The interactive version of `plot_pareto_png`: one self-contained HTML file (plotly.js embedded, no CDN).

    Hovering a point shows its trial number, kind, mAP50-95, mAP50, GFLOPs, params, latency and status.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    path = Path(path)
    title, sub = _title(info)
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06,
                        x_title=None, subplot_titles=[p.label for p in info.panels])
    by_number = {r.number: r for r in info.records}
    hover = ("<b>trial %{customdata[0]}</b> (%{customdata[1]})<br>mAP50-95 %{customdata[2]}<br>"
             "mAP50 %{customdata[3]}<br>GFLOPs %{customdata[4]}<br>params %{customdata[5]}<br>"
             "latency %{customdata[6]} ms<br>%{customdata[7]}<extra></extra>")
    for col, panel in enumerate(info.panels, start=1):
        a = panel.attr
        first = col == 1
        for key, recs, name, marker in (
            ("infeasible", info.infeasible, "over budget", dict(symbol="x", size=7)),
            ("dominated", info.dominated, "feasible, dominated", dict(symbol="circle", size=7, opacity=0.75)),
            ("front", info.front, "Pareto front", dict(symbol="circle", size=10, line=dict(color="black", width=1))),
            ("uniform", [r for r in info.uniform], "uniform baseline",
             dict(symbol="star", size=18, line=dict(color="black", width=1))),
        ):
            pts = _points(recs, a)
            if not pts:
                continue
            labelled = key in ("front", "uniform")
            fig.add_trace(go.Scatter(
                x=[getattr(r, a) for r in pts], y=[r.map50_95 for r in pts],
                mode="markers+text" if labelled else "markers",
                text=[f"#{r.number}" for r in pts] if labelled else None, textposition="top right",
                marker=dict(color=_STYLE[key], **marker), name=f"{name} ({len(pts)})", legendgroup=key,
                showlegend=first, customdata=[_hover_row(r, info) for r in pts], hovertemplate=hover,
            ), row=1, col=col)
        curve = [by_number[n] for n in panel.curve]
        if len(curve) > 1:
            fig.add_trace(go.Scatter(
                x=[getattr(r, a) for r in curve], y=[r.map50_95 for r in curve], mode="lines",
                line=dict(color=_STYLE["front"], width=1, shape="hv"), opacity=0.6, hoverinfo="skip",
                name="trade-off", legendgroup="front", showlegend=False,
            ), row=1, col=col)
        if panel.budget is not None:
            fig.add_vline(x=panel.budget, line=dict(color=_STYLE["budget"], dash="dash", width=1.5),
                          annotation_text=f"budget {_g(panel.budget)} {panel.unit}", annotation_position="top left",
                          row=1, col=col)
        base = f" (unpruned: {_g(panel.base)})" if panel.base is not None else ""
        fig.update_xaxes(title_text=panel.label + base, row=1, col=col)
    fig.update_yaxes(title_text="mAP50-95 (search proxy)", row=1, col=1)
    if not any(_points(info.records, p.attr) for p in info.panels):
        fig.add_annotation(text="no completed trial yet", xref="paper", yref="paper", x=0.5, y=0.5,
                           showarrow=False)
    fig.update_layout(title=dict(text=f"{_esc(title)}<br><sup>{_esc(sub)}</sup>"), template="plotly_white",
                      height=560, legend=dict(title="labels: trial numbers (apply --trial N)"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic(path) as tmp:
        fig.write_html(tmp, include_plotlyjs=True, include_mathjax=False, full_html=True)
    return path


def over_budget_text(r: TrialRecord, info: ParetoInfo) -> str:
    """Why a trial is not feasible: the budgets it exceeds (from its values), else its stored reason."""
    over = [f"{_g(getattr(r, a))} {unit} > {_g(b)}" for a, unit, b in (
        ("gflops", "GFLOPs", info.budget_gflops), ("latency_ms", "ms", info.budget_latency_ms))
        if b is not None and getattr(r, a) is not None and getattr(r, a) > b]
    if over:
        return "over budget: " + ", ".join(over)
    return f"infeasible: {_short(r.reason, 80)}" if r.reason else "infeasible"


def _hover_row(r: TrialRecord, info: ParetoInfo) -> list:
    if r.number in info.front_numbers:
        status = "on the Pareto front" + (" (best mAP50-95)" if info.best and r.number == info.best.number else "")
    elif r.feasible:
        status = "feasible, dominated"
    else:
        status = over_budget_text(r, info)
    return [r.number, r.kind, _f(r.map50_95, 4), _f(r.map50, 4), _f(r.gflops, 3), _params(r.params),
            _f(r.latency_ms, 2), _esc(status)]


# ------------------------------------------------------------------------------------------------ all three


def write_reports(study, run_dir) -> dict[str, Path]:
    """Write `trials.csv`, `pareto.png` and `pareto.html` of a study into `run_dir`; return their paths by name.

    The search calls this at its end (and `print(format_front_table(study_info(study)))` for the terminal).

    Example:
        >>> import optuna, tempfile
        >>> study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
        >>> sorted(write_reports(study, tempfile.mkdtemp()))
        ['pareto.html', 'pareto.png', 'trials.csv']
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    info = study_info(study)
    return {
        "trials.csv": write_trials_csv(list(info.records), run_dir / "trials.csv", info.front_numbers),
        "pareto.png": plot_pareto_png(info, run_dir / "pareto.png"),
        "pareto.html": plot_pareto_html(info, run_dir / "pareto.html"),
    }


def record_dict(r: TrialRecord, front_numbers=()) -> dict:
    """A record as plain JSON data (NaN and infinities as null), with `on_front`."""
    return _json_safe({
        "number": r.number, "state": r.state, "kind": r.kind, "feasible": r.feasible,
        "on_front": r.number in front_numbers, "map50_95": r.map50_95, "map50": r.map50, "gflops": r.gflops,
        "params": r.params, "latency_ms": r.latency_ms, "reason": r.reason, "genome": r.genome, "attrs": r.attrs,
    })


# -------------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _atomic(path: Path):
    """Yield a temporary path next to `path`, moved over it once written: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _num(x):
    try:
        return None if x is None else float(x)
    except (TypeError, ValueError):
        return None


def _str(x):
    return None if x is None else str(x)


def _or_inf(x):
    return math.inf if x is None else x


def _f(x, digits):
    return "-" if x is None else f"{x:.{digits}f}"


def _g(x, digits=None):
    """A cost for people: 3 significant digits below 100 (0.0512, 4.1, 28.6), whole numbers above."""
    if x is None:
        return "-"
    if digits is not None and abs(x) >= 1:
        return f"{x:.{digits}f}"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def _params(n):
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _short(text, n):
    if text is None:
        return None
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _reason_kind(reason: str) -> str:
    """A reason without its figures, so that alike reasons count together.

    Example:
        >>> _reason_kind("over the GFLOPs budget (4.49 > 4.4); a repaired genome was queued instead")
        'over the GFLOPs budget; a repaired genome was queued instead'
    """
    text = re.sub(r"\s*\([^()]*\)", "", " ".join(str(reason).split()))
    return _short(re.sub(r"\d+(\.\d+)?", "N", text), 80)


def _esc(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
