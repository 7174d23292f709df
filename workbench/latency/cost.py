"""The roofline latency model: per-layer time of a (compressed) model on a device, +- a band.

Per effective layer (workbench.latency.table):

    compute_s  = 2 * MACs / (peak(precision) * efficiency[op class])
    memory_s   = bytes_moved / (bandwidth * efficiency.memory)
    time       = max(compute_s, memory_s) + ops * overhead_per_op

- precision (`compute_precision`): int8 for 5..8-bit weights of a matmul/conv, fp16 for 16-bit
  weights where the device has fp16 arithmetic, else fp32. <= 4-bit weights run what the device
  profile's `int4_compute` says: "int8" (unpacked to int8, the int8 rate) or "fp32" (ONNX
  Runtime's CPU MatMulNBits at the accuracy level our export writes: the weights stay 4-bit in
  memory, every call dequantizes them to fp32, then the fp32 GEMM; the dequantization adds
  params x int4_dequant_ns_per_weight to the compute time). 5..8-bit Conv weights run what
  `int8_conv_compute` says: "int8" or "fp32" (our ONNX export: int8 weights + DequantizeLinear +
  the fp32 Conv, dequantized every call: + params x int8_conv_dequant_ns_per_weight; ORT dynamic
  quantization is only asked for MatMuls). On the Cortex-A72 (rpi4) the int8
  peak equals the fp32 peak (no SDOT), so int8 only shrinks the bytes; on the A76 (rpi5, phone)
  SDOT makes int8 faster.
- structured pruning (heads, neurons, channels) and low rank shrink the module shapes and so the
  MACs and bytes; unstructured sparsity changes nothing here: dense runtimes (ONNX Runtime MLAS,
  XNNPACK, CMSIS-NN) store and multiply the zeros.
- bytes_moved: weights at their bits + activations read and written (fp32, or the device's
  quantized_activation_bits for int8 layers on full-integer runtimes); attention scores also
  write, normalise and re-read the (H, T, T) score matrix.
- elementwise ops (norms, activations) count ELEMENTWISE_FLOPS per element and are memory-bound
  in practice.
- ops: ONNX nodes one layer becomes in our dynamo export after ONNX Runtime's graph fusions
  (OPS_PER_LAYER, counted in the optimised graph of whisper_ctc), + 1 for the DequantizeLinear
  of a dequantized Conv weight; each pays the per-op overhead.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from workbench.errors import WorkbenchError
from workbench.plan import CompressionPlan
from workbench.latency import predict as edge
from workbench.latency.devices import DeviceProfile, known_devices, load_device
from workbench.latency.report import LatencyReport, LayerLatency, MemoryFit
from workbench.latency.table import BitsOrPlan, EffectiveLayer, LayerTable, layer_table

#: FLOPs per element of a norm / activation (mean, variance, normalise, affine ~ 8).
ELEMENTWISE_FLOPS = 8
#: ONNX Runtime nodes per layer after graph optimisation (counted on whisper_ctc's export):
#: MatMul + bias Add; int8: DynamicQuantizeMatMul / MatMulIntegerToFloat + the shared input
#: quantization; attention scores: head split/merge Reshape/Transpose x 8, scaled QK^T
#: (FusedMatMul), mask (IsNaN/Where), Softmax, AV MatMul.
OPS_PER_LAYER = {"matmul": 2, "conv": 1, "attention_scores": 12, "elementwise": 1}


def predict_latency(model: nn.Module | LayerTable, device: str | DeviceProfile | None = "host",
                    audio_seconds: float | None = 4.0, weight_bits: BitsOrPlan = None, *,
                    make_inputs: Callable[[float], tuple[Any, ...]] | None = None,
                    runtime: str | None = None, threads: int | None = None,
                    device_file: str | None = None, seconds: float | None = None,
                    plan: BitsOrPlan = None) -> LatencyReport:
    """Simulated latency of `model` (or a prepared LayerTable) on `device` for `audio_seconds`.

    device: an edge device name (workbench.latency.edge_device_names(), e.g. 'rpi4_a72',
    'cortex_m4_stm32l4'; old names 'rpi4', 'rpi5', 'phone_a76', 'cortex_m7', 'jetson_orin_nano',
    core-only names 'cortex_m4', 'riscv_u74', ... and unique prefixes map to their device files:
    latency.predict.canonical_device), or 'host' (this machine, ONNX Runtime, calibrated by
    `workbench calibrate`). device_file: your own device JSON (workbench.latency.hardware).
    runtime / threads: default from the device file (edge devices only).
    weight_bits (alias plan): None (fp32 / as the model says), {module path or pattern: bits},
    or a CompressionPlan (applied to a copy). seconds: alias of audio_seconds.
    make_inputs(seconds) -> input tuple, for models that do not take (features, lengths).
    Edge devices price the traced graph after the runtime's fusions (latency.graph); a LayerTable
    is converted row by row (latency.predict.ops_from_table).
    """
    if seconds is not None:
        audio_seconds = seconds
    if plan is not None:
        if weight_bits is not None:
            raise edge.LatencyInputError("give the plan once: weight_bits or plan, not both.")
        weight_bits = plan
    from workbench.checks import check_bits_or_plan  # issue 11: a clear error for "int8", 8, [..]
    weight_bits = check_bits_or_plan(weight_bits, "predict_latency")
    audio_seconds = edge.check_seconds(audio_seconds)
    if device is None and device_file is None:
        device = "host"
    if edge.is_edge(device, device_file):
        dev, rt, n = edge.resolve_target(device, runtime, threads, device_file)
        if isinstance(model, LayerTable):
            table = model if model.audio_seconds == audio_seconds else \
                model.at_seconds(audio_seconds)
            if weight_bits is not None:
                if isinstance(weight_bits, CompressionPlan):
                    raise WorkbenchError("weight_bits: a CompressionPlan needs the model, not a "
                                         "LayerTable; pass the model, or use "
                                         "latency.table_for_plan(table, model, plan).")
                table = table.with_bits(weight_bits)
            ops = edge.ops_from_table(table)
            bits = {layer.path: (None if layer.weight_bits >= 32 else layer.weight_bits)
                    for layer in table.layers}
            roles = {layer.path: layer.role for layer in table.layers}
        else:
            ops, bits, traced = edge.trace_model(model, audio_seconds, weight_bits, make_inputs)
            roles = edge.roles_for(traced, ops)
        return edge.edge_report(ops, bits, dev, rt, n, audio_seconds, roles)
    if runtime is not None or threads is not None:
        raise edge.LatencyInputError(
            f"runtime / threads: the '{device}' profile is ONNX Runtime on this machine with its "
            f"calibrated thread count; runtime and threads apply to edge devices "
            f"({', '.join(edge.edge_names())}).")
    if isinstance(device, str):
        if device not in known_devices():
            raise edge.unknown_device_error(device, sorted(set(known_devices()) - set(
                edge.ALIASES)) + list(edge.edge_names()))
    dev = load_device(device)
    if isinstance(model, LayerTable):
        table = model if model.audio_seconds == audio_seconds else model.at_seconds(audio_seconds)
        if weight_bits is not None:
            if isinstance(weight_bits, CompressionPlan):
                raise WorkbenchError("weight_bits: a CompressionPlan needs the model, not a "
                                     "LayerTable; pass the model, or use "
                                     "latency.table_for_plan(table, model, plan).")
            table = table.with_bits(weight_bits)
    else:
        table = layer_table(model, audio_seconds, weight_bits, make_inputs=make_inputs)
    return price_table(table, dev)


def price_table(table: LayerTable, dev: DeviceProfile) -> LatencyReport:
    """The roofline over a table (no model run): what the interactive UI calls per change."""
    layers = tuple(layer_latency(layer, dev) for layer in table.layers)
    total = sum(x.time_ms for x in layers)
    band = dev.error_band_pct
    how = (f"calibrated {dev.calibrated_at}" if dev.calibrated else "uncalibrated")
    source = (f"simulated, roofline, device {dev.name}, runtime {dev.runtime}, "
              f"+-{band:.0f} % ({how})")
    return LatencyReport(device=dev.name, runtime=dev.runtime, audio_seconds=table.audio_seconds,
                         layers=layers, total_ms=total,
                         real_time_factor=total / 1e3 / table.audio_seconds,
                         error_band_pct=band, calibrated=dev.calibrated,
                         memory=memory_fit(table, dev), source=source,
                         band_source=dev.sources.get("error_band_pct", ""))


def memory_fit(table: LayerTable, dev: DeviceProfile) -> MemoryFit:
    """Weights and peak activations of `table` against the device's memories (no pricing)."""
    act_scale = _activation_scale(table, dev)
    return MemoryFit(
        weights_bytes=table.weight_bytes,
        weights_limit_bytes=int((dev.flash_mb if dev.flash_mb is not None else dev.ram_mb) * 1e6),
        weights_store="flash" if dev.flash_mb is not None else "RAM",
        activations_bytes=int(table.peak_activation_bytes * act_scale),
        activations_limit_bytes=int(dev.sram_kb * 1e3 if dev.sram_kb is not None
                                    else dev.ram_mb * 1e6),
        activations_store="SRAM" if dev.sram_kb is not None else "RAM")


