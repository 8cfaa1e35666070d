"""Where torch runs: device names as users write them, with Ultralytics' spellings (`auto`, `cpu`, `mps`, `0`,
`0,1`, `cuda`, `cuda:N`), checked against this machine, and the CPU thread count a block of work runs with."""

from __future__ import annotations

import contextlib
import os
import re

import torch

from autoprune.errors import UserError

ACCEPTED = "auto, cpu, cuda or cuda:N, mps, or a CUDA index (0) or list (0,1) as Ultralytics writes them"
DEVICE_HELP = (f"where to run: {ACCEPTED} (default auto: the first CUDA GPU, else the CPU); a list is for "
               "multi-GPU training, other work runs on its first device")
_SPEC = re.compile(r"(?:cuda:)?(\d+)(?:\s*,\s*(?:cuda:)?\d+)*|cuda")


def _cuda_indices(text: str) -> list[int]:
    return [int(i) for i in re.findall(r"\d+", text)] if text != "cuda" else [0]


def resolve_devices(spec: str | torch.device) -> list[torch.device]:
    """Every device `spec` names, each one that exists on this machine, or a one-line `UserError`.

    `auto` (or empty) is cuda:0 when CUDA is available, else cpu; `0` and `cuda:0` are the first CUDA GPU; `0,1` two
    of them (Ultralytics' multi-GPU training); `mps` the Apple GPU.

    Example:
        >>> resolve_devices("cpu")
        [device(type='cpu')]
    """
    text = str(spec).strip().lower()
    if text in ("auto", ""):
        return [torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")]
    if text == "cpu":
        return [torch.device("cpu")]
    if text in ("mps", "mps:0"):
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError(f"device {str(spec)!r} does not exist: MPS (an Apple GPU) is not available here "
                            "(use --device cpu or auto)")
        return [torch.device("mps")]
    if not _SPEC.fullmatch(text):
        raise UserError(f"device must be {ACCEPTED}; got {str(spec)!r}")
    indices = _cuda_indices(text)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(set(indices)) != len(indices):
        raise UserError(f"device {str(spec)!r} names a GPU twice")
    missing = [i for i in indices if i >= count]
    if missing:
        have = f"this machine has {count} CUDA device(s)" if count else "no CUDA GPU is available here"
        raise UserError(f"device {str(spec)!r} does not exist: {have} (use --device cpu or auto)")
    return [torch.device("cuda", i) for i in indices]


def resolve_device(spec: str | torch.device) -> torch.device:
    """The device work on one device runs on: the first of `resolve_devices(spec)` (checked the same way).

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    return resolve_devices(spec)[0]


def ultralytics_device(spec: str | torch.device) -> str:
    """Ultralytics' spelling of the checked device(s), for its trainer: 'cpu', 'mps', '0' or '0,1'.

    Example:
        >>> ultralytics_device("auto")  # on a machine without CUDA
        'cpu'
    """
    devices = resolve_devices(spec)
    if devices[0].type != "cuda":
        return devices[0].type
    return ",".join(str(d.index) for d in devices)


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
