"""Checks of lesson 05 (one layer on the roofline)."""
from __future__ import annotations

import math
from collections.abc import Callable

from workbench.latency.cost import layer_latency
from workbench.latency.devices import load_device
from workbench.latency.table import EffectiveLayer
from workbench.lessons import solutions as ref
from workbench.lessons.checks.core import CheckResult, _run

def _roofline_cases() -> list[tuple[str, dict, float]]:
    """(label, kwargs, expected ms) for real layer kinds priced by `latency.cost.layer_latency`
    on the Raspberry Pi 4 profile: the workbench's own roofline is the reference."""
    from workbench.lessons.edge import roofline_inputs

    dev = load_device("rpi4")
    t, d, dff = 200, 384, 1536
    layers = [
        ("FFN fc1, fp32, 4 s of audio", EffectiveLayer(
            "blocks.0.mlp.fc1", "ffn", "matmul", t * d * dff, d * dff + dff, 32, 0.0,
            4 * t * d, 4 * t * dff, t, d, dff)),
        ("FFN fc1, int8 weights", EffectiveLayer(
            "blocks.0.mlp.fc1", "ffn", "matmul", t * d * dff, d * dff + dff, 8, 0.0,
            4 * t * d, 4 * t * dff, t, d, dff)),
        ("a matmul on one frame (weights dominate)", EffectiveLayer(
            "blocks.0.mlp.fc2", "ffn", "matmul", dff * d, dff * d + d, 32, 0.0,
            4 * dff, 4 * d, 1, dff, d)),
    ]
    return [(label, roofline_inputs(layer, dev), layer_latency(layer, dev).time_ms)
            for label, layer in layers]

def check_roofline_ms(fn: Callable[..., float]) -> CheckResult:
    """fn(flops, bytes_moved, peak_gops, bandwidth_gbs, compute_efficiency, memory_efficiency,
    overhead_ms) -> ms; compared with the workbench's latency model on the Pi 4 profile."""
    def compare(f: Callable) -> list[str]:
        problems = []
        for label, kwargs, want in _roofline_cases():
            got = float(f(**kwargs))
            if not math.isclose(got, want, rel_tol=1e-6):
                compute = kwargs["flops"] / (kwargs["peak_gops"] * 1e9
                                             * kwargs["compute_efficiency"]) * 1e3
                memory = kwargs["bytes_moved"] / (kwargs["bandwidth_gbs"] * 1e9
                                                  * kwargs["memory_efficiency"]) * 1e3


                problems.append(f"{label}: got {got:.4g} ms, the latency model says {want:.4g} "
                                f"ms (compute {compute:.4g} ms, memory {memory:.4g} ms, overhead "
                                f"{kwargs['overhead_ms']:.3g} ms: the larger of the two plus the "
                                f"overhead; GB/s and GOP/s are 1e9)")
        return problems
    return _run("roofline_ms", fn, ref.roofline_ms, compare)