def dequant_ns_per_weight(layer: EffectiveLayer, dev: DeviceProfile) -> float | None:
    """ns per weight the runtime spends dequantizing this layer's integer weights to fp32 on every
    call, or None when it runs them with integer kernels (or they are not integer): <= 4-bit
    matmul / conv weights on an int4_compute == "fp32" device, 5..8-bit conv weights on an
    int8_conv_compute == "fp32" device (module docstring)."""
    if layer.op not in ("matmul", "conv") or layer.params <= 0 or layer.weight_bits > 8:
        return None
    if layer.weight_bits <= 4:
        if dev.int4_compute == "fp32":
            return float(dev.int4_dequant_ns_per_weight or 0.0)
        return None
    if layer.op == "conv" and dev.int8_conv_compute == "fp32":
        return float(dev.int8_conv_dequant_ns_per_weight or 0.0)
    return None


def dequantized_per_call(layer: EffectiveLayer, dev: DeviceProfile) -> bool:
    """True when the runtime keeps this layer's weights as integers and dequantizes them to fp32
    on every call (<= 4-bit weights with int4_compute == "fp32", 5..8-bit Conv weights with
    int8_conv_compute == "fp32"), instead of running int8 kernels."""
    return dequant_ns_per_weight(layer, dev) is not None


