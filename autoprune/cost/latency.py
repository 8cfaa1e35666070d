"""Measured latency: `measure_latency` and the `LatencyResult` it returns.

It checks the request, looks the architecture up in the latency cache (`autoprune.cost.cache`), and otherwise times
the model in the chosen runtime (`autoprune.cost.backends`) by the timing protocol (`autoprune.cost.timing`) with the
CPU thread count pinned, then files the result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import statistics
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from autoprune.cost import backends, timing
from autoprune.cost._model import input_channels
from autoprune.cost.cache import LatencyCache, cache_key
from autoprune.cost.signature import architecture_signature
from autoprune.devices import default_threads, resolve_device, torch_threads
from autoprune.errors import UserError
from autoprune.imgsz import check_imgsz
from autoprune.wrappers import detection_model


def _check_batch(batch) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise UserError(f"--latency-batch must be a positive integer, got {batch!r}")
    return batch


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
    executed_precision: str | None = None  # what the runtime computed in (OpenVINO runs an fp16 IR in f32 or bf16)

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


_DEFAULT_CACHE = LatencyCache()


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


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_name()


def measure_latency(
    model: nn.Module,
    *,
    imgsz: int = 640,
    batch: int = 1,
    device: str | torch.device = "cpu",
    backend: str = "torch",
    precision: str | None = None,
    cache: LatencyCache | bool | None = None,
    threads: int | None = None,
    protocol: timing.TimingProtocol | None = None,
) -> LatencyResult:
    """Measure the latency of one forward pass of a `batch` of `imgsz` x `imgsz` images on `device`.

    The model is measured as it is deployed: a copy, conv+BN fused, eval mode, `torch.inference_mode()`, a fixed
    random input. On the CPU in float32, timed with wall clock; on CUDA in float16, timed with CUDA events (cuDNN
    autotuning on). `backend` "onnxruntime", "openvino" (CPU) or "tensorrt" (CUDA) exports the copy the way
    Ultralytics exports it for that runtime, in a temporary folder removed afterwards, and times the runtime's session
    the same way (`autoprune.cost.backends`). `precision` is "fp32" or "fp16" (default: fp16 on CUDA, fp32
    elsewhere); the result's `executed_precision` says what the runtime computed in. `threads` is the CPU thread
    count for every backend; by default `devices.default_threads()`, the same whatever torch's current setting
    (which depends on import order). See `TimingProtocol` for the stopping rule.

    `cache`: None uses the process-wide in-memory cache, a `LatencyCache` that one (give it a path to keep results
    across processes), False measures every time. A cached result comes back with `cached=True`.

    Raises `UserError` for an `imgsz` that is not a multiple of 32, a device that does not exist here, an unknown
    backend or precision, or a runtime that cannot run here (`backends.check_runtime`: its package missing, naming
    the extra to install; tensorrt or fp16 without a CUDA device).

    Example:
        >>> r = measure_latency(model, imgsz=320, device="cpu", cache=LatencyCache("runs/latency.json"))
        >>> print(f"{r.median_ms:.1f} ms (p10-p90 {r.p10_ms:.1f}-{r.p90_ms:.1f}, n={r.repeats})")
    """
    imgsz, batch, backend, dev, threads, precision = _check_request(imgsz, batch, backend, device, threads, precision)
    protocol = protocol or timing.DEFAULT_PROTOCOL
    model = detection_model(model)
    if cache is None or cache is True:
        cache = _DEFAULT_CACHE
    elif cache is not False and not isinstance(cache, LatencyCache):
        raise TypeError(f"cache must be a LatencyCache, None or False, got {type(cache).__name__}")
    signature = architecture_signature(model)
    device_name = device_label(dev)
    key = cache_key(signature, imgsz, batch, dev, device_name, backend, precision, threads, protocol)
    if cache is not False:  # (an empty LatencyCache is falsy: it has a length)
        hit = cache.get(key)
        if hit is not None:
            with contextlib.suppress(TypeError, ValueError):  # a damaged entry is measured again and replaced
                return LatencyResult.from_dict(hit, cached=True)

    ch = input_channels(model)
    with torch_threads(threads):
        session = backends.open_session(backend, model, dev, ch, imgsz, batch, precision, threads)
        samples, stable = backends.time_session(session, dev, protocol)
        executed = session.executed
        del session
    result = _result(samples, statistics.median(samples), stable, dev, device_name, backend, precision, threads, imgsz,
                     batch, signature, executed)
    if cache is not False:
        cache.put(key, {k: v for k, v in result.to_dict().items() if k not in ("cached", "spread_ms")})
    return result


def _check_request(imgsz, batch, backend, device, threads, precision):
    """The checked (imgsz, batch, backend, device, threads, precision) of a timing request; `UserError` otherwise."""
    imgsz, batch, backend = check_imgsz(imgsz), _check_batch(batch), backends.check_backend(backend)
    dev = resolve_device(device)
    threads = default_threads() if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(f"--threads must be a positive integer, got {threads!r}")
    return imgsz, batch, backend, dev, threads, backends.check_runtime(backend, dev, precision)


def _result(samples, median_ms, stable, dev, device_name, backend, precision, threads, imgsz, batch, signature,
            executed) -> LatencyResult:
    s = sorted(samples)
    return LatencyResult(
        median_ms=median_ms,
        p10_ms=timing.percentile(s, 10),
        p90_ms=timing.percentile(s, 90),
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
        executed_precision=executed,
    )


ROUND_MAX_S = 5.0  # the longest one model's turn in a round may take by default


def round_protocol() -> timing.TimingProtocol:
    """`timing.DEFAULT_PROTOCOL` (read at call time) with each turn capped at `ROUND_MAX_S` seconds."""
    p = timing.DEFAULT_PROTOCOL
    return dataclasses.replace(p, max_time_s=max(p.min_time_s, min(p.max_time_s, ROUND_MAX_S)))


def measure_latencies(
    models: dict[str, nn.Module],
    *,
    rounds: int = 5,
    imgsz: int = 640,
    batch: int = 1,
    device: str | torch.device = "cpu",
    backend: str = "torch",
    precision: str | None = None,
    threads: int | None = None,
    protocol: timing.TimingProtocol | None = None,
) -> dict[str, LatencyResult]:
    """Time several models against each other: each is opened once in `backend`, then all are timed in turn,
    `rounds` times over (round r starts at the r-th model), each turn by `protocol` (default `round_protocol()`:
    1-5 s a turn).

    A model's `median_ms` is the median of its rounds' medians; the p10/p90/min and `repeats` cover all its
    samples; `stable` says every round settled. A machine whose speed drifts over minutes (a shared CPU) moves every
    model alike within a round, so the ratios between these results hold where separate `measure_latency` calls
    minutes apart do not. Never cached: what it is for is a fresh comparison. Checks and arguments as in
    `measure_latency`.

    Example:
        >>> r = measure_latencies({"base": base, "pruned": pruned}, rounds=5, backend="openvino", threads=1)
        >>> r["pruned"].median_ms / r["base"].median_ms
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise UserError(f"rounds must be a positive integer, got {rounds!r}")
    imgsz, batch, backend, dev, threads, precision = _check_request(imgsz, batch, backend, device, threads, precision)
    protocol = protocol or round_protocol()
    device_name = device_label(dev)
    names = list(models)
    nets = {name: detection_model(m) for name, m in models.items()}
    samples = {name: [] for name in names}
    medians = {name: [] for name in names}
    stable = dict.fromkeys(names, True)
    with torch_threads(threads):
        sessions = {name: backends.open_session(backend, net, dev, input_channels(net), imgsz, batch, precision,
                                                threads) for name, net in nets.items()}
        for r in range(rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                s, ok = backends.time_session(sessions[name], dev, protocol)
                samples[name] += s
                medians[name].append(statistics.median(s))
                stable[name] &= ok
        executed = {name: session.executed for name, session in sessions.items()}
        del sessions
    return {name: _result(samples[name], statistics.median(medians[name]), stable[name], dev, device_name, backend,
                          precision, threads, imgsz, batch, architecture_signature(nets[name]), executed[name])
            for name in names}
