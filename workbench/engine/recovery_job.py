"""Recovery you can watch: `recover_plan` as a cancellable job of the engine's queue that reports
every training step's losses and, every k steps, a WER estimate of the model being trained.

    job = watch_recovery(plan, teacher, probe, Recipe("distill", steps=120, every=10),
                         on_step=..., on_estimate=..., on_done=..., on_error=...)
    job.cancel()          # stops at the next training step; nothing is saved

The estimate is the greedy WER of the model *as it is at that step* on `probe`, a small fixed
subset of a held-out set (the dashboard passes the quick subset of its eval set, which recovery
never trains on). It runs in the job, between two training steps, while the job holds the run
lock, so it costs the training a few percent (16 demo utterances: ~0.3 s against ~2 s per step)
and never runs on the UI thread. Evaluating does not touch the random state the training draws
from (batches come from fit's own generator; eval mode has no dropout), so a watched run trains
exactly as an unwatched one (tests/test_ui_recovery.py checks the losses).

When training ends the job loads the saved checkpoint and measures it on the whole eval set the
caller gives (`measure`): that number, not the estimate, is what a new baseline starts from.
`rebase(...)` builds that baseline's Session and cost cache (model runs too: call it in a job).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from workbench.compress.progressive import ProgressiveConfig
from workbench.engine.costs import CostCache
from workbench.engine.jobs import BACKGROUND, JOBS, RUN_LOCK, USER, Job, JobQueue, PriorityLock
from workbench.engine.session import Session
from workbench.errors import WorkbenchError
from workbench.evaluate import EvalResult, EvalSet, evaluate
from workbench.models import load_checkpoint
from workbench.plan import CompressionPlan
from workbench.recovery import (DEFAULT_CONFIG, Estimate, RecoveryResult, WerProbe,
                                recover_plan)

#: Recipe kinds the dashboard offers: one-shot pruning + distillation, quantization-aware
#: distillation for the plan's weight bits, progressive pruning while distilling.
KINDS = ("distill", "qat", "progressive")
IMPORTANCES = ("taylor", "magnitude", "activation")


@dataclass(frozen=True)
class Recipe:
    """What to run: `kind`, the importance of progressive pruning, the budget (steps, and
    minutes: whichever ends first; None = no time limit) and an estimate every `every` steps."""

    kind: str = "distill"
    importance: str = "taylor"
    steps: int = DEFAULT_CONFIG.steps
    minutes: float | None = DEFAULT_CONFIG.max_minutes
    every: int = 10

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise WorkbenchError(f"Recipe.kind: one of {', '.join(KINDS)}, got {self.kind!r:.30}.")
        if self.importance not in IMPORTANCES:
            raise WorkbenchError(f"Recipe.importance: one of {', '.join(IMPORTANCES)}, got "
                                 f"{self.importance!r:.30}.")
        for name in ("steps", "every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise WorkbenchError(f"Recipe.{name}: an integer >= 1, got {value!r:.30}.")
        if self.minutes is not None and (isinstance(self.minutes, bool) or not isinstance(
                self.minutes, int | float) or not self.minutes > 0):
            raise WorkbenchError(f"Recipe.minutes: a number > 0 (or None: no time limit), got "
                                 f"{self.minutes!r:.30}.")

    def config(self):
        """The RecoverConfig: the measured default (recovery.DEFAULT_CONFIG) with this budget;
        warm-up shortened for short runs (a tenth of the steps at most)."""
        return replace(DEFAULT_CONFIG, steps=self.steps, max_minutes=self.minutes,
                       warmup=min(DEFAULT_CONFIG.warmup, max(1, self.steps // 10)))

    def describe(self) -> str:
        what = {"distill": "one-shot pruning, then distillation from the original",
                "qat": "quantization-aware distillation for the plan's weight bits",
                "progressive": f"progressive pruning ({self.importance} importance) while "
                               f"distilling"}[self.kind]
        budget = f"{self.steps} steps" + (f" or {self.minutes:g} min, whichever ends first"
                                          if self.minutes is not None else "")
        return f"{what}; {budget}"


@dataclass(frozen=True)
class Watched:
    """A finished recovery: the saved result, the recovered model (float, eval mode), its WER
    measured on the whole `measure` set, and whether training ran now (False: a cached result
    of an identical earlier run was returned)."""

    result: RecoveryResult
    model: torch.nn.Module
    measured: EvalResult
    measured_on: str
    trained_now: bool

    @property
    def rest(self) -> CompressionPlan:
        """The plan's part recovery did not bake in (its quantization), to apply on top."""
        return CompressionPlan.from_json(self.result.export_plan.read_text())


