"""Fit the `host` device profile to ONNX Runtime measured on this machine (`workbench calibrate`).

What is measured: a fixed set of variants of the demo architecture (fp32; int8 dynamic
per-channel; int8 everywhere, the conv stem included; 4-bit block-wise attention + FFN; FFN
neurons and attention heads pruned; low-rank FFN; mixes), each exported to ONNX
once (dynamic time axis) and timed by ONNX Runtime, 1 thread, median of repeats, at several audio
lengths (the attention scores grow with T^2, the rest with T, so lengths separate the two).
Export, int8 quantization and timing are the export's own (the ONNX toolbox,
workbench.onnx_tools): the structure in PyTorch, `export_fp32`, ORT dynamic int8 (symmetric per
channel) on the MatMuls the node map finds for the int8 layers, timed on `runtime.CLOCK`; so the
host profile is fitted on the graph `workbench apply` ships, with the clock its report states.
The 4-bit layers become MatMulNBits (bits 4, block 32, symmetric, no accuracy_level attribute:
the export's layout and ORT's fp32-compute path) written by ONNX Runtime's own
MatMulNBitsQuantizer, since latency may not import the export's writer (same layer); the kernel
ORT picks depends only on bits, block size, zero points and accuracy_level, not on the writer.
5..8-bit Conv weights become int8 (symmetric, per output channel) + DequantizeLinear in front of
the fp32 Conv, as the export writes them (export.weight_grids.replace_with_dq_weights; written
here by `conv_dq_int8`, same layer rule); their dequantization cost (int8_conv_dequant_ns_per_
weight, ~0.05 ms on the demo's 0.54 M conv weights) is too small to fit and stays nominal, the
conv efficiency is fitted on fp32 and dequantized convs together.

What is fitted: the host profile's efficiencies (matmul fp32 / int8, conv, attention scores,
elementwise, memory), the per-op overhead and the per-call int4 dequantization cost
(int4_dequant_ns_per_weight), by least squares on log(predicted / measured) with
a weak pull toward the nominal values (so a factor the variants barely exercise stays sane).
The error band is the leave-one-variant-out MAPE: each variant predicted by a fit that never saw
it (`cv_abs_pct_error_by_variant` lists each variant's, the int4 one included).

The result goes to the per-user cache (`host_profile.json` in workbench.paths.cache_dir(),
$WORKBENCH_CACHE_DIR overrides), never into the repository. ~1-2 minutes on 2 cores.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workbench.errors import CheckpointError
from workbench.latency.cost import price_table
from workbench.latency.devices import (OP_CLASSES, DeviceProfile, Efficiency, host_cache_path, load_device,
                                       parse_device, devices_dir, apply_calibration)
from workbench.latency.table import LayerTable, compressed_for_pricing, layer_table
from workbench.models import whisper_ctc_pretrained
from workbench.onnx_tools.exporter import export_fp32, to_bytes
from workbench.onnx_tools.graph_map import nodes_of_layer, op_counts, weight_nodes
from workbench.onnx_tools.quantize import dynamic_int8
from workbench.onnx_tools.runtime import CLOCK, time_interleaved
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig, QuantConfig

#: Audio lengths (seconds) every calibration variant is timed at.
CALIBRATION_SECONDS = (2.0, 4.0, 8.0, 16.0)
#: Weight of the pull toward the nominal efficiencies (in log units, per parameter).
PRIOR_WEIGHT = 0.05
#: Fitted parameters: the efficiencies, the per-op overhead, the int4 dequantization per weight.
PARAMS = (*OP_CLASSES, "overhead_us_per_op", "int4_dequant_ns_per_weight")
#: MatMulNBits layout of the int4 calibration variant (the export's: workbench.compress.quantize
#: BLOCK_SIZE 32, symmetric; ORT's fp32 compute path, accuracy_level unset).
NBITS_BLOCK_SIZE = 32


@dataclass(frozen=True)
class Variant:
    """A model variant timed at several lengths: its ONNX file and its effective layer tables."""

    name: str
    onnx_path: Path                      # the exported graph (the export's fp32 or int8 ONNX)
    tables: dict[float, LayerTable]
    int8_layers: tuple[str, ...] = ()    # module paths quantized in ONNX Runtime (5..8 bit)
    int8_matmuls: int = 0                # MatMulInteger nodes in the quantized graph
    int4_layers: tuple[str, ...] = ()    # module paths run as MatMulNBits (<= 4 bit)
    nbits_matmuls: int = 0               # MatMulNBits nodes in the quantized graph
    int8_convs: int = 0                  # Conv weights behind a DequantizeLinear (5..8 bit)


@dataclass(frozen=True)
class Point:
    variant: str
    seconds: float
    measured_ms: float          # median on workbench.onnx_tools.runtime.CLOCK (wall time)
    table: LayerTable


def default_model() -> nn.Module:
    """The demo model if it is there, else the same architecture from the pretrained encoder."""
    from workbench.models import load_demo  # looked up per call: tests monkeypatch it
    try:
        return load_demo()
    except CheckpointError:
        return whisper_ctc_pretrained()


def calibration_plans() -> dict[str, Any]:
    """The fixed calibration variants (names -> CompressionPlan); the bench uses other plans."""
    int8 = LayerConfig(quant=QuantConfig(weight_bits=8))
    int4 = LayerConfig(quant=QuantConfig(weight_bits=4, granularity="per_block"))
    p = CompressionPlan()
    return {
        "fp32": p,
        "int8": p.with_group("attention", int8).with_group("ffn", int8),
        "int8_everywhere": CompressionPlan(default=int8),     # + the conv stem, dequantized
        "int4": p.with_group("attention", int4).with_group("ffn", int4),
        "ffn_neurons_60": p.with_group("ffn", LayerConfig(
            prune=PruneConfig(amount=0.6, structure="neurons"))),
        "heads_50_int8": p.with_group("attention", LayerConfig(
            prune=PruneConfig(amount=0.5, structure="heads"), quant=QuantConfig(weight_bits=8))),
        "ffn_rank_96": p.with_group("ffn", LayerConfig(rank=96)),
        "ffn_int8_heads_33": p.with_group("ffn", int8).with_group("attention", LayerConfig(
            prune=PruneConfig(amount=1 / 3, structure="heads"))),
    }


def int8_paths(model: nn.Module) -> list[str]:
    """Module paths of the layers a compressed model holds at 5..8 bits (ORT dynamic int8)."""
    return [p for p, m in model.named_modules()
            if isinstance(getattr(m, "weight_bits", None), int) and 4 < m.weight_bits <= 8]


def int4_paths(model: nn.Module) -> list[str]:
    """Module paths of the layers a compressed model holds at <= 4 bits (MatMulNBits)."""
    return [p for p, m in model.named_modules()
            if isinstance(getattr(m, "weight_bits", None), int) and m.weight_bits <= 4]


def matmul_nbits(proto: Any, names: Sequence[str], bits: int = 4) -> Any:
    """The MatMul nodes `names` as MatMulNBits (bits, block 32, symmetric, accuracy_level unset),
    by ONNX Runtime's MatMulNBitsQuantizer; every other MatMul is left alone."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    keep = [n.name for n in proto.graph.node if n.op_type == "MatMul" and n.name not in names]
    quantizer = MatMulNBitsQuantizer(proto, bits=bits, block_size=NBITS_BLOCK_SIZE,
                                     is_symmetric=True, accuracy_level=None,
                                     nodes_to_exclude=keep)
    quantizer.process()
    return quantizer.model.model


