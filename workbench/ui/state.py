"""The app's single source of truth: what the user chose, and what the core said about it.

Inputs (changed by controls): the current `plan`, the selected `device`, the `audio_seconds` the
latency is simulated for; `undo_stack` / `redo_stack` of earlier plans.
Outputs (set by the controller from core results): `size`, `latency`, `wer` of the current plan,
and `history`, one point per evaluated plan (the trade-off plot draws it).

Views never talk to each other: they observe this object (always with `names=[...]`) and ask the
controller to change it. Stacks and history are tuples, so every change is an assignment that
traitlets notices. Edits that change several traits at once hold notifications, so an observer
never sees a half-updated state (a plan without its undo entry).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import traitlets

from workbench.plan import CompressionPlan

#: Undo depth; older edits are dropped.
MAX_UNDO = 100
#: The name of the model an app starts from (HistoryPoint.baseline); a recovered model used as
#: the new baseline gets its own name.
ORIGINAL = "original model"


@dataclass(frozen=True)
class Edit:
    """A plan on the undo / redo stack and the label of the edit that left it."""

    plan: CompressionPlan
    label: str


@dataclass(frozen=True)
class HistoryPoint:
    """One evaluated plan: the numbers the core returned for it (nothing computed here)."""

    plan: CompressionPlan
    key: str                   # Session plan key (sha1 of the plan JSON)
    label: str                 # the edit that produced it ("preset: int8 everywhere", ...)
    wer: float
    wer_delta: float
    cer: float
    stderr: float
    kind: str                  # "quick" (estimate) or "full" (measured)
    size_bytes: int
    size_ratio: float
    baseline: str = ORIGINAL   # the model the plan was applied to (points of an earlier
                               # baseline stay in the history, marked)


class AppState(traitlets.HasTraits):
    """See the module docstring. Change it through its methods or by assigning inputs."""

    plan = traitlets.Instance(CompressionPlan)
    device = traitlets.Unicode("rpi4_a72")
    runtime = traitlets.Unicode("")     # "" = the device file's default runtime
    threads = traitlets.Int(0)          # 0 = the device file's default thread count
    device_file = traitlets.Unicode("")  # a user's device JSON (overrides `device`), "" = none
    audio_seconds = traitlets.Float(4.0)
    undo_stack = traitlets.Tuple()
    redo_stack = traitlets.Tuple()
    last_label = traitlets.Unicode("start")
    # ---- outputs, from the core ----
    size = traitlets.Any(None)          # workbench.size report of `plan`
    latency = traitlets.Any(None)       # workbench.latency report of (plan, device, audio_seconds)
    wer = traitlets.Any(None)           # workbench.engine.session.WerEstimate of `plan`, or None (pending)
    wer_pending = traitlets.Bool(False)
    history = traitlets.Tuple()         # HistoryPoint, in order of first evaluation

    def __init__(self, plan: CompressionPlan | None = None, **kwargs: Any) -> None:
        super().__init__(plan=plan if plan is not None else CompressionPlan(), **kwargs)

    # ---- plan edits --------------------------------------------------------------------------
    def apply(self, plan: CompressionPlan, label: str) -> bool:
        """Make `plan` current, remembering the old one for undo. False if nothing changed."""
        if plan == self.plan:
            return False
        with self.hold_trait_notifications():
            self.undo_stack = (*self.undo_stack, Edit(self.plan, self.last_label))[-MAX_UNDO:]
            self.redo_stack = ()
            self.last_label = label
            self.plan = plan
        return True

    def undo(self) -> bool:
        """Back to the plan before the last edit; False if there is none."""
        if not self.undo_stack:
            return False
        previous = self.undo_stack[-1]
        with self.hold_trait_notifications():
            self.redo_stack = (*self.redo_stack, Edit(self.plan, self.last_label))
            self.undo_stack = self.undo_stack[:-1]
            self.last_label = previous.label
            self.plan = previous.plan
        return True

    def redo(self) -> bool:
        """Re-apply the last undone edit; False if there is none."""
        if not self.redo_stack:
            return False
        following = self.redo_stack[-1]
        with self.hold_trait_notifications():
            self.undo_stack = (*self.undo_stack, Edit(self.plan, self.last_label))
            self.redo_stack = self.redo_stack[:-1]
            self.last_label = following.label
            self.plan = following.plan
        return True

    def restore(self, index: int) -> bool:
        """Make history point `index`'s plan current (an undoable edit)."""
        point = self.history[index]
        return self.apply(point.plan, f"restore: {point.label}")

    # ---- outputs -----------------------------------------------------------------------------
    def record(self, point: HistoryPoint) -> None:
        """Add an evaluated plan to the history, or update its point (a full result replaces a
        quick estimate of the same plan; the first label stays). The same plan on another
        baseline is another point. Latency is not stored: it
        depends on the device and audio length, so the trade-off view prices each point."""
        points = list(self.history)
        for i, p in enumerate(points):
            if p.key == point.key and p.baseline == point.baseline:
                if p.kind == "full" and point.kind == "quick":
                    return
                points[i] = replace(point, label=p.label)
                self.history = tuple(points)
                return
        self.history = (*points, point)
