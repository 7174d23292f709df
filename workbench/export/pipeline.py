"""Model + plan -> ONNX bytes: structure in PyTorch, fp32 export, quantization in ONNX Runtime.

    build_export(model, plan, calib) -> Export       (nothing is written to disk)

    model ─ compress(model, plan without quant) ─> structural ─ export_fp32 ─> fp32 ONNX
      │                                          (positions as formula) ─────────┤
      └─ compress(model, plan) ─> sim ─── activation ranges ───> quantize_graph ─> model ONNX

`sim` is what the workbench evaluated; the report compares the ONNX model against it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from workbench.compress import compress
from workbench.compress.techniques import needs as techniques_needs
from workbench.errors import PlanError
from workbench.evaluate import EvalSet
from workbench.export.calibration_set import calibration_batches, feature_reader
from workbench.export.decisions import Decision
from workbench.onnx_tools.exporter import export_fp32, to_bytes
from workbench.export.ort_quantize import plan_decisions, quantize_graph
from workbench.onnx_tools.quantize import Int8Storage, check_int8_weights
from workbench.export.positions import ComputedTable, compute_sinusoid_tables
from workbench.export.structural import activation_ranges, layer_quant, structural_plan
from workbench.plan import CompressionPlan
from workbench.compress.resolution import resolve

if TYPE_CHECKING:
    import onnx


@dataclass(frozen=True)
class Export:
    """Everything an export produced, in memory."""

    model: bytes                            # the deliverable (quantized, or fp32 if no quant)
    fp32: bytes                             # fp32 export of the structurally compressed model
    proto: onnx.ModelProto                  # `model` as a proto
    decisions: tuple[Decision, ...]
    layer_nodes: dict[str, tuple[str, ...]]
    computed_tables: tuple[ComputedTable, ...]
    structural: nn.Module                   # compress(model, plan without quant)
    sim: nn.Module                          # compress(model, plan): the simulation
    notes: tuple[str, ...]
    int8: Int8Storage | None = None         # int8 weight storage and why (None: no int8 layer)


def needs_calibration(model: nn.Module, plan: CompressionPlan, force: bool = False) -> bool:
    """A technique of the plan needs calibration data (the registry's `needs`: act_bits 8,
    Taylor importance for pruning, or a registered technique that says so)."""
    return bool(techniques_needs(resolve(plan, model, force=force)))


def build_export(model: nn.Module, plan: CompressionPlan, calib: EvalSet | None = None,
                 strict: bool = False, force: bool = False, int8_weights: str = "auto"
                 ) -> Export:
    """Export `model` compressed by `plan` (see module docstring). `model` is not changed.

    `calib` (utterances) is required when the plan quantizes activations or prunes by Taylor
    importance; `strict` refuses layers that cannot run as planned; `force` accepts a plan
    made for another model fingerprint (paths are still checked); `int8_weights` ("auto" |
    "signed" | "unsigned") is how int8 weights are stored (workbench.onnx_tools.quantize).
    """
    check_int8_weights(int8_weights)
    layers = layer_quant(model, plan, force)          # resolves: PlanError on a bad plan
    plan_decisions(layers, strict)                    # refuse early, before the slow part
    if needs_calibration(model, plan, force) and calib is None:
        raise PlanError("this plan quantizes activations (act_bits) or prunes by Taylor "
                        "importance: it needs calibration utterances (data/calib).")
    batches = calibration_batches(calib) if calib is not None else None
    structural = compress(model, structural_plan(plan), batches, force=force)
    sim = compress(model, plan, batches, force=force)
    fp32_proto = export_fp32(structural)
    computed = tuple(compute_sinusoid_tables(fp32_proto))
    fp32 = to_bytes(fp32_proto)
    if not layers:
        return Export(fp32, fp32, fp32_proto, (), {}, computed, structural, sim, ())
    quantized = quantize_graph(fp32_proto, layers, activation_ranges(sim),
                               (lambda: feature_reader(calib)) if calib is not None else None,
                               strict=strict, int8_weights=int8_weights)
    return Export(to_bytes(quantized.proto), fp32, quantized.proto, quantized.decisions,
                  quantized.layer_nodes, computed, structural, sim, quantized.notes,
                  quantized.int8)
