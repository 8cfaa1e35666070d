"""The `autoprune` command line.

Each command lives in its own module under `autoprune.cli` and exposes two functions:

- `add_arguments(parser)`: declares the command's flags (the framework adds `--json` to every command);
- `run(args) -> dict`: does the work, prints the human-readable view unless `args.json`, and returns a
  JSON-serialisable summary that the framework prints when `--json` is given.

A `UserError` raised anywhere becomes one line on stderr, `error: ...`, and exit code 2. Other exceptions are bugs
and keep their traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys

from autoprune.errors import UserError

# name -> (module, one-line help). Order is the order `autoprune --help` lists them.
COMMANDS = {
    "search": ("autoprune.cli.search", "search per-group keep ratios for the best accuracy within a budget"),
    "trials": ("autoprune.cli.trials", "list the trials of a search (finished or running) and its Pareto front"),
    "plot": ("autoprune.cli.plot", "draw a search's Pareto front: pareto.png and the interactive pareto.html"),
    "apply": ("autoprune.cli.apply", "rebuild a trial's pruned model, finetune it with distillation, report before/after"),
    "groups": ("autoprune.cli.groups", "list the prunable channel groups of a model"),
    "prune": ("autoprune.cli.prune", "prune a model at one keep ratio (or per-group ratios) and save it"),
    "sparsify": ("autoprune.cli.sparsify", "sparse-train a model (L1 on BN gammas, or growing regularisation) for pruning"),
    "proxy": ("autoprune.cli.proxy", "score one candidate with the search's proxy (BN recalibration, short finetune, mAP)"),
    "demo": ("autoprune.cli.demo", "show the built-in demo data and baseline (with its measured mAP), or retrain it"),
    "cost": ("autoprune.cli.cost", "report GFLOPs, parameters and measured latency (torch or onnxruntime) of a model"),
}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one `error:` line and exit code 2, like every other user error."""

    def error(self, message: str):  # noqa: D102 - argparse's own contract
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """Build the full parser with one sub-parser per registered command."""
    parser = _Parser(prog="autoprune", description="Search-based automatic pruning for Ultralytics YOLO detectors.")
    from autoprune import __version__

    parser.add_argument("--version", action="version", version=f"autoprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip().splitlines()[0])
        module.add_arguments(p)
        p.add_argument("--json", action="store_true", help="print a machine-readable JSON summary on stdout")
        p.set_defaults(_run=module.run)
    return parser


@contextlib.contextmanager
def _stdout_for_json(enabled: bool):
    """While a --json command runs, send every other line (ours and Ultralytics') to stderr."""
    if not enabled:
        yield
        return
    import autoprune._ultralytics  # noqa: F401  (its log handler follows sys.stdout, so it is redirected too)

    with contextlib.redirect_stdout(sys.stderr):
        yield


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `autoprune` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        from autoprune.cli._common import handle_deprecation

        handle_deprecation(args)  # old flag spellings: the new ones, and one warning line
        with _stdout_for_json(args.json):
            result = args._run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, indent=2, default=_json_default))
    return 0


def _json_default(obj):
    """Serialise the few non-JSON types results carry (paths, numpy scalars)."""
    from pathlib import Path

    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


if __name__ == "__main__":
    raise SystemExit(main())