def conv_dq_int8(proto: Any, names: Sequence[str]) -> Any:
    """The Conv nodes `names` with their weight stored as int8 (symmetric, per output channel,
    axis 0) + a DequantizeLinear in front of the fp32 Conv: the layout workbench's export writes
    for 5..8-bit Conv weights (in place; returns `proto`)."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    wanted = set(names)
    nodes = []
    for node in proto.graph.node:
        if node.name in wanted and node.op_type == "Conv":
            base = node.input[1]
            weight = numpy_helper.to_array(inits[base]).astype(np.float32)
            amax = np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1)
            scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
            codes = np.clip(np.round(weight / scale.reshape(-1, *[1] * (weight.ndim - 1))),
                            -127, 127).astype(np.int8)
            proto.graph.initializer.extend([
                numpy_helper.from_array(codes, f"{base}_int8"),
                numpy_helper.from_array(scale, f"{base}_scale"),
                numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{base}_zero_point")])
            nodes.append(helper.make_node(
                "DequantizeLinear", [f"{base}_int8", f"{base}_scale", f"{base}_zero_point"],
                [f"{base}_dequantized"], name=f"{node.name}_weight_dq", axis=0))
            node.input[1] = f"{base}_dequantized"
        nodes.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto


def build_variant(model: nn.Module, name: str, plan: Any, seconds: Sequence[float],
                  workdir: Path) -> Variant:
    """Apply `plan`, export it as `workbench apply` does (structure in PyTorch, fp32 ONNX, ORT
    dynamic int8 on the int8 layers' MatMuls, int8 + DequantizeLinear on their Convs,
    MatMulNBits on the <= 4-bit ones), write it to
    `workdir`, make the tables."""
    compressed = compressed_for_pricing(model, plan)              # shapes + bits: the tables
    proto = export_fp32(compressed_for_pricing(model, plan, quant=False))
    quant, low = int8_paths(compressed), int4_paths(compressed)
    nodes = weight_nodes(proto)
    if low:
        proto = matmul_nbits(proto, [n.name for path in low
                                     for n in nodes_of_layer(nodes, path, "linear")])
    convs = sorted({n.name for path in quant for n in nodes_of_layer(nodes, path, "conv")})
    if quant:
        chosen = {n.name: n for path in quant for n in nodes_of_layer(nodes, path, "linear")}
        if chosen:
            proto = dynamic_int8(proto, list(chosen.values()), per_channel=True,
                                 symmetric=True)
    if convs:   # after ORT's quantizer, as the export does (export.ort_quantize)
        proto = conv_dq_int8(proto, convs)
    kind = "int8" if quant else "int4" if low else "fp32"
    path = workdir / f"{name.replace(':', '_')}.{kind}.onnx"
    path.write_bytes(to_bytes(proto))
    # Exact shapes at the longest length; shorter ones scale analytically (T and T^2 terms).
    base = layer_table(compressed, max(seconds))
    counts = op_counts(proto)
    return Variant(name, path, {s: base.at_seconds(s) for s in seconds}, tuple(quant),
                   counts.get("MatMulInteger", 0) if quant else 0, tuple(low),
                   counts.get("MatMulNBits", 0), len(convs))


def measure_variants(variants: Sequence[Variant], repeats: int = 7) -> list[Point]:
    """Every (variant, length) timed in interleaved rounds, 1 thread (the ONNX toolbox's
    harness, workbench.onnx_tools.runtime.time_interleaved)."""
    jobs = [((v.name, s), v.onnx_path, s) for v in variants for s in sorted(v.tables)]
    times = time_interleaved(jobs, threads=1, repeats=repeats).by_job
    return [Point(v.name, s, times[(v.name, s)].ms, v.tables[s])
            for v in variants for s in sorted(v.tables)]


def fit(points: Sequence[Point], nominal: DeviceProfile) -> DeviceProfile:
    """Least squares on log(pred / measured) over the efficiencies and the per-op overhead."""
    from scipy.optimize import least_squares

    theta0 = np.log(np.array(_params_of(nominal)))

    def residuals(theta: np.ndarray) -> np.ndarray:
        dev = _with_params(nominal, np.exp(theta))
        r = [math.log(price_table(p.table, dev).total_ms / p.measured_ms) for p in points]
        return np.concatenate([np.array(r), PRIOR_WEIGHT * (theta - theta0)])

    result = least_squares(residuals, theta0, bounds=(np.log(1e-3), np.log(1e3)),
                           diff_step=1e-3, x_scale=1.0)
    return _with_params(nominal, np.exp(result.x))


def abs_pct_errors(points: Sequence[Point], dev: DeviceProfile) -> list[float]:
    return [abs(price_table(p.table, dev).total_ms / p.measured_ms - 1) * 100 for p in points]


def cross_validated_errors(points: Sequence[Point], nominal: DeviceProfile) -> list[float]:
    """Absolute % errors of each variant's points under a fit made without that variant."""
    return [e for errors in cross_validated_by_variant(points, nominal).values() for e in errors]


