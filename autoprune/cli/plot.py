"""Draw a search's Pareto front, finished or still running: pareto.png and the interactive pareto.html.

    autoprune plot --study exp1                     # into the search's run folder runs/search/exp1/
    autoprune plot --storage postgresql://user@host/db --study exp1 --name team   # into runs/plot/team/
"""

from __future__ import annotations

import argparse

from autoprune.cli._common import add_deprecated_out, add_run_arguments, add_study_argument
from autoprune.cli.trials import default_study
from autoprune.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the `plot` command's flags."""
    add_study_argument(parser)
    add_run_arguments(parser, "plot", name_default="the next free expN; without --project and --name the plots "
                                                  "go into the search's run folder runs/search/STUDY")
    add_deprecated_out(parser)


def _out_dir(args: argparse.Namespace):
    """The folder for the plots: PROJECT/NAME when either is given, else the search's run folder (written into)."""
    from autoprune.runs import check_writable, run_dir_path
    from autoprune.search.storage import run_dir_for

    if args.project is not None or args.name is not None:
        return run_dir_path("plot", args.project, args.name, exist_ok=args.exist_ok)
    if not args.study:
        return None  # read_study says which study is missing
    try:
        out = run_dir_for(args.study)
    except UserError:
        if args.storage is None:
            raise
        raise UserError(f"study name {args.study!r} is no plain folder name; pass --name for the plots' folder") from None
    return check_writable(out, kind="folder", what="run folder")


def run(args: argparse.Namespace) -> dict:
    """Check the output folder, read the study, write both plots; print and return their paths."""
    from autoprune import report

    default_study(args)
    out = _out_dir(args)
    study = report.read_study(args.storage, args.study)
    info = report.study_info(study)
    png = report.plot_pareto_png(info, out / "pareto.png")
    html = report.plot_pareto_html(info, out / "pareto.html")
    if not args.json:
        print(f"{info.headline()}: {info.counts_text()}")
        print(png)
        print(html)
    return {"study": args.study, "png": png, "html": html, "front": sorted(info.front_numbers),
            "counts": info.counts, "run_dir": str(out)}
