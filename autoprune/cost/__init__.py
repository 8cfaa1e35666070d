"""What a model costs: GFLOPs, parameters, and latency measured on the device it will run on.

Three numbers drive the search's cost objective:

- `count_gflops(model, imgsz)`: fvcore's operator count at `imgsz`, in Ultralytics' convention (2 x multiply-adds,
  batch 1, counted on the model as given, unfused). fvcore's per-operator rules are aligned with the thop rules that
  Ultralytics' own `model.info()` / `get_flops` uses, so the two agree on stock and pruned models alike.
- `count_params(model)`: the parameter count, as Ultralytics reports it.
- `measure_latency(model, ...)`: median wall time of one forward pass, measured, never estimated (see
  `TimingProtocol` for how the number is made repeatable) in a runtime (torch, onnxruntime, openvino, tensorrt) at a
  batch and precision, the model exported as Ultralytics exports it for that runtime, cached by the model's
  `architecture_signature` so that a search never measures the same architecture twice.
- `measure_latencies(models, rounds=5, ...)`: several models timed in turn over several rounds (median of the
  rounds' medians), for comparing models on a machine whose speed drifts.

None of these change the caller's model: they work on a copy.

Modules: `flops` (the per-operation FLOP model, GFLOPs and parameter counts), `signature` (the architecture hash),
`timing` (the timing protocol and loop), `backends` (the runtimes and their exports), `cache` (the
file-backed latency cache), `latency` (`measure_latency`, `measure_latencies`), `_model` (how a model argument is
read and copied).

Example:
    >>> from autoprune.models import load_model
    >>> m = load_model("yolov8n.yaml").model
    >>> round(count_gflops(m, 640), 1), count_params(m)
    (8.9, 3157200)
    >>> r = measure_latency(m, imgsz=320, device="cpu")
    >>> r.median_ms > 0 and r.repeats >= 10
    True
"""

from __future__ import annotations

from autoprune.cost._model import input_channels
from autoprune.cost.backends import BACKENDS, PRECISIONS, check_backend, check_onnxruntime, check_runtime
from autoprune.cost.cache import CACHE_FORMAT, CACHE_VERSION, LatencyCache
from autoprune.cost.flops import count_gflops, count_params
from autoprune.cost.latency import LatencyResult, measure_latencies, measure_latency
from autoprune.cost.signature import architecture_signature
from autoprune.cost.timing import TimingProtocol
from autoprune.imgsz import check_imgsz

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "LatencyCache",
    "LatencyResult",
    "TimingProtocol",
    "architecture_signature",
    "check_backend",
    "check_imgsz",
    "check_onnxruntime",
    "check_runtime",
    "count_gflops",
    "count_params",
    "input_channels",
    "measure_latencies",
    "measure_latency",
]
