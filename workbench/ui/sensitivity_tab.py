"""Sensitivity tab: per-layer sweeps (structured sparsity, weight bits) as ΔWER heat maps, with a
progress bar and a cancel button; "suggest a plan" under the user's budgets.

The sweep and the search are the core's (`workbench.sensitivity`); each cell is the Session's
quick estimate, which restarts from the changed block. They run as jobs of the engine's queue
(workbench.engine.jobs); a sweep takes the run lock one cell at a time at background priority,
so the live WER of a slider move (interactive priority) gets in between cells instead of waiting
for the whole sweep (two torch runs at once on 2 cores are ~10x slower, DESIGN.md section 3).
"""
from __future__ import annotations

import html
import time

import ipywidgets as widgets

from workbench import sensitivity
from workbench.engine.jobs import BACKGROUND, JOBS, RUN_LOCK, USER, Job
from workbench.errors import WorkbenchError
from workbench.ui import figures
from workbench.ui.controller import Controller
from workbench.ui.live import FigureSlot
from workbench.ui.search_panel import SearchPanel

def _parse(text: str, kind: type, what: str) -> tuple:
    try:
        values = tuple(kind(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise WorkbenchError(f"{what}: '{text}' is not a list of numbers; write e.g. "
                             f"{'0.25, 0.5' if kind is float else '8, 4'}.") from None
    if not values:
        raise WorkbenchError(f"{what}: give at least one value.")
    return values


class SensitivityTab:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.state = controller.state
        self.core = controller.core
        self.session = controller.session
        self.errors = controller.errors
        g = self.errors.guard
        self.table: sensitivity.SensitivityTable | None = None
        self.suggestion: sensitivity.Suggestion | None = None
        self._job: Job | None = None
        self._suggest_job: Job | None = None
        self.sparsities = widgets.Text(", ".join(f"{a:g}" for a in sensitivity.SPARSITIES),
                                       description="sparsity")
        self.sparsities.add_class("wb-sweep-sparsities")
        self.bits = widgets.Text(", ".join(str(b) for b in sensitivity.BITS), description="bits")
        self.bits.add_class("wb-sweep-bits")
        self.run = widgets.Button(description="run sweep", button_style="primary")
        self.run.add_class("wb-sweep-run")
        self.cancel = widgets.Button(description="cancel", disabled=True)
        self.cancel.add_class("wb-sweep-cancel")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="progress")
        self.progress.add_class("wb-sweep-progress")
        self.status = widgets.HTML("Sweeps start from the current plan; each cell changes one "
                                   "layer and measures the quick WER estimate.")
        self.status.add_class("wb-sweep-status")
        self.sparsity_fig = FigureSlot()
        self.bits_fig = FigureSlot()
        self.max_mb = widgets.FloatText(0.0, description="max MB")
        self.max_ms = widgets.FloatText(0.0, description="max ms")
        self.max_dwer = widgets.FloatText(2.0, description="max ΔWER pp")
        for w, c in ((self.max_mb, "wb-budget-size"), (self.max_ms, "wb-budget-latency"),
                     (self.max_dwer, "wb-budget-wer")):
            w.add_class(c)
            w.layout.width = "200px"
        self.suggest = widgets.Button(description="suggest a plan")
        self.suggest.add_class("wb-suggest")
        self.apply = widgets.Button(description="apply suggestion", disabled=True)
        self.apply.add_class("wb-suggest-apply")
        self.suggest_out = widgets.HTML()
        self.suggest_out.add_class("wb-suggestion")
        self.run.on_click(g("starting the sweep", lambda _b: self.start()))
        self.cancel.on_click(g("cancelling the sweep", lambda _b: self._job and self._job.cancel()))
        self.suggest.on_click(g("suggesting a plan", lambda _b: self.start_suggest()))
        self.apply.on_click(g("applying the suggestion", lambda _b: self.apply_suggestion()))
        self.search = SearchPanel(controller)  # the same search as `workbench search`
        self.widget = widgets.VBox([
            widgets.HBox([self.sparsities, self.bits]),
            widgets.HBox([self.run, self.cancel, self.progress]), self.status,
            widgets.HBox([self.sparsity_fig.widget, self.bits_fig.widget]),
            widgets.HTML("<b>Suggest a plan</b> <span class='wb-muted'>(0 = no limit; greedy "
                         "over the sweep, assuming single-layer ΔWERs add up — the suggested "
                         "plan's WER is then measured)</span>"),
            widgets.HBox([self.max_mb, self.max_ms, self.max_dwer, self.suggest, self.apply]),
            self.suggest_out, self.search.widget])
        self.widget.add_class("wb-sensitivity")

    # ---- sweep -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._job is not None and self._job.running:
            raise WorkbenchError("sweep: one is already running; cancel it first.")
        sparsities = _parse(self.sparsities.value, float, "sparsity values")
        bits = _parse(self.bits.value, int, "bit widths")
        base = self.state.plan
        self.run.disabled, self.cancel.disabled = True, False
        self.status.value = "sweeping…"
        sweep = self.errors.guard("running the sweep", self._sweep)
        self._job = JOBS.submit(lambda job: sweep(job, base, sparsities, bits), name="sweep",
                                priority=BACKGROUND,
                                on_done=self.errors.guard("ending the sweep", self._ended))

    def _ended(self, _result) -> None:
        """Runs when the sweep job ends, also when it was cancelled before it started."""
        self.run.disabled, self.cancel.disabled = False, True
        if self._job is not None and self._job.cancelled and \
                not self.status.value.startswith("cancelled"):
            self.status.value = "cancelled before the first cell"

    def wait(self, timeout: float | None = None) -> None:
        """Block until the sweep and the suggestion jobs are done (for tests and scripts)."""
        for job in (self._job, self._suggest_job):
            if job is not None:
                job.wait(timeout)

    def _sweep(self, job: Job, base, sparsities, bits) -> None:
        cancelled = lambda: job.cancelled  # noqa: E731
        started = time.perf_counter()

        def evaluate(plan):
            with RUN_LOCK.hold(BACKGROUND):   # one cell; a slider's evaluation goes first
                return self.session.evaluate(plan, "quick", cancel=cancelled)

        def progress(done: int, total: int) -> None:
            self.progress.max = max(total, 1)
            self.progress.value = done
            if done % 4 == 0 or done == total:
                self.status.value = f"sweeping… {done}/{total} cells"

        try:
            self.table = sensitivity.run_sweep(evaluate, self.core.model, base,
                                               sparsities=sparsities, bits=bits,
                                               cancel=cancelled, progress=progress)
            self.draw()
            t = self.table
            self.status.value = (f"{'done' if t.complete else 'cancelled'}: {len(t.cells)} cells "
                                 f"in {time.perf_counter() - started:.1f} s; base WER "
                                 f"{100 * t.base_wer:.2f} % (quick estimate)")
        finally:
            self.run.disabled, self.cancel.disabled = False, True

    def draw(self) -> None:
        t = self.table
        if t is None:
            return
        for knob, fig, unit in (("sparsity", self.sparsity_fig, "sparsity"),
                                ("bits", self.bits_fig, "weight bits")):
            paths, values, grid = t.matrix(knob)
            pp = [[None if v is None else 100 * v for v in row] for row in grid]
            fig.show(figures.heatmap(
                paths, [f"{v:g}" for v in values], pp, f"ΔWER (pp) by {unit}", unit, "ΔWER pp"))

    # ---- suggestion --------------------------------------------------------------------------
    def budgets(self) -> sensitivity.Budgets:
        return sensitivity.Budgets(
            max_size_bytes=int(self.max_mb.value * 1e6) if self.max_mb.value > 0 else None,
            max_latency_ms=self.max_ms.value if self.max_ms.value > 0 else None,
            max_wer_delta=self.max_dwer.value / 100 if self.max_dwer.value > 0 else None)

    def start_suggest(self) -> None:
        if self.table is None or not self.table.cells:
            raise WorkbenchError("suggest: run a sweep first (the search picks from its cells).")
        budgets = self.budgets()
        self.suggest.disabled = True
        self.suggest_out.value = "searching…"
        suggest = self.errors.guard("suggesting a plan", self._suggest)
        device, seconds = self.state.device, self.state.audio_seconds
        self._suggest_job = JOBS.submit(lambda job: suggest(budgets, device, seconds),
                                        name="suggest", priority=USER)

    def _suggest(self, budgets, device, seconds) -> None:
        try:
            s = sensitivity.suggest_plan(
                self.table, self.core.model, lambda p: self.core.size(p).total_bytes,
                lambda p: self.core.latency(p, device, seconds).total_ms, budgets)
            self.suggestion = s
            steps = "".join(f"<li>{html.escape(x)}</li>" for x in s.steps) or "<li>no change</li>"
            verdict = ("It meets the budgets." if s.meets_budgets
                       else f"It does not meet every budget: {html.escape(s.note)}")
            self.suggest_out.value = (
                f"<span class='wb-num' data-bytes='{s.size_bytes}' data-ms='{s.latency_ms:.6f}' "
                f"data-meets='{str(s.meets_budgets).lower()}'></span>"
                f"Suggested plan: {s.size_bytes / 1e6:.3f} MB, {s.latency_ms:.1f} ms simulated on "
                f"{html.escape(device)}, predicted ΔWER {100 * s.predicted_wer_delta:+.2f} pp "
                f"(additive from the sweep). {verdict}<ul>{steps}</ul>")
            self.apply.disabled = False
        finally:
            self.suggest.disabled = False

    def apply_suggestion(self) -> None:
        if self.suggestion is None:
            raise WorkbenchError("apply: no suggestion yet; press 'suggest a plan'.")
        self.controller.propose(self.suggestion.plan, "suggested plan")
