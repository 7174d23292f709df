"""Helpers shared by the architecture-swap techniques (windowed / linear / Performer attention,
grouped FFN): replace one module of a model copy, and the model's frame rate at its blocks."""
from __future__ import annotations

from collections.abc import Callable

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
