"""Progressive pruning while distilling: attention heads, FFN neurons, conv channels and single
weights (unstructured) are removed in steps, with importance re-scored on the trained weights
before each step.

    progressive_recover(teacher, plan, items, RecoverConfig(...), ProgressiveConfig(...))
        -> Recovered(model exactly as the one-shot path shapes it, history, events)

The schedule is the cubic one of Zhu & Gupta 2017 ("To prune, or not to prune", arXiv:1710.01878,
eq. 1): at pruning event k of n the removed fraction is s_f * (1 - (1 - k/n)^3), so most units
go early, while the network is still redundant, and the last ones slowly. Events are spread over
the first `end_fraction` of training (measured in steps or in the wall-clock budget, whichever is
further along: workbench.train.budget_progress, which fit's lr schedule follows too); the rest
fine-tunes the final shape.
Every entry of the plan follows the same schedule: heads / neurons / channels counted in units,
unstructured entries in weights.

While training, units are gated and weights masked (workbench.compress.progressive_units: how
a mask is made exact, and the importance methods magnitude / taylor / activation). At the end
the masked units are cut and the weight masks kept, so the model has the shapes, `weight_mask`
buffers and sparsity the one-shot `compress(teacher, plan)` gives (same size(), export and
latency), only with other units / weights chosen and trained weights. As one-shot does, an
unstructured entry inside a pruned module (e.g. fc1 of an FFN losing neurons) masks its amount
of the weights that remain after the cut.
The loss is the distillation loss of workbench.compress.distill (teacher outputs cached); the
front-end is frozen there, so the plan may not prune it here.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn

from workbench.compress.progressive_units import GatedUnits, MaskedWeights, unit_count
from workbench.compress.prune import count_to_remove
from workbench.compress.distill import (RecoverConfig, Recovered, _front_end,
                                        check_recovery_inputs, distill, finish_recovery)
from workbench.compress.resolution import resolve
from workbench.compress.targets import graph_groups
from workbench.errors import PlanError, WorkbenchError
from workbench.train import FitHooks, Item

Importance = Literal["magnitude", "taylor", "activation"]


@dataclass(frozen=True)
class ProgressiveConfig:
    importance: Importance = "taylor"
    events: int = 8                 # pruning events (n of the cubic schedule)
    end_fraction: float = 0.6       # pruning ends at this fraction of training

    def __post_init__(self) -> None:
        if self.importance not in ("magnitude", "taylor", "activation"):
            raise WorkbenchError(f"ProgressiveConfig.importance: magnitude | taylor | "
                                 f"activation, got {self.importance!r:.30}.")
        if isinstance(self.events, bool) or not isinstance(self.events, int) or self.events < 1:
            raise WorkbenchError(f"ProgressiveConfig.events: an integer >= 1, got "
                                 f"{self.events!r:.30}.")
        if isinstance(self.end_fraction, bool) or not isinstance(self.end_fraction, int | float) \
                or not 0 < self.end_fraction <= 1:
            raise WorkbenchError(f"ProgressiveConfig.end_fraction: in (0, 1], got "
                                 f"{self.end_fraction!r:.30}.")


def cubic_fraction(k: int, n: int) -> float:
    """Fraction of the final removal done after event k of n (Zhu & Gupta 2017, eq. 1)."""
    return 1.0 - (1.0 - k / n) ** 3


class _Schedule(FitHooks):
    def __init__(self, gated: list[GatedUnits], masked: list[MaskedWeights],
                 sched: ProgressiveConfig, log: list[dict], outer: FitHooks | None) -> None:
        self.gated, self.masked, self.sched = gated, masked, sched
        self.log, self.outer = log, outer
        self.done = 0

    def on_start(self, model: nn.Module) -> None:
        if self.outer is not None:
            self.outer.on_start(model)

    def after_backward(self, step: int) -> None:
        for unit in (*self.gated, *self.masked):
            unit.accumulate()
        if self.outer is not None:
            self.outer.after_backward(step)

    def on_progress(self, step: int, fraction: float) -> None:
        """Event k of n fires once training is k/n of end_fraction along (fit's progress)."""
        n = self.sched.events
        while self.done < n and fraction >= (self.done + 1) / n * self.sched.end_fraction:
            self.prune_event(step)
        if self.outer is not None:
            self.outer.on_progress(step, fraction)

    def after_step(self, step: int) -> None:
        if self.outer is not None:
            self.outer.after_step(step)

    def prune_event(self, step: int) -> None:
        """Structured units first, then weights (which only count inside live units), as the
        one-shot path orders them; the last event reaches every entry's final amount."""
        self.done += 1
        frac = cubic_fraction(self.done, self.sched.events)
        last = self.done == self.sched.events
        removed = sum(len(g.prune_to(g.final if last else round(g.final * frac)))
                      for g in self.gated)
        masked = sum(m.prune_to(m.final if last else round(m.final * frac)) for m in self.masked)
        self.log.append({"step": step, "event": self.done, "fraction": round(frac, 4),
                         "removed": removed, "masked": masked})

    def finish(self) -> None:
        """Fire the events left (step -1) when a caller's should_stop() ended training early,
        so the result still has the plan's shapes. (The step and wall-clock budgets cannot
        leave any: they end at progress 1 >= end_fraction.)"""
        while self.done < self.sched.events:
            self.prune_event(-1)

    def should_stop(self) -> bool:
        return self.outer.should_stop() if self.outer is not None else False


def _prunable(plan, teacher: nn.Module) -> list[tuple[str, str, float]]:
    """(path, structure, amount) of every pruning entry of `plan` on `teacher`; PlanError for
    anything progressive pruning cannot do (with what to do instead)."""
    groups = graph_groups(teacher)
    out = []
    for path, entry in resolve(plan, teacher).items():
        p, others = entry.prune, entry.without(("prune",))
        if p is None and others.is_empty():
            continue
        where = f"layers[{path!r}]"
        if p is None or not others.is_empty():
            raise PlanError(f"{where}: progressive pruning takes pruning only (heads, neurons, "
                            f"channels, unstructured); quantize after recovery, factorize "
                            f"one-shot; got {entry.model_dump(exclude_none=True)}.")
        if path in groups:
            raise PlanError(f"{where}: a group found from the recorded graph; progressive "
                            f"pruning needs attention / FFN / conv modules by name, so prune "
                            f"this group one-shot.")
        if _front_end(teacher, f"{path}.weight"):
            raise PlanError(f"{where}: part of the front-end, which recovery keeps frozen (the "
                            f"student runs on the teacher's front-end output); prune it one-shot "
                            f"after recovery, or leave it dense.")
        if p.amount > 0:
            out.append((path, p.structure, p.amount))
    if not out:
        raise PlanError("progressive pruning: the plan prunes nothing (no heads, neurons, "
                        "channels or unstructured weights with an amount > 0).")
    return out


def progressive_recover(teacher: nn.Module, plan, items: Sequence[Item],
                        config: RecoverConfig | None = None,
                        schedule: ProgressiveConfig | None = None, progress: bool = True,
                        log: Callable[[dict], None] | None = None,
                        hooks: FitHooks | None = None) -> Recovered:
    """Prune `teacher` (not modified) to the pruning amounts of `plan` progressively while
    distilling from it (module docstring). The plan's own `prune.importance` is not used: the
    schedule's importance re-scores at every event. Returns the pruned, trained model (eval
    mode); its history has one entry per step, its `events` one per pruning event (structured
    units `removed`, weights `masked`)."""
    cfg = check_recovery_inputs(teacher, teacher, items, config)
    sched = schedule or ProgressiveConfig()
    if not isinstance(sched, ProgressiveConfig):
        raise WorkbenchError(f"progressive_recover(schedule=...): expected a ProgressiveConfig, "
                             f"got {type(sched).__name__}.")
    entries = _prunable(plan, teacher)
    model = copy.deepcopy(teacher)
    gated = [GatedUnits(path, module, kind, count_to_remove(unit_count(module, kind), amount),
                        sched.importance)
             for path, kind, amount in entries if kind != "unstructured"
             for module in [model.get_submodule(path)]]
    masked = []
    for path, kind, amount in entries:
        if kind == "unstructured":
            layer = model.get_submodule(path)
            slicers = [(g, dim, units) for g in gated for part, dim, units in g.weight_units()
                       if part is layer]
            masked.append(MaskedWeights(path, layer, amount, slicers, sched.importance))
    events: list[dict] = []
    schedule_hooks = _Schedule(gated, masked, sched, events, hooks)
    history = distill(model, teacher, items, cfg, desc="progressive", progress=progress,
                      log=log, hooks=schedule_hooks)
    schedule_hooks.finish()
    for m in masked:            # plain layers with weight_mask first: the cut slices the masks
        m.finish()
    for g in gated:
        g.cut()
    return finish_recovery(model, history, events)
