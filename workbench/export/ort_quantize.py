"""Quantize an fp32 ONNX graph layer by layer, as the plan says (see `decisions` for the table).

    quantize_graph(fp32_proto, layers, act_ranges, calibration, strict, int8_weights)
        -> QuantizedGraph

Order of the passes, and why: static QDQ first (its calibration runs the still-fp32 graph), then
ONNX Runtime's dynamic int8 quantizer (`quantize_dynamic`, per channel, `nodes_to_quantize` =
exactly the plan's layers, MatMul only), then our own weight rewrites (MatMulNBits, int8 Conv
weights, fp16 weights), which write the plan's grid exactly (`weight_grids`). Every pass only
touches the nodes it is given, found by module path (`workbench.onnx_tools.graph_map`).

`int8_weights` ("auto" | "signed" | "unsigned", see `workbench.onnx_tools.quantize`): how the int8
weights of both int8 passes are stored; `QuantizedGraph.int8` says what was chosen and why.

Static activation ranges are the ones the simulation observed (`act_ranges`: module path ->
(scale, zero point), read from the compressed model's activation quantizers) and are passed to
ONNX Runtime as TensorQuantOverrides, so runtime and simulation quantize inputs identically;
ONNX Runtime still runs its MinMax calibration over `calibration` for any tensor without one.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.export.decisions import Decision, decide
from workbench.export.errors import ExportError, UnsupportedBitsError
from workbench.onnx_tools.graph_map import WeightNode, nodes_of_layer, weight_nodes
from workbench.onnx_tools.exporter import to_bytes
from workbench.onnx_tools.quantize import (Int8Storage, check_int8_weights, dynamic_int8,
                                           int8_storage, quiet_ort, unsigned_matmul_weights)
from workbench.export.weight_grids import (replace_with_dq_weights, replace_with_fp16_weights,
                                           replace_with_matmul_nbits)
from workbench.onnx_tools.graph_map import drop_unused_initializers
from workbench.plan import QuantConfig

if TYPE_CHECKING:
    import onnx

#: layer path -> (target kind "linear" | "conv", its resolved QuantConfig)
LayerQuant = Mapping[str, tuple[str, QuantConfig]]
#: module path -> (scale, zero point) of the layer input's uint8 grid
ActRanges = Mapping[str, tuple[float, int]]


@dataclass(frozen=True)
class QuantizedGraph:
    """The quantized graph, what was decided per layer, and which nodes each layer had."""

    proto: onnx.ModelProto
    decisions: tuple[Decision, ...]
    layer_nodes: dict[str, tuple[str, ...]]
    notes: tuple[str, ...] = ()
    int8: Int8Storage | None = None          # None: no int8 MatMul / weight DequantizeLinear


def plan_decisions(layers: LayerQuant, strict: bool) -> list[Decision]:
    """One Decision per quantized layer; under `strict`, refuse anything not run as planned."""
    decisions = [decide(path, kind, q) for path, (kind, q) in layers.items()]
    inexact = [d for d in decisions if d.changes]
    if strict and inexact:
        lines = "; ".join(f"{d.path} ({d.planned}): {', '.join(d.changes)}" for d in inexact)
        raise UnsupportedBitsError(
            f"--strict: {len(inexact)} layer(s) cannot run in ONNX Runtime as planned: {lines}. "
            f"Change those layers to a supported width (Linear: 2, 4, 8, 16 bits; Conv: 4, 8, 16) "
            f"or drop --strict to round them up.")
    return decisions


def quantize_graph(fp32: onnx.ModelProto, layers: LayerQuant, act_ranges: ActRanges | None = None,
                   calibration: Callable[[], Any] | None = None, strict: bool = False,
                   int8_weights: str = "auto") -> QuantizedGraph:
    """A quantized copy of `fp32` following `layers` (the input proto is not changed).

    `calibration()` returns a fresh onnxruntime CalibrationDataReader; needed only when a
    layer is quantized statically (act_bits 8).
    """
    import onnx

    check_int8_weights(int8_weights)
    decisions = plan_decisions(layers, strict)
    nodes = weight_nodes(fp32)
    layer_nodes: dict[str, list[WeightNode]] = {}
    for d in decisions:
        found = nodes_of_layer(nodes, d.path, d.kind)
        if not found:
            raise ExportError(f"plan layer '{d.path}' ({d.kind}) has no weight node "
                              f"({'MatMul' if d.kind == 'linear' else 'Conv'}) in the exported "
                              f"graph; was it removed by the structural part of the plan?")
        layer_nodes[d.path] = found
    notes: list[str] = []
    proto = onnx.ModelProto.FromString(to_bytes(fp32))
    by_method: dict[tuple[str, str, bool], list[WeightNode]] = {}
    for d in decisions:
        by_method.setdefault((d.method, d.granularity, d.symmetric), []).extend(layer_nodes[d.path])
    storage = (int8_storage(int8_weights) if {m for m, _, _ in by_method}
               & {"int8_static_qdq", "int8_dynamic"} else None)
    with tempfile.TemporaryDirectory(prefix="workbench-export-") as tmp:
        for (method, granularity, symmetric), group in sorted(by_method.items()):
            if method == "int8_static_qdq":
                if calibration is None:
                    raise ExportError("act_bits 8 layers need calibration data for static "
                                      "quantization; pass calibration features.")
                overrides, missing = _overrides(group, act_ranges or {})
                if missing:
                    notes.append(f"activation ranges calibrated by ONNX Runtime (not taken from "
                                 f"the simulation) for {sorted(missing)}")
                proto = _static(proto, group, granularity, symmetric, overrides, calibration(),
                                Path(tmp), storage is not None and storage.signed)
        for (method, granularity, symmetric), group in sorted(by_method.items()):
            if method == "int8_dynamic":
                proto = dynamic_int8(proto, group, granularity == "per_channel", symmetric,
                                     storage.storage if storage else "auto")
    _rewrite_weights(proto, decisions, layer_nodes)
    drop_unused_initializers(proto)
    _check_all_quantized(proto, decisions, layer_nodes)
    proto.producer_name, proto.producer_version = "workbench", ""
    return QuantizedGraph(proto, tuple(decisions),
                          {p: tuple(n.name for n in ns) for p, ns in layer_nodes.items()},
                          tuple(notes), storage)


def _check_all_quantized(proto: onnx.ModelProto, decisions: list[Decision],
                         layer_nodes: Mapping[str, list[WeightNode]]) -> None:
    """Every quantized layer's fp32 weight must be gone: ONNX Runtime's quantizers skip nodes they
    cannot handle without an error, and a silently fp32 layer would make the report wrong."""
    left = {i.name for i in proto.graph.initializer}
    kept = sorted(d.path for d in decisions if d.method != "fp32"
                  and any(n.weight in left for n in layer_nodes[d.path]))
    if kept:
        raise ExportError(f"ONNX Runtime's quantizer left these layers in fp32: {kept} "
                          f"(internal export error; please report it with the plan).")


def _overrides(group: list[WeightNode], act_ranges: ActRanges
               ) -> tuple[dict[str, list[dict[str, Any]]], set[str]]:
    """TensorQuantOverrides for the input tensor of each node whose range the simulation has."""
    overrides, missing = {}, set()
    for node in group:
        if node.module in act_ranges:
            scale, zero_point = act_ranges[node.module]
            overrides[node.activation] = [{"scale": np.array(scale, dtype=np.float32),
                                           "zero_point": np.array(zero_point, dtype=np.uint8)}]
        else:
            missing.add(node.module)
    return overrides, missing


def _load(path: Path) -> onnx.ModelProto:
    import onnx
    return onnx.load(str(path))


def _static(proto: onnx.ModelProto, group: list[WeightNode], granularity: str, symmetric: bool,
            overrides: dict[str, Any], reader: Any, tmp: Path, signed: bool) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    src, dst = tmp / "static_in.onnx", tmp / "static_out.onnx"
    src.write_bytes(to_bytes(proto))
    quiet_ort()
    quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=sorted({n.op_type for n in group}),
                    per_channel=granularity != "per_tensor",
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_quantize=[n.name for n in group],
                    extra_options={"ActivationSymmetric": False,
                                   "WeightSymmetric": symmetric,
                                   "MatMulConstBOnly": True,
                                   # the plan quantizes a layer's input, not its output
                                   "OpTypesToExcludeOutputQuantization": ["MatMul", "Conv"],
                                   "TensorQuantOverrides": overrides})
    quantized = _load(dst)
    if not signed:
        unsigned_matmul_weights(quantized)      # U8U8 kernels: no saturation on AVX2 CPUs
    return quantized


def _initializer(proto: onnx.ModelProto, name: str) -> np.ndarray:
    from onnx import numpy_helper
    for init in proto.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    raise ExportError(f"weight '{name}' is missing from the graph (internal export error).")


def _rewrite_weights(proto: onnx.ModelProto, decisions: list[Decision],
                     layer_nodes: Mapping[str, list[WeightNode]]) -> None:
    """MatMulNBits / int8 or int4 Conv weights / fp16 weights, on the plan's grid (in place)."""
    for d in decisions:
        if d.method not in ("nbits", "weight_only", "fp16_weight"):
            continue
        for wn in layer_nodes[d.path]:
            node = next((n for n in proto.graph.node if n.name == wn.name), None)
            if node is None:
                raise ExportError(f"node '{wn.name}' of '{d.path}' vanished during quantization "
                                  f"(internal export error).")
            weight = _initializer(proto, wn.weight)
            if d.method == "fp16_weight":
                replace_with_fp16_weights(proto, node, weight)
            elif d.method == "weight_only":
                replace_with_dq_weights(proto, node, weight, d.bits, d.granularity, d.symmetric)
            elif wn.op_type != "MatMul":  # unreachable with LINEAR_OPS = MatMul; kept as a guard
                raise ExportError(f"'{d.path}': MatMulNBits replaces MatMul nodes, found "
                                  f"{wn.op_type} '{wn.name}'.")
            else:
                replace_with_matmul_nbits(proto, node, weight, d.bits, d.granularity, d.symmetric)
