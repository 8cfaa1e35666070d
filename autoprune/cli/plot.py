"""Draw a search's Pareto front, finished or still running: pareto.png and the interactive pareto.html.

    autoprune plot --name exp1                      # into runs/search/exp1/
    autoprune plot --storage postgresql://user@host/db --name exp1 --out plots/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autoprune.cli.trials import add_study_arguments, default_study
from autoprune.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the `plot` command's flags."""
    add_study_arguments(parser)
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder for pareto.png and pareto.html (default: the run folder runs/search/NAME)")


def run(args: argparse.Namespace) -> dict:
    """Check --out, read the study, write both plots; print and return their paths."""
    from autoprune import report
    from autoprune.search.storage import run_dir_for

    default_study(args)
    out = None
    if args.out is not None:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out must be a folder, but {out} is a file")
    elif args.name:
        try:
            out = run_dir_for(args.name)
        except UserError:
            if args.storage is None:
                raise
            raise UserError(f"study name {args.name!r} is no plain folder name; pass --out DIR for the plots") from None
    if out is not None:
        from autoprune.runs import check_writable

        check_writable(out, kind="folder", what="--out" if args.out is not None else "run folder")
    study = report.read_study(args.storage, args.name)
    info = report.study_info(study)
    png = report.plot_pareto_png(info, out / "pareto.png")
    html = report.plot_pareto_html(info, out / "pareto.html")
    if not args.json:
        print(f"{info.headline()}: {info.counts_text()}")
        print(png)
        print(html)
    return {"study": args.name, "png": png, "html": html, "front": sorted(info.front_numbers),
            "counts": info.counts}
