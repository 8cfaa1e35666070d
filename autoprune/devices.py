"""Device names as users write them (`auto`, `cpu`, `cuda`, `cuda:N`, `N`), checked against this machine."""

from __future__ import annotations

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
