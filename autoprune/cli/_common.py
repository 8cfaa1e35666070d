"""Flags and checks shared by several commands."""

from __future__ import annotations

import argparse


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="a .pt checkpoint or an Ultralytics model YAML (e.g. yolov8n.yaml); default: the embedded demo model",
    )


def add_device_argument(parser: argparse.ArgumentParser, what: str = "") -> None:
    """`--device`, the same default (auto) and spellings in every command (`autoprune.devices.resolve_devices`)."""
    from autoprune.devices import DEVICE_HELP

    parser.add_argument("--device", default="auto", help=f"{what}{': ' if what else ''}{DEVICE_HELP}")


def add_latency_calibration_argument(parser: argparse.ArgumentParser, what: str = "") -> None:
    """`--latency-calibration N` (`autoprune.latency_calibration`), the same in search and prune."""
    parser.add_argument("--latency-calibration", type=int, default=0, metavar="N",
                        help=f"{what}end-to-end timings of the one-shot plan at the latency target that calibrate the "
                             "latency model there (default 0: the table alone; measured on a shared CPU, closer to the "
                             "target on average but over it in 2 of 4 runs: docs/BENCHMARKS.md, 'Calibrated at the "
                             "target')")


def add_imgsz_argument(parser: argparse.ArgumentParser, default: int = 640, what: str = "costs") -> None:
    parser.add_argument("--imgsz", type=int, default=default, help=f"image size for {what} (default {default})")


def percent(x: float) -> str:
    return f"{100 * x:.1f}%"


# ------------------------------------------------------------------------------------------ runs and studies
def add_run_arguments(parser: argparse.ArgumentParser, kind: str, *, name_default: str = "the next free expN",
                      project_default: str | None = None) -> None:
    """`--project`, `--name`, `--exist-ok`: where a command's run folder goes, in Ultralytics' words.

    The folder is PROJECT/NAME (`autoprune.runs.run_dir_path`). A default name is always a new folder; a name given
    that exists is one error line unless `--exist-ok`, which writes into it.
    """
    parser.add_argument("--project", default=None, metavar="DIR",
                        help=f"folder of the run folders (default {project_default or f'runs/{kind}'})")
    parser.add_argument("--name", default=None,
                        help=f"run folder name inside --project (default: {name_default}); an existing one needs "
                             "--exist-ok")
    parser.add_argument("--exist-ok", action="store_true",
                        help="write into an existing --project/--name folder (its files are replaced)")


def add_study_argument(parser: argparse.ArgumentParser, *, deprecated_name: bool = False) -> None:
    """`--study` and `--storage`: the Optuna study a command reads. `deprecated_name` adds the old `--name` spelling
    of `--study` (hidden), for commands whose `--name` is nothing else."""
    parser.add_argument("--study", default=None, metavar="NAME",
                        help="the search's study, in runs/search/NAME/study.db unless --storage is given "
                             "(default: the latest search there, or --storage's only study)")
    parser.add_argument("--storage", default=None, metavar="URL",
                        help="database URL of the study (e.g. postgresql://user:password@host/db or "
                             "sqlite:///path/study.db); default: the run folder's SQLite file")
    if deprecated_name:
        parser.add_argument("--name", default=None, help=argparse.SUPPRESS)


def add_deprecated_out(parser: argparse.ArgumentParser) -> None:
    """The old `--out` of `apply` and `plot`, hidden; `handle_deprecation` turns it into --project/--name."""
    parser.add_argument("--out", dest="_deprecated_out", default=None, help=argparse.SUPPRESS)


# Renamed flags, in one place (as Ultralytics' `cfg._handle_deprecation`): (command, old spelling) -> new spelling.
# They keep working, with one warning line on stderr, until REMOVED_IN.
REMOVED_IN = "0.2.0"
DEPRECATED_FLAGS = {
    ("trials", "--name"): "--study",
    ("plot", "--name"): "--study",  # only where --name names a study and no run folder (see handle_deprecation)
    ("apply", "--name"): "--study",  # the same rule
    ("plot", "--out"): "--project/--name",  # --out DIR == --project DIR/.. --name DIR's name --exist-ok
    ("apply", "--out"): "--name",  # a folder name under runs/apply, as --name is
}


def handle_deprecation(args: argparse.Namespace) -> list[str]:
    """Turn the old spellings of `args.command` into the new ones (`DEPRECATED_FLAGS`); print ONE warning line on
    stderr naming them; return the old flags that were used.

    `--name` of `trials` was the study; of `plot` and `apply` it is the output run now, and the study is `--study`.
    An old `plot/apply --name X` without `--study` still reads study X when X is a study (in `--storage`, or
    runs/search/X/study.db) and PROJECT/X is no run folder of the command; otherwise `--name` is the run's name.
    """
    command = getattr(args, "command", None)
    used = []
    if command == "trials" and args.name is not None:
        if args.study is not None:
            from autoprune.errors import UserError

            raise UserError("--name is the old spelling of --study: give --study only")
        args.study, args.name = args.name, None
        used.append("--name")
    if command in ("plot", "apply") and args.study is None and args.name is not None and _names_a_study(args):
        args.study, args.name = args.name, None
        used.append("--name")
    old_out = getattr(args, "_deprecated_out", None)
    if old_out is not None:
        from autoprune.errors import UserError

        if args.name is not None or args.project is not None:
            raise UserError("--out is the old spelling of --project/--name: give --project/--name only")
        if command == "plot":
            from pathlib import Path

            out = Path(old_out)
            if out.name in ("", ".", ".."):
                out = out.resolve()
            args.project, args.name, args.exist_ok = str(out.parent), out.name, True
        else:
            args.name = old_out
        args._deprecated_out = None
        used.append("--out")
    if used:
        import sys

        news = [f"{old} is deprecated, use {DEPRECATED_FLAGS[(command, old)]}" for old in used]
        print(f"warning: {'; '.join(news)}; the old spelling{'s' if len(used) > 1 else ''} will be removed in "
              f"autoprune {REMOVED_IN}", file=sys.stderr)
    return used


def _names_a_study(args: argparse.Namespace) -> bool:
    """Whether `--name` (of plot or apply, without `--study`) is the old spelling of the study: it names a study that
    can be read, and PROJECT/NAME is not a run folder of this command."""
    from autoprune.errors import UserError
    from autoprune.runs import project_dir

    try:
        if project_dir(args.command, args.project).joinpath(args.name).exists():
            return False
    except (OSError, ValueError):
        return False
    from autoprune import report

    try:
        report.read_study(args.storage, args.name)  # never creates a file
    except UserError:
        return False
    return True
