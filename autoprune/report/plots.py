"""The Pareto front drawn: `pareto.png` (matplotlib on a bare Agg canvas, no pyplot state) and `pareto.html`
(plotly, plotly.js embedded, no CDN), two panels each: mAP50-95 against GFLOPs and against latency."""

from __future__ import annotations

from pathlib import Path

from autoprune.report.atomic import atomic_output
from autoprune.report.front import ParetoInfo
from autoprune.report.tables import over_budget_text
from autoprune.report.text import cost_text, fixed_text, params_text
from autoprune.search.records import TrialRecord

_STYLE = {  # category -> matplotlib colour; the HTML uses the same
    "infeasible": "#9a9a9a",
    "dominated": "#7aa6d6",
    "front": "#d62728",
    "uniform": "#ffbf00",
    "budget": "#2b8a3e",
}


def _title(info: ParetoInfo) -> tuple[str, str]:
    sub = f"{info.budget_text()}  |  {info.counts_text()}"
    if info.unfinished:
        sub += "  (in progress)"
    return info.headline(), sub


def _points(records, attr):
    return [r for r in records if r.map50_95 is not None and getattr(r, attr) is not None]


def plot_pareto_png(info: ParetoInfo, path) -> Path:
    """Two panels, mAP50-95 against GFLOPs and against latency: every completed trial, the front highlighted and
    labelled with trial numbers, the trade-off line, the uniform baseline as a star, budgets as dashed lines.

    Drawn on a bare Agg canvas (no pyplot, no global backend switch), so it is safe inside any process.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(13, 5.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    title, sub = _title(info)
    fig.suptitle(f"{title}\n{sub}", fontsize=10.5)
    by_number = {r.number: r for r in info.records}
    for i, (ax, panel) in enumerate(zip(axes, info.panels)):
        a = panel.attr
        drawn = False
        for key, recs, kw in (
            ("infeasible", info.infeasible, dict(marker="x", s=22, linewidths=1.0, label="over budget")),
            ("dominated", info.dominated, dict(marker="o", s=20, alpha=0.75, edgecolors="none",
                                               label="feasible, dominated")),
            ("front", info.front, dict(marker="o", s=50, edgecolors="black", linewidths=0.6, zorder=4,
                                       label="Pareto front")),
        ):
            pts = _points(recs, a)
            if pts:
                drawn = True
                ax.scatter([getattr(r, a) for r in pts], [r.map50_95 for r in pts], color=_STYLE[key],
                           **{**kw, "label": f"{kw['label']} ({len(pts)})"})
        curve = [by_number[n] for n in panel.curve]
        if len(curve) > 1:
            ax.step([getattr(r, a) for r in curve], [r.map50_95 for r in curve], where="post", color=_STYLE["front"],
                    lw=1.1, alpha=0.6, zorder=3)
        for r in _points(info.front, a):
            bold = info.best is not None and r.number == info.best.number
            ax.annotate(str(r.number), (getattr(r, a), r.map50_95), xytext=(4, 4), textcoords="offset points",
                        fontsize=8, fontweight="bold" if bold else "normal", zorder=6)
        for r in _points(info.uniform, a):
            drawn = True
            ax.scatter([getattr(r, a)], [r.map50_95], marker="*", s=260, color=_STYLE["uniform"], edgecolors="black",
                       linewidths=0.8, zorder=5, label=f"uniform baseline ({r.number})")
            if r.number not in info.front_numbers:
                ax.annotate(str(r.number), (getattr(r, a), r.map50_95), xytext=(6, -11), textcoords="offset points",
                            fontsize=8, zorder=6)
        if panel.budget is not None:
            ax.axvline(panel.budget, color=_STYLE["budget"], ls="--", lw=1.3, zorder=2,
                       label=f"budget {cost_text(panel.budget)} {panel.unit}")
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
        if i == 0:
            ax.set_ylabel("mAP50-95 (search proxy)")
        if drawn or panel.budget is not None:
            ax.legend(fontsize=8, loc="best", title="labels: trial numbers (apply --trial N)",
                      title_fontsize=7.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_pareto_html(info: ParetoInfo, path) -> Path:
    """The interactive version of `plot_pareto_png`: one self-contained HTML file (plotly.js embedded, no CDN).

    Hovering a point shows its trial number, kind, mAP50-95, mAP50, GFLOPs, params, latency and status.
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
    for col, panel in enumerate(info.panels, start=1):
        a = panel.attr
        first = col == 1
        for key, recs, name, marker in (
            ("infeasible", info.infeasible, "over budget", dict(symbol="x", size=7)),
            ("dominated", info.dominated, "feasible, dominated", dict(symbol="circle", size=7, opacity=0.75)),
            ("front", info.front, "Pareto front", dict(symbol="circle", size=10, line=dict(color="black", width=1))),
            ("uniform", [r for r in info.uniform], "uniform baseline",
             dict(symbol="star", size=18, line=dict(color="black", width=1))),
        ):
            pts = _points(recs, a)
            if not pts:
                continue
            labelled = key in ("front", "uniform")
            fig.add_trace(go.Scatter(
                x=[getattr(r, a) for r in pts], y=[r.map50_95 for r in pts],
                mode="markers+text" if labelled else "markers",
                text=[f"#{r.number}" for r in pts] if labelled else None, textposition="top right",
                marker=dict(color=_STYLE[key], **marker), name=f"{name} ({len(pts)})", legendgroup=key,
                showlegend=first, customdata=[_hover_row(r, info) for r in pts], hovertemplate=hover,
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
        base = f" (unpruned: {cost_text(panel.base)})" if panel.base is not None else ""
        fig.update_xaxes(title_text=panel.label + base, row=1, col=col)
    fig.update_yaxes(title_text="mAP50-95 (search proxy)", row=1, col=1)
    if not any(_points(info.records, p.attr) for p in info.panels):
        fig.add_annotation(text="no completed trial yet", xref="paper", yref="paper", x=0.5, y=0.5,
                           showarrow=False)
    fig.update_layout(title=dict(text=f"{_esc(title)}<br><sup>{_esc(sub)}</sup>"), template="plotly_white",
                      height=560, legend=dict(title="labels: trial numbers (apply --trial N)"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        fig.write_html(tmp, include_plotlyjs=True, include_mathjax=False, full_html=True)
    return path


def _hover_row(r: TrialRecord, info: ParetoInfo) -> list:
    if r.number in info.front_numbers:
        status = "on the Pareto front" + (" (best mAP50-95)" if info.best and r.number == info.best.number else "")
    elif r.feasible:
        status = "feasible, dominated"
    else:
        status = over_budget_text(r, info)
    return [r.number, r.kind, fixed_text(r.map50_95, 4), fixed_text(r.map50, 4), fixed_text(r.gflops, 3),
            params_text(r.params), fixed_text(r.latency_ms, 2), _esc(status)]


def _esc(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
