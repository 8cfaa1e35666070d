"""Progress on stderr for work that takes more than a few seconds, the same way in every command.

Two shapes: `progress(iterable, desc, ...)` (or `Progress(desc, total=...)` updated by hand) is a bar with an ETA
where the length is known; `stage(desc)` is a status line for a step whose length is not. When one ends, one line
stays on stderr: `hessian gradients: 20/20 batches in 12.3s`, `validating unpruned.pt: done in 4.1s`.

When it shows, and how (`mode()`):
- stderr is a terminal: live tqdm bars while the work runs, then the line that stays ("live");
- stderr is not a terminal (a pipe, a log file, a test's capture): nothing, unless `AUTOPRUNE_PROGRESS=1`, which
  writes only the lines that stay, no redrawn bars ("lines");
- `AUTOPRUNE_PROGRESS=0` turns it off everywhere ("off").

Nothing goes to stdout, so `--json` output stays one parseable document. A bar or stage that runs inside another is
shown live only and leaves no line, so a step reports once. Work that raises leaves nothing behind (its live line is
cleared), so a failure still ends in the one `error:` line the command prints.

Example:
    >>> for batch in progress(batches, "hessian gradients", unit="batch"):
    ...     step(batch)
    >>> with stage("measuring latency"):
    ...     measure()
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

ENV = "AUTOPRUNE_PROGRESS"
_OFF = ("0", "false", "no", "off")
_ON = ("1", "true", "yes", "on")

T = TypeVar("T")

_open = 0  # bars and stages open now: one opened inside another leaves no line of its own


def mode() -> str:
    """"live" (bars on a terminal), "lines" (only the lines that stay) or "off", from `AUTOPRUNE_PROGRESS` and
    whether stderr is a terminal at this moment."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in _OFF:
        return "off"
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        tty = False
    if tty:
        return "live"
    return "lines" if value in _ON else "off"


def seconds_text(seconds: float) -> str:
    """`12.3s`, or `3m07s` from a minute on.

    Example:
        >>> seconds_text(4.04), seconds_text(187.4)
        ('4.0s', '3m07s')
    """
    if seconds < 59.95:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    return f"{whole // 60}m{whole % 60:02d}s"


class Progress:
    """One bar (`total` known) or status line (`total` None) on stderr; a context manager.

    `update(n)` advances it; leaving the `with` block without an exception writes the line that stays. The line
    says `n/total unit` for a bar, `n unit` when it counted without a total, `done` for a stage that never counted.
    `live=False` draws nothing while the work runs (for work that shows its own progress, such as Ultralytics'
    trainer), only the line that stays.
    """

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", *, live: bool = True):
        global _open
        self.desc, self.total, self.unit, self.n = desc, total, unit, 0
        self.mode = mode()
        self.nested = _open > 0
        self._bar = None
        self._closed = False
        self._t0 = time.perf_counter()
        _open += 1
        if self.mode == "live" and live:
            from tqdm import tqdm

            fmt = None if total else "{desc}..."
            self._bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=sys.stderr, leave=False,
                             dynamic_ncols=True, bar_format=fmt)

    def update(self, n: int = 1) -> None:
        """Count `n` more units done."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)

    def line(self) -> str:
        """The line that stays when the work has ended."""
        took = seconds_text(time.perf_counter() - self._t0)
        if self.total:
            return f"{self.desc}: {self.n}/{self.total} {self.unit} in {took}"
        if self.n:
            return f"{self.desc}: {self.n} {self.unit} in {took}"
        return f"{self.desc}: done in {took}"

    def close(self, ok: bool = True) -> None:
        """End it: clear the live bar, and where `ok` (and not nested, and shown at all) write the line that stays."""
        global _open
        if self._closed:
            return
        self._closed = True
        _open -= 1
        if self._bar is not None:
            self._bar.close()  # leave=False: the live bar is cleared
        if ok and not self.nested and self.mode != "off":
            print(self.line(), file=sys.stderr, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)


def progress(iterable: Iterable[T], desc: str, *, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Yield from `iterable` with a bar on stderr (`total` defaults to `len(iterable)` where it has one).

    Example:
        >>> for layer in progress(layers, "refitting convs", unit="conv"):
        ...     refit(layer)
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with Progress(desc, total=total, unit=unit) as bar:
        for item in iterable:
            yield item
            bar.update()


@contextlib.contextmanager
def stage(desc: str, *, live: bool = True) -> Iterator[Progress]:
    """A status line on stderr while the block runs, then `desc: done in 4.1s` (see the module doc for when);
    `live=False`: only the line at the end, for work that prints its own progress.

    Example:
        >>> with stage("measuring latency"):
        ...     result = measure_latency(model)
    """
    with Progress(desc, live=live) as p:
        yield p


__all__ = ["ENV", "Progress", "mode", "progress", "seconds_text", "stage"]
