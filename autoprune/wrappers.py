"""The Ultralytics `DetectionModel` inside the wrappers that callers hand to autoprune.

Every stage (channel analysis, pruning, scoring, refitting, cost, the space's model view) accepts a bare
`DetectionModel`, an `ultralytics.YOLO` wrapper or a `LoadedModel`, and works on the detection model inside; this is
the one place that knows those wrappers. It imports only torch, so light modules can use it.
"""

from __future__ import annotations

from torch import nn

__all__ = ["detection_model"]


def detection_model(model) -> nn.Module:
    """Return the detection model inside `model`: a `LoadedModel` or `YOLO` wrapper is opened, a bare model returned.

    A detection model is recognised by its `.model` being an `nn.Sequential` (its layers). A holder that is not an
    `nn.Module` (a `LoadedModel`) is opened to its `.model`; an `nn.Module` whose `.model` is itself a model with a
    `.model` (an `ultralytics.YOLO`) is opened too. Nested wrappers are opened up to three levels. Anything that is not
    an `nn.Module` in the end is a programming error (`TypeError`).

    Example:
        >>> from ultralytics.nn.tasks import DetectionModel
        >>> net = DetectionModel("yolov8n.yaml", verbose=False)
        >>> detection_model(net) is net
        True
    """
    for _ in range(3):
        inner = getattr(model, "model", None)
        if not isinstance(inner, nn.Module) or isinstance(inner, nn.Sequential):
            break
        if isinstance(model, nn.Module) and not hasattr(inner, "model"):
            break  # a module with a sub-module named `model` that is not a wrapped detector
        model = inner
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch nn.Module, got {type(model).__name__}")
    return model
