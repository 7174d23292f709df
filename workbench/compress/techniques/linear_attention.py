"""Linear attention as a registered technique: softmax attention becomes kernelized attention
with the feature map elu + 1 (workbench.compress.swap_layers.LinearSelfAttention).

    LayerConfig(linear_attention={})          {"feature_map": "elu+1"} is the only map so far

Initialised from the attention's projections; the kernel is not the softmax's, so the swap needs
recovery (distillation). Priced as 2 * H * T * Dh * (Dh + 1) MACs (_swap.kernelized_attention_row,
m = Dh): linear in T, no (T, T) matrix.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict
from torch import nn

from workbench.compress.swap_layers import LinearSelfAttention
from workbench.compress.techniques._swap import (ATTENTION_WHY_NOT, kernelized_attention_row,
                                                 replace_attention)
from workbench.compress.techniques.registry import ApplyContext, Control, Technique, register


class LinearAttentionConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    feature_map: Literal["elu+1"] = "elu+1"


def apply_(root: nn.Module, entries: Mapping[str, LinearAttentionConfig], ctx: ApplyContext
           ) -> nn.Module:
    for path in entries:
        root = replace_attention(root, path, LinearSelfAttention)
        ctx.notes.append(f"{path}: linear attention (elu + 1 feature map)")
    return root


def latency_row(row, s: LinearAttentionConfig):
    """m = Dh features from elu + 1: no MACs for the feature map (an activation)."""
    return kernelized_attention_row(row, row.head_dim, feature_map_macs=0)


LINEAR_ATTENTION = register(Technique(
    name="linear_attention", fields=("linear_attention",), order=25,
    config_type=LinearAttentionConfig,
    applies_to=lambda s, kind: kind == "attention",
    fits="linear_attention fits attention modules", why_not=ATTENTION_WHY_NOT,
    apply_=apply_, changes_shape=lambda s: True, export="pytorch", latency_row=latency_row,
    describe=lambda s: f"linear attention ({s.feature_map} feature map)",
    control=Control(label="linear attn", kinds=("attention",), values=(None, "elu+1"),
                    to_setting=lambda v: None if v is None else
                    LinearAttentionConfig(feature_map=v),
                    from_setting=lambda s: None if s is None else s.feature_map)))