def cross_validated_by_variant(points: Sequence[Point], nominal: DeviceProfile
                               ) -> dict[str, list[float]]:
    """variant -> absolute % errors of its points under a fit made without that variant (for
    the int4 variant: its dequantization cost then stays at the shipped nominal value)."""
    errors = {}
    for name in sorted({p.variant for p in points}):
        train = [p for p in points if p.variant != name]
        test = [p for p in points if p.variant == name]
        errors[name] = abs_pct_errors(test, fit(train, nominal))
    return errors


def calibrate(out_path: str | Path | None = None, *, model: nn.Module | None = None,
              seconds: Sequence[float] = CALIBRATION_SECONDS, repeats: int = 7,
              plans: dict[str, Any] | None = None, write: bool = True) -> dict[str, Any]:
    """Measure, fit, and write the calibrated host profile; returns what was written.

    out_path: default `host_profile.json` in the per-user cache. write=False only returns it.
    """
    model = model if model is not None else default_model()
    nominal = nominal_host()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the export and shape passes share the machine with the timing
    try:
        with tempfile.TemporaryDirectory(prefix="workbench-calibrate-") as tmp:
            variants = [build_variant(model, n, p, seconds, Path(tmp))
                        for n, p in (plans or calibration_plans()).items()]
            points = measure_variants(variants, repeats)
    finally:
        torch.set_num_threads(threads)
    result = fit_record(points, nominal)
    result["variants"] = {v.name: {"int8_layers": len(v.int8_layers),
                                   "int8_matmuls": v.int8_matmuls,
                                   "int4_layers": len(v.int4_layers),
                                   "nbits_matmuls": v.nbits_matmuls,
                                   "int8_convs": v.int8_convs,
                                   "macs_at_max_seconds": v.tables[max(v.tables)].macs}
                          for v in variants}
    if write:
        path = Path(out_path) if out_path is not None else host_cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        result = {**result, "path": str(path)}
    return result


