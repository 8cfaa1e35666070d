"""How the reports write numbers and text for people: costs, fixed decimals, parameter counts, shortened reasons.

Example:
    >>> cost_text(4.1234), cost_text(0.05123), cost_text(286.4), fixed_text(None, 4), params_text(1_500_000)
    ('4.12', '0.0512', '286', '-', '1.50M')
    >>> latency_text(57.31, 4.08, False), latency_text(2561.2, 900.0, True), latency_text(None, None, False)
    ('57.3 ±4.1', '2561.2 ±900.0 !', '-')
    >>> score_text(0.49141, 0.01163), score_text(0.49141, None), score_text(None, None)
    ('0.4914 ±0.0116', '0.4914', '-')
"""

from __future__ import annotations


def fixed_text(x, digits):
    """`x` with `digits` decimals; `-` for a missing value."""
    return "-" if x is None else f"{x:.{digits}f}"


def cost_text(x, digits=None):
    """A cost for people: 3 significant digits below 100 (0.0512, 4.1, 28.6), whole numbers above."""
    if x is None:
        return "-"
    if digits is not None and abs(x) >= 1:
        return f"{x:.{digits}f}"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def params_text(n):
    """A parameter count in millions (`1.50M`) from 100k up, else in thousands (`12.3k`)."""
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def shorten(text, n):
    """`text` on one line, cut to `n` characters with `...` when longer; None stays None."""
    if text is None:
        return None
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."



LOAD_MARK = "!"  # after a latency measured under load
LOAD_NOTE = (f"{LOAD_MARK} latency measured under load (load average above the core count): noisy, possibly several "
             "times the quiet figure; `autoprune cost` re-measures one")


def score_text(score, se):
    """A proxy score with its standard error (`search.records.MAP50_95_SE`) when it has one."""
    if score is None:
        return "-"
    return f"{score:.4f}" + (f" ±{se:.4f}" if se is not None else "")


def latency_text(ms, spread, under_load):
    """A latency with its spread (p90 - p10 of the timed runs), `LOAD_MARK` after one measured under load."""
    if ms is None:
        return "-"
    text = f"{ms:.1f}" + (f" ±{spread:.1f}" if spread is not None else "")
    return text + (f" {LOAD_MARK}" if under_load else "")
