"""Roofline over what the runtime runs: fused ops (graph.py) x device x runtime x threads.

Per fused op, with the precision the runtime executes it in (`op_precision`):

    compute_s = MACs / (macs_per_cycle[precision] x clock x efficiency[runtime, kind, precision]
                        x speedup(threads))
    elementwise compute_s = elements x elementwise_cycles / (clock x speedup)
    memory_s  = (weights at their bytes + activations in/out at the runtime's activation bytes)
                / (bandwidth x memory_efficiency)          (threads share the bandwidth)
    time      = max(compute_s, memory_s) + overhead_cycles / clock
    speedup(n) = 1 + (min(n, cores) - 1) x thread_efficiency

int8 on a core without SDOT (Cortex-A72, A73, A53) gets the runtime's `int8_factor`, with SDOT
`int8_factor_dotprod`: so int8 can be slower than fp32 where a runtime's int8 kernels are poor
there (TFLite built-in kernels on a Pi 4), and faster where they are good (XNNPACK).
Microcontroller runtimes run int8 only (weights and activations); a fp32 layer there is priced
as the runtime would have to run it: int8 (after full-integer conversion), flagged `unsupported`.
Unstructured sparsity is not priced: dense kernels multiply the zeros.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from workbench.latency.graph import FusedOp
from workbench.latency.hardware import EdgeDevice, Runtime

BYTES = {"fp32": 4, "fp16": 2, "int8": 1}


@dataclass(frozen=True)
class OpTime:
    path: str
    kind: str
    precision: str
    macs: int
    compute_ms: float
    memory_ms: float
    overhead_ms: float

    @property
    def time_ms(self) -> float:
        return max(self.compute_ms, self.memory_ms) + self.overhead_ms


def weight_precision(bits: int | None, runtime: Runtime, device: EdgeDevice) -> str:
    """What a runtime executes a weight layer of `bits` in (None / 32 = fp32)."""
    if bits is None or bits > 16:
        want = "fp32"
    elif bits > 8:
        want = "fp16"
    else:
        want = "int8"        # <= 8-bit weights run int8 arithmetic (4-bit unpacked to int8)
    if want in runtime.precisions:
        if want == "fp16" and device.macs_per_cycle.get("fp16") is None:
            return "fp32" if "fp32" in runtime.precisions else runtime.base_precision
        return want
    return runtime.base_precision


def op_precision(op: FusedOp, bits: int | None, runtime: Runtime, device: EdgeDevice,
                 model_int8: bool) -> str:
    if op.kind in ("gemm", "conv", "dwconv") and op.weight_elems:
        return weight_precision(bits, runtime, device)
    # activation x activation ops and elementwise: int8 only on full-integer runtimes when the
    # whole model is int8 (or the runtime runs int8 only)
    if runtime.full_integer and (model_int8 or runtime.precisions == ("int8",)):
        return "int8"
    return "fp32" if "fp32" in runtime.precisions else runtime.base_precision


def price_ops(ops: Sequence[FusedOp], bits: Mapping[str, int | None], device: EdgeDevice,
              runtime: Runtime, threads: int) -> list[OpTime]:
    """Time of every op; `bits` maps op path -> weight bits (missing = fp32)."""
    p = runtime.params
    clock = device.clock_mhz * 1e6
    n = max(1, min(int(threads), device.cores))
    speedup = (1 + (n - 1) * p["thread_efficiency"]) * device.efficiency_scale
    bw = device.memory_bandwidth_gbs * 1e9 * p["memory_efficiency"]
    weighted = [op for op in ops if op.kind in ("gemm", "conv", "dwconv") and op.weight_elems]
    model_int8 = bool(weighted) and all(
        weight_precision(bits.get(op.path), runtime, device) == "int8" for op in weighted)
    out = []
    for op in ops:
        prec = op_precision(op, bits.get(op.path), runtime, device, model_int8)
        act_bytes = 1 if (prec == "int8" and runtime.full_integer) else BYTES.get(prec, 4)
        if prec == "int8" and not runtime.full_integer:
            act_bytes = 4
        if op.kind == "elementwise":
            compute = (op.in_elems + op.out_elems) * p["elementwise_cycles"] / (clock * speedup)
            moved = (op.in_elems + op.out_elems) * act_bytes + op.weight_elems * act_bytes
        else:
            eff = runtime.efficiency(op.kind, prec, device.isa)
            compute = op.macs / (device.peak_macs(prec) * eff * speedup)
            w_bytes = BYTES[prec] if op.kind != "attention" else 0
            moved = op.weight_elems * w_bytes + (op.in_elems + op.out_elems) * act_bytes
        memory = moved / bw
        overhead = p["overhead_cycles"] / clock
        out.append(OpTime(op.path, op.kind, prec, op.macs, compute * 1e3, memory * 1e3,
                          overhead * 1e3))
    return out


def total_ms(times: Sequence[OpTime]) -> float:
    t = sum(x.time_ms for x in times)
    if not math.isfinite(t):
        raise ValueError("non-finite latency")
    return t
