"""Figure builders for the lessons in notebooks/: plain data in, a plotly `go.Figure` out.

Pure (no widget, no state, no model run): every number a figure shows is passed in by the lesson,
which computed it with the workbench core. The only arithmetic here is for drawing (a cumulative
sum to plot an energy curve, the lines of a roofline). Colours and layout follow
`workbench.ui.figures`, so the lessons look like the app.

    grouped_bars      categories x series, optional error bars (e.g. fp32 vs int8 per device)
    stacked_bars      categories with stacked parts (e.g. simulated ms per role per device)
    lines             y over x for a few named series
    labeled_points    one point per item with its label (trade-offs: size vs WER)
    roofline          attainable throughput vs arithmetic intensity, layers as points
    weight_histogram  weights and the quantization grid they are rounded to
    spectrum          singular values and kept energy of a few layers, ranks marked
    masks             kept / removed weights of a few layers side by side
    measured_vs_predicted  prediction against measurement, y = x and an error band
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.ui.figures import BASE_LAYOUT, HOT_COLOR, ROLE_COLORS, TEMPLATE, new_figure

#: Series colours when the series are not roles (Tableau 10 order, colour-blind safe).
SERIES_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
                 "#ff9da7", "#9c755f", "#bab0ac")


def _color(name: str, i: int) -> str:
    return ROLE_COLORS.get(name, SERIES_COLORS[i % len(SERIES_COLORS)])


def _layout(fig: go.Figure, title: str, **extra: object) -> go.Figure:
    fig.update_layout(**BASE_LAYOUT, title=dict(text=title, font=dict(size=13)))
    fig.update_layout(**extra)
    return fig


def grouped_bars(categories: Sequence[str], series: Mapping[str, Sequence[float]], title: str,
                 y_title: str, errors: Mapping[str, Sequence[float]] | None = None,
                 text_format: str = ".3g") -> go.Figure:
    """One group of bars per category, one bar per series; `errors` are +- half-widths."""
    fig = new_figure()
    for i, (name, values) in enumerate(series.items()):
        err = None if errors is None or name not in errors else dict(
            type="data", array=list(errors[name]), visible=True, thickness=1)
        fig.add_trace(go.Bar(x=list(categories), y=list(values), name=name, error_y=err,
                             marker_color=_color(name, i), texttemplate=f"%{{y:{text_format}}}",
                             textposition="outside",
                             hovertemplate=f"{name}<br>%{{x}}: %{{y:.4g}} {y_title}"
                                           "<extra></extra>"))
    return _layout(fig, title, barmode="group", yaxis_title=y_title,
                   legend=dict(orientation="h", y=-0.2))


def stacked_bars(categories: Sequence[str], parts: Mapping[str, Sequence[float]], title: str,
                 y_title: str, total_errors: Sequence[float] | None = None) -> go.Figure:
    """Stacked bars (parts coloured by role when the part names are roles); `total_errors` draws
    a +- half-width around each bar's total."""
    fig = new_figure()
    for i, (name, values) in enumerate(parts.items()):
        fig.add_trace(go.Bar(x=list(categories), y=list(values), name=name,
                             marker_color=_color(name, i),
                             hovertemplate=f"{name}<br>%{{x}}: %{{y:.4g}} {y_title}"
                                           "<extra></extra>"))
    if total_errors is not None:
        totals = [sum(v[j] for v in parts.values()) for j in range(len(categories))]
        fig.add_trace(go.Scatter(
            x=list(categories), y=totals, mode="markers", name="total +- error band",
            marker=dict(color="black", size=6, symbol="line-ew-open"),
            error_y=dict(type="data", array=list(total_errors), visible=True, thickness=1.5,
                         color="black"),
            hovertemplate="total %{y:.4g} " + y_title + "<extra></extra>"))
    return _layout(fig, title, barmode="stack", yaxis_title=y_title,
                   legend=dict(orientation="h", y=-0.2))


def lines(x: Sequence[float], series: Mapping[str, Sequence[float]], title: str, x_title: str,
          y_title: str, log_y: bool = False, marks: Mapping[str, float] | None = None
          ) -> go.Figure:
    """A line per series over the same x; `marks` draws labelled vertical lines at x values."""
    fig = new_figure()
    for i, (name, values) in enumerate(series.items()):
        fig.add_trace(go.Scatter(x=list(x), y=list(values), name=name, mode="lines+markers",
                                 line=dict(color=_color(name, i)), marker=dict(size=5)))
    for label, at in (marks or {}).items():
        fig.add_vline(x=at, line=dict(color="black", dash="dot", width=1),
                      annotation_text=label, annotation_position="top")
    return _layout(fig, title, xaxis_title=x_title, yaxis_title=y_title,
                   yaxis_type="log" if log_y else "linear",
                   legend=dict(orientation="h", y=-0.25))


