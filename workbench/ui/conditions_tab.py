"""Conditions tab: WER under noise, rooms, speed and telephone channels for the baseline and the
current plan, as a heat map (rows: conditions; columns: baseline, plan, change), computed as a
cancellable background job (`workbench.conditions.evaluate_conditions`).

The job takes the Session's run lock one condition at a time, so a slider move's live WER gets
in between two conditions (two torch runs at once on 2 cores are ~10x slower).
"""
from __future__ import annotations

import html
import time

import ipywidgets as widgets
import plotly.graph_objects as go

from workbench.engine.jobs import JOBS, USER, Job
from workbench.errors import WorkbenchError
from workbench.ui.controller import Controller
from workbench.ui.figures import _layout, new_figure
from workbench.ui.live import FigureSlot
from workbench.compress.resolution import resolve
from workbench.engine.session import RUN_LOCK


def conditions_heatmap(conditions: list[str], baseline: list[float], plan: list[float | None],
                       title: str = "WER by condition") -> go.Figure:
    """Rows: conditions; columns: baseline WER %, plan WER %, change (pp). Colour = change in WER
    points (baseline and plan columns are coloured by their own change vs clean baseline)."""
    has_plan = any(p is not None for p in plan)
    cols = ["baseline WER %", "plan WER %", "change (pp)"] if has_plan else ["baseline WER %"]
    text, color = [], []
    clean = baseline[0] if baseline else 0.0
    for b, p in zip(baseline, plan):
        row_t = [f"{100 * b:.1f}"]
        row_c = [100 * (b - clean)]
        if has_plan:
            d = None if p is None else 100 * (p - b)
            row_t += ["-" if p is None else f"{100 * p:.1f}", "-" if d is None else f"{d:+.1f}"]
            row_c += [None if p is None else 100 * (p - clean), d]
        text.append(row_t)
        color.append(row_c)
    fig = new_figure(go.Heatmap(
        z=color, x=cols, y=list(conditions), text=text, texttemplate="%{text}",
        colorscale="RdYlGn_r", zmid=0, colorbar=dict(title="Δ WER pp"),
        hovertemplate="%{y} · %{x}: %{text}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, height=max(320, 22 * len(conditions) + 80))


class ConditionsTab:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.state = controller.state
        self.session = controller.session
        self.errors = controller.errors
        g = self.errors.guard
        self.result = None
        self._job: Job | None = None
        self.grid = widgets.Dropdown(options=[("default (16 conditions)", "default"),
                                              ("full (24 conditions)", "full")],
                                     value="default", description="grid")
        self.grid.add_class("wb-conditions-grid")
        self.run = widgets.Button(description="run conditions", button_style="primary")
        self.run.add_class("wb-conditions-run")
        self.cancel = widgets.Button(description="cancel", disabled=True)
        self.cancel.add_class("wb-conditions-cancel")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="progress")
        self.progress.add_class("wb-conditions-progress")
        self.status = widgets.HTML(
            "Degrades the held-out real speech (noise at several SNRs, rooms, speed, telephone "
            "band, 8 kHz mu-law; seeded) and measures the baseline and the current plan on each. "
            "Babble is mixed from training utterances only.")
        self.status.add_class("wb-conditions-status")
        self.figure = FigureSlot()
        self.table = widgets.HTML()
        self.table.add_class("wb-conditions-table")
        self.run.on_click(g("starting the conditions grid", lambda _b: self.start()))
        self.cancel.on_click(g("cancelling the conditions grid",
                               lambda _b: self._job is not None and self._job.cancel()))
        self.widget = widgets.VBox([widgets.HBox([self.grid, self.run, self.cancel,
                                                  self.progress]),
                                    self.status, self.figure.widget, self.table])
        self.widget.add_class("wb-conditions")

    def start(self) -> None:
        if self._job is not None and self._job.running:
            raise WorkbenchError("conditions: a run is in progress; cancel it first.")
        self.run.disabled, self.cancel.disabled = True, False
        self.status.value = "computing degraded features…"
        work = self.errors.guard("running the conditions grid", self._work)
        plan, grid = self.state.plan, self.grid.value
        self._job = JOBS.submit(lambda job: work(job, plan, grid), name="conditions",
                                priority=USER,
                                on_done=self.errors.guard("ending the conditions grid", self._ended))

    def wait(self, timeout: float | None = None) -> None:
        if self._job is not None:
            self._job.wait(timeout)

    def _ended(self, _result) -> None:
        """Runs when the job ends, also when it was cancelled before it started."""
        self.run.disabled, self.cancel.disabled = False, True
        if self._job is not None and self._job.cancelled and "cancelled" not in self.status.value:
            self.status.value = "cancelled before it started."

    def _work(self, job, plan, grid) -> None:
        from workbench.conditions import Cancelled, evaluate_conditions

        started = time.perf_counter()

        def progress(done: int, total: int, name: str) -> None:
            self.progress.max = max(total, 1)
            self.progress.value = done
            self.status.value = f"evaluating… {done}/{total}: {html.escape(name)}"

        model = self.session.baseline
        changes = any(not c.is_empty() for c in resolve(plan, model).values())
        try:
            self.result = evaluate_conditions(
                model, plan if changes else None, grid=grid,
                manifest=self.session.eval_set.manifest, progress=False,
                cancel=lambda: job.cancelled, on_progress=progress, run_lock=RUN_LOCK)
        except Cancelled:
            self.status.value = "cancelled."
            return
        finally:
            self.run.disabled, self.cancel.disabled = False, True
        self.draw()
        r = self.result
        self.status.value = (f"done: {len(r.rows)} rows in {time.perf_counter() - started:.1f} s "
                             f"({r.conditions_from_cache} condition feature sets from the cache). "
                             f"{html.escape(r.source)}")

    def draw(self) -> None:
        r = self.result
        if r is None:
            return
        rows = [x for x in r.rows]
        names = [f"{x.condition} ({x.eval_set})" if x.group == "voices" else x.condition
                 for x in rows]
        self.figure.show(conditions_heatmap(names, [x.baseline_wer for x in rows],
                                            [x.plan_wer for x in rows]))
        self.table.value = _markdown_to_html(r.markdown())


def _markdown_to_html(md: str) -> str:
    lines = [ln for ln in md.splitlines() if ln.strip() and not set(ln) <= set("|-: ")]
    cells = [[html.escape(c.strip()) for c in ln.strip("|").split("|")] for ln in lines]
    head = "".join(f"<th>{c}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells[1:])
    return f"<table class='wb-table'><tr>{head}</tr>{body}</table>"
