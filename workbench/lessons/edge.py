"""Lesson 05's handles on the latency models, so its cells call public names only.

    trace = trace_for_edge(model, plan)              # one trace (a 1 s clip), fused ops
    trace.at(8.0).price("rpi4_a72", "xnnpack", 2)    # a LatencyReport; no model run
    roofline_inputs(layer, load_device("rpi4"))      # the arguments of the lab's roofline_ms
    published_fit()                                  # the leave-one-model-out record

`trace.at(s).price(device, runtime, threads)` is what `predict_latency(model, device, s, plan,
runtime=, threads=)` computes for an edge device, split so that one trace serves every device,
runtime, thread count and (for sequence models) audio length: lesson 05 prices a plan on six
devices per slider move. tests/test_lessons_edge.py checks both against the latency package.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from workbench.latency import EffectiveLayer, LatencyReport
from workbench.latency import published
from workbench.latency.cost import roofline_terms
from workbench.latency.devices import DeviceProfile
from workbench.latency.graph import FusedOp, ops_at_scale
from workbench.latency.predict import (bits_by_op, check_seconds, edge_report, resolve_target,
                                       roles_for, trace_model)


@dataclass(frozen=True)
class EdgeTrace:
    """The fused ops of one model (its plan applied) as a runtime runs them, for `seconds` of
    input; `bits` is the weight width of each op's module (None: float)."""

    ops: tuple[FusedOp, ...]
    bits: Mapping[str, int | None]
    roles: Mapping[str, str]
    seconds: float

    def at(self, seconds: float) -> EdgeTrace:
        """The same model on `seconds` of input (latency.graph.ops_at_scale: work and
        activations grow with the length, attention products with its square); no model run."""
        seconds = check_seconds(seconds, "seconds")
        return EdgeTrace(tuple(ops_at_scale(self.ops, seconds / self.seconds)), self.bits,
                         self.roles, seconds)

    def with_bits(self, bits: Mapping[str, int]) -> EdgeTrace:
        """Weights of the matching module paths at `bits` ({path or fnmatch pattern: bits},
        e.g. {"*": 8}); the other ops keep theirs."""
        chosen = bits_by_op(self.ops, dict(bits), {})
        return EdgeTrace(self.ops, {p: chosen.get(p) if chosen.get(p) is not None else b
                                    for p, b in self.bits.items()}, self.roles, self.seconds)

    def price(self, device: str, runtime: str | None = None,
              threads: int | None = None) -> LatencyReport:
        """Simulated latency on device x runtime x threads (defaults: the device file's), with
        the leave-one-model-out error band, as predict_latency reports it."""
        dev, rt, n = resolve_target(device, runtime, threads)
        return edge_report(self.ops, self.bits, dev, rt, n, self.seconds, self.roles)


def trace_for_edge(model: nn.Module, plan: Any = None, seconds: float = 1.0,
                   make_inputs: Callable[[float], tuple[Any, ...]] | None = None) -> EdgeTrace:
    """Trace `model` once (a CompressionPlan or {path: bits} applied to a copy) on `seconds`
    of input; `make_inputs(seconds)` for a model that does not take (features, lengths)."""
    seconds = check_seconds(seconds, "seconds")
    ops, bits, traced = trace_model(model, seconds, plan, make_inputs)
    return EdgeTrace(tuple(ops), bits, roles_for(traced, ops), seconds)


def roofline_inputs(layer: EffectiveLayer, device: DeviceProfile) -> dict[str, float]:
    """The arguments of lesson 05's roofline_ms for one layer of a LayerTable on a (host-style)
    DeviceProfile: flops, bytes_moved, peak_gops, bandwidth_gbs, compute_efficiency,
    memory_efficiency, overhead_ms. With them, max(compute, memory) + overhead is
    `latency.cost.layer_latency(layer, device).time_ms` (tests/test_lessons_edge.py): both come
    from `latency.cost.roofline_terms`, so the lesson's formula cannot drift from the model's."""
    return roofline_terms(layer, device)


def published_fit() -> dict[str, Any]:
    """The fit on data/latency_measurements.jsonl as `workbench latency --fit` last saved it:
    rows, `lomo` (leave-one-model-out MAPE by family, Spearman, worst rows),
    `lomo_predictions` (measured vs predicted per row), `band_pct_by_device` and
    `band_pct_by_family` (the ± band every edge report carries)."""
    return json.loads((Path(published.__file__).parent / published.FIT_FILE).read_text())
