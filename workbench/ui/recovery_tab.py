"""Recover tab: win back the accuracy the current plan took, while you watch, then work on top.

Pick a recipe (distillation after one-shot pruning, quantization-aware distillation, or
progressive pruning with an importance) and a budget (steps and minutes); Start submits the
engine's recovery job (workbench.engine.recovery_job.watch_recovery), Cancel cancels it (the
job stops at the next training step and saves nothing). The plot shows the training loss of
every step and, every k steps, a WER estimate of the model being trained on the app's quick
subset of the held-out set; both are computed in the job, never here. When a run ends, the
recovered model is measured on the whole eval set, and "use as baseline" makes it the model the
sliders work on (Workbench.use_baseline); the trade-off plot keeps the earlier points, marked
with the baseline they were measured on.
"""
from __future__ import annotations

import html
import threading
from collections.abc import Callable
from pathlib import Path

import ipywidgets as widgets

from workbench.data.held_out import refuse_held_out
from workbench.engine.jobs import Job
from workbench.engine.recovery_job import (IMPORTANCES, Estimate, Recipe, Watched, subset,
                                           watch_recovery)
from workbench.errors import WorkbenchError
from workbench.recovery import removes_structure
from workbench.ui import figures
from workbench.ui.controller import Controller
from workbench.ui.live import FigureSlot
from workbench.ui.view import LazyView

KIND_OPTIONS = (("distillation (after one-shot pruning)", "distill"),
                ("QAT: quantization-aware distillation", "qat"),
                ("progressive pruning while distilling", "progressive"))
DATA_DEMO = ("the demo corpus (synthetic training sentences + the real fine-tune prompts; built "
             "offline the first time, which takes minutes)")


