"""Building blocks shared by every model family in the workbench.

Compression works on these classes by attribute name, so keep the names stable:

- `MultiHeadSelfAttention`: `q_proj`, `k_proj`, `v_proj` (d_model -> n_heads * head_dim) and
  `out_proj` (n_heads * head_dim -> d_model). Removing heads shrinks those four Linears and
  `n_heads`; nothing else has to change.
- `FeedForward`: `fc1` (d_model -> d_ff), activation, `fc2` (d_ff -> d_model). Removing neurons
  shrinks `fc1.out_features` and `fc2.in_features`.

Shapes: `(batch, time, dim)` everywhere; `pad_mask` is `(batch, time)` bool, True on padding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadSelfAttention(nn.Module):
    """Self-attention with explicit projections, so heads can be scored and removed one by one."""

    def __init__(self, d_model: int, n_heads: int, head_dim: int | None = None,
                 k_bias: bool = True) -> None:
        super().__init__()
        head_dim = head_dim or d_model // n_heads
        self.n_heads = n_heads
        self.head_dim = head_dim
        inner = n_heads * head_dim
        self.q_proj = nn.Linear(d_model, inner)
        self.k_proj = nn.Linear(d_model, inner, bias=k_bias)  # Whisper's key projection has no bias
        self.v_proj = nn.Linear(d_model, inner)
        self.out_proj = nn.Linear(inner, d_model)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        # (B, T, H*Dh) -> (B, H, T, Dh)
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        attn_mask = None
        if pad_mask is not None:
            # (B, 1, 1, T): True where a key may be attended to.
            attn_mask = (~pad_mask)[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        y = y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)
        return self.out_proj(y)


class FeedForward(nn.Module):
    """Position-wise FFN: fc1 -> activation -> dropout -> fc2."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu",
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.activation = activation
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = F.gelu(h) if self.activation == "gelu" else F.silu(h)
        return self.fc2(self.dropout(h))


def lengths_to_pad_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) int lengths -> (B, max_len) bool, True on padding."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


def is_tracing() -> bool:
    """True while torch traces or compiles the model (ONNX export, torch.export, torch.compile).

    Input checks that read tensor values (e.g. "every length >= 1") are skipped then: they are
    data-dependent branches an exporter cannot keep, and the exported graph is checked by parity.
    """
    return torch.jit.is_tracing() or torch.compiler.is_compiling()
