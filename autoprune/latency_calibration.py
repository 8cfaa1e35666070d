"""The latency model calibrated by end-to-end timings, so that a plan made to a latency budget lands at it.

The latency model (`latency_model.LatencyTable`) sums per-layer latencies measured alone; its level is set by the
unpruned model when the table was built (`median_ratio`, `scale`), and what a pruned model keeps of that time is not
exactly what the layer sums say. On the demo at 640 in OpenVINO with 1 thread, global hessian planned by the table to
a 59.52 ms budget measured 50.78 ms end to end (0.85 of it), and on another day to 71.27 ms, 64.54 ms (0.91): a plan
made by the table alone leaves part of the budget unused, and with it accuracy (docs/BENCHMARKS.md, "Calibrated at
the target").

`calibrate` times the plan made to the target end to end and calibrates every prediction (`LatencyTable.calibration`:
a scale and an offset, `fit` to the plans timed: a line through them where they are far enough apart and it is not
too steep, else the ratio), `steps` times, each plan made with the calibration so far, so that near the target the
table predicts what the runtime measures. It is a correction near the target (the unpruned model's own prediction is
what the table measured, and `LatencyTable.predict(calibrated=False)` gives it).

Example:
    >>> cal = calibrate(table, 30.0, plan_at=lambda: plan(table).counts, measure=lambda c: time_end_to_end(c))
    >>> table.calibration == (cal.scale, cal.offset_ms)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

STEPS = 2  # end-to-end timings of the plan at the target
TOLERANCE = 0.03  # a plan measured at most this far under the target (and not over it) ends the calibration
FACTOR_RANGE = (0.2, 5.0)  # a ratio outside this says the timing went wrong, not the table
SLOPE_RANGE = (0.5, 2.0)  # a line through the timed plans steeper or flatter than this is noise, not the table
MIN_SPREAD = 0.1  # the line needs plans whose predictions differ by at least this share
FLOOR_SHARE = 0.05  # a calibrated prediction never falls below this share of the table's (it stays positive)


@dataclass(frozen=True)
class Calibration:
    """What `calibrate` found: the calibrated prediction is `scale` x the table's + `offset_ms` (never below
    `FLOOR_SHARE` of it), and each timed plan's {"scale" and "offset_ms" it was planned with, "predicted_ms" by the
    table so calibrated, "measured_ms" end to end}."""

    scale: float
    offset_ms: float = 0.0
    steps: tuple[dict, ...] = ()

    def to_dict(self) -> dict:
        return {"scale": self.scale, "offset_ms": self.offset_ms, "steps": [dict(s) for s in self.steps]}

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        return cls(float(d["scale"]), float(d.get("offset_ms") or 0.0), tuple(dict(s) for s in d.get("steps") or ()))

    def text(self, target_ms: float, setup: str) -> str:
        """One line for a log: each timed plan and the calibration; `setup` says what timed them."""
        timed = "; ".join(f"predicted {s['predicted_ms']:.2f}, measured {s['measured_ms']:.2f} ms" for s in self.steps)
        return (f"latency model calibrated at {target_ms:g} ms by {len(self.steps)} end-to-end timing(s) of the "
                f"plan at it in {setup} ({timed}): predictions x {self.scale:.3f} {self.offset_ms:+.2f} ms")


def apply(calibration: tuple[float, float], raw_ms: float) -> float:
    """The calibrated prediction of a table prediction `raw_ms`: non-decreasing in it, and positive."""
    scale, offset = calibration
    return max(scale * raw_ms + offset, FLOOR_SHARE * raw_ms)


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(scale, offset_ms) from the timed plans' (table prediction, measured) points: the least-squares line through
    them where at least two predictions differ by `MIN_SPREAD` and its slope is within `SLOPE_RANGE` (the table's
    error near the target is then a slope and an offset: on the demo in OpenVINO at 640, lines of slope 1.1-1.6
    through -32 to -54 ms, docs/BENCHMARKS.md); else the geometric mean of measured over predicted, through 0
    (one timing on a shared CPU is off by up to 30%, which a line through two close points would amplify)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if len(points) >= 2 and max(xs) >= (1 + MIN_SPREAD) * min(xs):
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
        if SLOPE_RANGE[0] <= slope <= SLOPE_RANGE[1]:
            return slope, my - slope * mx
    logs = [math.log(min(max(y / x, FACTOR_RANGE[0]), FACTOR_RANGE[1])) for x, y in points]
    return math.exp(sum(logs) / len(logs)), 0.0


def calibrate(table, target_ms: float, plan_at: Callable[[], dict], measure: Callable[[dict], float],
              steps: int = STEPS) -> Calibration:
    """Calibrate `table`'s predictions (`table.calibration`, a (scale, offset_ms) pair) until the plan it makes at
    `target_ms` measures at it.

    `plan_at()` returns the kept counts (as `table.predict` takes them) of the plan made to `target_ms` with the table
    as it stands; `measure(counts)` times that plan end to end and returns its median in ms. Up to `steps` rounds:
    plan, time, and `fit` the calibration to every plan timed so far; a plan measured within `TOLERANCE` under the
    target ends it early. Returns the `Calibration`; `table.calibration` holds it.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    done, points = [], []
    for _ in range(steps):
        counts = plan_at()
        raw = table.predict(counts, calibrated=False)
        measured = float(measure(counts))
        if not (raw > 0 and math.isfinite(measured) and measured > 0):
            raise RuntimeError(f"cannot calibrate the latency model: predicted {raw} ms, measured {measured} ms")
        scale, offset = table.calibration
        done.append({"scale": round(scale, 4), "offset_ms": round(offset, 4),
                     "predicted_ms": round(table.predict(counts), 4), "measured_ms": round(measured, 4)})
        points.append((raw, measured))
        table.calibration = fit(points)
        if (1 - TOLERANCE) * target_ms <= measured <= target_ms:
            break
    return Calibration(*table.calibration, tuple(done))


__all__ = ["FACTOR_RANGE", "SLOPE_RANGE", "STEPS", "TOLERANCE", "Calibration", "apply", "calibrate", "fit"]
