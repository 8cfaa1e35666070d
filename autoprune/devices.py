"""Where torch runs: device names as users write them (`auto`, `cpu`, `cuda`, `cuda:N`, `N`), checked against this
machine, and the CPU thread count a block of work runs with."""

from __future__ import annotations

import contextlib
import os

import torch

from autoprune.errors import UserError


def resolve_device(spec: str | torch.device) -> torch.device:
    """Turn a device name into a `torch.device` that exists on this machine, or raise `UserError`.

    Accepts `auto` (cuda:0 when CUDA is available, else cpu), `cpu`, `cuda`, `cuda:N`, or a bare index `N`
    (Ultralytics' spelling of cuda:N).

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    text = str(spec).strip().lower()
    if text in ("auto", ""):
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if text.isdigit():
        text = f"cuda:{text}"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise UserError(f"device must be auto, cpu, cuda or cuda:N, got {str(spec)!r}") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise UserError(f"device must be auto, cpu, cuda or cuda:N, got {str(spec)!r}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = 0 if dev.index is None else dev.index
    if index >= count:
        have = f"this machine has {count} CUDA device(s)" if count else "no CUDA GPU is available here"
        raise UserError(f"device {str(spec)!r} does not exist: {have} (use --device cpu or auto)")
    return torch.device("cuda", index)


def default_threads() -> int:
    """The CPU thread count latency is timed with unless a caller names one, the same in every command and output
    mode: `OMP_NUM_THREADS` as the user set it, else one thread per physical core this process may run on (torch's
    own default on a machine where nobody set it).

    Not torch's current setting: that depends on import order. Ultralytics sets `OMP_NUM_THREADS=1` when it is
    imported, so torch imported after it runs with 1 thread and torch imported before it with one per core. The
    user's value is the one `autoprune` saw when it was first imported, before any of its modules imported
    Ultralytics.

    Example:
        >>> default_threads() >= 1
        True
    """
    import autoprune

    env = autoprune.ENV_OMP_NUM_THREADS
    if env is not None and env.strip().isdigit() and int(env) >= 1:
        return int(env)
    try:
        import psutil  # an Ultralytics dependency

        cores = psutil.cpu_count(logical=False)
    except ImportError:
        cores = None
    cores = cores or os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        cores = min(cores, len(os.sched_getaffinity(0)) or cores)
    return max(1, cores)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with `n` intra-op CPU threads (None or 0: unchanged), then restore the previous count.

    Work whose speed depends on the thread count (latency timing, the proxy's finetune) sets it for its own
    duration, whatever the import order left behind (Ultralytics sets OMP_NUM_THREADS=1 when it is imported).

    Example:
        >>> with torch_threads(1):
        ...     torch.get_num_threads()
        1
    """
    before = torch.get_num_threads()
    if n and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
