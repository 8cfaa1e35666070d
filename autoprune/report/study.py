"""Opening a stored search study for reading, as `autoprune trials`, `plot` and `apply` do.

Reading never creates or changes a file: a SQLite path is checked to be an existing Optuna database before Optuna
opens it (SQLAlchemy would create an empty one), and every mistake is one `UserError` line naming what is there.

Example:
    >>> local_study_names()  # doctest: +SKIP
    ['exp1', 'exp2']
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from autoprune.errors import UserError


def read_study(storage: str | None, name: str | None):
    """Open an existing study for reading, as `autoprune trials` and `autoprune plot` do.

    `storage` None means the run folder's SQLite file `runs/search/NAME/study.db`. With `storage` and no `name`, the
    database's only study is read (`only_study_name`). Every mistake is a `UserError`: no `--study` (naming the
    studies there are), a storage holding no study or several, a malformed URL, a SQLite path that is not there or is not an
    Optuna database (checked first, so that reading never creates or changes a file), an unknown study.

    Example:
        >>> study = read_study(None, "exp1")  # doctest: +SKIP
        >>> study = read_study("postgresql://user:pw@host/db", "exp1")  # doctest: +SKIP
    """
    from autoprune.search.storage import open_study, storage_url

    if storage is not None:
        url = storage_url(storage, name or "_")  # checks the URL's form first
        if url.lower().startswith("sqlite"):
            _check_sqlite_file(url)
        return open_study(storage, name or only_study_name(storage))
    if not name:
        known = local_study_names()
        hint = f"studies in runs/search: {', '.join(known)}" if known else "no studies in runs/search"
        raise UserError(f"--study is required: the study to read ({hint})")
    url = storage_url(None, name)
    if Path(_sqlite_path(url)).is_file():
        _check_sqlite_file(url)
    return open_study(None, name)


def only_study_name(storage: str) -> str:
    """The name of the one study in the database at `storage`, for reading it without `--study`.

    A `UserError` when the database holds no study (saying so), or several (naming them: `--study` picks one).

    Example:
        >>> only_study_name("sqlite:///runs/search/exp1/study.db")  # doctest: +SKIP
        'exp1'
    """
    from autoprune.search.storage import make_storage, mask_url, storage_url, study_names

    url = storage_url(storage, "_")  # checks the URL's form first
    if url.lower().startswith("sqlite"):
        _check_sqlite_file(url)
    names = study_names(make_storage(url, heartbeat=None, read_only=True))
    if not names:
        raise UserError(f"--storage {mask_url(url)!r} holds no study yet: nothing to read")
    if len(names) > 1:
        raise UserError(f"--study is required: the study to read (studies there: {', '.join(names)})")
    return names[0]


def newest_local_study() -> str | None:
    """The name of the study under `runs/search` whose `study.db` changed last (the latest search), or None."""
    from autoprune.runs import RUNS_ROOT
    from autoprune.search.storage import STUDY_FILE

    files = [(p.stat().st_mtime, p.parent.name) for p in (RUNS_ROOT / "search").glob(f"*/{STUDY_FILE}")]
    return max(files)[1] if files else None


def local_study_names() -> list[str]:
    """Names of the studies in run folders under `runs/search` (those with a `study.db`)."""
    from autoprune.runs import RUNS_ROOT
    from autoprune.search.storage import STUDY_FILE

    return sorted(p.parent.name for p in (RUNS_ROOT / "search").glob(f"*/{STUDY_FILE}"))


def _sqlite_path(url: str) -> str:
    return url.split("://", 1)[1][1:].split("?", 1)[0]


def _check_sqlite_file(url: str) -> None:
    """A SQLite storage to read must be an existing Optuna database; otherwise SQLAlchemy would create one."""
    path = Path(_sqlite_path(url))
    if str(path) in ("", ":memory:") or not path.is_file():
        raise UserError(f"no SQLite study file at {path} (from --storage {url!r})")
    with open(path, "rb") as f:
        if f.read(16) != b"SQLite format 3\x00":
            raise UserError(f"{path} is not a SQLite database")
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
        try:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise UserError(f"cannot read {path}: {e}") from e
    if "studies" not in tables:
        raise UserError(f"{path} is a SQLite database but holds no Optuna studies")

