"""Helpers shared by the architecture-swap techniques (windowed / linear / Performer attention,
grouped FFN): replace one module of a model copy, the model's frame rate at its blocks, and the
latency row of a kernelized attention (linear and Performer attention: one formula, their own
feature map)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from workbench.compress.techniques.low_rank import replace_module
from workbench.errors import PlanError
from workbench.models.layers import MultiHeadSelfAttention


def ATTENTION_WHY_NOT(setting, target, path: str) -> str:  # noqa: N802 (a hook constant)
    return (f"an attention swap applies to attention modules (q/k/v/out projections), and "
            f"{path} is a {target.type_name}; name the block's attention, e.g. 'blocks.0.attn'.")


def replace_attention(root: nn.Module, path: str,
                      build: Callable[[MultiHeadSelfAttention], nn.Module]) -> nn.Module:
    """Put build(attention at `path`) in its place; one swap per attention module."""
    attn = root.get_submodule(path)
    if type(attn) is not MultiHeadSelfAttention:
        raise PlanError(f"layers[{path!r}]: {type(attn).__name__} cannot be swapped: an "
                        f"attention swap needs the workbench's MultiHeadSelfAttention, and one "
                        f"swap per module (the plan sets two, or the model is already swapped).")
    return replace_module(root, path, build(attn))


def frames_per_second(model: nn.Module) -> float:
    """Frames per second at the block input, measured by running the model's stem on 1 s of
    features (10 s of log-mel frames at 100 Hz): 50 for Whisper, 25 for a 4x-subsampling
    Conformer."""
    stem = getattr(model, "stem", None)
    n_mels = getattr(getattr(model, "config", None), "n_mels", 80)
    if stem is None:
        raise PlanError(f"{type(model).__name__}: a window in seconds needs the model's stem "
                        f"(features -> block input) to find its frame rate.")
    with torch.no_grad():
        _, lengths = stem(torch.zeros(1, int(n_mels), 1000), torch.tensor([1000]))
    return float(lengths[0]) / 10.0


def kernelized_attention_row(row: Any, features: int, feature_map_macs: int) -> Any:
    """The attention-scores row of a KernelizedAttention (compress.swap_layers): per head, over
    T positions, m = `features` features of dimension Dh: phi(k)^T v and phi(q) (.) are T m Dh
    MACs each, the normaliser (sum_t phi(k_t), then phi(q) . it) 2 T m; `feature_map_macs` per
    head and position is the feature map's own work (0 for elu + 1; 2 m Dh for Performer's random
    projections of q and k). Writes the (H, T, m) features instead of an (H, T, T) matrix;
    linear in T. Other rows pass through (the hook is applied to every row under the module)."""
    if row.op != "attention_scores" or not row.heads:
        return row
    h, t, dh, m = row.heads, row.positions, row.head_dim, features
    return replace(row, macs=2 * h * t * m * (dh + 1) + h * t * feature_map_macs,
                   output_bytes=h * t * m * 4, linear_in_length=True)
