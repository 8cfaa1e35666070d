"""The learning-rate schedule of a short finetune of a pruned, already trained model (`apply --schedule`).

`FinetuneSchedule` and `short_schedule` build the Ultralytics trainer arguments of the short schedule;
`ULTRALYTICS_SCHEDULE` names what Ultralytics' own defaults are, which `apply` keeps by default, with the biases'
warm-up from 0.1 (`apply.DEFAULT_WARMUP_BIAS_LR`; docs/BENCHMARKS.md, issue 21: the short schedule measured worse at
3 epochs, the bias warm-up better at 3 and 10).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["ULTRALYTICS_SCHEDULE", "FinetuneSchedule", "short_schedule", "ultralytics_adamw_lr", "warmup_for"]

ULTRALYTICS_SCHEDULE = {"name": "ultralytics", "optimizer": "auto", "warmup_epochs": 3.0, "lrf": 0.01,
                        "cos_lr": False}  # Ultralytics' defaults, what apply used before short_schedule


def ultralytics_adamw_lr(nc: int) -> float:
    """The AdamW learning rate Ultralytics' `optimizer=auto` fits to the class count for short trainings."""
    return round(0.002 * 5 / (4 + nc), 6)


def warmup_for(epochs: int) -> float:
    """Warm-up epochs for a finetune of `epochs`: a tenth of it, at least 0.1 epoch, at most Ultralytics' 3."""
    return round(min(3.0, max(0.1, 0.1 * epochs)), 3)


@dataclass(frozen=True)
class FinetuneSchedule:
    """The optimizer and learning-rate schedule of a short finetune of a pruned, already trained model.

    Ultralytics' defaults are made for training from scratch: 3 warm-up epochs (capped at epochs - 1), which swallow
    a 3-epoch finetune whole (the learning rate peaks at the start of its last epoch), then a linear decay. A pruned
    model starts from trained weights and needs its few epochs at a useful rate, so this schedule warms up for a
    tenth of the finetune (`warmup_for`, at least 0.1 epoch, at most 3) and decays along a cosine to `lrf` x `lr0`.
    The optimizer is AdamW at the rate Ultralytics' `optimizer=auto` fits to the class count for short trainings
    (`ultralytics_adamw_lr`), given explicitly so that `lr0` is the rate used. The weights saved are Ultralytics'
    EMA (`ModelEMA`, decay 0.9999 x (1 - exp(-updates / 2000))), as Ultralytics uses it.

    Attributes:
        epochs: the finetune's length the schedule was made for.
        lr0: starting learning rate (after the warm-up).
        lrf: final learning rate as a share of lr0.
        warmup_epochs: warm-up length in epochs (may be fractional; never capped at epochs - 1).
        cos_lr: cosine decay (True) or linear (False).
        optimizer: Ultralytics' optimizer name.
    """

    epochs: int
    lr0: float
    lrf: float = 0.01
    warmup_epochs: float = 0.3
    cos_lr: bool = True
    optimizer: str = "AdamW"

    def __post_init__(self):
        from autoprune.errors import UserError

        for name, flag, low in (("lr0", "--lr0", 0.0), ("lrf", "--lrf", 0.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= low:
                raise UserError(f"{flag} must be a number > 0, got {v!r}")
        if self.lrf > 1:
            raise UserError(f"--lrf is the final learning rate as a share of --lr0, at most 1; got {self.lrf!r}")
        w = self.warmup_epochs
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or not 0 <= w <= self.epochs:
            raise UserError(f"--warmup-epochs must be a number from 0 to --epochs ({self.epochs}), got {w!r}")

    def overrides(self) -> dict:
        """The Ultralytics trainer arguments this schedule sets."""
        return {"optimizer": self.optimizer, "lr0": self.lr0, "lrf": self.lrf, "warmup_epochs": self.warmup_epochs,
                "cos_lr": self.cos_lr, "warmup_bias_lr": 0.0}

    def as_dict(self) -> dict:
        return {"name": "short", **asdict(self), "warmup_bias_lr": 0.0,
                "ema": "Ultralytics ModelEMA (decay 0.9999, tau 2000 updates)"}


def short_schedule(epochs: int, *, nc: int = 80, lr0: float | None = None, lrf: float | None = None,
                   warmup_epochs: float | None = None) -> FinetuneSchedule:
    """The schedule of a finetune of `epochs` on `nc` classes (see `FinetuneSchedule`); any value given overrides
    the one picked from `epochs`.

    Example:
        >>> s = short_schedule(3, nc=8)
        >>> s.warmup_epochs, s.lr0, s.cos_lr
        (0.3, 0.000833, True)
    """
    return FinetuneSchedule(epochs=epochs, lr0=ultralytics_adamw_lr(nc) if lr0 is None else lr0,
                            lrf=0.01 if lrf is None else lrf,
                            warmup_epochs=warmup_for(epochs) if warmup_epochs is None else warmup_epochs)
