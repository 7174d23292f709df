"""Profile tab: where the cost sits — per layer and per role, hotspots, shares vs audio length.

Numbers come from `workbench.layer_profile.profile` (baseline model, analytic: parameters, MACs,
activation bytes), `workbench.size` (weight bytes under the current plan) and
`workbench.latency` (simulated milliseconds under the current plan on the selected device).
"""
from __future__ import annotations

import html

import ipywidgets as widgets

from workbench.ui import figures
from workbench.ui.controller import Controller
from workbench.ui.live import FigureSlot
from workbench.ui.view import LazyView

#: Audio lengths (s) for the share-vs-length figure.
LENGTHS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
#: How many layers count as hotspots.
HOTSPOTS = 5
METRICS = {
    "latency": ("simulated latency on the device (current plan)", "ms"),
    "macs": ("MACs (baseline model)", "MACs"),
    "params": ("parameters (baseline model)", "params"),
    "weight_bytes": ("weight bytes (current plan)", "bytes"),
    "activation_bytes": ("activation bytes written (baseline model)", "bytes"),
}


class ProfileTab(LazyView):
    def __init__(self, controller: Controller) -> None:
        super().__init__(controller.errors, "the profile")
        self.state = controller.state
        self.core = controller.core
        g = controller.errors.guard
        self.metric = widgets.Dropdown(options=[(v[0], k) for k, v in METRICS.items()],
                                       value="latency", description="cost",
                                       layout=widgets.Layout(width="420px"))
        self.metric.add_class("wb-profile-metric")
        self.hotspots = widgets.HTML()
        self.hotspots.add_class("wb-hotspots")
        self.layers_fig = FigureSlot()
        self.roles_fig = FigureSlot()
        self.shares_fig = FigureSlot()
        self.metric.observe(g("choosing the profile metric", lambda _c: self.invalidate()),
                            names=["value"])
        self.state.observe(g("updating the profile", lambda _c: self.invalidate()),
                           names=["latency", "size", "audio_seconds"])
        self.widget = widgets.VBox([
            self.metric, self.hotspots,
            widgets.HBox([self.roles_fig.widget, self.shares_fig.widget]),
            self.layers_fig.widget])
        self.widget.add_class("wb-profile")

    def _per_layer(self, metric: str) -> tuple[list[str], list[float], list[str]]:
        if metric == "latency":
            rows = self.state.latency.layers
            return [r.path for r in rows], [r.time_ms for r in rows], [r.role for r in rows]
        if metric == "weight_bytes":
            prof = self.core.profile(self.state.audio_seconds)
            roles = {r.path: r.role for r in prof.rows}
            rows = [r for r in self.state.size.layers if r.total_bytes > 0]
            return ([r.path or "(model buffers)" for r in rows], [r.total_bytes for r in rows],
                    [roles.get(r.path, "other") for r in rows])
        prof = self.core.profile(self.state.audio_seconds)
        field = {"activation_bytes": "activation_bytes"}.get(metric, metric)
        rows = [r for r in prof.rows if getattr(r, field)]
        return ([r.path for r in rows], [getattr(r, field) for r in rows],
                [r.role for r in rows])

    def _per_role(self, metric: str, paths: list[str], values: list[float],
                  roles: list[str]) -> dict[str, float]:
        if metric == "latency":
            return self.state.latency.by_role()
        if metric in ("macs", "params"):
            totals = self.core.profile(self.state.audio_seconds).by_role(split_scores=True)
            return {k: getattr(v, metric) for k, v in totals.items()}
        out: dict[str, float] = {}
        for role, v in zip(roles, values):
            out[role] = out.get(role, 0) + v
        return out

    def draw(self) -> None:
        metric = self.metric.value
        title, unit = METRICS[metric]
        paths, values, roles = self._per_layer(metric)
        total = sum(values) or 1.0
        hot = sorted(range(len(values)), key=lambda i: -values[i])[:HOTSPOTS]
        hot_paths = [paths[i] for i in hot]
        self.hotspots.value = ("<b>Hotspots</b> (" + html.escape(title) + "): " + ", ".join(
            f"<code>{html.escape(paths[i])}</code> {100 * values[i] / total:.1f} %" for i in hot))
        self.layers_fig.show(figures.layer_bars(
            paths, values, roles, hot_paths, f"per layer: {title}", unit))
        self.roles_fig.show(figures.role_bars(
            self._per_role(metric, paths, values, roles), f"per role: {title}", unit))
        shares = self.core.profile(self.state.audio_seconds).vs_length(LENGTHS)
        self.shares_fig.show(figures.shares_vs_length(
            shares, self.state.audio_seconds, "share of MACs per role vs audio length"))
