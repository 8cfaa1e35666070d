"""Import Ultralytics the way autoprune needs it: offline, quiet unless asked, no telemetry.

Import `ultralytics` through this module (or after it) so the environment is set before Ultralytics reads it.
"""

import contextlib
import logging
import os
import sys

# No network at run time: Ultralytics would otherwise try downloads (weights, fonts, AMP-check models) that hang or
# fail on an offline machine. A user who wants downloads can set YOLO_OFFLINE=0 themselves.
os.environ.setdefault("YOLO_OFFLINE", "1")

import ultralytics  # noqa: E402
from ultralytics.utils import LOGGER, SETTINGS  # noqa: E402

if SETTINGS.get("sync", False):
    SETTINGS.update({"sync": False})  # no analytics events from a pruning tool


class _LiveStdout:
    """Writes to whatever `sys.stdout` is at the moment of writing.

    Ultralytics' log handler keeps the `sys.stdout` object it saw at import, so `contextlib.redirect_stdout` (how
    `--json` keeps stdout clean) and test capture would not reach it, and a stream closed since would break it.
    """

    def write(self, text):
        return sys.stdout.write(text)

    def flush(self):
        sys.stdout.flush()

    def isatty(self):
        return sys.stdout.isatty()


for _handler in LOGGER.handlers:
    if isinstance(_handler, logging.StreamHandler) and _handler.stream not in (sys.stderr, sys.__stderr__):
        _handler.stream = _LiveStdout()

__all__ = ["LOGGER", "no_label_caches", "quiet", "set_verbose", "ultralytics"]


def set_verbose(verbose: bool) -> None:
    """Show Ultralytics' own log lines (training progress, validation tables) or keep them quiet."""
    LOGGER.setLevel(logging.INFO if verbose else logging.WARNING)


@contextlib.contextmanager
def quiet():
    """Keep Ultralytics' INFO lines (dataset scans) out of autoprune's output for a while; warnings still show."""
    level = LOGGER.level
    if level < logging.WARNING:
        LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(level)


@contextlib.contextmanager
def no_label_caches():
    """While Ultralytics builds datasets: write no `labels/*.cache` beside the user's labels.

    Ultralytics saves each split's scanned labels as `<labels dir>.cache` in the dataset's own folder whenever that
    folder is writable (deleting the one there first); autoprune never writes into a user's files, so the saving is
    skipped (a cache already there is still read): the labels are scanned again on each run. The original is
    restored on exit.
    """
    import ultralytics.data.dataset as dataset

    def keep_in_memory(prefix, path, x, version):
        x["version"] = version  # what the original adds in place before writing (and replacing) the file

    saved = dataset.save_dataset_cache_file
    dataset.save_dataset_cache_file = keep_in_memory
    try:
        yield
    finally:
        dataset.save_dataset_cache_file = saved
