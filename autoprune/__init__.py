"""autoprune: search-based automatic structured pruning for Ultralytics YOLO detectors.

The public Python API:

    >>> from autoprune import analyze, prune
    >>> graph = analyze(model)            # the prunable channel groups of a DetectionModel
    >>> small = prune(model, 0.5)         # a new, physically smaller model of stock Ultralytics classes
"""

import os as _os

__version__ = "0.1.0"

# OMP_NUM_THREADS as the user set it: read here, before any autoprune module imports Ultralytics (which sets it to 1
# on import). `devices.default_threads` times latency with it.
ENV_OMP_NUM_THREADS = _os.environ.get("OMP_NUM_THREADS")

__all__ = ["UserError", "__version__", "analyze", "prune"]

from autoprune.errors import UserError


def __getattr__(name):  # lazy: `import autoprune` stays cheap for the CLI's --help
    if name == "analyze":
        from autoprune.channels import analyze

        return analyze
    if name == "prune":
        from autoprune.pruner import prune

        return prune
    raise AttributeError(f"module 'autoprune' has no attribute {name!r}")
