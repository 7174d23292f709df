"""Split a plan into what PyTorch applies (structure) and what ONNX Runtime applies (quantization).

Structure = pruning (heads, neurons, channels, unstructured masks) and low rank: applied with
`workbench.compress.compress` on the plan with every `quant` removed, then exported in fp32.
Quantization = each layer's resolved QuantConfig, mapped to ONNX Runtime by `ort_quantize`.
Removing `quant` at every level of the plan (default, groups, layers) keeps the resolution of
the other techniques unchanged: a level that does not set a technique passes it on anyway.
"""
from __future__ import annotations

import torch
from torch import nn

from workbench.export.decisions import check_runtime_techniques
from workbench.compress.techniques import structure_only
from workbench.plan import SKIP, CompressionPlan, GroupEntry, LayerConfig, QuantConfig
from workbench.compress.resolution import plan_targets, resolve


def _without_quant(entry: LayerConfig | str) -> LayerConfig | str:
    """The entry without what the runtime applies (the registry's export == "runtime")."""
    if entry == SKIP:
        return entry
    return structure_only(entry)


def structural_plan(plan: CompressionPlan) -> CompressionPlan:
    """`plan` with quantization removed everywhere (pruning and low rank untouched)."""
    return CompressionPlan(
        format_version=plan.format_version, model_fingerprint=plan.model_fingerprint,
        default=_without_quant(plan.default),
        groups=tuple(GroupEntry(role=g.role, blocks=g.blocks, config=_without_quant(g.config))
                     for g in plan.groups),
        layers={k: _without_quant(v) for k, v in plan.layers.items()})


def layer_quant(model: nn.Module, plan: CompressionPlan, force: bool = False,
                runtime: str = "onnxruntime") -> dict[str, tuple[str, QuantConfig]]:
    """Quantized layers of `plan` on `model`: path -> (kind "linear" | "conv", QuantConfig).

    Every runtime-applied technique the plan sets must have a handler for `runtime` in the
    registry (ExportError names the first layer otherwise)."""
    resolved = resolve(plan, model, force=force)
    check_runtime_techniques(resolved, runtime)
    targets = plan_targets(plan, model)
    return {path: (targets[path].kind, cfg.quant) for path, cfg in resolved.items()
            if cfg.quant is not None and targets[path].kind in ("linear", "conv")}


def activation_ranges(sim: nn.Module) -> dict[str, tuple[float, int]]:
    """module path -> (scale, zero point) of every observed activation quantizer in a model
    built by `compress` (the input grid of each act_bits-8 layer)."""
    out = {}
    for path, module in sim.named_modules():
        act = getattr(module, "act_quant", None)
        if act is not None and bool(torch.isfinite(act.min_val)):
            out[path] = act.scale_zero_point()
    return out
