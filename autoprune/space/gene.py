"""A gene: one searched keep ratio (or, for a depth gene, a number of kept elements), what it drives, and the grid
of values it may take."""

from __future__ import annotations

import math
from dataclasses import dataclass

GRID_TOL = 1e-9  # float slack when comparing genome values with ranges and grids


@dataclass(frozen=True)
class Gene:
    """One searched keep ratio and the channel groups it drives.

    Its values are the grid `low, low + step, ..., high`; a gene with `low == high` is fixed at that ratio.

    A depth gene (`kind="depth"`) drives depth units (`autoprune.depth`) instead of channel groups: its value is
    the number of elements each of its `units` keeps (capped at the unit's own count), a whole number from `low`
    (0 or more) to `high`, step 1.

    A swap gene (`kind="swap"`) drives swap sites (`autoprune.swap`, their ids in `units`): its value is an index
    into `choices` (swap kinds, cheapest first, `keep` last), a whole number from 0 to `len(choices) - 1`, step 1.

    Example:
        >>> g = Gene("neck.out", ("12.cv2", "15.cv2"), 0.25, 1.0, 0.05)
        >>> g.n, g.snap(0.512), g.snap(2.0)
        (15, 0.5, 1.0)
    """

    name: str
    groups: tuple[str, ...]
    low: float
    high: float
    step: float
    kind: str = "width"
    units: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind == "swap":
            if (self.low != 0 or self.high != len(self.choices) - 1 or self.step != 1 or self.groups
                    or not self.units or len(self.choices) < 2 or self.choices[-1] != "keep"):
                raise ValueError(f"swap gene {self.name!r}: need low 0, high len(choices) - 1, step 1, units, no "
                                 f"groups and choices ending with keep, got {self}")
            return
        if self.kind == "depth":
            ok = all(float(x).is_integer() for x in (self.low, self.high)) and self.step == 1
            if not (ok and 0 <= self.low <= self.high) or self.groups or not self.units:
                raise ValueError(f"depth gene {self.name!r}: need whole 0 <= low <= high, step 1, units and no "
                                 f"groups, got {self}")
            return
        if self.kind != "width":
            raise ValueError(f"gene {self.name!r}: kind must be width, depth or swap, got {self.kind!r}")
        if not (0 < self.low <= self.high + GRID_TOL <= 1 + 2 * GRID_TOL) or not self.step > 0:
            raise ValueError(f"gene {self.name!r}: need 0 < low <= high <= 1 and step > 0, got {self}")
        if self.high - self.low > GRID_TOL:
            k = (self.high - self.low) / self.step
            if k < 1 - GRID_TOL or abs(k - round(k)) > 1e-6:
                raise ValueError(f"gene {self.name!r}: step {self.step:g} does not divide high - low")

    @property
    def n(self) -> int:
        """Number of steps from `low` to `high` (the grid has `n + 1` values)."""
        return 0 if self.high - self.low <= GRID_TOL else int(round((self.high - self.low) / self.step))

    def value(self, k: int) -> float:
        """The `k`-th grid value, `0 <= k <= n`, free of float noise (`0.7`, not `0.7000000000000001`)."""
        k = min(max(int(k), 0), self.n)
        return self.high if k == self.n else round(self.low + k * self.step, 12)

    def grid(self) -> tuple[float, ...]:
        """Every value the gene can take, ascending."""
        return tuple(self.value(k) for k in range(self.n + 1))

    def index(self, v: float) -> int:
        """The grid index nearest to `v`, clipped to the range."""
        if self.n == 0:
            return 0
        return min(max(int(math.floor((v - self.low) / self.step + 0.5)), 0), self.n)

    def snap(self, v: float) -> float:
        """The grid value nearest to `v`, clipped to `[low, high]`."""
        return self.value(self.index(v))

    def snap_down(self, v: float) -> float:
        """The largest grid value not above `v` (`low` when `v` is below the range)."""
        if self.n == 0:
            return self.low
        k = int(math.floor((v - self.low) / self.step + 1e-9))
        return self.value(k)

