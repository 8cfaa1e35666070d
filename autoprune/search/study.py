"""The search's study in its storage: whether it exists, its settled attributes, a new study's name, the version
it records, and the heartbeat that keeps a running trial alive."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

from autoprune.errors import UserError
from autoprune.search import records
from autoprune.search.storage import make_storage, study_names


def study_exists(storage: str | None, name: str, url: str, run_dir: Path) -> bool:
    """Whether study `name` exists: its run folder for the default local storage, else a study of that name in
    `url` (a database Optuna has not used yet has none)."""
    if storage is None:
        return run_dir.exists()
    try:
        return name in study_names(make_storage(url, heartbeat=None, read_only=True))
    except UserError as e:
        if "no such table" in str(e) or "does not exist" in str(e):
            return False  # a database Optuna has not used yet
        raise


def settled_attrs(study, wait_s: float = 30.0) -> dict:
    """The study's attributes once no other worker is midway through writing them: a new study's describing
    attributes end with `records.STUDY_VERSION`, so a study that has some but not that one is still being written."""
    deadline = time.monotonic() + wait_s
    stored = study.user_attrs
    while stored and records.STUDY_VERSION not in stored and time.monotonic() < deadline:
        time.sleep(0.5)
        stored = study.user_attrs
    return stored


@contextlib.contextmanager
def heartbeat(study, trial, interval: float):
    """Record `trial`'s heartbeat now and every `interval` seconds from a thread while the block runs, so that
    other workers fail it (and queue it again) only when this process is gone."""
    stop = threading.Event()
    storage = study._storage

    def beat():
        while not stop.wait(interval):
            with contextlib.suppress(Exception):
                storage.record_heartbeat(trial._trial_id)

    with contextlib.suppress(Exception):
        storage.record_heartbeat(trial._trial_id)
    thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{trial.number}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def next_name(project=None) -> str:
    """The first free `expN` in `project` (default runs/search; `runs.next_run_name`)."""
    from autoprune.runs import next_run_name

    return next_run_name("search", project=project)


def version() -> str:
    """The autoprune version a new study records."""
    from autoprune import __version__

    return __version__
