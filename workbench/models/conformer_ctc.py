"""Conformer-CTC (Gulati et al. 2020, "Conformer: Convolution-augmented Transformer for Speech
Recognition", arXiv:2005.08100), sized for edge devices, with presets kept as data.

    mel (B, n_mels, T) at 100 Hz
    -> subsample: Conv2d(1->C, 3x3, stride 2) -> ReLU -> Conv2d(C->C, 3x3, stride 2) -> ReLU
       -> Linear(C * n_mels/4 -> D) -> + sinusoidal absolute positions       (B, T', D) at 25 Hz
    -> blocks (Macaron): x += 1/2 ffn1(ffn1_ln x); x += attn(attn_ln x); x += conv(conv_ln x);
                         x += 1/2 ffn2(ffn2_ln x); x = final_ln(x)
    -> ctc_head: Linear(D -> vocab)

Differences from the paper, and why: absolute sinusoidal positions instead of relative ones (the
attention layer stays the plain, prunable `MultiHeadSelfAttention`); LayerNorm over channels in
the conv module instead of BatchNorm, so a padded batch gives exactly each item's result in eval
mode; the subsampling convs are padded (T' = ceil(ceil(T/2)/2)), so 1-3 frame inputs still work.
Batch == per-item also needs: input zeroed past each length, the first conv's output zeroed
past its length, the GLU output zeroed on padding before the depthwise conv, and a key mask.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from workbench.errors import WorkbenchError
from workbench.models.base import VOCAB, CTCModel
from workbench.models.layers import (FeedForward, MultiHeadSelfAttention, is_tracing,
                                     lengths_to_pad_mask)


@dataclass(frozen=True)
class ConformerCTCConfig:
    """Sizes of a Conformer-CTC; see PRESETS for the named ones."""

    n_mels: int = 80
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 128
    conv_kernel: int = 15      # depthwise kernel in 40 ms frames (odd, so padding is symmetric)
    subsample_channels: int = 0  # channels of the Conv2d subsampling; 0 = d_model
    dropout: float = 0.1
    vocab: int = len(VOCAB)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise WorkbenchError(f"ConformerCTCConfig.d_model={self.d_model} must be divisible by "
                                 f"n_heads={self.n_heads}.")
        if self.conv_kernel % 2 == 0:
            raise WorkbenchError(f"ConformerCTCConfig.conv_kernel={self.conv_kernel} must be odd.")
        if self.n_mels < 1 or self.n_layers < 1:
            raise WorkbenchError("ConformerCTCConfig: n_mels and n_layers must be at least 1.")


#: Named sizes. `tiny` trains in seconds in tests; `small` is about 4 M parameters (edge-sized,
#: the width of Conformer-S in the paper, d=144 and 4 heads, with 8 instead of 16 blocks).
PRESETS: dict[str, ConformerCTCConfig] = {
    "tiny": ConformerCTCConfig(d_model=64, n_layers=2, n_heads=4, d_ff=128, conv_kernel=15),
    "small": ConformerCTCConfig(d_model=144, n_layers=8, n_heads=4, d_ff=576, conv_kernel=15),
}


def _conv_out(lengths: torch.Tensor) -> torch.Tensor:
    """Frames after a 3-wide, stride-2, pad-1 conv: (T - 1) // 2 + 1."""
    return torch.div(lengths - 1, 2, rounding_mode="floor") + 1


def subsampled_lengths(feat_lengths: torch.Tensor) -> torch.Tensor:
    """Frames after the two stride-2 convs (x4 subsampling, 100 Hz -> 25 Hz)."""
    return _conv_out(_conv_out(feat_lengths))


