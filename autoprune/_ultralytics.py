"""Import Ultralytics the way autoprune needs it: offline, quiet unless asked, no telemetry.

Import `ultralytics` through this module (or after it) so the environment is set before Ultralytics reads it.
"""

import os

# No network at run time: Ultralytics would otherwise try downloads (weights, fonts, AMP-check models) that hang or
# fail on an offline machine. A user who wants downloads can set YOLO_OFFLINE=0 themselves.
os.environ.setdefault("YOLO_OFFLINE", "1")

import ultralytics  # noqa: E402
from ultralytics.utils import LOGGER, SETTINGS  # noqa: E402

if SETTINGS.get("sync", False):
    SETTINGS.update({"sync": False})  # no analytics events from a pruning tool

__all__ = ["LOGGER", "ultralytics", "set_verbose"]


def set_verbose(verbose: bool) -> None:
    """Show Ultralytics' own log lines (training progress, validation tables) or keep them quiet."""
    import logging

    LOGGER.setLevel(logging.INFO if verbose else logging.WARNING)
