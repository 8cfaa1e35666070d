"""The Pareto front drawn: `pareto.png` (matplotlib on a bare Agg canvas, no pyplot state) and `pareto.html`
(plotly), two panels each: mAP50-95 against GFLOPs and against latency.

Both draw the same small data object first (`panel_view`: which points each panel shows in which category, which
latencies are clipped off a robust axis, where each trial number's label goes) and only then draw it. The HTML
loads plotly.js from one `plotly.min.js` written beside it (once per folder), so it opens offline and stays small.

Example:
    >>> from autoprune.report.front import pareto_info
    >>> from autoprune.search.records import TrialRecord
    >>> recs = [TrialRecord(n, "COMPLETE", m, None, g, lat, 1000, True, "search", None)
    ...         for n, m, g, lat in ((0, 0.30, 3.0, 60.0), (1, 0.35, 3.8, 145.0), (2, 0.20, 3.5, 2561.0),
    ...                              (3, 0.34, 2.5, 150.0))]
    >>> view = panel_view(pareto_info(recs, {}), 1)
    >>> [(p.number, p.category) for p in view.points]
    [(0, 'front'), (1, 'front'), (3, 'front3'), (2, 'dominated')]
    >>> view.hi, [p.label for p in view.points if p.clipped]
    (532.88, ['2 (2561 ms)'])
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from autoprune.report.atomic import atomic_output
from autoprune.report.front import ParetoInfo, latency_spread, latency_under_load
from autoprune.report.tables import over_budget_text
from autoprune.report.text import LOAD_MARK, cost_text, fixed_text, params_text, score_text
from autoprune.search.records import TrialRecord

_STYLE = {  # category -> colour; the HTML uses the same
    "infeasible": "#8c8c8c",
    "dominated": "#b4b4b4",
    "front3": "#d62728",  # drawn hollow: on the three-objective front, beaten in this panel
    "front": "#d62728",
    "uniform": "#ffbf00",
    "budget": "#2b8a3e",
}
_LABEL_COLOUR = {"front": "black", "front3": "#8b1a1a", "dominated": "#8c8c8c", "infeasible": "#8c8c8c"}
_NAMES = {"front": "front in this panel", "front3": "on the 3-objective front, beaten here",
          "dominated": "feasible, dominated", "infeasible": "over budget"}
PLOTLY_JS = "plotly.min.js"  # beside pareto.html; one copy per folder

# Where a label may go around its point, tried in this order: (name, dx, dy) in points from the point to the
# label's anchor, with the anchor's alignment; the names are plotly's `textposition`s.
_SPOTS = (
    ("top right", 4, 3, "left", "bottom"),
    ("bottom right", 4, -3, "left", "top"),
    ("top left", -4, 3, "right", "bottom"),
    ("bottom left", -4, -3, "right", "top"),
    ("top center", 0, 6, "center", "bottom"),
    ("bottom center", 0, -6, "center", "top"),
)
_FONT_PT = 7.5


@dataclass(frozen=True)
class PlotPoint:
    """One trial as a panel draws it: at (`x`, `y`), in `category` (`_NAMES`), with `label` at `spot` (`_SPOTS`).

    `clipped`: its cost lies beyond the panel's robust axis (`PanelView.hi`), so it is drawn at the axis' edge
    and its label carries its value. `loaded`: a latency measured under load (noisy)."""

    number: int
    x: float
    y: float
    value: float
    category: str
    label: str
    spot: str
    clipped: bool = False
    loaded: bool = False


@dataclass(frozen=True)
class PanelView:
    """What one panel shows: its points (front first), the uniform trials among them, and the axis' upper end
    (`hi`, None for the automatic range; set when some costs are clipped as outliers)."""

    points: tuple[PlotPoint, ...]
    uniform: tuple[int, ...]
    hi: float | None


def robust_limit(values, budget: float | None = None) -> float | None:
    """The upper end of a cost axis that one noisy outlier cannot flatten: the larger of 3 x the median and the
    median plus 8 median absolute deviations (both hold even when a quarter of the values are outliers), widened to
    the budget; None when no value lies beyond it (the automatic range is fine) or there are fewer than 4 values.

    Example:
        >>> robust_limit([57.0, 145.0, 150.0, 2561.0])
        545.48
        >>> robust_limit([57.0, 60.0, 88.0, 145.0]) is None
        True
    """
    xs = sorted(v for v in values if v is not None and math.isfinite(v))
    if len(xs) < 4:
        return None
    med = statistics.median(xs)
    mad = statistics.median(abs(x - med) for x in xs)
    fence = max(3 * med, med + 8 * mad)
    if budget is not None:
        fence = max(fence, budget)
    return round(fence * 1.05, 2) if xs[-1] > fence else None


def panel_view(info: ParetoInfo, index: int, size_pt=(420.0, 330.0), lims=None) -> PanelView:
    """The points of panel `index` of `info.panels`, their categories, the robust axis and label spots.

    Categories: `front` (the panel's own front, `Panel.curve`), `front3` (on the three-objective front but beaten
    in this panel), `dominated`, `infeasible` (completed over budget). Labels are trial numbers (with the value
    when clipped, with `LOAD_MARK` for a latency measured under load), placed greedily, front first, where they
    overlap no other label and no point (`place_labels`) on an axes of `size_pt` points whose data limits are
    `lims` ((x0, x1), (y0, y1); default: the points' range with a margin).
    """
    panel = info.panels[index]
    a = panel.attr
    curve = set(panel.curve)
    rows = []
    for category, recs in (("infeasible", info.infeasible), ("dominated", info.dominated), ("front", info.front)):
        for r in recs:
            if r.map50_95 is None or getattr(r, a) is None:
                continue
            cat = "front" if r.number in curve else ("front3" if category == "front" else category)
            rows.append((cat, r))
    drawn = {r.number for _, r in rows}
    rows += [("infeasible", r) for r in info.uniform
             if r.number not in drawn and r.map50_95 is not None and getattr(r, a) is not None]
    order = {"front": 0, "front3": 1, "dominated": 2, "infeasible": 3}
    rows.sort(key=lambda cr: (order[cr[0]], cr[1].number))
    hi = robust_limit([getattr(r, a) for _, r in rows], panel.budget) if a == "latency_ms" else None
    points = []
    for cat, r in rows:
        v = getattr(r, a)
        loaded = a == "latency_ms" and latency_under_load(r)
        clipped = hi is not None and v > hi
        label = str(r.number) + (LOAD_MARK if loaded else "")
        if clipped:
            label += f" ({cost_text(v)} {panel.unit})"
        points.append(PlotPoint(r.number, hi if clipped else v, r.map50_95, v, cat, label, "", clipped, loaded))
    spots = place_labels([(p.x, p.y) for p in points], [p.label for p in points], size_pt, lims)
    points = [PlotPoint(**{**p.__dict__, "spot": s}) for p, s in zip(points, spots)]
    uniform = tuple(r.number for r in info.uniform if r.number in {p.number for p in points})
    return PanelView(tuple(points), uniform, hi)


def place_labels(xy, labels, size_pt=(420.0, 330.0), lims=None) -> list[str]:
    """A spot (`_SPOTS` name) for each label, greedily in the order given: the first spot whose box overlaps no
    label placed before and no point, else the one overlapping least. Boxes are estimated from the text length at
    `_FONT_PT` on an axes of `size_pt` points with data limits `lims` (default: the points' range plus 5%).

    Example:
        >>> place_labels([(0.0, 0.0), (0.0, 0.0)], ["1", "2"])
        ['top right', 'bottom right']
    """
    if not xy:
        return []
    if lims is None:
        lims = tuple(_padded([p[i] for p in xy]) for i in (0, 1))
    (x0, x1), (y0, y1) = lims
    w, h = size_pt

    def to_pt(x, y):
        return ((x - x0) / ((x1 - x0) or 1) * w, (y - y0) / ((y1 - y0) or 1) * h)

    pts = [to_pt(*p) for p in xy]
    marks = [(px - 3, py - 3, px + 3, py + 3) for px, py in pts]
    placed = []
    out = []
    for (px, py), text in zip(pts, labels):
        tw, th = 0.6 * _FONT_PT * len(text) + 2, _FONT_PT + 2
        best = None
        for name, dx, dy, ha, va in _SPOTS:
            left = px + dx - {"left": 0, "right": tw, "center": tw / 2}[ha]
            bottom = py + dy - {"bottom": 0, "top": th}[va]
            box = (left, bottom, left + tw, bottom + th)
            cost = sum(_overlap(box, b) for b in placed) + 0.5 * sum(_overlap(box, m) for m in marks)
            cost += 2 * (max(0, -box[0]) + max(0, box[2] - w) + max(0, -box[1]) + max(0, box[3] - h)) * th
            if best is None or cost < best[0] - 1e-9:
                best = (cost, name, box)
            if cost == 0:
                break
        placed.append(best[2])
        out.append(best[1])
    return out


def _overlap(a, b) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _padded(values, frac=0.05):
    lo, hi = min(values), max(values)
    pad = (hi - lo) * frac or abs(hi) * frac or 1.0
    return lo - pad, hi + pad


def _title(info: ParetoInfo) -> tuple[str, str]:
    sub = f"{info.budget_text()}  |  {info.counts_text()}"
    if info.unfinished:
        sub += "  (in progress)"
    return info.headline(), sub


def _spot(name):
    return next(s for s in _SPOTS if s[0] == name)


def plot_pareto_png(info: ParetoInfo, path) -> Path:
    """Two panels, mAP50-95 against GFLOPs and against latency, each with its own front (red, joined by the
    trade-off line); members of the three-objective front beaten in a panel hollow; dominated trials grey; every
    point labelled with its trial number; the uniform baseline as a star; budgets as dashed lines; latencies far
    above the rest (noise) drawn at the axis' edge with their value; each score's standard error over validation
    subsets (MAP50_95_SE) as a grey error bar.

    Drawn on a bare Agg canvas (no pyplot, no global backend switch), so it is safe inside any process.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(14, 6.4), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    title, sub = _title(info)
    fig.suptitle(f"{title}\n{sub}", fontsize=10.5)
    by_number = {r.number: r for r in info.records}
    views = [panel_view(info, i) for i in range(len(info.panels))]
    for i, (ax, panel, view) in enumerate(zip(axes, info.panels, views)):
        _draw_panel(ax, info, panel, view, by_number)
        if i == 0:
            ax.set_ylabel(f"{info.figures()[1]} (search proxy)")
    fig.canvas.draw()  # fix the layout, then place labels on the final axes
    fig.set_layout_engine("none")
    for i, (ax, view) in enumerate(zip(axes, views)):
        box = ax.get_window_extent()
        size = (box.width * 72 / fig.dpi, box.height * 72 / fig.dpi)
        view = panel_view(info, i, size, (ax.get_xlim(), ax.get_ylim()))
        best = info.best.number if info.best else None
        for p in view.points:
            _, dx, dy, ha, va = _spot(p.spot)
            ax.annotate(p.label, (p.x, p.y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                        fontsize=_FONT_PT, color=_LABEL_COLOUR[p.category], zorder=6,
                        fontweight="bold" if p.number == best else "normal")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _draw_panel(ax, info, panel, view, by_number) -> None:
    a = panel.attr
    bars = [(p, by_number[p.number].map50_95_se) for p in view.points]
    bars = [(p, se) for p, se in bars if se is not None]
    if bars:  # how far each score would move with other validation images (MAP50_95_SE)
        ax.errorbar([p.x for p, _ in bars], [p.y for p, _ in bars], yerr=[se for _, se in bars], fmt="none",
                    ecolor="0.6", elinewidth=0.8, alpha=0.7, zorder=1, label="± SE over validation subsets")
    for key, kw in (
        ("infeasible", dict(marker="x", s=22, linewidths=1.0)),
        ("dominated", dict(marker="o", s=20, edgecolors="none")),
        ("front3", dict(marker="o", s=40, facecolors="white", linewidths=1.2, zorder=4)),
        ("front", dict(marker="o", s=50, edgecolors="black", linewidths=0.6, zorder=4)),
    ):
        pts = [p for p in view.points if p.category == key and not p.clipped]
        if pts:
            colour = {"edgecolors": _STYLE[key]} if key == "front3" else {"color": _STYLE[key]}
            ax.scatter([p.x for p in pts], [p.y for p in pts], **colour, **kw,
                       label=f"{_NAMES[key]} ({len(pts)})")
    clipped = [p for p in view.points if p.clipped]
    if clipped:
        ax.scatter([p.x for p in clipped], [p.y for p in clipped], marker=">", s=45, color="0.35", zorder=5,
                   label=f"beyond the axis, value in the label ({len(clipped)})")
    curve = [by_number[n] for n in panel.curve]
    if len(curve) > 1:
        ax.step([getattr(r, a) for r in curve], [r.map50_95 for r in curve], where="post", color=_STYLE["front"],
                lw=1.1, alpha=0.6, zorder=3)
    at = {p.number: p for p in view.points}
    for n in view.uniform:
        p = at[n]
        ax.scatter([p.x], [p.y], marker="*", s=260, color=_STYLE["uniform"], edgecolors="black", linewidths=0.8,
                   zorder=5, label=f"uniform baseline ({n})")
    if any(p.loaded for p in view.points):
        ax.text(0.01, 0.01, f"{LOAD_MARK} latency measured under load: noisy", transform=ax.transAxes, fontsize=7.5,
                color="0.3", va="bottom")
    drawn = bool(view.points)
    if panel.budget is not None:
        ax.axvline(panel.budget, color=_STYLE["budget"], ls="--", lw=1.3, zorder=2,
                   label=f"budget {cost_text(panel.budget)} {panel.unit}")
    if view.hi is not None:
        lo, _ = ax.get_xlim()
        ax.set_xlim(lo, view.hi * 1.03)
    if panel.budget is not None:
        lo, hi = ax.get_xlim()
        if drawn and hi > panel.budget:
            ax.axvspan(panel.budget, hi, color="0.5", alpha=0.08, lw=0)
            ax.set_xlim(lo, hi)
    if drawn and not info.front:
        ax.text(0.5, 0.97, "no feasible trial yet", transform=ax.transAxes, ha="center", va="top", color="0.3")
    if not drawn:
        what = f"no trial with a {panel.unit} value" if info.counts.get("COMPLETE") else "no completed trial yet"
        ax.text(0.5, 0.5, what, transform=ax.transAxes, ha="center", va="center", color="0.4")
    base = f" (unpruned: {cost_text(panel.base)})" if panel.base is not None else ""
    ax.set_xlabel(panel.label + base)
    ax.grid(True, alpha=0.3)
    if drawn or panel.budget is not None:
        ax.legend(fontsize=7.5, loc="lower right", title="labels: trial numbers (apply --trial N)",
                  title_fontsize=7.5, framealpha=0.85)


def write_plotly_js(folder) -> Path:
    """`plotly.min.js` in `folder` (written once, atomically; kept when it is already the installed version's),
    the one copy of the library every `pareto.html` there loads."""
    from plotly.offline import get_plotlyjs

    path = Path(folder) / PLOTLY_JS
    js = get_plotlyjs()
    if not (path.is_file() and path.stat().st_size == len(js.encode())):
        with atomic_output(path) as tmp:
            tmp.write_text(js)
    return path


def plot_pareto_html(info: ParetoInfo, path) -> Path:
    """The interactive version of `plot_pareto_png`: an HTML file that loads plotly.js from `plotly.min.js`
    beside it (written there once per folder by `write_plotly_js`; no CDN, so it opens offline).

    Hovering a point shows its trial number, kind, mAP50-95 (± its standard error), mAP50, GFLOPs, params, latency
    (± spread, under load) and status; error bars show the scores' standard errors as in `plot_pareto_png`.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    path = Path(path)
    title, sub = _title(info)
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06,
                        x_title=None, subplot_titles=[p.label for p in info.panels])
    by_number = {r.number: r for r in info.records}
    hover = ("<b>trial %{customdata[0]}</b> (%{customdata[1]})<br>mAP50-95 %{customdata[2]}<br>"
             "mAP50 %{customdata[3]}<br>GFLOPs %{customdata[4]}<br>params %{customdata[5]}<br>"
             "latency %{customdata[6]} ms<br>%{customdata[7]}<extra></extra>")
    shown = set()
    for col, panel in enumerate(info.panels, start=1):
        view = panel_view(info, col - 1, size_pt=(430.0, 400.0))
        a = panel.attr
        for key, marker in (
            ("infeasible", dict(symbol="x", size=7)),
            ("dominated", dict(symbol="circle", size=7)),
            ("front3", dict(symbol="circle-open", size=9, line=dict(width=2))),
            ("front", dict(symbol="circle", size=10, line=dict(color="black", width=1))),
        ):
            pts = [p for p in view.points if p.category == key]
            if not pts:
                continue
            fig.add_trace(go.Scatter(
                x=[p.x for p in pts], y=[p.y for p in pts], mode="markers+text",
                text=[p.label for p in pts], textposition=[p.spot for p in pts],
                textfont=dict(size=10, color=_LABEL_COLOUR[key]),
                marker=dict(color=_STYLE[key],
                            **{**marker, "symbol": ["triangle-right" if p.clipped else marker["symbol"]
                                                    for p in pts]}),
                name=_NAMES[key], legendgroup=key, showlegend=key not in shown,
                customdata=[_hover_row(by_number[p.number], info) for p in pts], hovertemplate=hover,
                error_y=_error_bars([by_number[p.number].map50_95_se for p in pts]),
            ), row=1, col=col)
            shown.add(key)
        at = {p.number: p for p in view.points}
        for n in view.uniform:
            fig.add_trace(go.Scatter(
                x=[at[n].x], y=[at[n].y], mode="markers", hoverinfo="skip", name=f"uniform baseline ({n})",
                marker=dict(color=_STYLE["uniform"], symbol="star", size=18, line=dict(color="black", width=1)),
                legendgroup="uniform", showlegend=col == 1,
            ), row=1, col=col)
        curve = [by_number[n] for n in panel.curve]
        if len(curve) > 1:
            fig.add_trace(go.Scatter(
                x=[getattr(r, a) for r in curve], y=[r.map50_95 for r in curve], mode="lines",
                line=dict(color=_STYLE["front"], width=1, shape="hv"), opacity=0.6, hoverinfo="skip",
                name="trade-off", legendgroup="front", showlegend=False,
            ), row=1, col=col)
        if panel.budget is not None:
            fig.add_vline(x=panel.budget, line=dict(color=_STYLE["budget"], dash="dash", width=1.5),
                          annotation_text=f"budget {cost_text(panel.budget)} {panel.unit}",
                          annotation_position="top left", row=1, col=col)
        if view.hi is not None:
            lo = min(p.x for p in view.points)
            fig.update_xaxes(range=[lo - 0.05 * (view.hi - lo), view.hi * 1.05], row=1, col=col)
        base = f" (unpruned: {cost_text(panel.base)})" if panel.base is not None else ""
        note = f"<br>{LOAD_MARK} latency measured under load: noisy" if any(p.loaded for p in view.points) else ""
        fig.update_xaxes(title_text=_esc(panel.label + base) + note, row=1, col=col)
    fig.update_yaxes(title_text=f"{info.figures()[1]} (search proxy)", row=1, col=1)
    if not any(p.map50_95 is not None and getattr(p, a.attr) is not None for a in info.panels for p in info.records):
        fig.add_annotation(text="no completed trial yet", xref="paper", yref="paper", x=0.5, y=0.5,
                           showarrow=False)
    fig.update_layout(title=dict(text=f"{_esc(title)}<br><sup>{_esc(sub)}</sup>"), template="plotly_white",
                      height=600, legend=dict(title="labels: trial numbers (apply --trial N)"))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_plotly_js(path.parent)
    with atomic_output(path) as tmp:
        fig.write_html(tmp, include_plotlyjs=PLOTLY_JS, include_mathjax=False, full_html=True)
    return path


def _error_bars(ses: list) -> dict | None:
    """Plotly's error bars for the scores' standard errors (MAP50_95_SE), None when no score has one."""
    if all(se is None for se in ses):
        return None
    return dict(type="data", array=[se or 0.0 for se in ses], visible=True, thickness=1, width=0,
                color="rgba(110, 110, 110, 0.6)")


def _hover_row(r: TrialRecord, info: ParetoInfo) -> list:
    if r.number in info.front_numbers:
        status = "on the Pareto front" + (" (best mAP50-95)" if info.best and r.number == info.best.number else "")
    elif r.feasible:
        status = "feasible, dominated"
    else:
        status = over_budget_text(r, info)
    latency = fixed_text(r.latency_ms, 2)
    spread = latency_spread(r)
    if r.latency_ms is not None and spread is not None:
        latency += f" ± {spread:.2f}"
    if r.latency_ms is not None and latency_under_load(r):
        latency += " (measured under load: noisy)"
    return [r.number, r.kind, score_text(r.map50_95, r.map50_95_se), fixed_text(r.map50, 4), fixed_text(r.gflops, 3),
            params_text(r.params), latency, _esc(status)]


def _esc(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
