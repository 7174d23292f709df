"""Figure builders: plain data in, a plotly `go.Figure` out (pure; no widget, no state).

The app shows them through `workbench.ui.live.FigureSlot`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

#: One colour per role (colour-blind safe, Tableau 10), used by every figure.
ROLE_COLORS = {"front-end": "#9c755f", "attention": "#4e79a7", "attention scores": "#a0cbe8",
               "ffn": "#f28e2b", "conv": "#59a14f", "norm": "#bab0ac", "head": "#b07aa1",
               "other": "#79706e"}
HOT_COLOR = "#e15759"
#: No plotly template: plotly.js's own defaults look clean, and validating a template costs
#: ~30 ms per figure (160 ms per FigureWidget), which the app pays on every redraw.
TEMPLATE = "none"
BASE_LAYOUT = dict(margin=dict(l=10, r=10, t=36, b=10), height=320, font=dict(size=11),
                   plot_bgcolor="white", xaxis=dict(gridcolor="#eee", automargin=True),
                   yaxis=dict(gridcolor="#eee", automargin=True))


def new_figure(*traces: go.BaseTraceType) -> go.Figure:
    return go.Figure(data=list(traces), layout={"template": TEMPLATE})


def _layout(fig: go.Figure, title: str, **extra: object) -> go.Figure:
    fig.update_layout(**BASE_LAYOUT, title=dict(text=title, font=dict(size=13)))
    fig.update_layout(**extra)
    return fig


def layer_bars(paths: Sequence[str], values: Sequence[float], roles: Sequence[str],
               hot: Sequence[str], title: str, unit: str) -> go.Figure:
    """Horizontal bars, one per layer in model order; hotspots outlined in red."""
    hot_set = set(hot)
    colors = [ROLE_COLORS.get(r, ROLE_COLORS["other"]) for r in roles]
    lines = [HOT_COLOR if p in hot_set else "rgba(0,0,0,0)" for p in paths]
    fig = new_figure(go.Bar(
        y=list(paths), x=list(values), orientation="h", marker=dict(
            color=colors, line=dict(color=lines, width=2)),
        customdata=list(roles),
        hovertemplate="%{y}<br>%{x:.4g} " + unit + "<br>%{customdata}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=9))
    return _layout(fig, title, height=max(320, 14 * len(paths) + 60), xaxis_title=unit,
                   showlegend=False)


def role_bars(totals: Mapping[str, float], title: str, unit: str) -> go.Figure:
    """One bar per role."""
    roles = list(totals)
    fig = new_figure(go.Bar(x=roles, y=[totals[r] for r in roles],
                           marker_color=[ROLE_COLORS.get(r, ROLE_COLORS["other"]) for r in roles],
                           hovertemplate="%{x}: %{y:.4g} " + unit + "<extra></extra>"))
    return _layout(fig, title, yaxis_title=unit, showlegend=False)


def shares_vs_length(shares: Mapping[float, Mapping[str, float]], current: float,
                     title: str) -> go.Figure:
    """Stacked shares per role over audio length, with the selected length marked."""
    seconds = sorted(shares)
    roles = list(dict.fromkeys(r for s in seconds for r in shares[s]))
    fig = new_figure()
    for role in roles:
        fig.add_trace(go.Scatter(
            x=seconds, y=[100 * shares[s].get(role, 0.0) for s in seconds], name=role,
            stackgroup="one", mode="lines",
            line=dict(width=0.5, color=ROLE_COLORS.get(role, ROLE_COLORS["other"])),
            hovertemplate=role + ": %{y:.1f} %<extra></extra>"))
    fig.add_vline(x=current, line=dict(color="black", dash="dot", width=1))
    return _layout(fig, title, xaxis_title="audio length (s)", yaxis_title="share of MACs (%)",
                   yaxis_range=[0, 100])


def tradeoff(xs: Sequence[float], ys: Sequence[float], labels: Sequence[str],
             measured: Sequence[bool], front: Sequence[int], current: int | None,
             x_title: str, title: str, error_y: Sequence[float] | None = None,
             baselines: Sequence[bool] | None = None,
             elsewhere: Sequence[bool] | None = None) -> go.Figure:
    """Every evaluated plan as a point (filled: measured, hollow: quick estimate), the Pareto
    front as a line, the current plan as a star. Trace 0 holds the points, in history order, so
    a click's point index is the history index. `baselines[i]`: point i is a baseline model
    itself (a diamond); `elsewhere[i]`: it was measured on another baseline than the current
    one (grey)."""
    n = len(xs)
    base = baselines if baselines is not None else [False] * n
    other = elsewhere if elsewhere is not None else [False] * n
    symbols = [("diamond" if b else "circle") + ("" if m else "-open")
               for m, b in zip(measured, base)]
    colors = ["#bab0ac" if o else "#4e79a7" for o in other]
    fig = new_figure()
    fig.add_trace(go.Scatter(
        x=list(xs), y=list(ys), mode="markers", name="evaluated plans", text=list(labels),
        marker=dict(size=[14 if b else 10 for b in base], symbol=symbols, color=colors),
        error_y=dict(type="data", array=list(error_y), visible=True, thickness=1)
        if error_y is not None else None,
        hovertemplate="%{text}<br>%{x:.4g}, WER %{y:.4f}<extra>click to restore</extra>"))
    fx = [xs[i] for i in front]
    fy = [ys[i] for i in front]
    fig.add_trace(go.Scatter(x=fx, y=fy, mode="lines", name="Pareto front",
                             line=dict(color=HOT_COLOR, shape="hv"), hoverinfo="skip"))
    cx = [xs[current]] if current is not None else []
    cy = [ys[current]] if current is not None else []
    fig.add_trace(go.Scatter(x=cx, y=cy, mode="markers", name="current plan",
                             marker=dict(symbol="star", size=16, color="#f28e2b"),
                             hoverinfo="skip"))
    return _layout(fig, title, xaxis_title=x_title, yaxis_title="WER", clickmode="event",
                   legend=dict(orientation="h", y=-0.25))


def recovery_curve(steps: Sequence[int], losses: Sequence[float], est_steps: Sequence[int],
                   est_wers: Sequence[float], est_label: str,
                   measured: tuple[int, float, str] | None = None,
                   title: str = "recovery") -> go.Figure:
    """Training loss per step (left axis) and WER per estimate (right axis: the estimates on a
    small held-out subset as a line with markers; `measured` = (step, WER, label) of the result
    on the whole set as a star)."""
    fig = new_figure(
        go.Scatter(x=list(steps), y=list(losses), mode="lines", name="training loss",
                   line=dict(color="#4e79a7", width=1.5),
                   hovertemplate="step %{x}: loss %{y:.4f}<extra></extra>"),
        go.Scatter(x=list(est_steps), y=list(est_wers), mode="lines+markers", name=est_label,
                   yaxis="y2", line=dict(color=HOT_COLOR), marker=dict(size=7),
                   hovertemplate="step %{x}: WER %{y:.4f}<extra>" + est_label + "</extra>"))
    if measured is not None:
        step, wer, label = measured
        fig.add_trace(go.Scatter(x=[step], y=[wer], mode="markers", name=label, yaxis="y2",
                                 marker=dict(symbol="star", size=15, color="#f28e2b"),
                                 hovertemplate="WER %{y:.4f}<extra>" + label + "</extra>"))
    return _layout(fig, title, xaxis_title="training step",
                   yaxis=dict(title="loss", gridcolor="#eee", automargin=True, rangemode="tozero"),
                   yaxis2=dict(title="WER", overlaying="y", side="right", automargin=True,
                               rangemode="tozero", showgrid=False),
                   legend=dict(orientation="h", y=-0.3))


def heatmap(rows: Sequence[str], columns: Sequence[str], grid: Sequence[Sequence[float | None]],
            title: str, x_title: str, colorbar: str) -> go.Figure:
    """A rows x columns heat map (None cells blank)."""
    fig = new_figure(go.Heatmap(
        z=[list(r) for r in grid], x=list(columns), y=list(rows), colorscale="Reds",
        colorbar=dict(title=colorbar), hoverongaps=False,
        hovertemplate="%{y} @ %{x}: %{z:.4f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=9))
    fig.update_xaxes(type="category")
    return _layout(fig, title, xaxis_title=x_title, height=max(320, 16 * len(rows) + 80))


def importance_strip(scores: Sequence[Sequence[float]], rows: Sequence[str], title: str,
                     x_title: str) -> go.Figure:
    """Importance per head / neuron / channel, one row per module (higher = keep)."""
    fig = new_figure(go.Heatmap(z=[list(r) for r in scores], y=list(rows), colorscale="Viridis",
                               colorbar=dict(title="importance"),
                               hovertemplate="%{y} #%{x}: %{z:.4g}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=9))
    return _layout(fig, title, xaxis_title=x_title, height=max(220, 22 * len(rows) + 90))
