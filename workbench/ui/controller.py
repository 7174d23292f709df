"""Keeps the state's outputs in step with its inputs, by calling the core.

On a plan / device / audio-length change: size and simulated latency are computed at once, on
the calling (UI) thread — arithmetic over cached tables, milliseconds. WER goes to the Session's
worker thread (`Session.submit`: quick estimate, then the full set). A result is shown only if
it belongs to the plan that is current when it arrives, and a quick estimate never replaces the
full result of the same plan: so a stale result never overwrites a newer one, even if a newer
request and an old result cross on the way.

Every callback here runs under the error area's guard; the worker's errors are shown too.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from workbench.plan import CompressionPlan
from workbench.engine.session import Session, WerEstimate, plan_key
from workbench.engine.costs import CostCache
from workbench.ui.error_area import ErrorArea
from workbench.ui.state import ORIGINAL, AppState, HistoryPoint


class Controller:
    """Connects an AppState to the engine (CostCache + Session)."""

    def __init__(self, state: AppState, core: CostCache, session: Session, errors: ErrorArea,
                 kinds: tuple[str, ...] = ("quick", "full"), baseline: str = ORIGINAL,
                 cores: Mapping[str, CostCache] | None = None) -> None:
        self.state = state
        #: The name of the model the plan applies to (the app can change it: Recover tab) and
        #: the cost cache of every baseline the history has points of (to price them).
        self.baseline = baseline
        self.cores = dict(cores or {})
        self.cores[baseline] = core
        self.kinds = kinds
        self.core = core
        self.session = session
        self.errors = errors
        self._wer_lock = threading.Lock()
        self._listeners: list[Callable[[WerEstimate], None]] = []
        state.observe(errors.guard("updating size and latency", self._on_costs_input),
                      names=["plan", "device", "audio_seconds", "runtime", "threads",
                             "device_file"])
        state.observe(errors.guard("starting the WER evaluation", self._on_plan),
                      names=["plan"])
        self.refresh()

    # ---- edits -------------------------------------------------------------------------------
    def propose(self, plan: CompressionPlan, label: str) -> bool:
        """Validate `plan` on the model (PlanError propagates to the caller's guard), then make
        it current. False if it equals the current plan."""
        self.core.resolve(plan)
        return self.state.apply(plan, label)

    def refresh(self) -> None:
        """Recompute everything for the current inputs (used at start)."""
        self._update_costs(plan_changed=True)
        self._submit()

    # ---- costs: synchronous ------------------------------------------------------------------
    def _on_costs_input(self, change: dict) -> None:
        self._update_costs(plan_changed=change["name"] == "plan")

    def _update_costs(self, plan_changed: bool) -> None:
        s = self.state
        if plan_changed or s.size is None:
            s.size = self.core.size(s.plan)
        s.latency = self.core.latency(s.plan, s.device, s.audio_seconds,
                                      runtime=s.runtime or None, threads=s.threads or None,
                                      device_file=s.device_file or None)

    # ---- WER: on the worker thread -----------------------------------------------------------
    def _on_plan(self, change: dict) -> None:
        self._submit()

    def _submit(self) -> None:
        plan = self.state.plan
        with self._wer_lock:
            self.state.wer_pending = True
        self.session.submit(plan, self.errors.guard("showing the WER", self._on_result),
                            self.errors.guard("evaluating WER", self._on_error),
                            kinds=self.kinds)

    def _on_error(self, err: BaseException) -> None:
        with self._wer_lock:
            self.state.wer_pending = False
        raise err  # re-raised inside the guard, so it lands in the error area

    def _on_result(self, result: WerEstimate) -> None:
        with self._wer_lock:
            s = self.state
            if result.plan_key != plan_key(s.plan):
                return  # stale: the user has moved on
            current = s.wer
            if (current is not None and current.plan_key == result.plan_key
                    and current.kind == "full" and result.kind == "quick"):
                return
            size = s.size
            with s.hold_trait_notifications():
                s.wer = result
                s.wer_pending = result.kind != "full"
            s.record(HistoryPoint(
                plan=s.plan, key=result.plan_key, label=s.last_label, wer=result.wer,
                wer_delta=result.wer_delta, cer=result.cer, stderr=result.stderr,
                kind=result.kind, size_bytes=size.total_bytes, size_ratio=size.ratio,
                baseline=self.baseline))
        for listener in self._listeners:
            listener(result)

    def on_wer(self, listener: Callable[[WerEstimate], None]) -> None:
        """Call `listener` (guarded by the caller) after each accepted WER result."""
        self._listeners.append(listener)

    def wait(self, timeout: float = 60.0) -> None:
        """Block until the latest WER evaluation is delivered (scripts and tests)."""
        self.session.wait(timeout)
