"""The image-size rule every command and library entry point shares: a positive multiple of 32.

32 is the largest stride of the stock detectors, so a size that is not a multiple of it cannot be split into the
heads' grids. Each caller names its own flag or field in the error line, so users see the name they typed.
"""

from __future__ import annotations

import numbers

from autoprune.errors import UserError

__all__ = ["check_imgsz"]


def check_imgsz(imgsz, flag: str = "--imgsz", *, minimum: int = 32, why: str = "") -> int:
    """Return `imgsz` as an int, or raise `UserError` unless it is an integer multiple of 32 and at least `minimum`.

    `flag` is the name the error line gives (`--calib-imgsz`, or `imgsz` for a settings field), `why` an optional
    reason appended to the rule; a `minimum` above 32 is stated in the rule.

    Example:
        >>> check_imgsz(640)
        640
        >>> check_imgsz(100)
        Traceback (most recent call last):
        ...
        autoprune.errors.UserError: --imgsz must be a positive multiple of 32, got 100
    """
    if isinstance(imgsz, bool) or not isinstance(imgsz, numbers.Integral) or imgsz < minimum or imgsz % 32:
        rule = "a positive multiple of 32" if minimum <= 32 else f"a multiple of 32 and >= {minimum}"
        raise UserError(f"{flag} must be {rule}{why}, got {imgsz!r}")
    return int(imgsz)
