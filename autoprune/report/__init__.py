"""The reports of a search: `trials.csv`, `pareto.png`, `pareto.html` and the Pareto front as a terminal table.

Everything is computed once into a small frozen `ParetoInfo` (`front`: which trials are feasible, on the front, the
uniform baseline, the best trial, the budgets, the counts), and only then written: the table and lines (`tables`),
the PNG and the self-contained HTML (`plots`), the CSV (`files`) all read the same object, so they always agree.
The same functions serve a search that just finished (`write_reports`, called by `autoprune search`) and one that
is still running or was finished long ago (`autoprune trials`, `autoprune plot`, which open it with `read_study`).

Modules: `study` opens a stored study for reading; `front` computes `ParetoInfo`; `tables` writes text; `plots`
draws; `files` writes `trials.csv` and all three report files; `text` and `atomic` are their shared helpers.
`apply_report` writes `autoprune apply`'s report.md and its per-epoch finetune curve.

Example:
    >>> info = pareto_info([], {"model": "yolov8n.pt", "budget_gflops": 4.0})
    >>> info.front, info.best, info.baseline
    ((), None, None)
    >>> print(format_front_table(info).splitlines()[0])
    Pareto front: no feasible trial yet (0 trials)
"""

from autoprune.report.apply_report import epoch_curve, format_report, plot_curve
from autoprune.report.files import CSV_COLUMNS, record_dict, write_reports, write_trials_csv
from autoprune.report.front import Panel, ParetoInfo, pareto_info, study_info
from autoprune.report.plots import plot_pareto_html, plot_pareto_png
from autoprune.report.study import local_study_names, newest_local_study, only_study_name, read_study
from autoprune.report.tables import (
    comparison_line,
    confirmed_lines,
    format_front_table,
    format_trials_table,
    over_budget_text,
)
from autoprune.search.records import load_records

__all__ = [
    "CSV_COLUMNS",
    "Panel",
    "ParetoInfo",
    "comparison_line",
    "confirmed_lines",
    "epoch_curve",
    "format_front_table",
    "format_report",
    "format_trials_table",
    "load_records",
    "local_study_names",
    "newest_local_study",
    "only_study_name",
    "over_budget_text",
    "pareto_info",
    "plot_pareto_html",
    "plot_curve",
    "plot_pareto_png",
    "read_study",
    "record_dict",
    "study_info",
    "write_reports",
    "write_trials_csv",
]
