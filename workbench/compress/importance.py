"""Importance scores as pure functions: per attention head, FFN neuron, conv channel, or weight.

Each structured group is the set of weights that disappears with it:

    head h of an attention module:  rows h*Dh:(h+1)*Dh of q_proj/k_proj/v_proj (weights + biases)
                                    and the same columns of out_proj
    neuron j of an FFN:             row j of fc1 (+ bias j) and column j of fc2
    channel c of a conv module:     rows c (and c + C, the GLU gate) of pointwise1 (+ biases),
                                    channel c of the depthwise conv (+ bias), column c of pointwise2

Methods:
    magnitude  the L2 norm of the group's weights
    taylor     first-order Taylor estimate of the loss change when the group is zeroed,
               sum over the group of |w * dL/dw| (Molchanov et al. 2019, "Importance Estimation
               for Neural Network Pruning", CVPR), with gradients of the CTC loss on a
               calibration set (`workbench.compress.calibration_stats.taylor_gradients`).

`grads` maps parameter names relative to the module ("q_proj.weight") to gradients of the same
shape. Nothing here changes a module.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from workbench.errors import PlanError

Grads = Mapping[str, torch.Tensor]


def _score(pieces: list[tuple[torch.Tensor, torch.Tensor | None]], method: str) -> torch.Tensor:
    """pieces: (weights (groups, -1), grads or None); -> (groups,) score."""
    if method == "magnitude":
        return torch.sqrt(sum(w.double().pow(2).sum(dim=1) for w, _ in pieces)).float()
    if method == "taylor":
        if any(g is None for _, g in pieces):
            raise PlanError("prune.importance: 'taylor' needs gradients; compress with a "
                            "calibration set (calib=...) that has targets.")
        return sum((w.double() * g.double()).abs().sum(dim=1) for w, g in pieces).float()
    raise PlanError(f"prune.importance: unknown method '{method}' (magnitude | taylor).")


def _rows(module: nn.Module, name: str, grads: Grads | None, prefix: str, n_groups: int,
          transpose: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Parameter `prefix.name` (and its gradient) reshaped to (n_groups, -1), rows = groups."""
    param = getattr(module.get_submodule(prefix) if prefix else module, name).detach()
    grad = None if grads is None else grads.get(f"{prefix}.{name}" if prefix else name)
    if transpose:  # (out, groups * k, ...) -> (groups * k, out * ...)
        param = param.transpose(0, 1)
        grad = None if grad is None else grad.transpose(0, 1)
    return (param.reshape(n_groups, -1),
            None if grad is None else grad.detach().reshape(n_groups, -1))


def head_importance(attn: nn.Module, method: str = "magnitude", grads: Grads | None = None
                    ) -> torch.Tensor:
    """(n_heads,) importance of each head of a MultiHeadSelfAttention-like module."""
    h = attn.n_heads
    pieces = []
    for proj in ("q_proj", "k_proj", "v_proj"):
        pieces.append(_rows(attn, "weight", grads, proj, h))
        if getattr(attn, proj).bias is not None:
            pieces.append(_rows(attn, "bias", grads, proj, h))
    pieces.append(_rows(attn, "weight", grads, "out_proj", h, transpose=True))
    return _score(pieces, method)


def neuron_importance(ffn: nn.Module, method: str = "magnitude", grads: Grads | None = None
                      ) -> torch.Tensor:
    """(d_ff,) importance of each hidden neuron of an FFN with fc1 / fc2."""
    d_ff = ffn.fc1.out_features
    pieces = [_rows(ffn, "weight", grads, "fc1", d_ff)]
    if ffn.fc1.bias is not None:
        pieces.append(_rows(ffn, "bias", grads, "fc1", d_ff))
    pieces.append(_rows(ffn, "weight", grads, "fc2", d_ff, transpose=True))
    return _score(pieces, method)


def has_glu(conv_module: nn.Module) -> bool:
    """True when pointwise1 feeds a GLU (2C outputs for the C channels of the depthwise conv)."""
    return conv_module.pointwise1.out_channels == 2 * conv_module.depthwise.in_channels


def channel_importance(conv_module: nn.Module, method: str = "magnitude",
                       grads: Grads | None = None) -> torch.Tensor:
    """(C,) importance of each channel between the GLU and pointwise2 of a conv module."""
    c = conv_module.depthwise.in_channels
    halves = 2 if has_glu(conv_module) else 1
    pieces = []
    for name in ("weight", "bias"):
        if name == "bias" and conv_module.pointwise1.bias is None:
            continue
        w, g = _rows(conv_module, name, grads, "pointwise1", halves * c)
        # rows c and c + C belong to the same channel: (2C, k) -> (C, 2k)
        w = w.reshape(halves, c, -1).transpose(0, 1).reshape(c, -1)
        g = None if g is None else g.reshape(halves, c, -1).transpose(0, 1).reshape(c, -1)
        pieces.append((w, g))
    pieces.append(_rows(conv_module, "weight", grads, "depthwise", c))
    if conv_module.depthwise.bias is not None:
        pieces.append(_rows(conv_module, "bias", grads, "depthwise", c))
    pieces.append(_rows(conv_module, "weight", grads, "pointwise2", c, transpose=True))
    return _score(pieces, method)


def weight_importance(layer: nn.Module, method: str = "magnitude",
                      grad: torch.Tensor | None = None) -> torch.Tensor:
    """Per-weight importance (same shape as `layer.weight`): |w|, or |w * dL/dw| for taylor.

    Unstructured pruning removes the lowest; the UI shows it as a heat map.
    """
    w = layer.weight.detach()
    if method == "magnitude":
        return w.abs()
    if method == "taylor":
        if grad is None:
            raise PlanError("prune.importance: 'taylor' needs gradients; compress with a "
                            "calibration set (calib=...) that has targets.")
        return (w * grad.detach()).abs()
    raise PlanError(f"prune.importance: unknown method '{method}' (magnitude | taylor).")