def compute_precision(layer: EffectiveLayer, dev: DeviceProfile) -> str:
    """The arithmetic `dev`'s runtime runs `layer` in: the table's precision (its weight bits),
    except integer weights the runtime dequantizes and computes in fp32 (module docstring)."""
    return "fp32" if dequantized_per_call(layer, dev) else layer.precision


def roofline_terms(layer: EffectiveLayer, dev: DeviceProfile) -> dict[str, float]:
    """The roofline's inputs for one layer (lesson 05's roofline_ms takes exactly these):
    flops, bytes_moved, peak_gops, bandwidth_gbs, compute_efficiency, memory_efficiency,
    overhead_ms. time = max(flops / (peak x eff), bytes / (bandwidth x eff)) + overhead.
    flops: 2 x MACs (elementwise: ELEMENTWISE_FLOPS per element); for a layer whose integer
    weights are dequantized on every call, plus the fp32 FLOPs that take as long as that
    dequantization (params x dequant_ns_per_weight at this layer's fp32 rate)."""
    eff = dev.efficiency
    precision = compute_precision(layer, dev)
    if layer.op == "matmul":
        op_eff = eff.matmul_int8 if precision == "int8" else eff.matmul_fp32
        flops = 2 * layer.macs
    elif layer.op == "conv":
        op_eff, flops = eff.conv, 2 * layer.macs
    elif layer.op == "attention_scores":
        op_eff, flops = eff.attention_scores, 2 * layer.macs
    else:
        op_eff, flops = eff.elementwise, ELEMENTWISE_FLOPS * layer.output_bytes // 4
    peak = dev.peak_ops(precision)
    ns_per_weight = dequant_ns_per_weight(layer, dev)
    if ns_per_weight is not None:
        # every weight unpacked, offset and scaled to fp32 once per call (MLAS SQ4BitGemm
        # CompFp32: per panel of N columns, then SGEMM over all rows; a Conv's DequantizeLinear
        # over its whole weight): a cost that does not shrink with shorter audio, which is why
        # int4 loses to fp32 at 5 s on the host
        dequant_s = layer.params * ns_per_weight * 1e-9
        flops += dequant_s * peak * op_eff
    # a dequantized Conv's weight goes through its own DequantizeLinear node (MatMulNBits
    # dequantizes inside the one node): one more node's overhead
    ops = OPS_PER_LAYER[layer.op] + (1 if layer.op == "conv" and ns_per_weight is not None
                                     else 0)
    return dict(flops=float(flops), bytes_moved=float(bytes_moved(layer, dev)),
                peak_gops=peak / 1e9, bandwidth_gbs=dev.memory_bandwidth_gbs,
                compute_efficiency=op_eff, memory_efficiency=eff.memory,
                overhead_ms=ops * dev.overhead_us_per_op * 1e-3)


