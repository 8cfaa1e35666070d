"""How cost reads the caller's model: its input channels, a traceable view of it, and the copies measurements run on.

Every count and measurement in `autoprune.cost` works on a copy (`inference_copy`), so the caller's model is never
changed; `TensorsOut` flattens a detector's output for jit tracing (fvcore's count and the ONNX export).
"""

from __future__ import annotations

import copy

import torch
from torch import nn



def input_channels(model: nn.Module) -> int:
    """Channels of the image the model takes: the first convolution's input channels (3 for every stock model)."""
    yaml_ch = getattr(model, "yaml", {}).get("channels") if isinstance(getattr(model, "yaml", None), dict) else None
    if isinstance(yaml_ch, int) and yaml_ch > 0:
        return yaml_ch
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return m.in_channels
    return 3


class TensorsOut(nn.Module):
    """Wrap a model so that its output is a flat tuple of tensors, which jit tracing (fvcore, ONNX) needs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return tuple(_flatten(self.model(x)))


def _flatten(y):
    if isinstance(y, torch.Tensor):
        yield y
    elif isinstance(y, dict):
        for v in y.values():
            yield from _flatten(v)
    elif isinstance(y, (list, tuple)):
        for v in y:
            yield from _flatten(v)


def inference_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` in eval mode without gradients: what every measurement runs, leaving the caller's alone."""
    m = copy.deepcopy(model)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m
