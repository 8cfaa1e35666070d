"""Run folders under `runs/`: one per command invocation, each with the `args.yaml` that produced it."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import yaml

from autoprune.errors import UserError

RUNS_ROOT = Path("runs")


def next_run_name(kind: str, prefix: str = "exp", *, root: Path | None = None, project: str | Path | None = None) -> str:
    """The first free `PREFIXN` (N = 1, 2, ...) in the project folder (default `runs/KIND/`): the default name of
    every command's run folder.

    Nothing is created, so a caller may check its other inputs first. Example: `next_run_name("search")` is "exp1"
    in a fresh working folder.
    """
    base = project_dir(kind, project, root=root)
    n = 1
    while (base / f"{prefix}{n}").exists():
        n += 1
    return f"{prefix}{n}"


def trial_run_name(study: str, number: int) -> str:
    """The default run folder name of `autoprune apply` for trial `number` of study `study`: "STUDY-trialN"."""
    return f"{study}-trial{number}"


def project_dir(kind: str, project: str | Path | None = None, *, root: Path | None = None) -> Path:
    """`--project`, or `runs/KIND` when it is not given: the folder a command's run folders go into."""
    return Path(project) if project is not None else (root or RUNS_ROOT) / kind


def check_run_name(name: str, flag: str = "--name") -> str:
    """A run name is one plain folder name: no path separator, not empty, not `.` or `..` (a `UserError` if not)."""
    if not name or "/" in name or "\\" in name or os.sep in name or name in (".", ".."):
        raise UserError(f"{flag} must be a plain folder name (the run folder inside --project), got {name!r}")
    return name


def run_dir_path(kind: str, project: str | Path | None = None, name: str | None = None, *, exist_ok: bool = False,
                 default: str | None = None, root: Path | None = None) -> Path:
    """The run folder `PROJECT/NAME` a command will write, checked and not created (`new_run_dir` creates it).

    Ultralytics' vocabulary: `project` (default `runs/KIND`) holds the run folders, `name` is one of them. Without a
    name the folder is a new one: `default` when given and free, else `default-2`, `default-3`, ...; without a
    default, the next free `expN`. A name given that already exists is a `UserError` unless `exist_ok` (then its
    files are written over). A project that is a file, a name with a path separator and a folder that cannot be
    written are `UserError`s too; all of this is checked before any work.

    Example:
        >>> run_dir_path("prune")                                 # a fresh working folder
        PosixPath('runs/prune/exp1')
        >>> run_dir_path("apply", "out", "small")
        PosixPath('out/small')
    """
    base = project_dir(kind, project, root=root)
    if base.exists() and not base.is_dir():
        raise UserError(f"--project must be a folder, but {base} is a file")
    if name is None:
        if default is None:
            name = next_run_name(kind, project=base)
        else:
            check_run_name(default)
            name, n = default, 1
            while (base / name).exists():
                n += 1
                name = f"{default}-{n}"
    else:
        check_run_name(name)
        if (base / name).exists() and not exist_ok:
            raise UserError(f"{base / name} already exists; pass --exist-ok to write into it, or pick another --name")
    path = base / name
    check_writable(path, kind="folder", what="run folder")
    return path


def new_run_dir(kind: str, name: str | None = None, *, project: str | Path | None = None, exist_ok: bool = False,
                root: Path | None = None) -> Path:
    """Create the run folder `PROJECT/NAME` (`run_dir_path`: project default `runs/KIND`, name default the next
    free `expN`) and return it. A named folder that already exists is a `UserError` unless `exist_ok`."""
    path = run_dir_path(kind, project, name, exist_ok=exist_ok, root=root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_run_root(kind: str, project: str | Path | None = None, *, root: Path | None = None) -> Path:
    """Check, before any work, that the project folder (default `runs/KIND/`) can take a new run folder
    (`check_writable`); return it."""
    base = project_dir(kind, project, root=root)
    if base.exists() and not base.is_dir():
        raise UserError(f"--project must be a folder, but {base} is a file")
    return check_writable(base, kind="folder", what="run folder")


def check_writable(path: str | Path, *, kind: str = "file", what: str = "--out") -> Path:
    """Check that `path` can be written as a `kind` ("file" or "folder"); a `UserError` naming `what` if not.

    An existing `path` must be of that kind (and a file writable); otherwise its nearest existing ancestor must be a
    folder in which a file can be created. The test creates a uniquely named empty file there and removes it at
    once: permission bits say nothing for root, and a read-only mount or a pseudo file system such as `/sys`
    refuses what `os.access` allows. Nothing else is created; the folders above `path` are made by the writer.

    Example:
        >>> check_writable("runs/prune/exp1/pruned.pt")
        PosixPath('runs/prune/exp1/pruned.pt')
        >>> check_writable("/sys/x.pt")
        Traceback (most recent call last):
        autoprune.errors.UserError: cannot write --out /sys/x.pt: the folder /sys is not writable (Permission denied)
    """
    if kind not in ("file", "folder"):
        raise ValueError(f"kind must be 'file' or 'folder', got {kind!r}")
    path = Path(path)
    head = f"cannot write {what} {path}"
    if path.is_dir():
        if kind == "file":
            raise UserError(f"{head}: it is an existing folder, and a file is expected")
        _probe(path, head)
        return path
    if path.exists() or path.is_symlink():
        if kind == "folder":
            raise UserError(f"{head}: it is an existing file, and a folder is expected")
        if not os.access(path, os.W_OK):
            raise UserError(f"{head}: the file is read-only")
        _probe(path.parent, head)
        return path
    ancestor = path.parent
    while not (ancestor.exists() or ancestor.is_symlink()) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{head}: {ancestor} is a file, not a folder")
    _probe(ancestor, head)
    return path


def _probe(folder: Path, head: str) -> None:
    """A `UserError` starting with `head` unless a file can be created (and is then removed) in `folder`."""
    shown = folder if str(folder) not in ("", ".") else Path.cwd()
    try:
        fd, probe = tempfile.mkstemp(prefix=".autoprune-write-check-", dir=folder)
    except OSError as e:
        raise UserError(f"{head}: the folder {shown} is not writable ({e.strerror or type(e).__name__})") from None
    os.close(fd)
    os.unlink(probe)


def save_args(run_dir: Path, args: argparse.Namespace | dict, **extra) -> Path:
    """Write the resolved arguments of a run as `args.yaml` in its folder and return the file's path."""
    data = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args)
    data = {k: _plain(v) for k, v in data.items() if not k.startswith("_")}
    data.update({k: _plain(v) for k, v in extra.items()})
    from autoprune.urls import mask_url  # a storage URL's password never reaches a file

    data = {k: mask_url(v) if isinstance(v, str) else v for k, v in data.items()}
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