def nominal_host() -> DeviceProfile:
    """The shipped host profile, without any cached calibration."""
    path = devices_dir() / "host.json"
    return parse_device(json.loads(path.read_text()), str(path))


def fit_record(points: Sequence[Point], nominal: DeviceProfile | None = None) -> dict[str, Any]:
    """Fit the host profile to `points`; the JSON the host loader overlays
    (devices.apply_calibration) plus the evidence (errors in sample and cross-validated)."""
    nominal = nominal or nominal_host()
    dev = fit(points, nominal)
    errors = abs_pct_errors(points, dev)
    cv_by_variant = cross_validated_by_variant(points, nominal)
    cv_errors = [e for v in cv_by_variant.values() for e in v]
    cv_mape = statistics.fmean(cv_errors)
    return {
        "calibrated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "efficiency": {op: round(getattr(dev.efficiency, op), 5) for op in OP_CLASSES},
        "overhead_us_per_op": round(dev.overhead_us_per_op, 4),
        "int4_dequant_ns_per_weight": round(float(dev.int4_dequant_ns_per_weight or 0.0), 5),
        "error_band_pct": round(max(cv_mape, 1.0), 2),
        "error_band_definition": "leave-one-variant-out mean absolute % error of the total time",
        "mape_pct": round(statistics.fmean(errors), 2),
        "cv_mape_pct": round(cv_mape, 2),
        "cv_max_abs_pct_error": round(max(cv_errors), 2),
        "cv_abs_pct_error_by_variant": {name: round(statistics.fmean(v), 2)
                                        for name, v in cv_by_variant.items()},
        "ram_mb": round(_ram_mb(), 0),
        "points": [{"variant": p.variant, "seconds": p.seconds,
                    "measured_ms": round(p.measured_ms, 3),
                    "predicted_ms": round(price_table(p.table, dev).total_ms, 3)}
                   for p in points],
        "clock": CLOCK,
    }


def fitted_host(record: dict[str, Any]) -> DeviceProfile:
    """The host profile with a calibration record applied (without reading the cache)."""
    return apply_calibration(nominal_host(), record, "<calibration run>")


def machine_info() -> dict[str, str]:
    import onnxruntime
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version()}


def _ram_mb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e6
    except (ValueError, OSError, AttributeError):
        return float(load_device("host").ram_mb)


def _params_of(dev: DeviceProfile) -> list[float]:
    return ([getattr(dev.efficiency, op) for op in OP_CLASSES]
            + [dev.overhead_us_per_op, float(dev.int4_dequant_ns_per_weight or 0.0)])


def _with_params(dev: DeviceProfile, values: np.ndarray) -> DeviceProfile:
    n = len(OP_CLASSES)
    eff = Efficiency(**{op: float(v) for op, v in zip(OP_CLASSES, values[:n])})
    return replace(dev, efficiency=eff, overhead_us_per_op=float(values[n]),
                   int4_dequant_ns_per_weight=float(values[n + 1]))
