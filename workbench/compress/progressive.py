"""Progressive structured pruning while distilling: heads and FFN neurons are removed in steps,
with importance re-scored on the trained weights before each step.

    progressive_recover(teacher, plan, items, RecoverConfig(...), ProgressiveConfig(...))
        -> Recovered(model with the plan's shapes, history)

The schedule is the cubic one of Zhu & Gupta 2017 ("To prune, or not to prune", arXiv:1710.01878,
eq. 1): at pruning event k of n the removed fraction is s_f * (1 - (1 - k/n)^3), so most units
go early, while the network is still redundant, and the last ones slowly. Events are spread over
the first `end_fraction` of training (measured in steps or in the wall-clock budget, whichever is
further along, like the lr schedule of workbench.train.fit); the rest fine-tunes the final shape.

Units are masked, not cut, while training: a gate (one per head / neuron) multiplies the input of
out_proj / fc2, which is exactly what removing the unit does (its q/k/v rows or fc1 row then only
feed a zero). At the end the masked units are cut (the model gets the plan's shapes; outputs do
not change). Importance of the units still alive, between events:
    magnitude   L2 norm of the unit's weights (workbench.compress.importance), trained weights
    taylor      sum over the steps since the last event of (dL/dgate)^2: the first-order
                estimate of the loss change when the unit is removed (Molchanov et al. 2019,
                arXiv:1906.10771, their gate formulation)
    activation  mean |unit output| on the training batches x norm of its out_proj / fc2
                columns: how much the unit writes into the residual stream
The loss is the distillation loss of workbench.compress.recover (teacher outputs cached).
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from workbench.compress import importance as imp
from workbench.compress.prune import count_to_remove, shrink_inputs_, shrink_outputs_
from workbench.compress.recover import (Distiller, RecoverConfig, Recovered,
                                        check_recovery_inputs, frozen_teacher, trainable_params)
from workbench.compress.resolution import resolve
from workbench.errors import PlanError, WorkbenchError
from workbench.train import FitHooks, Item, fit

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
        if not isinstance(self.end_fraction, int | float) or not 0 < self.end_fraction <= 1:
            raise WorkbenchError(f"ProgressiveConfig.end_fraction: in (0, 1], got "
                                 f"{self.end_fraction!r:.30}.")


def cubic_fraction(k: int, n: int) -> float:
    """Fraction of the final removal done after event k of n (Zhu & Gupta 2017, eq. 1)."""
    return 1.0 - (1.0 - k / n) ** 3


class _Gated:
    """One prunable module (attention heads or FFN neurons) with its gate and statistics."""

    def __init__(self, path: str, module: nn.Module, kind: str, final: int) -> None:
        self.path, self.module, self.kind, self.final = path, module, kind, final
        self.n = module.n_heads if kind == "heads" else module.fc1.out_features
        self.width = module.head_dim if kind == "heads" else 1
        self.gate = torch.ones(self.n, requires_grad=True)
        self.alive = torch.ones(self.n, dtype=torch.bool)
        self.taylor = torch.zeros(self.n)
        self.act = torch.zeros(self.n)
        self.act_count = 0
        consumer = module.out_proj if kind == "heads" else module.fc2
        self.handle = consumer.register_forward_pre_hook(self._pre)

    def _pre(self, _module: nn.Module, args: tuple) -> tuple:
        x = args[0]                                       # (B, T, n * width)
        if torch.is_grad_enabled():
            with torch.no_grad():
                per = x.detach().abs().reshape(-1, self.n, self.width).mean(dim=(0, 2))
                self.act += per
                self.act_count += 1
        gate = self.gate.repeat_interleave(self.width) if self.width > 1 else self.gate
        return (x * gate,) + tuple(args[1:])

    def scores(self, method: str) -> torch.Tensor:
        if method == "magnitude":
            return (imp.head_importance(self.module) if self.kind == "heads"
                    else imp.neuron_importance(self.module))
        if method == "taylor":
            return self.taylor.clone()
        consumer = self.module.out_proj if self.kind == "heads" else self.module.fc2
        cols = consumer.weight.detach().pow(2).reshape(-1, self.n, self.width).sum(dim=(0, 2))
        return self.act / max(self.act_count, 1) * cols.sqrt()

    def prune_to(self, count: int, method: str) -> list[int]:
        """Mask the lowest-scored live units until `count` are masked; returns the new ones."""
        todo = count - int((~self.alive).sum())
        if todo <= 0:
            return []
        s = self.scores(method).double()
        s[~self.alive] = math.inf
        drop = torch.argsort(s, stable=True)[:todo].tolist()
        with torch.no_grad():
            for i in drop:
                self.alive[i] = False
                self.gate[i] = 0.0
        self.taylor.zero_()
        self.act.zero_()
        self.act_count = 0
        return drop

    def cut(self) -> None:
        """Remove the masked units for real (shapes shrink; the function does not change)."""
        self.handle.remove()
        keep = torch.nonzero(self.alive).flatten()
        if self.kind == "heads":
            dh = self.module.head_dim
            rows = (keep[:, None] * dh + torch.arange(dh)[None, :]).flatten()
            for proj in ("q_proj", "k_proj", "v_proj"):
                shrink_outputs_(getattr(self.module, proj), rows)
            shrink_inputs_(self.module.out_proj, rows)
            self.module.n_heads = len(keep)
        else:
            shrink_outputs_(self.module.fc1, keep)
            shrink_inputs_(self.module.fc2, keep)


class _Schedule(FitHooks):
    def __init__(self, gated: list[_Gated], cfg: RecoverConfig, sched: ProgressiveConfig,
                 log: list[dict], outer: FitHooks | None) -> None:
        self.gated, self.cfg, self.sched, self.log, self.outer = gated, cfg, sched, log, outer
        self.done = 0
        self.start = time.perf_counter()

    def progress(self, step: int) -> float:
        p = step / self.cfg.steps
        if self.cfg.max_minutes is not None:
            p = max(p, (time.perf_counter() - self.start) / (60 * self.cfg.max_minutes))
        return p

    def on_start(self, model: nn.Module) -> None:
        if self.outer is not None:
            self.outer.on_start(model)

    def after_backward(self, step: int) -> None:
        for g in self.gated:
            if g.gate.grad is not None:
                g.taylor += g.gate.grad.detach().pow(2)
                g.gate.grad = None
        if self.outer is not None:
            self.outer.after_backward(step)

    def after_step(self, step: int) -> None:
        n = self.sched.events
        while self.done < n and self.progress(step) >= (self.done + 1) / n * self.sched.end_fraction:
            self.prune_event(step)
        if self.outer is not None:
            self.outer.after_step(step)

    def prune_event(self, step: int) -> None:
        self.done += 1
        frac = cubic_fraction(self.done, self.sched.events)
        removed = 0
        for g in self.gated:
            target = g.final if self.done == self.sched.events else round(g.final * frac)
            removed += len(g.prune_to(target, self.sched.importance))
        self.log.append({"step": step, "event": self.done, "fraction": round(frac, 4),
                         "removed": removed})

    def finish(self) -> None:
        while self.done < self.sched.events:      # a budget that ended early: prune the rest
            self.prune_event(-1)

    def should_stop(self) -> bool:
        return self.outer.should_stop() if self.outer is not None else False


def progressive_recover(teacher: nn.Module, plan, items: Sequence[Item],
                        config: RecoverConfig | None = None,
                        schedule: ProgressiveConfig | None = None, progress: bool = True,
                        log: Callable[[dict], None] | None = None,
                        hooks: FitHooks | None = None) -> Recovered:
    """Prune `teacher` (not modified) to the heads / neurons amounts of `plan` progressively
    while distilling from it (module docstring). Returns the pruned, trained model (eval mode);
    its history has one entry per step, its `events` one per pruning event."""
    cfg = check_recovery_inputs(teacher, teacher, items, config)
    sched = schedule or ProgressiveConfig()
    model = copy.deepcopy(teacher)
    gated = []
    for path, entry in resolve(plan, teacher).items():
        p = entry.prune
        others = entry.without(("prune",))
        if p is None and others.is_empty():
            continue
        if p is None or p.structure not in ("heads", "neurons") or not others.is_empty():
            raise PlanError(f"layers[{path!r}]: progressive pruning takes structured 'heads' / "
                            f"'neurons' pruning only (prune the rest one-shot, or quantize after "
                            f"recovery); got {entry.model_dump(exclude_none=True)}.")
        module = model.get_submodule(path)
        n = module.n_heads if p.structure == "heads" else module.fc1.out_features
        gated.append(_Gated(path, module, p.structure, count_to_remove(n, p.amount)))
    if not gated:
        raise PlanError("progressive pruning: the plan prunes no heads or neurons.")
    events: list[dict] = []
    schedule_hooks = _Schedule(gated, cfg, sched, events, hooks)
    distiller = Distiller(frozen_teacher(teacher), items, cfg)
    params = trainable_params(model)
    torch.manual_seed(cfg.seed)
    history = fit(model, params, len(items), cfg, lambda idx, step: distiller.loss(model, idx),
                  frames=[it.frames for it in items], desc="progressive", progress=progress,
                  log=log, hooks=schedule_hooks)
    schedule_hooks.finish()
    for g in gated:
        g.cut()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return Recovered(model, tuple(history), tuple(events))
