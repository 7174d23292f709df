"""Plan search in the dashboard: the same NSGA-II search as `workbench search` (workbench.search),
run as a cancellable background job with progress; the front as a figure and a list; one click
restores any point of it (an undoable edit).

The search runs serially in this process on the app's Session (its block caches serve the
search too), taking the run lock one evaluation at a time so a slider's live WER gets in between.
"""
from __future__ import annotations

import html

import ipywidgets as widgets

from workbench.engine.jobs import JOBS, RUN_LOCK, USER, Job
from workbench.errors import WorkbenchError
from workbench.ui import figures
from workbench.ui.controller import Controller
from workbench.ui.live import FigureSlot


class SearchPanel:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.state = controller.state
        self.core = controller.core
        self.session = controller.session
        self.errors = controller.errors
        g = self.errors.guard
        self.result = None
        self._job: Job | None = None
        self._ran = False
        self.trials = widgets.BoundedIntText(24, min=2, max=10_000, description="trials")
        self.max_dwer = widgets.FloatText(1.0, description="max ΔWER pp")
        self.max_ms = widgets.FloatText(0.0, description="max ms")
        self.max_mb = widgets.FloatText(0.0, description="max MB")
        for w, c in ((self.trials, "wb-search-trials"), (self.max_dwer, "wb-search-wer"),
                     (self.max_ms, "wb-search-latency"), (self.max_mb, "wb-search-size")):
            w.add_class(c)
            w.layout.width = "190px"
        self.run = widgets.Button(description="search plans", button_style="primary")
        self.run.add_class("wb-search-run")
        self.cancel = widgets.Button(description="cancel", disabled=True)
        self.cancel.add_class("wb-search-cancel")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="progress")
        self.progress.add_class("wb-search-progress")
        self.status = widgets.HTML("Multi-objective search (NSGA-II) over per-layer bits, "
                                   "structured pruning and low rank, from int8 everywhere.")
        self.status.add_class("wb-search-status")
        self.front = widgets.Dropdown(options=[], description="front",
                                      layout=widgets.Layout(width="560px"))
        self.front.add_class("wb-search-front")
        self.restore_button = widgets.Button(description="restore this plan", disabled=True)
        self.restore_button.add_class("wb-search-restore")
        on_click = g("restoring a plan from the front", self._clicked)
        self.figure = FigureSlot(on_create=lambda fig: fig.data and fig.data[0].on_click(on_click))
        self.run.on_click(g("starting the search", lambda _b: self.start()))
        self.cancel.on_click(g("cancelling the search",
                               lambda _b: self._job is not None and self._job.cancel()))
        self.restore_button.on_click(g("restoring a plan", lambda _b: self.restore(
            self.front.value)))
        self.widget = widgets.VBox([
            widgets.HTML("<b>Search plans</b> <span class='wb-muted'>(0 = no limit; WER: quick "
                         "estimate during the search, the front re-measured on the full set; "
                         "latency simulated on the selected device)</span>"),
            widgets.HBox([self.trials, self.max_dwer, self.max_ms, self.max_mb]),
            widgets.HBox([self.run, self.cancel, self.progress]), self.status,
            widgets.HBox([self.front, self.restore_button]), self.figure.widget])
        self.widget.add_class("wb-search")

    def config(self):
        from workbench.search import SearchConfig
        return SearchConfig(
            trials=int(self.trials.value), batch=min(8, max(2, int(self.trials.value))),
            max_delta_wer=self.max_dwer.value / 100 if self.max_dwer.value > 0 else None,
            max_latency_ms=self.max_ms.value if self.max_ms.value > 0 else None,
            max_size_bytes=int(self.max_mb.value * 1e6) if self.max_mb.value > 0 else None)

    def start(self) -> None:
        if self._job is not None and self._job.running:
            raise WorkbenchError("search: one is already running; cancel it first.")
        config = self.config()
        self._ran = False
        self.run.disabled, self.cancel.disabled = True, False
        self.status.value = "searching…"
        run = self.errors.guard("running the search", self._search)
        args = (config, self.state.device, self.state.audio_seconds,
                self.state.runtime or None, self.state.threads or None)
        # A job of the engine's queue; the search polls its cancel flag between trials.
        self._job = JOBS.submit(lambda job: run(job, *args), name="search", priority=USER,
                                on_done=self.errors.guard("ending the search", self._ended))

    def wait(self, timeout: float | None = None) -> None:
        if self._job is not None:
            self._job.wait(timeout)

    def _ended(self, _result) -> None:
        """Runs when the search job ends, also when it was cancelled before it started."""
        self.run.disabled, self.cancel.disabled = False, True
        if self._job is not None and self._job.cancelled and not self._ran:
            self.status.value = "cancelled before the first trial"

    def _search(self, job: Job, config, device: str, seconds: float, runtime: str | None,
                threads: int | None) -> None:
        from workbench.search import EvaluatorSpec, PlanEvaluator, search
        self._ran = True
        try:
            evaluator = PlanEvaluator(self.core.model, self.session, device, seconds,
                                      lock=RUN_LOCK, runtime=runtime, latency_threads=threads)
            spec = EvaluatorSpec(device=device, audio_seconds=seconds, runtime=runtime,
                                 latency_threads=threads, model=self.core.model,
                                 eval_set=self.session.eval_set)

            def progress(done: int, total: int, note: str) -> None:
                self.progress.max = max(total, 1)
                self.progress.value = min(done, total)
                self.status.value = f"searching… {html.escape(note)} ({done}/{total})"

            self.result = search(spec, config, evaluator=evaluator,
                                 cancel=lambda: job.cancelled,
                                 progress=progress)
            self.draw(device)
        finally:
            self.run.disabled, self.cancel.disabled = False, True

    def draw(self, device: str) -> None:
        from workbench.search.api import summary
        r = self.result
        if r is None:
            return
        pts = [t for t in r.front if t.best is not None]
        labels = [f"trial {t.number}: WER {t.best['wer']:.4f} ({t.best['kind']}), "
                  f"{t.best['size_bytes'] / 1e6:.3f} MB, {t.best['latency_ms']:.1f} ms"
                  + ("" if r.feasible(t) else " — outside the budgets") for t in pts]
        self.front.options = [(label, i) for i, label in enumerate(labels)]
        self.restore_button.disabled = not pts
        xs = [t.best["size_bytes"] / 1e6 for t in pts]
        ys = [t.best["wer"] for t in pts]
        order = sorted(range(len(pts)), key=lambda i: xs[i])
        self.figure.show(figures.tradeoff(
            xs, ys, labels, [t.best["kind"] == "full" for t in pts], order, None, "size (MB)",
            f"search front (latency simulated on {device})"))
        s = summary(r)
        state = "done" if r.complete else "cancelled (finished trials kept)"
        self.status.value = (f"<span class='wb-num' data-front='{len(pts)}' "
                             f"data-complete='{str(r.complete).lower()}'></span>{state}: "
                             f"{len(r.trials)} trials, {len(pts)} plans on the front. "
                             f"{html.escape(s['verdict'])}")

    def restore(self, index: int | None) -> None:
        if index is None or self.result is None:
            raise WorkbenchError("restore: run a search first, then pick a point of the front.")
        t = [t for t in self.result.front if t.best is not None][index]
        self.controller.propose(self.result.space.plan(t.params), f"search trial {t.number}")

    def _clicked(self, trace, points, selector) -> None:
        if points.point_inds:
            self.restore(points.point_inds[0])