def layer_latency(layer: EffectiveLayer, dev: DeviceProfile) -> LayerLatency:
    """Roofline time of one layer on one device (module docstring)."""
    t = roofline_terms(layer, dev)
    compute_s = t["flops"] / (t["peak_gops"] * 1e9 * t["compute_efficiency"])
    memory_s = t["bytes_moved"] / (t["bandwidth_gbs"] * 1e9 * t["memory_efficiency"])
    overhead_s = t["overhead_ms"] * 1e-3
    return LayerLatency(path=layer.path, role=layer.role, op=layer.op,
                        precision=compute_precision(layer, dev), macs=layer.macs,
                        bytes_moved=int(t["bytes_moved"]), compute_ms=compute_s * 1e3,
                        memory_ms=memory_s * 1e3, overhead_ms=overhead_s * 1e3,
                        time_ms=(max(compute_s, memory_s) + overhead_s) * 1e3)


def bytes_moved(layer: EffectiveLayer, dev: DeviceProfile) -> int:
    """Weights + activations in and out; the score matrix is written, normalised and re-read."""
    int8 = compute_precision(layer, dev) == "int8"
    scale = dev.quantized_activation_bits / 32 if int8 else 1.0
    acts = layer.input_bytes + layer.output_bytes
    if layer.op == "attention_scores":
        # q, k, v in; (H,T,T) written by QK^T, read+written by softmax, read by AV; output out.
        acts = layer.input_bytes * 4 // 3 + 4 * layer.output_bytes
    return int(layer.weight_bytes + acts * scale)


def _activation_scale(table: LayerTable, dev: DeviceProfile) -> float:
    """Full-integer runtimes keep int8 activations when every weight layer is int8."""
    weighted = [x for x in table.layers if x.op in ("matmul", "conv") and x.params]
    if weighted and all(compute_precision(x, dev) == "int8" for x in weighted):
        return dev.quantized_activation_bits / 32
    return 1.0


def speedup(fast: LatencyReport, slow: LatencyReport) -> float:
    """slow / fast total time (e.g. fp32 report / int8 report)."""
    return slow.total_ms / fast.total_ms


def reports_by_device(model: nn.Module | LayerTable, devices: Sequence[str] | None = None,
                      audio_seconds: float = 4.0, weight_bits: BitsOrPlan = None
                      ) -> dict[str, LatencyReport]:
    """One report per device (default: every known device), sharing one shape pass."""
    if isinstance(model, LayerTable):
        table = model.at_seconds(audio_seconds) if model.audio_seconds != audio_seconds else model
        if weight_bits is not None:
            table = table.with_bits(weight_bits)
    else:
        table = layer_table(model, audio_seconds, weight_bits)
    return {name: price_table(table, load_device(name))
            for name in (devices if devices is not None else known_devices())}
