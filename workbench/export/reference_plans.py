"""The plans `workbench bench export` measures, also used by tests and `workbench verify-arm64`.

    int8_plan()            int8 per-channel symmetric weights in every Linear and Conv
    pruned_int8_plan()     int8 + 50 % of every FFN's neurons + 25 % of every attention's heads
    int4_plan(model)       4-bit weights: Linear block-wise (MatMulNBits), Conv per channel
"""
from __future__ import annotations

import torch

from workbench.compress.targets import find_targets
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig, QuantConfig

INT8 = QuantConfig(weight_bits=8, granularity="per_channel", symmetric=True)
INT4_LINEAR = QuantConfig(weight_bits=4, granularity="per_block", symmetric=True)
INT4_CONV = QuantConfig(weight_bits=4, granularity="per_channel", symmetric=True)


def int8_plan() -> CompressionPlan:
    """int8 per-channel symmetric weights in every Linear and Conv."""
    return CompressionPlan(default=LayerConfig(quant=INT8))


def pruned_int8_plan() -> CompressionPlan:
    """int8 everywhere, 50 % of every FFN's neurons and 25 % of every attention's heads removed."""
    return (int8_plan()
            .with_group("ffn", LayerConfig(prune=PruneConfig(amount=0.5, structure="neurons")))
            .with_group("attention", LayerConfig(prune=PruneConfig(amount=0.25,
                                                                   structure="heads"))))


def int4_plan(model: torch.nn.Module) -> CompressionPlan:
    """4-bit weights everywhere: Linear block-wise (MatMulNBits, 32 per scale), Conv per channel
    (int4 + DequantizeLinear)."""
    convs = {p: LayerConfig(quant=INT4_CONV) for p, t in find_targets(model).items()
             if t.kind == "conv"}
    return CompressionPlan(default=LayerConfig(quant=INT4_LINEAR), layers=convs)
