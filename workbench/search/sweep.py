"""Per-layer sensitivity for every technique: structured sparsity, weight bits, low rank.

    cells = sweep(evaluator, model, CompressionPlan(), bits=(8, 4), ranks=(0.5, 0.25))

Extends `workbench.sensitivity` (sparsity, bits) with low-rank cells for every block Linear
(rank = fraction x min(in, out)). Each cell changes one layer from the base plan; its WER comes
from the evaluator (the Session's quick or full evaluation), its size (exact) and latency
(simulated) from the same evaluator, so a cell says what the change saves, not only what it costs.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from workbench.compress.targets import find_targets
from workbench.plan import CompressionPlan, LayerConfig
from workbench.sensitivity import BITS, SPARSITIES, SweepItem, sweep_items

RANKS: tuple[float, ...] = (0.75, 0.5, 0.25)


def rank_items(model: nn.Module, base_plan: CompressionPlan, ranks: Sequence[float],
               paths: Sequence[str] | None = None) -> list[SweepItem]:
    items = []
    for path, target in find_targets(model).items():
        if target.kind != "linear" or target.block is None or (paths and path not in paths):
            continue
        module = model.get_submodule(path)
        full = min(module.in_features, module.out_features)
        entry = base_plan.layers.get(path)
        base = entry if isinstance(entry, LayerConfig) else LayerConfig()
        for frac in ranks:
            cfg = base.model_copy(update={"rank": max(1, int(round(frac * full))), "energy": None})
            items.append(SweepItem(path, "rank", float(frac), base_plan.with_layer(path, cfg)))
    return items


def sweep(evaluate: Callable[[CompressionPlan, str], Any], model: nn.Module,
          base_plan: CompressionPlan, *, kind: str = "quick",
          sparsities: Sequence[float] = SPARSITIES, bits: Sequence[int] = BITS,
          ranks: Sequence[float] = RANKS, paths: Sequence[str] | None = None,
          progress: Callable[[int, int], None] = lambda done, total: None,
          map_plans: Callable[..., list] | None = None) -> dict:
    """All cells, measured with `evaluate(plan, kind) -> Measures`; a JSON-able dict.

    map_plans(plans, kind, on_done) -> [Measures dict per plan], when given, measures every
    cell at once instead (RayExecutor.map_plans: the cells as Ray tasks); `evaluate` is then
    not called. Each cell is a pure function of its plan, so the numbers are the serial ones."""
    items = sweep_items(model, base_plan, sparsities, bits, paths) + rank_items(
        model, base_plan, ranks, paths)
    items.sort(key=lambda i: (list(find_targets(model)).index(i.path), i.knob))
    progress(0, len(items))
    if map_plans is not None:
        from workbench.search.objective import Measures
        finished = [0]

        def done(index: int, measures: dict) -> None:
            finished[0] += index > 0   # index 0 is the base plan
            progress(finished[0], len(items))
        measured = [Measures(**m) for m in map_plans([base_plan] + [i.plan for i in items],
                                                      kind, done)]
    else:
        measured = [evaluate(base_plan, kind)]
    base = measured[0]
    cells = []
    for n, item in enumerate(items, start=1):
        if map_plans is not None:
            m = measured[n]
        else:
            m = evaluate(item.plan, kind)
            progress(n, len(items))
        cells.append({"path": item.path, "technique": {"sparsity": "prune", "bits": "quant",
                                                       "rank": "low_rank"}[item.knob],
                      "knob": item.knob, "value": item.value, "wer": round(m.wer, 6),
                      "wer_delta": round(m.wer - base.wer, 6), "stderr": round(m.stderr, 6),
                      "size_bytes": m.size_bytes,
                      "size_saved_bytes": base.size_bytes - m.size_bytes,
                      "latency_ms": round(m.latency_ms, 4),
                      "latency_saved_ms": round(base.latency_ms - m.latency_ms, 4)})
    return {"base": {"wer": base.wer, "size_bytes": base.size_bytes,
                     "latency_ms": round(base.latency_ms, 4), "kind": kind},
            "cells": cells, "count": len(cells)}