def subset(eval_set: EvalSet, indices: list[int], name: str | None = None) -> EvalSet:
    """The utterances `indices` of `eval_set`, in that order (features shared, not copied)."""
    return EvalSet(name or f"{eval_set.name} (subset of {len(indices)})", eval_set.manifest,
                   tuple(eval_set.ids[i] for i in indices),
                   tuple(eval_set.texts[i] for i in indices),
                   tuple(eval_set.features[i] for i in indices), eval_set.feature_kind)


class _Watch(WerProbe):
    """fit's callbacks in the job: the WER estimate at start and every `every` steps (WerProbe,
    the same estimate the CLI's progress bar shows), progress per step, the run lock released
    between two steps (a slider's evaluation gets in), and a cancelled job stopped at the next
    step by raising Cancelled (nothing half-trained is saved)."""

    def __init__(self, job: Job, total: int, probe: EvalSet, every: int,
                 on_estimate: Callable[[Estimate], None] | None, lock: PriorityLock,
                 priority: int) -> None:
        super().__init__(probe, every, on_estimate, source=(
            f"estimate: greedy WER of the model being trained, on {len(probe)} held-out "
            f"utterances ({probe.name}), never trained on"))
        self.job, self.total, self.lock, self.priority = job, total, lock, priority
        self.steps = 0

    def after_step(self, step: int) -> None:
        self.steps = step
        self.job.progress(step, self.total)
        super().after_step(step)
        self.lock.release()
        self.lock.acquire(self.priority)

    def should_stop(self) -> bool:
        self.job.check()
        return False


def watch_recovery(plan: CompressionPlan, teacher: torch.nn.Module, probe: EvalSet,
                   recipe: Recipe, *, measure: EvalSet | None = None,
                   manifests: list[Path] | None = None, out_dir: Path | None = None,
                   teacher_name: str = "the dashboard's model",
                   on_step: Callable[[dict], None] | None = None,
                   on_estimate: Callable[[Estimate], None] | None = None,
                   on_progress: Callable[[int, int], None] | None = None,
                   on_done: Callable[[Any], None] | None = None,
                   on_error: Callable[[BaseException], None] | None = None,
                   queue: JobQueue | None = None) -> Job:
    """Submit the recovery of `plan` on `teacher` (module docstring). `on_step(entry)`: every
    step's losses (fit's log); `on_estimate(Estimate)`; `on_done(Watched)`, or None when
    cancelled; `measure`: the set the result is measured on (default: `probe`). Returns the Job.
    Training data: `manifests` (None: the demo corpus, built offline if missing); a manifest
    with any utterance of a held-out set is refused here (DataError), before a job exists."""
    from workbench.data.held_out import refuse_held_out
    refuse_held_out(manifests, option="training manifest")
    cfg = recipe.config()
    progressive = (ProgressiveConfig(importance=recipe.importance)
                   if recipe.kind == "progressive" else None)
    measure = measure if measure is not None else probe

    def run(job: Job) -> Watched:
        hooks = _Watch(job, cfg.steps, probe, recipe.every, on_estimate, RUN_LOCK, BACKGROUND)
        # The run lock around model runs only (training: the hooks release it between two
        # steps), not around building the training data.
        result = recover_plan(plan, teacher, out_dir=out_dir, config=cfg,
                              manifests=manifests, teacher_name=teacher_name,
                              progress=False, evaluate_sets=False, log=on_step,
                              qat=recipe.kind == "qat", progressive=progressive,
                              hooks=hooks, run_lock=lambda: RUN_LOCK.hold(BACKGROUND))
        job.check()
        model = load_checkpoint(result.checkpoint)
        with RUN_LOCK.hold(BACKGROUND):
            measured = evaluate(model, measure)
        return Watched(result, model, measured, measure.name, trained_now=hooks.model is not None)

    return (queue or JOBS).submit(run, name="recovery", priority=BACKGROUND, on_done=on_done,
                                  on_error=on_error, on_progress=on_progress)


def rebase(session: Session, model: torch.nn.Module, device: str, audio_seconds: float
           ) -> tuple[Session, CostCache]:
    """The Session and cost cache of `model` as a new baseline, with `session`'s eval set and
    quick subset (model runs: the new baseline's full-set WER, its cost tables)."""
    with RUN_LOCK.hold(USER):
        new = session.rebased(model)
    core = CostCache(new.baseline)
    core.warm_up(device, float(audio_seconds))
    return new, core
