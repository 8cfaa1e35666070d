"""How a search's progress lines say things."""

from __future__ import annotations

from autoprune.search import records


def duration_text(seconds: float) -> str:
    """`42s`, or `3m07s` from a minute on.

    Example:
        >>> duration_text(187.4)
        '3m07s'
    """
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_line(trial, outcome: str, n: int, target: int, best, eta: float, figure: str = "mAP50-95") -> str:
    """`[n/target] trial #N mAP50-95 0.503 | 4.99 GFLOPs, 289.7 ms (167s) | best 0.503 (#1) | ETA 40m14s`: one
    evaluated `trial` (a FrozenTrial) and how it `outcome`d, with the study's `best` record so far; `figure` names
    the score (`proxy.figure_names`: 'mask mAP50-95', 'top-1 accuracy', ...)."""
    a = trial.user_attrs
    what = (f"{figure} {a.get(records.MAP50_95, float('nan')):.3f}" if outcome == "COMPLETE"
            else f"{outcome.lower()}: {a.get(records.REASON, '')}")
    gf = a.get(records.GFLOPS)
    lat = a.get(records.LATENCY_MS)
    costs = f" | {gf:.2f} GFLOPs, {lat:.1f} ms" if gf is not None and lat is not None else ""
    best_txt = f" | best {best.map50_95:.3f} (#{best.number})" if best else ""
    return (f"[{n}/{target}] trial #{trial.number} {what}{costs} ({a.get(records.SECONDS, 0):.0f}s){best_txt} | "
            f"ETA {duration_text(eta)}")
