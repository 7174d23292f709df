"""Quantization as a registered technique: fake-quantized weights (b bits) and optionally the
layer input (8 bits). The grids are workbench.compress.quantize; how each runtime runs them at
export is its `runtime_exports` (quantization_runtime: ONNX Runtime and ExecuTorch tables)."""
from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from workbench.compress.quantize import quantize_layer
from workbench.compress.techniques.low_rank import replace_module
from workbench.compress.techniques.quantization_runtime import decide, pte_decide
from workbench.compress.techniques.registry import (ApplyContext, Technique, register,
                                                      techniques)
from workbench.plan import QuantConfig


def apply_(root: nn.Module, entries: Mapping[str, QuantConfig], ctx: ApplyContext) -> nn.Module:
    """Quantize the final weights (after pruning and low rank: a factorization would undo it).
    A layer another technique rebuilt from Linears (low rank: down / up; grouped FFN: parts.G)
    has each of those Linears quantized with the layer's setting (the technique's
    `weight_parts`)."""
    for path, q in entries.items():
        layer = root.get_submodule(path)
        parts = next((found for t in techniques() if t.weight_parts is not None
                      for found in [t.weight_parts(layer)] if found is not None), None)
        if parts is not None:
            for child, part in parts.items():
                replace_module(layer, child, quantize_layer(part, q))
        else:
            root = replace_module(root, path, quantize_layer(layer, q))
    return root


def describe(q: QuantConfig) -> str:
    if q.weight_bits is None:
        weights = "fp32 weights"
    elif q.weight_bits == 16:
        weights = "fp16 weights"
    else:
        weights = (f"{q.weight_bits}-bit weights ({q.granularity.replace('_', ' ')}, "
                   f"{'symmetric' if q.symmetric else 'asymmetric'})")
    return weights + (", 8-bit inputs" if q.act_bits is not None else "")


QUANTIZATION = register(Technique(
    name="quant", fields=("quant",), order=40,
    applies_to=lambda q, kind: kind in ("linear", "conv"), fits="quant fits Linear/Conv layers",
    apply_=apply_, changes_shape=lambda q: False, export="runtime",
    is_noop=lambda q: q.weight_bits is None and q.act_bits is None,
    why_not=lambda q, target, path: (f"quantization applies to Linear/Conv layers, and {path} "
                                     f"is a {target.type_name}; name its layers (e.g. "
                                     f"'{path}.*')."),
    field_name=lambda cfg: "quant", describe=describe,
    # no Control: the compress tab draws the bits dropdown (ui.edits.BIT_CHOICES)
    needs=lambda q: frozenset({"activations"}) if q.act_bits is not None else frozenset(),
    runtime_exports={"onnxruntime": decide, "executorch": pte_decide}))
