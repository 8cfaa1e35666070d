"""Run folders under `runs/`: one per command invocation, each with the `args.yaml` that produced it."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from autoprune.errors import UserError

RUNS_ROOT = Path("runs")


def new_run_dir(kind: str, name: str | None = None, *, exist_ok: bool = False, root: Path | None = None) -> Path:
    """Create `runs/KIND/NAME` (or the next free `runs/KIND/expN` when no name is given) and return it.

    A named folder that already exists is a `UserError` unless `exist_ok` (resume, `--force`).
    """
    base = (root or RUNS_ROOT) / kind
    if name is None:
        n = 1
        while (base / f"exp{n}").exists():
            n += 1
        name = f"exp{n}"
    if "/" in name or name in ("", ".", ".."):
        raise UserError(f"run name must be a plain folder name, got {name!r}")
    path = base / name
    if path.exists() and not exist_ok:
        raise UserError(f"{path} already exists; pick another --name (or --resume / --force where offered)")
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_args(run_dir: Path, args: argparse.Namespace | dict, **extra) -> Path:
    """Write the resolved arguments of a run as `args.yaml` in its folder and return the file's path."""
    data = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args)
    data = {k: _plain(v) for k, v in data.items() if not k.startswith("_")}
    data.update({k: _plain(v) for k, v in extra.items()})
    path = Path(run_dir) / "args.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _plain(v):
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)