def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """(length, dim) table of Vaswani et al. 2017 (sin on even, cos on odd channels)."""
    pos = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device)
                    * (-math.log(10_000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv[: dim // 2])
    return table


class Conv2dSubsampling(nn.Module):
    """(B, n_mels, T) -> (B, T', D) with T' = subsampled_lengths(T)."""

    def __init__(self, n_mels: int, channels: int, d_model: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)
        freq = (((n_mels - 1) // 2 + 1) - 1) // 2 + 1
        self.proj = nn.Linear(channels * freq, d_model)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        t = x.shape[-1]
        x = x.masked_fill(lengths_to_pad_mask(lengths, t)[:, None, :], 0.0)
        x = F.relu(self.conv1(x[:, None]))                          # (B, C, F/2, T/2)
        l1 = _conv_out(lengths)
        x = x.masked_fill(lengths_to_pad_mask(l1, x.shape[-1])[:, None, None, :], 0.0)
        x = F.relu(self.conv2(x))                                   # (B, C, F/4, T/4)
        b, c, f, t2 = x.shape
        return self.proj(x.permute(0, 3, 1, 2).reshape(b, t2, c * f))


class ConvModule(nn.Module):
    """pointwise1 (D -> 2D) -> GLU -> depthwise (k) -> LayerNorm -> swish -> pointwise2 -> dropout."""

    def __init__(self, d_model: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.pointwise1 = nn.Conv1d(d_model, 2 * d_model, kernel_size=1)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        self.norm = nn.LayerNorm(d_model)
        self.pointwise2 = nn.Conv1d(d_model, d_model, kernel_size=1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
        y = F.glu(self.pointwise1(x.transpose(1, 2)), dim=1)       # (B, D, T)
        if pad_mask is not None:
            y = y.masked_fill(pad_mask[:, None, :], 0.0)
        y = self.depthwise(y)
        y = F.silu(self.norm(y.transpose(1, 2)))                    # (B, T, D)
        y = self.pointwise2(y.transpose(1, 2)).transpose(1, 2)
        return self.dropout(y)


class ConformerBlock(nn.Module):
    """Macaron block: half-step FFN, MHSA, conv module, half-step FFN, final LayerNorm."""

    def __init__(self, cfg: ConformerCTCConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.ffn1_ln = nn.LayerNorm(d)
        self.ffn1 = FeedForward(d, cfg.d_ff, activation="silu", dropout=cfg.dropout)
        self.attn_ln = nn.LayerNorm(d)
        self.attn = MultiHeadSelfAttention(d, cfg.n_heads)
        self.conv_ln = nn.LayerNorm(d)
        self.conv = ConvModule(d, cfg.conv_kernel, cfg.dropout)
        self.ffn2_ln = nn.LayerNorm(d)
        self.ffn2 = FeedForward(d, cfg.d_ff, activation="silu", dropout=cfg.dropout)
        self.final_ln = nn.LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + 0.5 * self.dropout(self.ffn1(self.ffn1_ln(x)))
        x = x + self.dropout(self.attn(self.attn_ln(x), pad_mask))
        x = x + self.conv(self.conv_ln(x), pad_mask)
        x = x + 0.5 * self.dropout(self.ffn2(self.ffn2_ln(x)))
        return self.final_ln(x)


class ConformerCTC(CTCModel):
    """Conformer encoder + Linear CTC head. Build through `workbench.models.conformer_ctc(preset)`."""

    family: ClassVar[str] = "conformer_ctc"
    # First match wins (fnmatch): norms before the module patterns they sit inside.
    ROLES: ClassVar[tuple[tuple[str, str], ...]] = (
        ("subsample", "front-end"), ("subsample.*", "front-end"),
        ("blocks.*.ffn1_ln", "norm"), ("blocks.*.attn_ln", "norm"), ("blocks.*.conv_ln", "norm"),
        ("blocks.*.ffn2_ln", "norm"), ("blocks.*.final_ln", "norm"), ("blocks.*.conv.norm", "norm"),
        ("blocks.*.attn", "attention"), ("blocks.*.attn.*", "attention"),
        ("blocks.*.ffn1", "ffn"), ("blocks.*.ffn1.*", "ffn"),
        ("blocks.*.ffn2", "ffn"), ("blocks.*.ffn2.*", "ffn"),
        ("blocks.*.conv", "conv"), ("blocks.*.conv.*", "conv"),
        ("ctc_head", "head"), ("ctc_head.*", "head"),
    )

    def __init__(self, config: ConformerCTCConfig = PRESETS["tiny"]) -> None:
        super().__init__()
        self.config = config
        c = config
        self.subsample = Conv2dSubsampling(c.n_mels, c.subsample_channels or c.d_model, c.d_model)
        self.input_dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(ConformerBlock(c) for _ in range(c.n_layers))
        self.ctc_head = nn.Linear(c.d_model, c.vocab)

    def stem(self, features: torch.Tensor, feat_lengths: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n_mels, T) at 100 Hz, (B,) -> (B, T', D) at 25 Hz with positions added, (B,)."""
        if features.dim() != 3 or features.shape[1] != self.config.n_mels:
            raise WorkbenchError(f"features: expected shape (batch, {self.config.n_mels}, frames), "
                                 f"got {tuple(features.shape)}.")
        t_in = features.shape[-1]
        feat_lengths = feat_lengths.to(features.device)
        if not is_tracing() and (t_in < 1 or bool((feat_lengths < 1).any())
                               or bool((feat_lengths > t_in).any())):
            raise WorkbenchError(f"feat_lengths: every length must be in 1..{t_in} (the frames "
                                 f"in features), got {feat_lengths.tolist()}.")
        h = self.subsample(features, feat_lengths)
        h = h + sinusoidal_positions(h.shape[1], h.shape[2], h.device).to(h.dtype)
        return self.input_dropout(h), subsampled_lengths(feat_lengths)

    def head(self, h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T', D) -> (B, T', vocab) logits (each block already ends in its final LayerNorm)."""
        return self.ctc_head(h)
