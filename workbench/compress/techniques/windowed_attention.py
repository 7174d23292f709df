"""Windowed (local) attention as a registered technique: an attention module becomes blocked
local attention with a window given in seconds (workbench.compress.swap_layers).

    LayerConfig(windowed_attention={"window_s": 1.0})      every query sees >= 1 s each side

Initialised from the attention's own projections (nothing else changes); the latency model
prices it as 2 * H * T_pad * 3W * Dh MACs and an (H, T_pad, 3W) score tensor: linear in T, so
it pays only once T is well above 3W (below that it does more work than full attention).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from functools import partial

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from workbench.compress.swap_layers import WindowedSelfAttention
from workbench.compress.techniques._swap import (ATTENTION_WHY_NOT, frame_rates,
                                                 replace_attention)
from workbench.compress.techniques.registry import ApplyContext, Control, Technique, register


class WindowedAttentionConfig(BaseModel):
    """Local attention: `window_s` seconds of guaranteed context on each side of every frame."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    window_s: float = Field(gt=0.0, le=30.0, description=(
        "Block length in seconds; each frame sees its block and both neighbours."))


def window_frames(setting: WindowedAttentionConfig, fps: float) -> int:
    """The window in frames of the block input (at least 1)."""
    return max(1, round(setting.window_s * fps))


def apply_(root: nn.Module, entries: Mapping[str, WindowedAttentionConfig], ctx: ApplyContext
           ) -> nn.Module:
    fps = frame_rates(root, entries, ctx)      # from the whole model, also on one block
    for path, s in entries.items():
        w = window_frames(s, fps[path])
        root = replace_attention(root, path, partial(WindowedSelfAttention, window=w))
        ctx.notes.append(f"{path}: windowed attention, blocks of {w} frames ({s.window_s:g} s)")
    return root


def latency_row_at(row, s: WindowedAttentionConfig, seconds: float):
    """The scores row of a windowed attention at the table's length (from heads, Dh, T)."""
    if row.op != "attention_scores" or not row.heads:
        return row
    t = row.positions
    w = window_frames(s, t / seconds)
    t_pad = math.ceil(t / w) * w
    keys = 3 * w
    return replace(row, macs=2 * row.heads * t_pad * keys * row.head_dim,
                   output_bytes=row.heads * t_pad * keys * 4, linear_in_length=True)


WINDOWED_ATTENTION = register(Technique(
    name="windowed_attention", fields=("windowed_attention",), order=25,
    config_type=WindowedAttentionConfig,
    applies_to=lambda s, kind: kind == "attention",
    fits="windowed_attention fits attention modules", why_not=ATTENTION_WHY_NOT,
    apply_=apply_, changes_shape=lambda s: True, export="pytorch",
    latency_row_at=latency_row_at,
    describe=lambda s: (f"windowed attention, {s.window_s:g} s blocks: at least "
                        f"{s.window_s:g} s of context each side"),
    control=Control(label="window s", kinds=("attention",), values=(None, 4.0, 2.0, 1.0, 0.5),
                    to_setting=lambda v: None if v is None else
                    WindowedAttentionConfig(window_s=v),
                    from_setting=lambda s: None if s is None else s.window_s)))
