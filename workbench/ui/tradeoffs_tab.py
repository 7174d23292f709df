"""Trade-offs tab: every evaluated plan as a point — WER vs size, WER vs simulated latency — with
the Pareto front (`workbench.sensitivity.pareto_front`). Clicking a point, or picking it in the
list, restores its plan (an undoable edit).

Latency depends on the device and audio length, so each point is priced for the current ones
(`CostCache.latency`, cached shape tables); size and WER come from the history points.
"""
from __future__ import annotations

import ipywidgets as widgets
import plotly.graph_objects as go

from workbench.sensitivity import pareto_front
from workbench.errors import WorkbenchError
from workbench.plan import CompressionPlan
from workbench.engine.session import plan_key
from workbench.ui import figures
from workbench.ui.controller import Controller
from workbench.ui.live import FigureSlot
from workbench.ui.view import LazyView


class TradeoffsTab(LazyView):
    def __init__(self, controller: Controller) -> None:
        super().__init__(controller.errors, "the trade-offs")
        self.controller = controller
        self.state = controller.state
        self.core = controller.core
        g = controller.errors.guard
        on_click = g("restoring a plan from the plot", self._clicked)

        def clickable(fig: go.FigureWidget) -> None:
            if fig.data:
                fig.data[0].on_click(on_click)

        self.size_fig = FigureSlot(on_create=clickable)
        self.latency_fig = FigureSlot(on_create=clickable)
        self.history = widgets.Dropdown(options=[], description="plan",
                                        layout=widgets.Layout(width="520px"))
        self.history.add_class("wb-history")
        restore = widgets.Button(description="restore this plan")
        restore.add_class("wb-history-restore")
        restore.on_click(g("restoring a plan", lambda _b: self.restore(self.history.value)))
        self.summary = widgets.HTML()
        self.summary.add_class("wb-tradeoff-summary")
        self.state.observe(g("updating the trade-offs", lambda _c: self.invalidate()),
                           names=["history", "plan", "device", "audio_seconds"])
        self.widget = widgets.VBox([
            widgets.HTML("Filled points: measured on the full set; hollow: quick estimate "
                         "(± 1 standard error). Diamonds: a baseline model itself (no plan); grey: "
                         "measured on an earlier baseline (a recovered model replaced it). Click "
                         "a point to restore its plan."),
            widgets.HBox([self.history, restore]), self.summary,
            widgets.HBox([self.size_fig.widget, self.latency_fig.widget])])
        self.widget.add_class("wb-tradeoffs")

    def restore(self, index: int | None) -> None:
        if index is None:
            return
        point = self.state.history[index]
        if point.baseline != self.controller.baseline:
            raise WorkbenchError(
                f"restore: point #{index} was measured on the {point.baseline}; the plan now "
                f"applies to the {self.controller.baseline}, where it would mean another model. "
                f"Restore points measured on the {self.controller.baseline} (blue).")
        self.controller.propose(point.plan, f"restore: {point.label}")

    def _clicked(self, trace, points, selector) -> None:
        if points.point_inds:
            self.restore(points.point_inds[0])

    def draw(self) -> None:
        s = self.state
        points = s.history
        current_key, here = plan_key(s.plan), self.controller.baseline
        current = next((i for i, p in enumerate(points)
                        if p.key == current_key and p.baseline == here), None)
        # each point is priced on the model it was measured on
        cores = [self.controller.cores.get(p.baseline, self.core) for p in points]
        sizes = [p.size_bytes / 1e6 for p in points]
        lats = [core.latency(p.plan, s.device, s.audio_seconds, runtime=s.runtime or None,
                             threads=s.threads or None,
                             device_file=s.device_file or None).total_ms
                for core, p in zip(cores, points)]
        wers = [p.wer for p in points]
        labels = [f"#{i} {p.label}" + ("" if p.baseline == here else f" [on the {p.baseline}]")
                  for i, p in enumerate(points)]
        no_plan = plan_key(CompressionPlan())
        baselines = [p.key == no_plan for p in points]     # a baseline model itself
        elsewhere = [p.baseline != here for p in points]
        measured = [p.kind == "full" for p in points]
        errs = [p.stderr for p in points]
        front_size = pareto_front(list(zip(sizes, wers)))
        front_lat = pareto_front(list(zip(lats, wers)))
        self.size_fig.show(figures.tradeoff(
            sizes, wers, labels, measured, front_size, current, "size (MB)", "WER vs size",
            error_y=errs, baselines=baselines, elsewhere=elsewhere))
        self.latency_fig.show(figures.tradeoff(
            lats, wers, labels, measured, front_lat, current,
            f"simulated latency on {s.device}, {s.audio_seconds:g} s audio (ms)",
            "WER vs latency", error_y=errs, baselines=baselines, elsewhere=elsewhere))
        self.history.options = [(label, i) for i, label in enumerate(labels)]
        if current is not None:
            self.history.value = current
        self.summary.value = (f"{len(points)} evaluated plans; Pareto-optimal: "
                              f"{len(front_size)} by size, {len(front_lat)} by latency.")
