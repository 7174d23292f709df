"""The workbench app: `Workbench(model, eval_set).show()`, or `Workbench.demo().show()`.

    from workbench.ui import Workbench
    wb = Workbench.demo()          # shipped demo model + held-out real speech
    wb.show()                      # the app widget (also shown when `wb` ends a cell)

Pieces: AppState (single source of truth) <- Controller (calls the core: size, latency now; WER
on the engine's job queue) -> Header and tabs (Profile, Compress, Trade-offs, Sensitivity,
Listen, Conditions, Streaming, Recover, Export), which observe the state and send edits through
the controller. Every callback runs under the error area's guard (class wb-error).

The baseline (the model the plan applies to) can change: `use_baseline(model, label)`, e.g. with
a model the Recover tab recovered. The app is then rebuilt on it; the history keeps the earlier
points, each marked with the baseline it was measured on.

`WORKBENCH_EVAL_LIMIT=n` makes `demo()` evaluate only the first n utterances (fast tests and
slow machines); `demo_inputs()` is what `demo()` loads, so a test can rebuild the same numbers.
"""
from __future__ import annotations

import html
import os
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets
from torch import nn

from workbench.errors import CheckpointError, WorkbenchError
from workbench.evaluate import EvalSet
from workbench.plan import CompressionPlan
from workbench.engine.jobs import JOBS, USER, Job
from workbench.engine.recovery_job import rebase
from workbench.engine.session import Session, plan_key
from workbench.ui.compress_tab import CompressTab
from workbench.ui.conditions_tab import ConditionsTab
from workbench.ui.controller import Controller
from workbench.engine.costs import CostCache
from workbench.ui.css import STYLE
from workbench.ui.error_area import ErrorArea
from workbench.ui.export_tab import ExportTab
from workbench.ui.header import Header
from workbench.ui.listen_tab import ListenTab
from workbench.ui.profile_tab import ProfileTab
from workbench.ui.sensitivity_tab import SensitivityTab
from workbench.ui.recovery_tab import RecoveryTab
from workbench.ui.state import ORIGINAL, AppState, HistoryPoint
from workbench.ui.streaming_tab import StreamingTab
from workbench.ui.tradeoffs_tab import TradeoffsTab
from workbench.ui.view import LazyView, run_in_kernel
from workbench.models import whisper_ctc_pretrained

#: Environment variable: evaluate only the first n utterances in `Workbench.demo()`.
EVAL_LIMIT_ENV = "WORKBENCH_EVAL_LIMIT"
TAB_TITLES = ("Profile", "Compress", "Trade-offs", "Sensitivity", "Listen", "Conditions",
              "Streaming", "Recover", "Export")


@dataclass(frozen=True)
class DemoInputs:
    model: nn.Module
    eval_set: EvalSet
    note: str            # shown in the app when the shipped demo model is missing


