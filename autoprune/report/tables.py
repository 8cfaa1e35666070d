"""The reports as text: the Pareto front table (`autoprune search`, `autoprune trials`), every trial one line
(`autoprune trials --all`), the comparison with the uniform baseline and the confirmed trials.

Example:
    >>> from autoprune.report.front import pareto_info
    >>> print(format_front_table(pareto_info([], {})))
    Pareto front: no feasible trial yet (0 trials)
"""

from __future__ import annotations

import math

from autoprune.report.front import UNFINISHED_STATES, ParetoInfo, latency_spread, latency_under_load
from autoprune.report.text import (LOAD_NOTE, cost_text, fixed_text, latency_text, params_text,
                                   score_text, shorten)
from autoprune.search.records import LATENCY_PREDICTED_MS, LATENCY_SOURCE, PROXY_SEED_RATIO, TrialRecord

SCORE_SE_NOTE = (f"(±SE: how far mAP50-95 would move with other validation images, a bootstrap; another proxy seed "
                 f"moves a difference of two trials about {PROXY_SEED_RATIO:g} x as much again, which the "
                 "recommendation counts)")


def format_front_table(info: ParetoInfo, apply_hint: str | None = None) -> str:
    """The Pareto front as a terminal table, the comparison with the uniform baseline, and how to apply a trial.

    Rows are front members by increasing GFLOPs; `*` marks the best feasible trial. The uniform baseline follows
    as a reference row when it is not on the front. `apply_hint` is the command to print for the recommended trial
    (default: `autoprune apply --study NAME --trial N`, N the recommended trial, `ParetoInfo.recommended`).

    Example:
        >>> from autoprune.report.front import pareto_info
        >>> from autoprune.search.records import TrialRecord
        >>> r = TrialRecord(3, "COMPLETE", 0.41, 0.6, 4.1, 12.0, 1_500_000, True, "search", None)
        >>> print(format_front_table(pareto_info([r], {}, study_name="exp1")))  # doctest: +NORMALIZE_WHITESPACE
        Pareto front of search 'exp1': 1 trials: 1 complete (1 feasible); 1 on the front
            trial  kind      mAP50-95   mAP50  GFLOPs   params  latency ms
          *     3  search      0.4100  0.6000    4.10    1.50M  12.0
        no uniform baseline trial in this study: nothing to compare against
        apply the recommended trial:  autoprune apply --study exp1 --trial 3
    """
    lines = []
    if info.unfinished:
        busy = ", ".join(f"{info.counts[s]} {s.lower()}" for s in UNFINISHED_STATES if info.counts.get(s))
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
    rows = sorted(info.front, key=lambda r: (math.inf if r.gflops is None else r.gflops, -r.map50_95, r.number))
    show_ref = info.baseline is not None and info.baseline.number not in info.front_numbers
    with_se = any(r.map50_95_se is not None for r in rows)
    lines.append(_row("", "trial", "kind", "mAP50-95 ±SE" if with_se else "mAP50-95", "mAP50", "GFLOPs", "params",
                      "latency ms", "vs uniform" if info.baseline else None))
    for r in rows + ([info.baseline] if show_ref else []):
        if r is info.baseline and show_ref:
            lines.append("  " + "-" * 8 + " uniform baseline, not on the front" + (
                "" if r.feasible else " (over budget)"))
        mark = "*" if info.best is not None and r.number == info.best.number else ""
        gflops = cost_text(r.gflops, 2)
        if pct_base and r.gflops is not None:
            gflops += f" ({100 * r.gflops / pct_base:.0f}%)"
        delta = f"{r.map50_95 - info.baseline.map50_95:+.4f}" if info.baseline else None
        lines.append(_row(mark, str(r.number), r.kind, score_text(r.map50_95, r.map50_95_se), fixed_text(r.map50, 4),
                          gflops, params_text(r.params), _latency(r), delta))
    if pct_base:
        lines.append(f"(GFLOPs % of the unpruned model's {cost_text(pct_base)})")
    if info.figures_note():
        lines.append(info.figures_note())
    if with_se:
        lines.append(SCORE_SE_NOTE)
    lines.extend(_latency_notes(rows + ([info.baseline] if show_ref else [])))
    lines.append(comparison_line(info))
    lines.extend(confirmed_lines(info))
    if info.counts.get("feasible_incomplete"):
        lines.append(f"note: {info.counts['feasible_incomplete']} feasible trial(s) lack an objective value and are "
                     "left off the front")
    lines.append(f"apply the recommended trial:  {apply_hint or _apply_hint(info)}")
    return "\n".join(lines)