def labeled_points(xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], title: str,
                   x_title: str, y_title: str, error_y: Sequence[float] | None = None,
                   connect: bool = False, highlight: Sequence[int] = (),
                   show_labels: bool = True) -> go.Figure:
    """One marker per item, its label next to it (or on hover only when `show_labels` is
    False, for many points); `highlight` indices drawn in red."""
    hot = set(highlight)
    colors = [HOT_COLOR if i in hot else SERIES_COLORS[0] for i in range(len(xs))]
    mode = ("lines+markers" if connect else "markers") + ("+text" if show_labels else "")
    fig = new_figure(go.Scatter(
        x=list(xs), y=list(ys), text=list(labels), mode=mode, textposition="top center",
        textfont=dict(size=9), marker=dict(size=9 if show_labels else 5, color=colors),
        line=dict(color="#bbb", width=1),
        error_y=dict(type="data", array=list(error_y), visible=True, thickness=1)
        if error_y is not None else None,
        hovertemplate="%{text}<br>%{x:.4g}, %{y:.4g}<extra></extra>"))
    return _layout(fig, title, xaxis_title=x_title, yaxis_title=y_title, showlegend=False)


def roofline(intensity: Sequence[float], gflops: Sequence[float], labels: Sequence[str],
             roles: Sequence[str], ceilings: Mapping[str, float], bandwidth_gbs: float,
             title: str) -> go.Figure:
    """The roofline model (Williams, Waterman, Patterson 2009, CACM 52(4)): attainable GFLOP/s =
    min(peak, intensity x bandwidth), on log-log axes, with each layer as a point.

    intensity: FLOP per byte moved of each layer; gflops: the throughput each layer reaches
    (e.g. simulated FLOPs / simulated time); ceilings: name -> peak GFLOP/s (fp32, int8, ...).
    """
    finite = [v for v in intensity if v > 0] or [1.0]
    lo = min(min(finite), min(ceilings.values()) / bandwidth_gbs) / 3
    hi = max(max(finite), max(ceilings.values()) / bandwidth_gbs) * 3
    xs = np.geomspace(lo, hi, 64)
    fig = new_figure()
    floor = min([*(g for g in gflops if g > 0), *(lo * bandwidth_gbs,)]) / 2
    for i, (name, peak) in enumerate(ceilings.items()):
        fig.add_trace(go.Scatter(
            x=xs, y=np.minimum(peak, xs * bandwidth_gbs), mode="lines", name=f"roof: {name}",
            line=dict(color="black" if i == 0 else "#888", dash="solid" if i == 0 else "dash"),
            hovertemplate=f"{name} roof<br>%{{x:.3g}} FLOP/byte: %{{y:.4g}} GFLOP/s"
                          "<extra></extra>"))
        ridge = peak / bandwidth_gbs     # a trace, not a shape: shapes on log axes take log10 x
        fig.add_trace(go.Scatter(x=[ridge, ridge], y=[floor, peak], mode="lines",
                                 line=dict(color="#bbb", dash="dot", width=1), showlegend=False,
                                 hovertemplate=f"ridge point {name}: {ridge:.3g} FLOP/byte"
                                               "<extra></extra>"))
    for role in dict.fromkeys(roles):
        idx = [j for j, r in enumerate(roles) if r == role and intensity[j] > 0]
        fig.add_trace(go.Scatter(
            x=[intensity[j] for j in idx], y=[gflops[j] for j in idx],
            text=[labels[j] for j in idx], mode="markers", name=role,
            marker=dict(size=8, color=ROLE_COLORS.get(role, ROLE_COLORS["other"]),
                        line=dict(color="white", width=0.5)),
            hovertemplate="%{text}<br>%{x:.3g} FLOP/byte, %{y:.4g} GFLOP/s<extra></extra>"))
    return _layout(fig, title, xaxis_type="log", yaxis_type="log", height=420,
                   xaxis_title="arithmetic intensity (FLOP per byte moved)",
                   yaxis_title="GFLOP/s", legend=dict(orientation="h", y=-0.25))


def weight_histogram(weights: Sequence[float], levels: Sequence[float], title: str,
                     quantized: Sequence[float] | None = None, bins: int = 120) -> go.Figure:
    """Histogram of `weights` with a vertical line at every grid level they can be rounded to;
    `quantized` (the rounded weights) adds their histogram, a spike per level used."""
    w = np.asarray(weights, dtype=np.float64).ravel()
    fig = new_figure(go.Histogram(x=w, nbinsx=bins, name="weights", marker_color=SERIES_COLORS[0],
                                  opacity=0.75))
    if quantized is not None:
        fig.add_trace(go.Histogram(x=np.asarray(quantized, dtype=np.float64).ravel(),
                                   nbinsx=bins * 4, name="rounded to the grid",
                                   marker_color=SERIES_COLORS[1], opacity=0.6))
    grid_x: list[float | None] = []
    grid_y: list[float | None] = []
    for level in np.asarray(levels, dtype=np.float64).ravel():
        grid_x += [level, level, None]
        grid_y += [0.0, 1.0, None]
    fig.add_trace(go.Scatter(x=grid_x, y=grid_y, mode="lines", yaxis="y2",
                             name=f"grid ({len(levels)} levels)", hoverinfo="skip",
                             line=dict(color=HOT_COLOR, width=0.7)))
    return _layout(fig, title, barmode="overlay", xaxis_title="weight value", yaxis_title="count",
                   yaxis2=dict(overlaying="y", range=[0, 1], visible=False),
                   legend=dict(orientation="h", y=-0.25))


