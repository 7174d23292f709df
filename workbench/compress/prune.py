"""Pruning: structured (heads, FFN neurons, conv channels: shapes shrink) and unstructured (mask).

How many go: `count_to_remove(n, amount)` = round-half-up(amount * n), so 50 % of 1536 neurons
is exactly 768; structured pruning always keeps at least one head / neuron / channel. Which go:
the lowest scores of `importance.py` (ties: the lower index goes first).

Structured removal is exact surgery, nothing else in the model changes:
    heads     q/k/v_proj lose the head's out rows (and bias), out_proj its input columns,
              n_heads drops; head_dim (and so the attention scale) is unchanged.
    neurons   fc1 loses rows (+ bias), fc2 columns.
    channels  pointwise1 loses rows c and c + C (GLU value and gate), the depthwise conv
              channel c (weight, bias, groups), the norm's per-channel parameters and
              buffers, pointwise2 input column c.
Unstructured pruning zeroes the lowest |w| (or |w * grad|) and keeps a `weight_mask` buffer;
weights masked before are removed first, so applying the same plan twice changes nothing.

Functions whose names end in `_` change the module they are given: use them on a copy you own
(`workbench.compress.compress` does).
"""
from __future__ import annotations

import math
from collections.abc import MutableMapping

import torch
from torch import nn

from workbench.compress import importance as imp
from workbench.graph.surgery import count_to_remove  # the one rounding rule (re-exported)

Grads = MutableMapping[str, torch.Tensor]


def keep_indices(scores: torch.Tensor, amount: float) -> torch.Tensor:
    """Sorted indices of the units to keep: all but the `count_to_remove` lowest scores."""
    n = scores.numel()
    drop = torch.argsort(scores, stable=True)[: count_to_remove(n, amount)]
    keep = torch.ones(n, dtype=torch.bool)
    keep[drop] = False
    return torch.nonzero(keep).flatten()


def _slice_param_(module: nn.Module, name: str, dim: int, index: torch.Tensor,
                  prefix: str, grads: Grads | None) -> None:
    """Keep `index` along `dim` of parameter/buffer `name` (and its gradient and mask)."""
    tensor = getattr(module, name, None)
    if tensor is None:
        return
    sliced = tensor.detach().index_select(dim, index).clone()
    if isinstance(tensor, nn.Parameter):
        setattr(module, name, nn.Parameter(sliced, requires_grad=tensor.requires_grad))
    else:
        setattr(module, name, sliced)
    key = f"{prefix}.{name}" if prefix else name
    if grads is not None and key in grads:
        grads[key] = grads[key].index_select(dim, index)


def shrink_outputs_(layer: nn.Module, index: torch.Tensor, prefix: str = "",
                    grads: Grads | None = None) -> None:
    """Keep output units `index` of a Linear / Conv (weight rows, bias, mask)."""
    for name in ("weight", "bias", "weight_mask"):
        _slice_param_(layer, name, 0, index, prefix, grads)
    if isinstance(layer, nn.Linear):
        layer.out_features = len(index)
    else:
        layer.out_channels = len(index)


def shrink_inputs_(layer: nn.Module, index: torch.Tensor, prefix: str = "",
                   grads: Grads | None = None) -> None:
    """Keep input units `index` of a Linear / (groups=1) Conv (weight and mask columns)."""
    for name in ("weight", "weight_mask"):
        _slice_param_(layer, name, 1, index, prefix, grads)
    if isinstance(layer, nn.Linear):
        layer.in_features = len(index)
    else:
        layer.in_channels = len(index)


