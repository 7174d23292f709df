"""Helpers shared by the architecture-swap techniques (windowed / linear / Performer attention,
grouped FFN): replace one module of a model copy, the model's frame rate at its blocks (read
from the whole model, also when the engine compresses one block), a per-module seed, and the
latency row of a kernelized attention (linear and Performer attention: one formula, their own
feature map)."""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from workbench.compress.techniques.low_rank import replace_module
from workbench.compress.techniques.registry import ApplyContext
from workbench.errors import PlanError
from workbench.models.base import input_spec
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
    """Frames per second at the block input of a model with a stem (features -> block input):
    how many more frames its stem gives for 1 s more input (100 log-mel frames, or 16,000
    samples for a waveform model: models.input_spec), from the output lengths of 1 s and 2 s;
    the difference cancels the convolutions' edge frames. 50 for Whisper, 25 for a
    4x-subsampling Conformer, 50 for wav2vec2. 2 s fits any encoder's positions."""
    stem = getattr(model, "stem", None)
    if stem is None:
        raise PlanError(f"{type(model).__name__}: a window in seconds needs the model's stem "
                        f"(features -> block input) to find its frame rate.")
    spec = input_spec(model)
    one, two = spec.length(1.0), spec.length(2.0)
    with torch.no_grad():
        _, lengths = stem(torch.zeros(2, spec.channels, two), torch.tensor([one, two]))
    return float(lengths[1] - lengths[0])


def frame_rates(root: nn.Module, paths: Iterable[str], ctx: ApplyContext) -> dict[str, float]:
    """{path: frames per second at the input of the module at `path` (relative to `root`)},
    measured on the nearest module above it in the whole model that has a stem (the model
    itself; the encoder of a WhisperASR), once per such module. Read from the whole model, so
    the engine's per-block path (root = one block) gets the same rate as compress."""
    whole = ctx.whole(root)
    rates: dict[str, float] = {}
    out: dict[str, float] = {}
    for path in paths:
        parts = ctx.absolute(path).split(".")
        owners = (".".join(parts[:i]) for i in range(len(parts) - 1, -1, -1))
        owner = next((o for o in owners if hasattr(whole.get_submodule(o), "stem")), None)
        if owner is None:
            raise PlanError(f"layers[{ctx.absolute(path)!r}]: a window in seconds needs the "
                            f"stem (features -> block input) of the model around this module to "
                            f"find its frame rate, and {type(whole).__name__} has none"
                            + ("" if ctx.model is not None else
                               " (compressing one module? pass the whole model: "
                               "compress_module(module, entries, model=..., prefix=...))") + ".")
        if owner not in rates:
            rates[owner] = frames_per_second(whole.get_submodule(owner))
        out[path] = rates[owner]
    return out


def module_seed(seed: int, ctx: ApplyContext, path: str) -> int:
    """A random seed for the module at `path` (relative to the root): `seed` and the module's
    path in the whole model, hashed (sha1, stable across runs and processes), so it does not
    depend on which other modules the same call compresses."""
    digest = hashlib.sha1(f"{seed}:{ctx.absolute(path)}".encode()).digest()
    return int.from_bytes(digest[:6], "little")


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
