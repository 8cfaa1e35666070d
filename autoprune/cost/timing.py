"""How latency is sampled: the timing protocol (when the median is stable) and the loop that applies it.

The backends (`autoprune.cost.backends`) hand `time_loop` one function that runs the model once and returns its
milliseconds; the loop warms up, samples and stops by `TimingProtocol`'s rule.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass, fields
from typing import Callable


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
    collect_garbage: bool = True  # a full gc.collect() first (0.1-0.5 s in a large process)

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "collect_garbage":
                if not isinstance(v, bool):
                    raise ValueError(f"TimingProtocol.collect_garbage must be a bool, got {v!r}")
                continue
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


def time_loop(run_once: Callable[[], float], protocol: TimingProtocol) -> tuple[list[float], bool]:
    """Warm up, then sample `run_once()` (which returns one run's milliseconds) until the median is stable.

    Returns the samples and whether the stopping rule was met (False: a time or repeat cap ended it).
    """
    if protocol.collect_garbage:
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


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (q in [0, 100])."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def under_load(load: float | None, device: str) -> bool:
    """Whether a CPU latency was measured under load: the 1-minute load average (`LatencyResult.load`) above the
    core count, so other processes shared the CPU and the figure is noisy (it may be several times the quiet one).
    False on other devices and where the OS gives no load average.

    Example:
        >>> under_load(None, "cpu"), under_load(1e6, "cpu"), under_load(1e6, "cuda:0")
        (False, True, False)
    """
    import os

    return str(device) == "cpu" and load is not None and load > (os.cpu_count() or 1)