class RecoveryTab(LazyView):
    def __init__(self, controller: Controller,
                 on_use: Callable[[Watched, str], object] | None = None) -> None:
        super().__init__(controller.errors, "the recovery")
        self.controller = controller
        self.on_use = on_use
        g = controller.errors.guard
        #: Training data (None: the demo corpus) and output folder (None: the user cache, keyed
        #: by plan + model + recipe); tests and scripts may change them.
        self.manifests: list[Path] | None = None
        self.out_dir: Path | None = None
        self.job: Job | None = None
        self.rebase_job: Job | None = None   # the last "use as baseline"
        self.watched: Watched | None = None
        self.runs = 0
        self._data_lock = threading.Lock()
        self._steps: list[int] = []
        self._losses: list[float] = []
        self._estimates: list[Estimate] = []
        self._state, self._status_text = "idle", ""
        self._recipe: Recipe | None = None
        self.kind = widgets.Dropdown(options=KIND_OPTIONS, value="distill", description="recipe",
                                     layout=widgets.Layout(width="420px"))
        self.kind.add_class("wb-recover-kind")
        self.importance = widgets.Dropdown(options=IMPORTANCES, value="taylor",
                                           description="importance", disabled=True)
        self.importance.add_class("wb-recover-importance")
        self.steps = widgets.BoundedIntText(360, min=1, max=100_000, description="steps")
        self.steps.add_class("wb-recover-steps")
        self.minutes = widgets.BoundedFloatText(10.0, min=0.0, max=10_000.0,
                                                description="max minutes")
        self.minutes.add_class("wb-recover-minutes")
        self.every = widgets.BoundedIntText(10, min=1, max=100_000,
                                            description="estimate every",
                                            style={"description_width": "initial"})
        self.every.add_class("wb-recover-every")
        for w in (self.importance, self.steps, self.minutes, self.every):
            w.layout.width = "210px"
        self.start_button = widgets.Button(description="start recovery", button_style="primary")
        self.start_button.add_class("wb-recover-start")
        self.cancel_button = widgets.Button(description="cancel", disabled=True)
        self.cancel_button.add_class("wb-recover-cancel")
        self.progress = widgets.IntProgress(0, min=0, max=1, description="step")
        self.progress.add_class("wb-recover-progress")
        self.status = widgets.HTML()
        self.status.add_class("wb-recover-status")
        self.figure = FigureSlot(height=340)
        self.figure.widget.add_class("wb-recover-figure")
        self.result = widgets.HTML()
        self.result.add_class("wb-recover-result")
        self.use_button = widgets.Button(description="use as baseline", disabled=True,
                                         button_style="success")
        self.use_button.add_class("wb-recover-use")
        self.about = widgets.HTML()
        self.about.add_class("wb-recover-about")
        self.kind.observe(g("choosing the recipe", self._kind_changed), names=["value"])
        self.start_button.on_click(g("starting the recovery", lambda _b: self.start()))
        self.cancel_button.on_click(g("cancelling the recovery", lambda _b: self.cancel()))
        self.use_button.on_click(g("using the recovered model", lambda _b: self.use()))
        self._set_status("idle")
        self.widget = widgets.VBox([
            self.about,
            widgets.HBox([self.kind, self.importance]),
            widgets.HBox([self.steps, self.minutes, self.every]),
            widgets.HBox([self.start_button, self.cancel_button, self.progress]), self.status,
            self.figure.widget, widgets.HBox([self.use_button, self.result])])
        self.widget.add_class("wb-recover")
        self.attach(controller)

    # ---- wiring --------------------------------------------------------------------------
    def attach(self, controller: Controller) -> None:
        """Serve `controller`'s app (a new one after the baseline changed); what ran stays."""
        self.controller = controller
        session = controller.session
        n = len(session.quick_indices)
        self.about.value = (
            f"Recover the accuracy the <b>current plan</b> takes from <b>"
            f"{html.escape(controller.baseline)}</b>: the compressed model learns from it "
            f"(distillation; workbench.recovery, what <code>workbench recover</code> runs). "
            f"The curve's WER is an <b>estimate on {n} utterances</b> (the quick subset of "
            f"{html.escape(session.eval_set.name)}, never trained on), computed in the job every "
            f"k steps; the result is then measured on all {len(session.eval_set)} utterances. "
            f"Training data: {html.escape(self._data_text())}.")

    def _data_text(self) -> str:
        if not self.manifests:
            return DATA_DEMO
        return ", ".join(str(m) for m in self.manifests)

    def _kind_changed(self, change: dict) -> None:
        self.importance.disabled = change["new"] != "progressive"

    def recipe(self) -> Recipe:
        return Recipe(kind=self.kind.value, importance=self.importance.value,
                      steps=int(self.steps.value),
                      minutes=float(self.minutes.value) if self.minutes.value > 0 else None,
                      every=int(self.every.value))

    # ---- the job -------------------------------------------------------------------------
    def start(self) -> Job:
        if self.job is not None and self.job.running:
            raise WorkbenchError("recovery: one is already running; cancel it first.")
        recipe = self.recipe()
        # before anything changes in the tab: the error shows, nothing is trained
        refuse_held_out(self.manifests, option="training manifest")
        c = self.controller
        plan, teacher = c.state.plan, c.session.baseline
        if recipe.kind != "qat" and not removes_structure(plan, teacher):
            raise WorkbenchError(
                "recovery: the current plan removes no structure (no pruning, no low rank), "
                "so distillation has nothing to win back; prune or factorize some layers in "
                "the Compress tab first, or pick QAT for a quantization plan.")
        session = c.session
        probe = subset(session.eval_set, session.quick_indices,
                       f"quick subset of {session.eval_set.name}")
        with self._data_lock:
            self._steps, self._losses, self._estimates = [], [], []
        self.watched = None
        self.runs += 1
        self._recipe = recipe
        self.progress.max, self.progress.value = recipe.steps, 0
        self.start_button.disabled, self.cancel_button.disabled = True, False
        self.use_button.disabled = True
        self.result.value = ""
        self._set_status("running", f"run {self.runs}: {html.escape(recipe.describe())}; "
                                    f"preparing the training data…")
        g = self.errors.guard
        self.job = watch_recovery(
            plan, teacher, probe, recipe, measure=session.eval_set, manifests=self.manifests,
            out_dir=self.out_dir, teacher_name=f"the dashboard's {c.baseline}",
            on_step=g("showing a training step", self._on_step),
            on_estimate=g("showing a WER estimate", self._on_estimate),
            on_done=g("ending the recovery", self._on_done),
            on_error=g("recovering", self._on_error))
        self.invalidate()
        return self.job

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the recovery job has ended and its callbacks ran (tests, scripts)."""
        if self.job is not None:
            self.job.wait(timeout)

    def _on_step(self, entry: dict) -> None:
        with self._data_lock:
            self._steps.append(int(entry["step"]))
            self._losses.append(float(entry["loss"]))
        self.progress.value = int(entry["step"])
        self._set_status("running", f"run {self.runs}: step {entry['step']}, loss "
                                    f"{entry['loss']:.4f}, {entry['seconds']:.0f} s")
        self.invalidate()

    def _on_estimate(self, estimate: Estimate) -> None:
        with self._data_lock:
            self._estimates.append(estimate)
        self._set_status()
        self.invalidate()

    def _on_done(self, watched: Watched | None) -> None:
        self.start_button.disabled, self.cancel_button.disabled = False, True
        if watched is None:
            self._set_status("cancelled", f"run {self.runs} cancelled after "
                                          f"{len(self._steps)} steps; nothing was saved.")
            self.invalidate()
            return
        self.watched = watched
        m, report = watched.measured, watched.result.report
        how = (f"trained now: {report['steps']} steps in {report['minutes']:g} min"
               if watched.trained_now else
               f"cached: an identical earlier run ({report['steps']} steps, "
               f"{report['minutes']:g} min) was reused, nothing trained now")
        self._set_status("done", f"run {self.runs} done ({how}).")
        self.result.value = (
            f"<span class='wb-num' data-wer='{m.wer:.6f}' data-cer='{m.cer:.6f}' "
            f"data-utterances='{m.utterances}'></span>Recovered model: greedy WER "
            f"<b>{100 * m.wer:.2f} %</b>, CER {100 * m.cer:.2f} %, measured on all "
            f"{m.utterances} utterances of {html.escape(watched.measured_on)} (float weights; "
            f"the plan's quantization, if any, stays in the plan). Saved in "
            f"<code>{html.escape(str(watched.result.checkpoint.parent))}</code>.")
        self.use_button.disabled = self.on_use is None
        self.invalidate()

    def _on_error(self, err: BaseException) -> None:
        self.start_button.disabled, self.cancel_button.disabled = False, True
        self._set_status("failed", f"run {self.runs} failed (see the error above).")
        raise err

    def use(self):
        """Make the last result the app's baseline (a job; the app is rebuilt when it is ready)."""
        if self.watched is None:
            raise WorkbenchError("use as baseline: no finished recovery yet; start one first.")
        if self.on_use is None:
            raise WorkbenchError("use as baseline: this app cannot change its baseline.")
        label = f"recovered model #{self.runs} ({self._recipe.kind})"
        self.use_button.disabled = True
        self._set_status("rebasing", "making the recovered model the baseline: measuring it on "
                                     "the full eval set and building its cost tables…")
        self.rebase_job = self.on_use(self.watched, label)
        return self.rebase_job

    def _set_status(self, state: str | None = None, text: str | None = None) -> None:
        """The status line; its wb-num span carries the state and how many steps and
        estimates the plot has (for tests), the prose is for people."""
        with self._data_lock:
            if state is not None:
                self._state = state
            if text is not None:
                self._status_text = text
            steps, estimates = len(self._steps), len(self._estimates)
            self.status.value = (f"<span class='wb-num' data-state='{self._state}' "
                                 f"data-steps='{steps}' data-estimates='{estimates}'>"
                                 f"</span>{self._status_text}")

    # ---- drawing -------------------------------------------------------------------------
    def draw(self) -> None:
        with self._data_lock:
            steps, losses = list(self._steps), list(self._losses)
            estimates = list(self._estimates)
        n = estimates[0].utterances if estimates else len(self.controller.session.quick_indices)
        measured = None
        if self.watched is not None:
            m = self.watched.measured
            measured = (steps[-1] if steps else self.watched.result.report["steps"], m.wer,
                        f"measured on all {m.utterances} utterances")
        self.figure.show(figures.recovery_curve(
            steps, losses, [e.step for e in estimates], [e.wer for e in estimates],
            f"WER estimate on {n} held-out utterances", measured,
            title=f"recovery run {self.runs}: loss per step, WER estimate every "
                  f"{self._recipe.every} steps" if self._recipe is not None else "recovery: not started"))