def confirmed_lines(info: ParetoInfo) -> list[str]:
    """The trials the search re-scored under other proxy seeds, best mean first, and which one to apply.

    Example:
        >>> from autoprune.report.front import pareto_info
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
        why = f": {shorten(first.reason, 80)}" if first.reason else ""
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
    with_se = any(r.map50_95_se is not None for r in info.records)
    lines = [_trow("trial", "state", "kind", "feas", "front", "mAP50-95 ±SE" if with_se else "mAP50-95", "mAP50",
                   "GFLOPs", "params", "latency ms ±spread", "reason")]
    front = info.front_numbers
    for r in info.records:
        lines.append(_trow(str(r.number), r.state, r.kind, "yes" if r.feasible else "no",
                           "F" if r.number in front else "", score_text(r.map50_95, r.map50_95_se),
                           fixed_text(r.map50, 4), fixed_text(r.gflops, 2), params_text(r.params), _latency(r),
                           shorten(r.reason, 60) or ""))
    lines.extend(_latency_notes(info.records))
    if with_se:
        lines.append(SCORE_SE_NOTE)
    if info.figures_note():
        lines.append(info.figures_note())
    return "\n".join(lines)


PREDICTED_MARK = "p"  # after a latency the latency model predicted and nothing timed (--latency-model predicted)


def _latency(r: TrialRecord) -> str:
    text = latency_text(r.latency_ms, latency_spread(r), latency_under_load(r))
    return text + f" {PREDICTED_MARK}" if r.attrs.get(LATENCY_SOURCE) == "predicted" else text


def _latency_notes(records) -> list[str]:
    """What the latency column means: the spread, the mark of a latency measured under load when one is, and with
    `--latency-model predicted` the mark of a predicted latency and each re-measured trial's prediction."""
    shown = [r for r in records if r.latency_ms is not None]
    if not shown:
        return []
    lines = []
    if any(r.attrs.get(LATENCY_SOURCE) == "predicted" for r in shown):
        lines.append(f"({PREDICTED_MARK}: latency predicted by the latency model, not timed end to end)")
    pairs = [(r.number, r.attrs[LATENCY_PREDICTED_MS], r.latency_ms) for r in shown
             if r.attrs.get(LATENCY_SOURCE) == "measured" and isinstance(r.attrs.get(LATENCY_PREDICTED_MS), (int, float))]
    if pairs:
        cells = ", ".join(f"trial {n} {p:.1f} -> {m:.1f} ms ({100 * (m - p) / p:+.0f}%)" for n, p, m in pairs[:8] if p)
        lines.append(f"(latency predicted -> measured end to end after the search: {cells}"
                     + (", ..." if len(pairs) > 8 else "") + ")")
    if any(latency_spread(r) is not None for r in shown):
        lines.append("(latency: median ms ± spread, p90 - p10 of the timed runs)")
    if any(latency_under_load(r) for r in shown):
        lines.append(LOAD_NOTE)
    return lines


def _row(mark, trial, kind, m, m50, g, p, lat, delta):
    s = f"  {mark:1} {trial:>5}  {kind:<15} {m:>14} {m50:>7} {g:>11} {p:>8} {lat:>17}"
    return s + (f" {delta:>11}" if delta is not None else "")


def _trow(trial, state, kind, feas, front, m, m50, g, p, lat, reason):
    s = f"{trial:>5}  {state:<8} {kind:<15} {feas:>4} {front:>5} {m:>14} {m50:>7} {g:>7} {p:>8} {lat:>18}"
    return f"{s}  {reason}" if reason else s


def _reason_lines(info: ParetoInfo) -> list[str]:
    if not info.reasons:
        return []
    return ["most common reasons trials were pruned or failed:"] + [f"  {n} x {why}" for why, n in info.reasons]


def _at(r: TrialRecord) -> str:
    parts = [f"{cost_text(r.gflops)} GFLOPs" if r.gflops is not None else None,
             f"{cost_text(r.latency_ms)} ms" if r.latency_ms is not None else None]
    parts = [p for p in parts if p]
    return f" at {' and '.join(parts)}" if parts else ""


def _apply_hint(info: ParetoInfo) -> str:
    trial = info.recommended.number if info.recommended else "N"
    return f"autoprune apply --study {info.study_name or 'NAME'} --trial {trial}"


def over_budget_text(r: TrialRecord, info: ParetoInfo) -> str:
    """Why a trial is not feasible: the budgets it exceeds (from its values), else its stored reason."""
    over = [f"{cost_text(getattr(r, a))} {unit} > {cost_text(b)}" for a, unit, b in (
        ("gflops", "GFLOPs", info.budget_gflops), ("latency_ms", "ms", info.budget_latency_ms))
        if b is not None and getattr(r, a) is not None and getattr(r, a) > b]
    if over:
        return "over budget: " + ", ".join(over)
    return f"infeasible: {shorten(r.reason, 80)}" if r.reason else "infeasible"