def _sub(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _relative(grads: Grads | None, prefix: str) -> dict[str, torch.Tensor] | None:
    if grads is None:
        return None
    start = f"{prefix}." if prefix else ""
    return {k[len(start):]: v for k, v in grads.items() if k.startswith(start)}


def prune_heads_(attn: nn.Module, amount: float, method: str = "magnitude",
                 grads: Grads | None = None, prefix: str = "") -> list[int]:
    """Remove the least important heads of `attn` in place; returns the removed head indices.

    `grads` (absolute names under `prefix`) is updated to the new shapes.
    """
    scores = imp.head_importance(attn, method, _relative(grads, prefix))
    keep = keep_indices(scores, amount)
    removed = sorted(set(range(attn.n_heads)) - set(keep.tolist()))
    remove_heads_(attn, keep, grads, prefix)
    return removed


def remove_heads_(attn: nn.Module, keep: torch.Tensor, grads: Grads | None = None,
                  prefix: str = "") -> None:
    """Keep heads `keep` (sorted indices) of `attn` in place: the surgery of prune_heads_ (and
    of progressive pruning, which chooses the heads itself)."""
    dh = attn.head_dim
    rows = (keep[:, None] * dh + torch.arange(dh)[None, :]).flatten()
    for proj in ("q_proj", "k_proj", "v_proj"):
        shrink_outputs_(getattr(attn, proj), rows, _sub(prefix, proj), grads)
    shrink_inputs_(attn.out_proj, rows, _sub(prefix, "out_proj"), grads)
    attn.n_heads = len(keep)


def prune_neurons_(ffn: nn.Module, amount: float, method: str = "magnitude",
                   grads: Grads | None = None, prefix: str = "") -> list[int]:
    """Remove the least important hidden neurons of an FFN in place; returns removed indices."""
    scores = imp.neuron_importance(ffn, method, _relative(grads, prefix))
    keep = keep_indices(scores, amount)
    remove_neurons_(ffn, keep, grads, prefix)
    return sorted(set(range(len(scores))) - set(keep.tolist()))


def remove_neurons_(ffn: nn.Module, keep: torch.Tensor, grads: Grads | None = None,
                    prefix: str = "") -> None:
    """Keep hidden neurons `keep` (sorted indices) of an FFN in place."""
    shrink_outputs_(ffn.fc1, keep, _sub(prefix, "fc1"), grads)
    shrink_inputs_(ffn.fc2, keep, _sub(prefix, "fc2"), grads)


def prune_channels_(conv_module: nn.Module, amount: float, method: str = "magnitude",
                    grads: Grads | None = None, prefix: str = "") -> list[int]:
    """Remove the least important channels of a conformer conv module in place."""
    scores = imp.channel_importance(conv_module, method, _relative(grads, prefix))
    keep = keep_indices(scores, amount)
    remove_channels_(conv_module, keep, grads, prefix)
    return sorted(set(range(len(scores))) - set(keep.tolist()))


def remove_channels_(conv_module: nn.Module, keep: torch.Tensor, grads: Grads | None = None,
                     prefix: str = "") -> None:
    """Keep channels `keep` (sorted indices) of a conformer conv module in place."""
    c = conv_module.depthwise.in_channels
    rows = torch.cat([keep, keep + c]) if imp.has_glu(conv_module) else keep
    shrink_outputs_(conv_module.pointwise1, rows, _sub(prefix, "pointwise1"), grads)
    depthwise = conv_module.depthwise
    shrink_outputs_(depthwise, keep, _sub(prefix, "depthwise"), grads)
    depthwise.in_channels = depthwise.groups = len(keep)
    norm = getattr(conv_module, "norm", None)
    if norm is not None:
        for name, tensor in [*norm.named_parameters(recurse=False),
                             *norm.named_buffers(recurse=False)]:
            if tensor.dim() == 1 and tensor.numel() == c:
                _slice_param_(norm, name, 0, keep, _sub(prefix, "norm"), grads)
        if isinstance(norm, nn.LayerNorm):
            norm.normalized_shape = (len(keep),)
        elif hasattr(norm, "num_features"):
            norm.num_features = len(keep)
    shrink_inputs_(conv_module.pointwise2, keep, _sub(prefix, "pointwise2"), grads)


def prune_unstructured_(layer: nn.Module, amount: float, method: str = "magnitude",
                        grad: torch.Tensor | None = None) -> int:
    """Zero the `count_to_remove(numel, amount)` least important weights of a Linear / Conv in
    place and store the mask as buffer `weight_mask`; returns how many weights are zero by mask."""
    scores = imp.weight_importance(layer, method, grad).flatten().double()
    old_mask = getattr(layer, "weight_mask", None)
    if old_mask is not None:
        scores = scores.masked_fill(~old_mask.flatten(), -math.inf)  # already gone: first to go
    n = scores.numel()
    drop = torch.argsort(scores, stable=True)[: count_to_remove(n, amount, keep_one=False)]
    mask = torch.ones(n, dtype=torch.bool)
    mask[drop] = False
    if old_mask is not None:
        mask &= old_mask.flatten()
    return mask_weights_(layer, mask.reshape(layer.weight.shape))


def mask_weights_(layer: nn.Module, mask: torch.Tensor) -> int:
    """Zero the weights of `layer` where the bool `mask` (weight's shape) is False and keep it
    as buffer `weight_mask` (what size / export read); returns how many weights it zeroes."""
    layer.weight = nn.Parameter(layer.weight.detach() * mask,
                                requires_grad=layer.weight.requires_grad)
    layer.register_buffer("weight_mask", mask)
    return int((~mask).sum())
