"""What a model costs: GFLOPs, parameters, and latency measured on the device it will run on.

Three numbers drive the search's cost objective:

- `count_gflops(model, imgsz)`: fvcore's operator count at `imgsz`, in Ultralytics' convention (2 x multiply-adds,
  batch 1, counted on the model as given, unfused). fvcore's per-operator rules are aligned with the thop rules that
  Ultralytics' own `model.info()` / `get_flops` uses, so the two agree on stock and pruned models alike.
- `count_params(model)`: the parameter count, as Ultralytics reports it.
- `measure_latency(model, ...)`: median wall time of one forward pass, measured, never estimated (see
  `TimingProtocol` for how the number is made repeatable), with the torch or the onnxruntime backend, cached by the
  model's `architecture_signature` so that a search never measures the same architecture twice.

None of these change the caller's model: they work on a copy.

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

import contextlib
import copy
import gc
import hashlib
import json
import logging
import math
import os
import platform
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from autoprune.devices import resolve_device  # noqa: F401  (re-exported)
from autoprune.errors import UserError

__all__ = [
    "BACKENDS",
    "LatencyCache",
    "LatencyResult",
    "TimingProtocol",
    "architecture_signature",
    "check_imgsz",
    "count_gflops",
    "count_params",
    "measure_latency",
    "resolve_device",
]

BACKENDS = ("torch", "onnxruntime")
CACHE_FORMAT = "autoprune-latency-cache"
CACHE_VERSION = 1  # bump when the timing protocol changes what a cached number means


# --------------------------------------------------------------------------------------------------------- inputs
def check_imgsz(imgsz) -> int:
    """Return `imgsz` as an int, or raise `UserError` unless it is a positive multiple of 32 (the models' stride).

    Example:
        >>> check_imgsz(640)
        640
    """
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz <= 0 or imgsz % 32:
        raise UserError(f"--imgsz must be a positive multiple of 32, got {imgsz!r}")
    return imgsz


def _check_batch(batch) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise UserError(f"--batch must be a positive integer, got {batch!r}")
    return batch


def _check_backend(backend) -> str:
    if backend not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def _unwrap(model) -> nn.Module:
    """Accept a `DetectionModel`, an Ultralytics `YOLO` wrapper or a `LoadedModel`; return the `nn.Module`."""
    inner = getattr(model, "model", None)
    if not isinstance(model, nn.Module) and isinstance(inner, nn.Module):  # LoadedModel
        return inner
    if isinstance(model, nn.Module) and isinstance(inner, nn.Module) and hasattr(model, "predictor"):  # YOLO(...)
        return inner
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch nn.Module, got {type(model).__name__}")
    return model


def _input_channels(model: nn.Module) -> int:
    """Channels of the image the model takes: the first convolution's input channels (3 for every stock model)."""
    yaml_ch = getattr(model, "yaml", {}).get("channels") if isinstance(getattr(model, "yaml", None), dict) else None
    if isinstance(yaml_ch, int) and yaml_ch > 0:
        return yaml_ch
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return m.in_channels
    return 3


# ---------------------------------------------------------------------------------------------- params and GFLOPs
def count_params(model: nn.Module) -> int:
    """Number of parameters (each shared tensor once), as Ultralytics' `model.info()` reports it.

    Example:
        >>> count_params(nn.Conv2d(3, 16, 3, bias=False))
        432
    """
    return int(sum(p.numel() for p in _unwrap(model).parameters()))


def _import_fvcore():
    with warnings.catch_warnings():  # fvcore scripts a loss with torch.jit.script at import: a FutureWarning
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis
        from fvcore.nn.jit_handles import get_shape
    return FlopCountAnalysis, get_shape


def _flop_handles() -> dict:
    """fvcore operator rules (multiply-adds) aligned with thop, the counter behind Ultralytics' GFLOPs.

    fvcore and thop agree on convolutions (weights x output positions, no bias), linear layers and matrix products;
    they differ on the cheap elementwise layers, where thop's rules are adopted:

    - batch norm: thop charges 2 ops per element, doubled for an affine norm (4), fvcore 2 (eval) or 5 (train);
      the same for group/layer/instance norm;
    - nearest upsampling: thop 0, fvcore 1 per output element; bilinear: thop 11, fvcore 4; bicubic thop 259;
    - adaptive average pooling: thop one add per input plus one divide per output;
    - average pooling: 0, because Ultralytics' blocks (ADown) call it functionally and thop counts only modules;
    - matrix products: output elements x contracted length (fvcore's own rule undercounts broadcast operands);
    - scaled dot-product attention, which fvcore does not know: thop's QK^T + AV rule.

    Elementwise activations, additions, softmax and the box decoding stay uncounted in both. Without these rules
    fvcore reads 0.6% below Ultralytics on yolov8n and the gap grows as pruning shrinks the convolutions faster than
    the norms (channels^2 against channels).
    """
    _, get_shape = _import_fvcore()

    def numel(v) -> int:
        shape = get_shape(v)
        return math.prod(shape) if shape is not None else 0

    def norm(affine_index: int):
        def rule(inputs, outputs):
            affine = affine_index < len(inputs) and get_shape(inputs[affine_index]) is not None
            return numel(inputs[0]) * (4 if affine else 2)

        return rule

    def per_output(ops: int):
        return lambda inputs, outputs: ops * numel(outputs[0])

    def adaptive_avg_pool(inputs, outputs):
        return numel(inputs[0]) + numel(outputs[0])

    def matmul(inputs, outputs):
        a = get_shape(inputs[0])
        return numel(outputs[0]) * (a[-1] if a else 0)

    def free(inputs, outputs):  # fvcore's None only adds to its ignore list and keeps a built-in rule running
        return 0

    def sdpa(inputs, outputs):
        q, k, v = (get_shape(x) for x in inputs[:3])
        return numel(outputs[0]) // v[-1] * k[-2] * (q[-1] + v[-1])

    return {
        "aten::batch_norm": norm(1),
        "aten::group_norm": norm(2),
        "aten::layer_norm": norm(2),
        "aten::instance_norm": norm(1),
        "aten::upsample_nearest2d": free,
        "aten::upsample_nearest3d": free,
        "aten::upsample_linear1d": per_output(5),
        "aten::upsample_bilinear2d": per_output(11),
        "aten::upsample_bicubic2d": per_output(259),
        "aten::upsample_trilinear3d": per_output(31),
        "aten::adaptive_avg_pool2d": adaptive_avg_pool,
        "aten::avg_pool2d": free,
        "aten::matmul": matmul,
        "aten::mm": matmul,
        "aten::bmm": matmul,
        "aten::scaled_dot_product_attention": sdpa,
    }


class _TensorsOut(nn.Module):
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


def _inference_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` in eval mode without gradients: what every measurement runs, leaving the caller's alone."""
    m = copy.deepcopy(model)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


_GFLOPS_CACHE: dict[tuple, float] = {}
_GFLOPS_CACHE_MAX = 4096


def count_gflops(model: nn.Module, imgsz: int = 640) -> float:
    """GFLOPs of one forward pass of a batch-1 `imgsz` x `imgsz` image: 2 x fvcore's multiply-adds / 1e9.

    Counted on a copy of the model as given (not fused, eval mode), like Ultralytics' `model.info()`; works for any
    channel counts, so for pruned models too. Results are remembered per `architecture_signature` and size.

    Example:
        >>> from autoprune.models import load_model
        >>> round(count_gflops(load_model("yolov8n.yaml").model, 640), 1)
        8.9
    """
    imgsz = check_imgsz(imgsz)
    model = _unwrap(model)
    ch = _input_channels(model)
    key = (architecture_signature(model), imgsz, ch)
    if key in _GFLOPS_CACHE:
        return _GFLOPS_CACHE[key]
    FlopCountAnalysis, _ = _import_fvcore()
    m = _inference_copy(model)
    p = next(m.parameters(), None)
    x = torch.zeros(1, ch, imgsz, imgsz, device=p.device if p is not None else "cpu", dtype=torch.float32)
    m.float()
    analysis = (
        FlopCountAnalysis(_TensorsOut(m), (x,))
        .set_op_handle(**_flop_handles())
        .unsupported_ops_warnings(False)
        .uncalled_modules_warnings(False)
        .tracer_warnings("none")
    )
    fv_logger = logging.getLogger("fvcore")
    level = fv_logger.level
    fv_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings from the head's shape-dependent code
            macs = analysis.total()
    finally:
        fv_logger.setLevel(level)
    gflops = 2.0 * macs / 1e9
    if len(_GFLOPS_CACHE) >= _GFLOPS_CACHE_MAX:
        _GFLOPS_CACHE.clear()
    _GFLOPS_CACHE[key] = gflops
    return gflops


# ------------------------------------------------------------------------------------------------------ signature
# Plain attributes of non-torch modules that change what a forward pass computes without showing in any tensor
# shape: Ultralytics' graph wiring (f: from-layers, i: index), concat dims, residual flags, head settings.
_SIGNATURE_ATTRS = ("f", "i", "d", "add", "shortcut", "nc", "nl", "reg_max", "end2end", "max_det", "legacy",
                    "num_heads", "key_dim", "head_dim", "area", "scale", "c", "c_", "e", "n", "k", "s", "g")


def _plain(v):
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (list, tuple)) and all(isinstance(x, (bool, int, float, str)) or x is None for x in v):
        return list(v)
    return None


def architecture_signature(model: nn.Module) -> str:
    """A short hash of a model's architecture: every module's name and type, every parameter and buffer shape, the
    layer hyper-parameters (kernel, stride, padding, groups, ...) and Ultralytics' wiring; never the weight values.

    Two models with the same signature cost the same: it keys the latency and GFLOPs caches. Pruning one channel
    changes it; fine-tuning, BN recalibration or a dtype change does not.

    Example:
        >>> a, b = nn.Conv2d(3, 8, 3), nn.Conv2d(3, 8, 3)
        >>> architecture_signature(a) == architecture_signature(b)
        True
        >>> architecture_signature(a) == architecture_signature(nn.Conv2d(3, 7, 3))
        False
    """
    model = _unwrap(model)
    h = hashlib.sha256()
    for name, m in model.named_modules():
        t = type(m)
        parts = [name, f"{t.__module__}.{t.__qualname__}"]
        for pname, p in m.named_parameters(recurse=False):
            parts.append(f"{pname}{tuple(p.shape)}")
        for bname, b in m.named_buffers(recurse=False):
            if b is not None:
                parts.append(f"{bname}{tuple(b.shape)}")
        if isinstance(m, nn.modules.batchnorm._NormBase):
            parts.append(f"bn({m.num_features},{m.affine},{m.track_running_stats})")  # not eps/momentum
        elif t.__module__.startswith("torch.nn"):
            parts.append(m.extra_repr())  # kernel, stride, padding, dilation, groups, mode, inplace, ...
        else:
            for attr in _SIGNATURE_ATTRS:
                if attr in m.__dict__:
                    v = _plain(m.__dict__[attr])
                    if v is not None:
                        parts.append(f"{attr}={v!r}")
        fwd = m.__dict__.get("forward")  # Ultralytics' fuse() swaps forward per instance
        if fwd is not None:
            parts.append(f"forward={getattr(fwd, '__name__', type(fwd).__name__)}")
        h.update(("|".join(parts) + "\n").encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------- the protocol
@dataclass(frozen=True)
class TimingProtocol:
    """How latency is sampled until the median is stable.

    Warm up for at least `warmup_runs` runs and `warmup_s` seconds (allocator, oneDNN/cuDNN kernel selection).
    Then time single runs. At checkpoints (after `min_repeats` samples, then each time the count has grown by
    `growth`) compare the median of all samples with the median at the previous checkpoint, and with the median of
    only the samples taken since then. Stop once the first moved by at most `rel_tol`, the second differs by at
    most `window_tol` and at least `min_time_s` has been spent timing; or at `max_time_s` / `max_repeats` (the
    result then says `stable=False`). The median ignores the occasional slow run a busy machine inserts; the window
    test keeps sampling while the machine's load changes under the measurement, which is what makes two
    back-to-back calls agree.

    Example:
        >>> TimingProtocol(min_time_s=0.2).min_repeats
        10
    """

    warmup_runs: int = 3
    warmup_s: float = 0.5
    min_repeats: int = 10
    min_time_s: float = 1.0
    max_time_s: float = 30.0
    max_repeats: int = 10_000
    rel_tol: float = 0.02
    window_tol: float = 0.05
    growth: float = 1.5

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"TimingProtocol.{f.name} must be a non-negative number, got {v!r}")
        if self.min_repeats < 1 or self.max_repeats < self.min_repeats:
            raise ValueError("TimingProtocol.min_repeats must be >= 1 and <= max_repeats")
        if self.max_time_s < self.min_time_s:
            raise ValueError("TimingProtocol.max_time_s must be >= min_time_s")
        if self.growth <= 1:
            raise ValueError(f"TimingProtocol.growth must be > 1, got {self.growth!r}")
        for name in ("rel_tol", "window_tol"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"TimingProtocol.{name} must lie in (0, 1), got {getattr(self, name)!r}")


DEFAULT_PROTOCOL = TimingProtocol()


def _time_loop(run_once: Callable[[], float], protocol: TimingProtocol) -> tuple[list[float], bool]:
    """Warm up, then sample `run_once()` (which returns one run's milliseconds) until the median is stable.

    Returns the samples and whether the stopping rule was met (False: a time or repeat cap ended it).
    """
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside a timed run is noise the deployed model would not see
    try:
        t0, n = time.perf_counter(), 0
        while n < protocol.warmup_runs or time.perf_counter() - t0 < protocol.warmup_s:
            run_once()
            n += 1
            if time.perf_counter() - t0 > protocol.max_time_s:
                break
        samples: list[float] = []
        start = time.perf_counter()
        checkpoint, previous, stable = protocol.min_repeats, None, False
        while True:
            samples.append(run_once())
            if len(samples) < checkpoint:
                if time.perf_counter() - start > protocol.max_time_s and len(samples) >= 3:
                    break
                continue
            median = statistics.median(samples)
            elapsed = time.perf_counter() - start
            if previous is not None and elapsed >= protocol.min_time_s:
                n_prev, m_prev = previous
                recent = statistics.median(samples[n_prev:])  # only what was timed since the last checkpoint
                if abs(median - m_prev) <= protocol.rel_tol * m_prev and abs(recent - median) <= (
                    protocol.window_tol * median
                ):
                    stable = True
                    break
            if elapsed >= protocol.max_time_s or len(samples) >= protocol.max_repeats:
                break
            previous = (len(samples), median)
            checkpoint = min(max(checkpoint + 1, math.ceil(checkpoint * protocol.growth)), protocol.max_repeats)
        return samples, stable
    finally:
        if gc_was_enabled:
            gc.enable()


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (q in [0, 100])."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# ------------------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class LatencyResult:
    """One latency measurement: the median of `repeats` timed forward passes of a batch, in milliseconds.

    `p10_ms`..`p90_ms` is the spread (`spread_ms` their difference); `stable` says the median settled before the
    protocol's caps; `load` is the machine's 1-minute load average when the measurement ended (a load above the
    core count means other processes shared the CPU and the figure is noisy; None where the OS has no load
    average); `cached` says this came from a `LatencyCache` instead of being measured now.

    Example:
        >>> r = measure_latency(model, imgsz=320)
        >>> f"{r.median_ms:.1f} ms, p10-p90 {r.p10_ms:.1f}-{r.p90_ms:.1f} ms over {r.repeats} runs"
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    repeats: int
    device: str
    device_name: str
    backend: str
    precision: str
    threads: int
    imgsz: int
    batch: int
    signature: str
    stable: bool
    load: float | None = None
    cached: bool = False

    @property
    def spread_ms(self) -> float:
        """p90 - p10 of the samples, in milliseconds."""
        return self.p90_ms - self.p10_ms

    def to_dict(self) -> dict:
        """Plain JSON-ready dict, `spread_ms` included."""
        return {**asdict(self), "spread_ms": self.spread_ms}

    @classmethod
    def from_dict(cls, d: dict, *, cached: bool) -> LatencyResult:
        """Rebuild from `to_dict()` output (unknown keys ignored), marking it `cached`."""
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in d.items() if k in names}, "cached": cached})


class LatencyCache:
    """Latency results keyed by what determines them: the architecture signature, input, device, backend, threads.

    Always an in-process dict; with `path`, also a JSON file that outlives the process and that several processes
    may share (a search's workers): every write merges the file's current entries with this cache's, writes a
    temporary file next to it and renames it over the old one, under an advisory lock (`PATH.lock`, POSIX), so a
    reader never sees half a file and no writer drops another's entries. A missing file is created on the first
    write; an existing file that is not such a cache is a `UserError` (it is never overwritten).

    Example:
        >>> cache = LatencyCache()          # in-process only
        >>> len(cache)
        0
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path).expanduser() if path is not None else None
        self._entries: dict[str, dict] = {}
        self.hits = 0
        self.misses = 0
        if self.path is not None:
            if self.path.is_dir():
                raise UserError(f"latency cache {self.path} is a folder; give a .json file path")
            self._entries.update(self._read_file())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return self.get(key, count=False) is not None

    def get(self, key: str, *, count: bool = True) -> dict | None:
        """The stored result for `key`, or None. A miss re-reads the file to pick up other processes' entries."""
        hit = self._entries.get(key)
        if hit is None and self.path is not None:
            self._entries.update({k: v for k, v in self._read_file().items() if k not in self._entries})
            hit = self._entries.get(key)
        if count:
            if hit is None:
                self.misses += 1
            else:
                self.hits += 1
        return hit

    def put(self, key: str, value: dict) -> None:
        """Store `value` under `key` (and in the file, merged with what other processes wrote there)."""
        self._entries[key] = dict(value)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock():
            merged = self._read_file()
            merged.update(self._entries)
            self._entries = dict(merged)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump({"format": CACHE_FORMAT, "version": CACHE_VERSION, "entries": merged}, f, indent=1)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def _read_file(self) -> dict[str, dict]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{self.path} is not an autoprune latency cache ({type(e).__name__}); "
                            "pick another cache path") from None
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("entries"), dict):
            raise UserError(f"{self.path} is not an autoprune latency cache; pick another cache path")
        if data.get("version") != CACHE_VERSION:
            return {}  # entries of another protocol version mean something else: ignore them (and replace on write)
        return {k: v for k, v in data["entries"].items() if isinstance(v, dict)}

    @contextlib.contextmanager
    def _lock(self):
        try:
            import fcntl
        except ImportError:  # not POSIX: rename still keeps the file whole; concurrent writers may drop an entry
            yield
            return
        with open(self.path.with_name(self.path.name + ".lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


_DEFAULT_CACHE = LatencyCache()


# -------------------------------------------------------------------------------------------------------- devices
@lru_cache(maxsize=None)
def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_name()


@contextlib.contextmanager
def _torch_threads(n: int):
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


# -------------------------------------------------------------------------------------------------------- latency
def measure_latency(
    model: nn.Module,
    *,
    imgsz: int = 640,
    batch: int = 1,
    device: str | torch.device = "cpu",
    backend: str = "torch",
    cache: LatencyCache | bool | None = None,
    threads: int | None = None,
    protocol: TimingProtocol | None = None,
) -> LatencyResult:
    """Measure the latency of one forward pass of a `batch` of `imgsz` x `imgsz` images on `device`.

    The model is measured as it is deployed: a copy, conv+BN fused, eval mode, `torch.inference_mode()`, a fixed
    random input. On the CPU in float32, timed with wall clock; on CUDA in float16, timed with CUDA events (cuDNN
    autotuning on). `backend="onnxruntime"` exports the copy to ONNX in a temporary folder (removed afterwards) and
    times an onnxruntime session (CPU provider, or CUDA provider on a CUDA device) the same way. `threads` (default
    torch's current setting) is the CPU thread count for either backend. See `TimingProtocol` for the stopping rule.

    `cache`: None uses the process-wide in-memory cache, a `LatencyCache` that one (give it a path to keep results
    across processes), False measures every time. A cached result comes back with `cached=True`.

    Raises `UserError` for an `imgsz` that is not a multiple of 32, a device that does not exist here, or an
    unknown backend.

    Example:
        >>> r = measure_latency(model, imgsz=320, device="cpu", cache=LatencyCache("runs/latency.json"))
        >>> print(f"{r.median_ms:.1f} ms (p10-p90 {r.p10_ms:.1f}-{r.p90_ms:.1f}, n={r.repeats})")
    """
    imgsz, batch, backend = check_imgsz(imgsz), _check_batch(batch), _check_backend(backend)
    dev = resolve_device(device)
    threads = torch.get_num_threads() if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(f"--threads must be a positive integer, got {threads!r}")
    protocol = protocol or DEFAULT_PROTOCOL
    if backend == "onnxruntime":
        _check_ort(dev)
    model = _unwrap(model)
    if cache is None or cache is True:
        cache = _DEFAULT_CACHE
    elif cache is not False and not isinstance(cache, LatencyCache):
        raise TypeError(f"cache must be a LatencyCache, None or False, got {type(cache).__name__}")
    signature = architecture_signature(model)
    precision = "fp16" if dev.type == "cuda" else "fp32"
    device_name = _device_name(dev)
    key = _cache_key(signature, imgsz, batch, dev, device_name, backend, precision, threads, protocol)
    if cache is not False:  # (an empty LatencyCache is falsy: it has a length)
        hit = cache.get(key)
        if hit is not None:
            with contextlib.suppress(TypeError, ValueError):  # a damaged entry is measured again and replaced
                return LatencyResult.from_dict(hit, cached=True)

    ch = _input_channels(model)
    with _torch_threads(threads):
        if backend == "torch":
            samples, stable = _measure_torch(model, dev, ch, imgsz, batch, protocol)
        else:
            samples, stable = _measure_onnxruntime(model, dev, ch, imgsz, batch, threads, protocol)
    s = sorted(samples)
    result = LatencyResult(
        median_ms=statistics.median(s),
        p10_ms=_percentile(s, 10),
        p90_ms=_percentile(s, 90),
        min_ms=s[0],
        repeats=len(s),
        device=str(dev),
        device_name=device_name,
        backend=backend,
        precision=precision,
        threads=threads,
        imgsz=imgsz,
        batch=batch,
        signature=signature,
        stable=stable,
        load=_load_average(),
    )
    if cache is not False:
        cache.put(key, {k: v for k, v in result.to_dict().items() if k not in ("cached", "spread_ms")})
    return result


def _cache_key(signature, imgsz, batch, dev, device_name, backend, precision, threads, protocol) -> str:
    parts = {
        "version": CACHE_VERSION,
        "signature": signature,
        "imgsz": imgsz,
        "batch": batch,
        "device": str(dev),
        "device_name": device_name,
        "backend": backend,
        "precision": precision,
        "threads": threads,
        "torch": torch.__version__,
        "protocol": asdict(protocol),
    }
    if backend == "onnxruntime":
        import onnxruntime

        parts["onnxruntime"] = onnxruntime.__version__
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _input(batch, ch, imgsz) -> torch.Tensor:
    """A fixed random image batch in [0, 1): the same numbers on every call, unlike zeros never a special case."""
    return torch.rand(batch, ch, imgsz, imgsz, generator=torch.Generator().manual_seed(0))


def _deploy_copy(model: nn.Module) -> nn.Module:
    """The copy that latency is measured on: float32, eval, no gradients, conv+BN fused like Ultralytics' predict."""
    m = _inference_copy(model).float()
    if hasattr(m, "fuse") and hasattr(m, "is_fused"):  # an Ultralytics BaseModel
        with contextlib.redirect_stdout(None):
            m = m.fuse(verbose=False)
    return m


def _measure_torch(model, dev, ch, imgsz, batch, protocol) -> tuple[list[float], bool]:
    m = _deploy_copy(model).to(dev)
    x = _input(batch, ch, imgsz).to(dev)
    if dev.type == "cuda":
        m, x = m.half(), x.half()
        return _cuda_loop(lambda: m(x), dev, protocol)

    def run_once() -> float:
        t = time.perf_counter()
        m(x)
        return (time.perf_counter() - t) * 1e3

    with torch.inference_mode():
        return _time_loop(run_once, protocol)


def _cuda_loop(forward: Callable[[], object], dev: torch.device, protocol) -> tuple[list[float], bool]:
    """Time `forward` on a CUDA device with CUDA events around each run (cuDNN autotuning on while it runs)."""
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        with torch.cuda.device(dev), torch.inference_mode():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(dev)

            def run_once() -> float:
                start.record()
                forward()
                end.record()
                end.synchronize()
                return start.elapsed_time(end)  # milliseconds

            return _time_loop(run_once, protocol)
    finally:
        torch.backends.cudnn.benchmark = benchmark


def _check_ort(dev: torch.device) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("--backend onnxruntime needs the onnxruntime package (pip install onnxruntime)") from None
    if dev.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise UserError("--backend onnxruntime on a CUDA device needs onnxruntime-gpu (its CUDA provider is missing); "
                        "use --device cpu or --backend torch")


def _export_onnx(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    """Export `model` (a deploy copy, on x's device and dtype) to ONNX the way Ultralytics' exporter prepares it."""
    import onnx

    from ultralytics.nn.modules import C2f, Detect
    from ultralytics.utils.export.engine import best_onnx_opset

    imgsz = x.shape[-1]
    strides = [int(s) for s in getattr(model, "stride", torch.tensor([8, 16, 32])).tolist()]
    for m in model.modules():
        if isinstance(m, Detect):
            m.dynamic, m.export, m.format, m.shape = False, True, "onnx", None
            m.max_det = min(getattr(m, "max_det", 300), sum((imgsz // s) ** 2 for s in strides))
        elif isinstance(m, C2f):
            m.forward = m.forward_split  # what Ultralytics exports: split instead of chunk
    with warnings.catch_warnings(), contextlib.redirect_stdout(None), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _TensorsOut(model),
            (x,),
            str(path),
            opset_version=best_onnx_opset(onnx),
            input_names=["images"],
            do_constant_folding=True,
            dynamo=False,
        )


def _measure_onnxruntime(model, dev, ch, imgsz, batch, threads, protocol) -> tuple[list[float], bool]:
    import onnxruntime as ort

    cuda = dev.type == "cuda"
    m = _deploy_copy(model).to(dev)
    x = _input(batch, ch, imgsz).to(dev)
    if cuda:
        m, x = m.half(), x.half()
    with tempfile.TemporaryDirectory(prefix="autoprune-cost-") as tmp:
        path = Path(tmp) / "model.onnx"
        _export_onnx(m, x, path)
        del m
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if cuda:
            providers = [("CUDAExecutionProvider", {"device_id": dev.index or 0}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        session = ort.InferenceSession(str(path), so, providers=providers)
    x_np = x.cpu().numpy()
    name = session.get_inputs()[0].name
    if not cuda:

        def run_once() -> float:
            t = time.perf_counter()
            session.run(None, {name: x_np})
            return (time.perf_counter() - t) * 1e3

        return _time_loop(run_once, protocol)

    # CUDA: input and outputs stay on the device (IO binding), so a run is the model, not host<->device copies;
    # run_with_iobinding returns once the provider's stream is done, and synchronize_outputs makes that explicit.
    binding = session.io_binding()
    x_dev = ort.OrtValue.ortvalue_from_numpy(x_np, "cuda", dev.index or 0)
    binding.bind_ortvalue_input(name, x_dev)
    for out in session.get_outputs():
        binding.bind_output(out.name, "cuda", dev.index or 0)

    def run_cuda() -> float:
        t = time.perf_counter()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return (time.perf_counter() - t) * 1e3

    return _time_loop(run_cuda, protocol)
