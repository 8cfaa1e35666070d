"""The report files of a study: `trials.csv`, and `write_reports`, which writes it with `pareto.png` and
`pareto.html` into a run folder; `record_dict`, a trial as plain JSON data for `--json`."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from autoprune.report.atomic import atomic_output
from autoprune.report.front import latency_spread, latency_under_load, study_info
from autoprune.report.plots import plot_pareto_html, plot_pareto_png
from autoprune.search.records import TrialRecord

CSV_COLUMNS = ("number", "state", "kind", "feasible", "on_front", "map50_95", "map50", "gflops", "params",
               "latency_ms", "latency_spread_ms", "latency_under_load", "reason")


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
        0,PRUNED,search,False,False,,,9.1,,,,,over the GFLOPs budget,0.5
    """
    path = Path(path)
    front = set(front_numbers)
    genes = list(dict.fromkeys(g for r in records for g in r.genome))
    header = list(CSV_COLUMNS) + [f"gene_{g}" if g in CSV_COLUMNS else str(g) for g in genes]
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in sorted(records, key=lambda r: r.number):
            row = [r.number, r.state, r.kind, r.feasible, r.number in front, r.map50_95, r.map50, r.gflops, r.params,
                   r.latency_ms, latency_spread(r), _under_load(r), r.reason]
            w.writerow(["" if v is None else v for v in row + [r.genome.get(g) for g in genes]])
    return path


def write_reports(study, run_dir) -> dict[str, Path]:
    """Write `trials.csv`, `pareto.png` and `pareto.html` of a study into `run_dir`; return their paths by name.

    `autoprune search` writes these at its end (and prints `format_front_table(study_info(study))`).

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
    """A record as plain JSON data (NaN and infinities as null), with `on_front`, the latency's spread (p90 - p10,
    ms) and whether it was measured under load (`latency_under_load`: noisy)."""
    return json_safe({
        "number": r.number, "state": r.state, "kind": r.kind, "feasible": r.feasible,
        "on_front": r.number in front_numbers, "map50_95": r.map50_95, "map50": r.map50, "gflops": r.gflops,
        "params": r.params, "latency_ms": r.latency_ms, "latency_spread_ms": latency_spread(r),
        "latency_under_load": _under_load(r), "reason": r.reason, "genome": r.genome, "attrs": r.attrs,
    })


def _under_load(r: TrialRecord) -> bool | None:
    """Whether the latency was measured under load; None without a latency."""
    return None if r.latency_ms is None else latency_under_load(r)


def json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x