def eval_limit_from_env() -> int | None:
    raw = os.environ.get(EVAL_LIMIT_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise WorkbenchError(f"{EVAL_LIMIT_ENV}: must be a positive number of utterances, "
                             f"got {raw!r}; unset it to evaluate the whole set.")
    return int(raw)


def demo_inputs(eval_limit: int | None = None) -> DemoInputs:
    """The demo model (the untrained Whisper CTC if the trained one is not built yet, with a
    note saying so) and the held-out real-speech set (first `eval_limit` utterances; default:
    $WORKBENCH_EVAL_LIMIT, else all)."""
    from workbench.evaluate import load_eval_set  # looked up per call: tests monkeypatch it
    from workbench.models import load_demo  # looked up per call: tests monkeypatch it
    from workbench.paths import REAL_TEST  # looked up per call: tests monkeypatch it

    limit = eval_limit if eval_limit is not None else eval_limit_from_env()
    note = ""
    try:
        model = load_demo()
    except CheckpointError as err:
        model = whisper_ctc_pretrained()
        note = (f"{err} Showing the pretrained Whisper encoder with an untrained CTC head "
                f"instead, so WER is near 100 %.")
    eval_set = load_eval_set(REAL_TEST, limit=limit, progress=False)
    return DemoInputs(model, eval_set, note)


def _quick_covers_all(session: Session) -> bool:
    return session.quick_is_full


def _raise(err: BaseException) -> None:
    raise err  # inside an error-area guard: shown there


class Workbench:
    """The whole app for one model and one eval set. See the module docstring."""

    tab_titles: tuple[str, ...] = TAB_TITLES

    def __init__(self, model: nn.Module, eval_set: EvalSet, *, device: str = "rpi4",
                 audio_seconds: float = 4.0, plan: CompressionPlan | None = None,
                 quick_utterances: int = 16, session: Session | None = None,
                 note: str = "") -> None:
        self.session = session if session is not None else Session(
            model, eval_set, quick_utterances=quick_utterances)
        # The Session holds its own deep copy; pricing uses the same one, so later changes to
        # the caller's model cannot make size / latency disagree with WER.
        self.core = CostCache(self.session.baseline)
        self.core.device(device)  # an unknown device fails here, listing the known ones
        device = self.core.canonical_device(device)  # 'rpi4' -> 'rpi4_a72' (names say the core)
        self.core.warm_up(device, float(audio_seconds))
        # When the quick subset is the whole set, the estimate would repeat the full run.
        quick_is_full = _quick_covers_all(self.session)
        if getattr(getattr(model, "config", None), "untrained", False):  # workbench.byo.adapt
            note = ("untrained: this model's CTC head is random (adapted with a fresh head), so "
                    "its WER says nothing yet; train the head first. " + note).strip()
        es = self.session.eval_set
        title = (f"<b>workbench</b> · {html.escape(type(self.session.baseline).__name__)} · "
                 f"{html.escape(es.name)} ({len(es)} utterances, {es.seconds:.0f} s) · baseline "
                 f"WER {100 * self.session.baseline_full.wer:.2f} %")
        self._assemble(device, audio_seconds, plan, quick_is_full, title, note)

    def _make_views(self) -> tuple:
        self.profile = ProfileTab(self.controller)
        self.compress = CompressTab(self.controller)
        self.tradeoffs = TradeoffsTab(self.controller)
        self.sensitivity = SensitivityTab(self.controller)
        self.listen = ListenTab(self.controller)
        self.export = ExportTab(self.controller)
        self.conditions = ConditionsTab(self.controller)
        self.streaming = StreamingTab(self.controller)
        # The Recover tab outlives a change of baseline (its plot and result stay).
        if getattr(self, "recovery", None) is None:
            self.recovery = RecoveryTab(self.controller, on_use=self._use_recovered)
        else:
            self.recovery.attach(self.controller)
        return (self.profile, self.compress, self.tradeoffs, self.sensitivity, self.listen,
                self.conditions, self.streaming, self.recovery, self.export)

    def _assemble(self, device: str, audio_seconds: float, plan: CompressionPlan | None,
                  quick_is_full: bool, title: str, note: str) -> None:
        """Errors, state and page once `self.session` and `self.core` exist (shared by every app
        variant; `self._make_views()` builds the tabs titled `self.tab_titles`)."""
        self.errors = ErrorArea()
        self.baseline = ORIGINAL
        self._cores: dict[str, CostCache] = {}
        self._kinds = ("full",) if quick_is_full else ("quick", "full")
        if note:
            title += f"<br><span class='wb-error'>{html.escape(note)}</span>"
        self._title = widgets.HTML(title)
        self._baseline_note = widgets.HTML()
        self._baseline_note.add_class("wb-baseline")
        self.widget = widgets.VBox()
        self.widget.add_class("wb-app")
        self._build(AppState(plan if plan is not None else CompressionPlan(), device=device,
                             audio_seconds=float(audio_seconds)), selected=0)

    def _build(self, state: AppState, selected: int) -> None:
        """Controller, header and tabs for `state` on the current session / core."""
        self.state = state
        self._cores[self.baseline] = self.core
        self.controller = Controller(state, self.core, self.session, self.errors,
                                     kinds=self._kinds, baseline=self.baseline, cores=self._cores)
        self.header = Header(state, self.core.devices(), self.errors,
                             runtimes=self.core.runtimes, cores=self.core.cores)
        views = self._make_views()
        self.tabs = widgets.Tab(children=[v.widget for v in views], titles=self.tab_titles)
        self.tabs.add_class("wb-tabs")
        self._views = views
        self.tabs.observe(self.errors.guard("switching tabs", self._tab_changed),
                          names=["selected_index"])
        self.tabs.selected_index = selected
        self._tab_changed({"new": selected})
        self.widget.children = (widgets.HTML(STYLE), self._title, self._baseline_note,
                                self.errors.widget, self.header.widget, self.tabs)

    # ---- a new baseline --------------------------------------------------------------------
    def use_baseline(self, model: nn.Module, label: str, plan: CompressionPlan | None = None
                     ) -> Job:
        """Make `model` (e.g. a recovered one) the model the plan applies to, as `label`.

        A job measures it on the app's eval set (same utterances, same quick subset) and builds
        its cost tables; then the app is rebuilt on it with `plan` (default: none) as the
        current plan. The history keeps every earlier point, marked with the baseline it was
        measured on, and gains one for the new baseline itself. Returns the job (tests wait on
        it; outside a kernel the app is rebuilt before the job counts as finished)."""
        if label in self._cores:
            raise WorkbenchError(f"use_baseline: the name {label!r} is taken; give another.")
        old, s = self.session, self.state
        device, seconds = s.device, s.audio_seconds

        def ready(pair) -> None:
            if pair is not None:
                run_in_kernel(lambda: self.errors.guard("switching the baseline", self._rebase)(
                    *pair, label, plan or CompressionPlan()))

        return JOBS.submit(lambda job: rebase(old, model, device, seconds),
                           name="new baseline", priority=USER,
                           on_done=self.errors.guard("switching the baseline", ready),
                           on_error=self.errors.guard("measuring the new baseline", _raise))

    def _use_recovered(self, watched, label: str) -> Job:
        return self.use_baseline(watched.model, label, watched.rest)

    def _rebase(self, session: Session, core: CostCache, label: str,
                plan: CompressionPlan) -> None:
        old_state, old_session = self.state, self.session
        old_session.cancel()                 # its pending evaluation would be for the old model
        self.session, self.core, self.baseline = session, core, label
        core.resolve(plan)                   # the plan must fit the new model (PlanError if not)
        state = AppState(plan, device=old_state.device, audio_seconds=old_state.audio_seconds,
                         runtime=old_state.runtime, threads=old_state.threads,
                         device_file=old_state.device_file)
        state.history = old_state.history
        b, empty = session.baseline_full, CompressionPlan()
        size = core.size(empty)
        state.record(HistoryPoint(
            plan=empty, key=plan_key(empty), label=f"baseline: {label}", wer=b.wer,
            wer_delta=0.0, cer=b.cer, stderr=0.0, kind="full", size_bytes=size.total_bytes,
            size_ratio=size.ratio, baseline=label))
        es = session.eval_set
        self._baseline_note.value = (
            f"<span class='wb-num' data-baseline='{html.escape(label, quote=True)}' "
            f"data-wer='{b.wer:.6f}'></span>The plan now applies to the <b>"
            f"{html.escape(label)}</b>: greedy WER {100 * b.wer:.2f} % measured on all "
            f"{len(es)} utterances of {html.escape(es.name)} (the title's WER is the original "
            f"model's). Earlier points stay in the trade-off plot, in grey.")
        self._build(state, selected=self.tabs.selected_index or 0)

    @classmethod
    def demo(cls, *, eval_limit: int | None = None, **kwargs: Any) -> Workbench:
        """The app on the shipped demo model and held-out real speech (see `demo_inputs`)."""
        inputs = demo_inputs(eval_limit)
        return cls(inputs.model, inputs.eval_set, note=inputs.note, **kwargs)

    # ---- display -----------------------------------------------------------------------------
    def show(self) -> widgets.Widget:
        """The app widget (display it, or let it end a cell)."""
        return self.widget

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def _tab_changed(self, change: dict) -> None:
        for i, view in enumerate(self._views):
            if isinstance(view, LazyView):
                view.set_visible(i == change["new"])

    # ---- scripting ---------------------------------------------------------------------------
    @property
    def plan(self) -> CompressionPlan:
        return self.state.plan

    def set_plan(self, plan: CompressionPlan, label: str = "set from code") -> None:
        """Make `plan` current (validated; undoable), as if edited in the app."""
        self.controller.propose(plan, label)

    def wait(self, timeout: float = 120.0) -> None:
        """Block until the current plan's WER evaluation has been delivered."""
        self.controller.wait(timeout)
