"""List the trials of a search, finished or still running, and its Pareto front.

    autoprune trials --study exp1                   # every trial, then the front
    autoprune trials --study exp1 --pareto          # the front only, ready for `autoprune apply --trial N`
    autoprune trials --storage postgresql://user@host/db --study exp1 --json
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the `trials` command's flags."""
    from autoprune.cli._common import add_study_argument

    add_study_argument(parser, deprecated_name=True)
    parser.add_argument("--pareto", action="store_true", help="show (and with --json, return) the front only")


def default_study(args: argparse.Namespace) -> None:
    """Without `--study`, read the latest local search (`autoprune apply --trial 17` after `autoprune search`), or
    with `--storage` the database's only study, and say which (on stdout, so that an error stays one line on
    stderr; `--json` output names the study). A storage with several studies needs `--study` (the error lists
    them); one with none says so."""
    from autoprune import report

    if args.study:
        return
    if args.storage is not None:
        args.study = report.only_study_name(args.storage)
        if not args.json:
            print(f"study {args.study!r}: the only study in --storage")
        return
    args.study = report.newest_local_study()
    if args.study is not None and not args.json:
        print(f"study {args.study!r}: the latest search in runs/search (pick another with --study)")


def safe_url(storage: str | None, name: str) -> str:
    """The study's storage URL with any password hidden, for printing."""
    from autoprune.search.storage import mask_url, storage_url

    return mask_url(storage_url(storage, name))


def apply_hint(storage: str | None, name: str, trial: int | None) -> str:
    """The `autoprune apply` command for trial `trial` of this study (`N` when there is none), ready to paste.

    The storage URL is shown with its password masked (`search.storage.mask_url`); the hint then says so, since the
    command needs the real password in its place.

    Example:
        >>> apply_hint("postgresql://u:pw@host/db", "exp1", 7)
        "autoprune apply --storage 'postgresql://u:***@host/db' --study exp1 --trial 7  (password elided: put yours in place of ***)"
    """
    import shlex

    from autoprune.search.storage import mask_url

    where = ""
    note = ""
    if storage is not None:
        shown = mask_url(storage)
        where = f"--storage {shlex.quote(shown)} "
        if shown != storage:
            note = "  (password elided: put yours in place of ***)"
    return f"autoprune apply {where}--study {shlex.quote(name)} --trial {'N' if trial is None else trial}{note}"


def run(args: argparse.Namespace) -> dict:
    """Read the study, print the trials (or the front only) and return them with the front's trial numbers."""
    from autoprune import report

    default_study(args)
    study = report.read_study(args.storage, args.study)
    info = report.study_info(study)
    front = info.front_numbers
    shown = info.front if args.pareto else info.records
    if not args.json:
        if not args.pareto:
            print(report.format_trials_table(info) if info.records else "no trials yet")
            print()
        recommended = info.recommended.number if info.recommended else None
        print(report.format_front_table(info, apply_hint=apply_hint(args.storage, args.study, recommended)))
    return {
        "study": args.study,
        "storage": safe_url(args.storage, args.study),
        "model": info.model,
        "data": info.data,
        "budget_gflops": info.budget_gflops,
        "budget_latency_ms": info.budget_latency_ms,
        "counts": info.counts,
        "front": sorted(front),
        "best": info.best.number if info.best else None,
        "uniform": info.baseline.number if info.baseline else None,
        "gain_map50_95": info.gain,
        "confirmed": {str(n): {str(k): v for k, v in by_seed.items()} for n, by_seed, _ in info.confirmed},
        "recommended": info.recommended.number if info.recommended else None,
        "in_progress": info.unfinished > 0,
        "trials": [report.record_dict(r, front) for r in shown],
    }
