"""Mixed precision for the proxy: the autocast dtype `amp=True` means on a device, and the parts kept in float32.

bfloat16 halves the proxy's time where it is native, but the head's box decoding and the loss need float32.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["amp_dtype", "float_preds", "fp32_decode"]


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype `amp=True` means on `device`: bfloat16 where it is native, else None (float32)."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        try:
            return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
        except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
            return None
    return None


@contextlib.contextmanager
def fp32_decode(model: nn.Module, dtype: torch.dtype | None):
    """Under autocast, decode the head's boxes in float32 (bfloat16 would round 300 px coordinates to 2 px).

    Patches the head instance's `_inference` for the duration and removes the patch afterwards, so the model stays
    an ordinary, picklable Ultralytics model.
    """
    head = model.model[-1] if isinstance(getattr(model, "model", None), nn.Sequential) else None
    if dtype is None or not hasattr(head, "_inference"):
        yield
        return
    original = head._inference

    def _inference(x):
        with torch.autocast(next(model.parameters()).device.type, enabled=False):
            return original({k: [t.float() for t in v] if isinstance(v, (list, tuple)) else v.float()
                             for k, v in x.items()})

    head._inference = _inference
    try:
        yield
    finally:
        head.__dict__.pop("_inference", None)


def float_preds(preds):
    """Training outputs of the head (dicts of tensors, lists of feature maps) in float32, for a float32 loss."""
    if isinstance(preds, torch.Tensor):
        return preds.float()
    if isinstance(preds, dict):
        return {k: float_preds(v) for k, v in preds.items()}
    if isinstance(preds, (list, tuple)):
        return type(preds)(float_preds(v) for v in preds)
    return preds
