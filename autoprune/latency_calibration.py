"""The latency model calibrated by end-to-end timings, so that a plan made to a latency budget lands at it.

The latency model (`latency_model.LatencyTable`) sums per-layer latencies measured alone; its level is set by the
unpruned model when the table was built (`median_ratio`, `scale`), and what a pruned model keeps of that time is not
exactly what the layer sums say. On the demo at 640 in OpenVINO with 1 thread, global hessian planned by the table to
a 59.52 ms budget measured 50.78 ms end to end (0.85 of it), and on another day to 71.27 ms, 64.54 ms (0.91): a plan
made by the table alone leaves part of the budget unused, and with it accuracy (docs/BENCHMARKS.md, "Calibrated at
the target").

`calibrate` times the plan made to the target end to end and scales every prediction by the measured over the
predicted latency (`LatencyTable.calibration`; the geometric mean over the plans timed), `steps` times, each plan
made with the factor the timings so far gave, so that near the target the table predicts what the runtime measures. The factor moves the level of every
prediction alike, not their order; it is a correction near the target (the unpruned model's own prediction is what
the table measured, and `LatencyTable.predict(calibrated=False)` gives it).

Example:
    >>> cal = calibrate(table, 30.0, plan_at=lambda: plan(table).counts, measure=lambda c: time_end_to_end(c))
    >>> table.calibration == cal.factor
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

STEPS = 2  # end-to-end timings of the plan at the target: the table's error there is mostly one factor
TOLERANCE = 0.03  # a plan measured at most this far under the target (and not over it) ends the calibration
FACTOR_RANGE = (0.2, 5.0)  # a factor outside this says the timing went wrong, not the table


@dataclass(frozen=True)
class Calibration:
    """What `calibrate` found: the `factor` the table's predictions are scaled by, and each timed plan's
    {"factor" it was planned with, "predicted_ms" by the table with that factor, "measured_ms" end to end}."""

    factor: float
    steps: tuple[dict, ...] = ()

    def to_dict(self) -> dict:
        return {"factor": self.factor, "steps": [dict(s) for s in self.steps]}

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        return cls(float(d["factor"]), tuple(dict(s) for s in d.get("steps") or ()))

    def text(self, target_ms: float) -> str:
        """One line for a log: each timed plan and the factor."""
        timed = "; ".join(f"predicted {s['predicted_ms']:.2f}, measured {s['measured_ms']:.2f} ms" for s in self.steps)
        return (f"latency model calibrated at {target_ms:g} ms by {len(self.steps)} end-to-end timing(s) of the "
                f"plan at it ({timed}): predictions x {self.factor:.3f}")


def calibrate(table, target_ms: float, plan_at: Callable[[], dict], measure: Callable[[dict], float],
              steps: int = STEPS) -> Calibration:
    """Scale `table`'s predictions (`table.calibration`) until the plan it makes at `target_ms` measures at it.

    `plan_at()` returns the kept counts (as `table.predict` takes them) of the plan made to `target_ms` with the table
    as it stands; `measure(counts)` times that plan end to end and returns its median in ms. Up to `steps` rounds:
    plan, time, and set the factor to the geometric mean of the measured over the table's uncalibrated prediction of
    every plan timed so far (each is an estimate of the table's error near the target, and one timing on a shared
    CPU is off by up to 10%: the mean keeps one from swinging the plan); a plan measured within `TOLERANCE` under the
    target ends it early. The factor is kept within `FACTOR_RANGE`. Returns the `Calibration`; `table.calibration`
    holds its factor.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    done, logs = [], []
    for _ in range(steps):
        counts = plan_at()
        raw = table.predict(counts, calibrated=False)
        measured = float(measure(counts))
        if not (raw > 0 and math.isfinite(measured) and measured > 0):
            raise RuntimeError(f"cannot calibrate the latency model: predicted {raw} ms, measured {measured} ms")
        done.append({"factor": round(table.calibration, 4), "predicted_ms": round(table.predict(counts), 4),
                     "measured_ms": round(measured, 4)})
        logs.append(math.log(min(max(measured / raw, FACTOR_RANGE[0]), FACTOR_RANGE[1])))
        table.calibration = math.exp(sum(logs) / len(logs))
        if (1 - TOLERANCE) * target_ms <= measured <= target_ms:
            break
    return Calibration(table.calibration, tuple(done))


__all__ = ["FACTOR_RANGE", "STEPS", "TOLERANCE", "Calibration", "calibrate"]
