"""Performer (FAVOR+) attention as a registered technique: softmax attention approximated with
positive orthogonal random features (workbench.compress.swap_layers.PerformerSelfAttention).

    LayerConfig(performer_attention={"features": 64, "seed": 0})

The random features are drawn from `seed` and stored in the model (a buffer), so a checkpoint
reloads the same function. Unbiased for the softmax kernel, so it starts closer to the original
attention than linear attention; its variance grows with |q|, |k| (recovery helps). Priced as
2 * H * T * m * (2 Dh + 1) MACs (_swap.kernelized_attention_row: the random projections of q and
k, phi(k)^T v, phi(q) (.) and the normaliser): linear in T.
"""
from __future__ import annotations

from collections.abc import Mapping
from functools import partial

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from workbench.compress.swap_layers import PerformerSelfAttention
from workbench.compress.techniques._swap import (ATTENTION_WHY_NOT, kernelized_attention_row,
                                                 module_seed, replace_attention)
from workbench.compress.techniques.registry import ApplyContext, Control, Technique, register


class PerformerAttentionConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    features: int = Field(64, ge=4, le=4096, description="Random features per head (m).")
    seed: int = Field(0, ge=0)


def apply_(root: nn.Module, entries: Mapping[str, PerformerAttentionConfig], ctx: ApplyContext
           ) -> nn.Module:
    for path, s in entries.items():
        # seed per module, from its path in the whole model: independent random features in
        # every block, and the same ones whether compress or the engine (one block) builds it
        root = replace_attention(root, path, partial(
            PerformerSelfAttention, features=s.features, seed=module_seed(s.seed, ctx, path)))
        ctx.notes.append(f"{path}: Performer attention, {s.features} random features")
    return root


def latency_row(row, s: PerformerAttentionConfig):
    """m random features; the feature map projects q and k on them: 2 m Dh MACs per position."""
    return kernelized_attention_row(row, s.features, feature_map_macs=2 * s.features * row.head_dim)


PERFORMER_ATTENTION = register(Technique(
    name="performer_attention", fields=("performer_attention",), order=25,
    config_type=PerformerAttentionConfig,
    applies_to=lambda s, kind: kind == "attention",
    fits="performer_attention fits attention modules", why_not=ATTENTION_WHY_NOT,
    apply_=apply_, changes_shape=lambda s: True, export="pytorch", latency_row=latency_row,
    describe=lambda s: f"Performer attention, {s.features} random features (seed {s.seed})",
    control=Control(label="performer m", kinds=("attention",), values=(None, 128, 64, 32),
                    to_setting=lambda v: None if v is None else
                    PerformerAttentionConfig(features=v),
                    from_setting=lambda s: None if s is None else s.features)))
