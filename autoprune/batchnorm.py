"""BatchNorm recalibration: re-estimate running statistics from a few batches (EagleEye's adaptive BN).

Pruning changes what each BatchNorm sees, so the proxy re-estimates their statistics before it scores a candidate.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["recalibrate_bn"]


def recalibrate_bn(model: nn.Module, batches: Iterable, *, device: torch.device | str | None = None) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics from `batches` (EagleEye's adaptive BN), in place.

    Each BatchNorm's running mean and variance are reset and replaced by the cumulative average (momentum=None)
    of the batch statistics seen in train mode under `torch.no_grad()`; no parameter changes. The model is left in
    eval mode and the BatchNorms get their original momentum back. A batch is an image tensor (float, 0..1) or a
    dict with one under "img" (uint8 images are scaled to 0..1).

    Example:
        >>> recalibrate_bn(model, [torch.rand(8, 3, 320, 320) for _ in range(4)])
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs the same
    seen = 0
    try:
        model.train()
        with torch.no_grad():
            for b in batches:
                img = b["img"] if isinstance(b, dict) else b
                if img.dtype == torch.uint8:
                    img = img.float() / 255
                model(img.to(device))
                seen += 1
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.eval()
    if bns and not seen:
        raise ValueError("recalibrate_bn needs at least one batch")
    return model