def spectrum(singular: Mapping[str, Sequence[float]], title: str,
             ranks: Mapping[str, int] | None = None, energy: float | None = None) -> go.Figure:
    """Left: singular values / the largest one (log y). Right: kept energy sum(s[:r]^2)/sum(s^2)
    against r. `ranks` marks a chosen rank per layer, `energy` the target energy line."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("singular values / largest",
                                                        "kept energy"))
    fig.update_layout(template=TEMPLATE)
    for i, (name, values) in enumerate(singular.items()):
        s = np.asarray(values, dtype=np.float64)
        r = np.arange(1, len(s) + 1)
        color = SERIES_COLORS[i % len(SERIES_COLORS)]
        kept = np.cumsum(s ** 2) / max(float(np.sum(s ** 2)), 1e-300)
        fig.add_trace(go.Scatter(x=r, y=s / max(s[0], 1e-300), name=name, mode="lines",
                                 line=dict(color=color), legendgroup=name), row=1, col=1)
        fig.add_trace(go.Scatter(x=r, y=kept, name=name, mode="lines", showlegend=False,
                                 line=dict(color=color), legendgroup=name), row=1, col=2)
        if ranks and name in ranks:
            k = min(max(ranks[name], 1), len(s))
            fig.add_trace(go.Scatter(x=[k], y=[kept[k - 1]], mode="markers", showlegend=False,
                                     marker=dict(color=color, size=9, symbol="diamond"),
                                     hovertemplate=f"{name}: rank {k}<extra></extra>"),
                          row=1, col=2)
    if energy is not None:
        fig.add_hline(y=energy, line=dict(color="black", dash="dot", width=1), row=1, col=2)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_xaxes(title_text="index (rank)")
    return _layout(fig, title, height=380, margin=dict(l=10, r=10, t=70, b=10),
                   legend=dict(orientation="h", y=-0.3))


def masks(grids: Mapping[str, np.ndarray], title: str) -> go.Figure:
    """Kept (1) / removed (0) weights of a few matrices side by side (rows = output units)."""
    names = list(grids)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names,
                        horizontal_spacing=0.04)
    fig.update_layout(template=TEMPLATE)
    for i, name in enumerate(names):
        fig.add_trace(go.Heatmap(z=np.asarray(grids[name], dtype=np.float32), zmin=0, zmax=1,
                                 colorscale=[[0, "#f0f0f0"], [1, SERIES_COLORS[0]]],
                                 showscale=False,
                                 hovertemplate="row %{y}, col %{x}: %{z:.0f}<extra></extra>"),
                      row=1, col=i + 1)
        fig.update_yaxes(autorange="reversed", row=1, col=i + 1)
    return _layout(fig, title, height=360, margin=dict(l=10, r=10, t=70, b=10))


def measured_vs_predicted(measured: Sequence[float], predicted: Sequence[float],
                          labels: Sequence[str], band_pct: float, title: str,
                          unit: str = "ms") -> go.Figure:
    """Each point a measurement and its prediction; y = x, and +-band_pct around it."""
    top = max([*measured, *predicted, 1e-9]) * 1.1
    xs = [0.0, top]
    fig = new_figure(
        go.Scatter(x=xs, y=xs, mode="lines", name="prediction = measurement",
                   line=dict(color="black", width=1)),
        go.Scatter(x=xs, y=[x * (1 + band_pct / 100) for x in xs], mode="lines",
                   name=f"+-{band_pct:.0f} % band", line=dict(color="#999", dash="dot")),
        go.Scatter(x=xs, y=[x * (1 - band_pct / 100) for x in xs], mode="lines",
                   showlegend=False, line=dict(color="#999", dash="dot")),
        go.Scatter(x=list(measured), y=list(predicted), text=list(labels), mode="markers",
                   name="measured points", marker=dict(size=9, color=SERIES_COLORS[0]),
                   hovertemplate="%{text}<br>measured %{x:.4g}, predicted %{y:.4g}"
                                 "<extra></extra>"))
    return _layout(fig, title, xaxis_title=f"measured ({unit})",
                   yaxis_title=f"predicted ({unit})", legend=dict(orientation="h", y=-0.25))
