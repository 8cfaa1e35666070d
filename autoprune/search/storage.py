"""Where studies live: a SQLite file in the run folder by default, or any RDB URL shared by many workers.

`--name NAME` alone means `runs/search/NAME/study.db`; `--storage URL --name NAME` names a study in any database
SQLAlchemy reaches (PostgreSQL for many workers on many machines).
"""

from __future__ import annotations

import re
from pathlib import Path

from autoprune.errors import UserError
from autoprune.urls import mask_url  # noqa: F401  (storages and their callers mask every URL they show)
from autoprune.runs import RUNS_ROOT

STALE_RETRIES = 2  # how often a trial failed for a stale heartbeat (its worker died) is queued again

STUDY_FILE = "study.db"
_URL = re.compile(r"^(sqlite|postgresql|postgres|mysql|mariadb|oracle|mssql)(\+[a-z0-9_]+)?://", re.IGNORECASE)


def run_dir_for(name: str) -> Path:
    """The local run folder of study `name`: `runs/search/NAME`."""
    if not name or "/" in name or name in (".", ".."):
        raise UserError(f"--name must be a plain folder name, got {name!r}")
    return RUNS_ROOT / "search" / name


def storage_url(storage: str | None, name: str) -> str:
    """The storage URL for `--storage` (checked) or, when None, the run folder's SQLite file."""
    if storage is None:
        return f"sqlite:///{run_dir_for(name) / STUDY_FILE}"
    if storage.lower().startswith("sqlite") and not storage.lower().startswith("sqlite:///"):
        raise UserError(f"a SQLite --storage URL starts with sqlite:/// followed by a path, got {mask_url(storage)!r}")
    if not _URL.match(storage):
        raise UserError(
            f"--storage must be a database URL such as sqlite:///path/study.db or "
            f"postgresql://user:password@host/db, got {mask_url(storage)!r}"
        )
    return storage


def sqlite_file(url: str) -> Path | None:
    """The database file of a `sqlite:///PATH` URL, or None for any other URL (and for an in-memory database)."""
    if not url.lower().startswith("sqlite:///"):
        return None
    path = url.split("://", 1)[1][1:].split("?", 1)[0]
    return Path(path) if path not in ("", ":memory:") else None


def make_storage(url: str, *, heartbeat: tuple[int, int] | None = (10, 40), read_only: bool = False):
    """An Optuna RDB storage for `url`, with heartbeats so a worker killed mid-trial is noticed by the others.

    `heartbeat` is (interval, grace period) in seconds: a trial whose worker stopped sending heartbeats for the
    grace period is marked FAIL by the next worker that looks (`optuna.storages.fail_stale_trials`), and its genome
    is queued again. `read_only` never creates tables (for commands that only read a study).

    Several workers may open a new database at the same moment; creating Optuna's tables then races (one sees
    "table already exists"), so creation is retried with a short backoff.
    """
    import time
    import warnings

    import optuna
    import sqlalchemy.exc

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    kwargs = {"skip_table_creation": read_only}
    if heartbeat is not None:
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        kwargs.update(heartbeat_interval=heartbeat[0], grace_period=heartbeat[1],
                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=STALE_RETRIES))
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(8):
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
            if url.startswith("sqlite") and not read_only:
                _serialize_sqlite_transactions(storage.engine)
            return storage
        except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as e:
            why = str(e).splitlines()[0].replace(url, mask_url(url))
            raise UserError(f"malformed --storage URL {mask_url(url)!r}: {why}") from e
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.IntegrityError) as e:
            text = str(getattr(e, "orig", e))
            if attempt < 7 and any(m in text.lower() for m in _CREATION_RACES):
                time.sleep(0.2 * 2**attempt)
                continue
            raise UserError(f"cannot open --storage {mask_url(url)!r}: {text.strip().splitlines()[0]}") from e
        except ModuleNotFoundError as e:
            raise UserError(f"--storage {mask_url(url)!r} needs the Python package {e.name!r}; install it first") from e
        except optuna.exceptions.StorageInternalError as e:
            cause = str(e.__cause__ or e).strip().splitlines()[0]
            raise UserError(f"cannot open --storage {mask_url(url)!r}: {cause}") from e
    raise AssertionError("unreachable")


_CREATION_RACES = ("already exists", "duplicate", "database is locked", "unique")


def _serialize_sqlite_transactions(engine) -> None:
    """Make every transaction on `engine` start with BEGIN IMMEDIATE, so SQLite runs them one at a time.

    Optuna moves a trial from one state to another by reading its state, checking it, then writing the new one, with a
    row lock (SELECT ... FOR UPDATE) that SQLite ignores; and Python's sqlite3 begins a transaction only at the first
    write, after the read. Two workers can then both see a trial WAITING and both pop it (and evaluate it twice), or
    both see a dead worker's trial RUNNING and both fail it, each queueing a retry (its genome then runs twice or is
    taken for a duplicate of itself). BEGIN IMMEDIATE takes the database's write lock before the read, so the second
    worker reads the state the first one wrote. Other workers wait for the lock (sqlite3's `timeout`, 60 s), as they
    already did for every write. SQLAlchemy's recipe: sqlite3 issues no BEGIN of its own, the "begin" event issues one.
    Connections already open (creating the tables) are dropped, so every later connection gets the hook.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()


def study_names(storage) -> list[str]:
    import optuna

    return sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))


def open_study(storage: str | None, name: str):
    """Load an existing study; a `UserError` naming the studies that do exist if it is not there."""
    import optuna

    url = storage_url(storage, name)
    if storage is None and not (run_dir_for(name) / STUDY_FILE).is_file():
        known = sorted(p.parent.name for p in (RUNS_ROOT / "search").glob(f"*/{STUDY_FILE}"))
        hint = f"; studies here: {', '.join(known)}" if known else ""
        raise UserError(f"no study named {name!r} in {RUNS_ROOT / 'search'}{hint}")
    st = make_storage(url, heartbeat=None, read_only=True)
    try:
        return optuna.load_study(study_name=name, storage=st)
    except KeyError:
        names = study_names(st)
        hint = f"; studies there: {', '.join(names)}" if names else "; it holds no studies"
        raise UserError(f"no study named {name!r} in {mask_url(url)}{hint}") from None
