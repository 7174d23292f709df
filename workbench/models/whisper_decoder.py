"""Whisper's text decoder (openai/whisper model.py `TextDecoder`) with an explicit KV cache.

    tokens (B, L) -> token_embedding + positional_embedding[offset:offset + L]
    -> blocks: x += attn(attn_ln(x)) [causal, cached]; x += cross_attn(cross_attn_ln(x)) [keys and
       values from the encoder output, computed once]; x += mlp(mlp_ln(x))
    -> ln -> logits = x @ token_embedding.weight.T   (the output projection is tied to the embedding)

Every attention module has the `q_proj/k_proj/v_proj/out_proj` Linears and `n_heads` the compress
package finds by duck typing (workbench.compress.targets), and every FFN `fc1/fc2`, so the plan
machinery prunes heads / neurons, quantizes and factorizes decoder layers exactly as encoder ones.
Attention reads `n_heads` at run time, so a pruned module keeps working.

The cache is plain data: per block `(self_k, self_v, cross_k, cross_v)`, each (B, H, T, Dh).
Shapes: `(batch, time, dim)`; `enc_pad_mask` is (B, T_enc) bool, True on encoder padding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workbench.models.layers import FeedForward

LN_EPS = 1e-5

#: One block's cache: self-attention keys/values so far, cross-attention keys/values.
BlockCache = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class WhisperDecoderConfig:
    """Whisper tiny(.en) decoder sizes (openai/whisper `ModelDimensions`)."""

    n_vocab: int = 51864
    n_ctx: int = 448           # learned text positions
    d_model: int = 384
    n_heads: int = 6
    n_layers: int = 4
    d_ff: int = 1536


class DecoderAttention(nn.Module):
    """Multi-head attention whose keys/values can be computed once and reused (KV cache).

    Same attribute names as `workbench.models.layers.MultiHeadSelfAttention` (k_proj has no bias,
    as in Whisper), so head pruning shrinks the four Linears and `n_heads` the same way.
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        inner = n_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, inner)
        self.k_proj = nn.Linear(d_model, inner, bias=False)
        self.v_proj = nn.Linear(d_model, inner)
        self.out_proj = nn.Linear(inner, d_model)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape  # (B, T, H*Dh) -> (B, H, T, Dh)
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) -> keys, values (B, H, T, Dh)."""
        return self._split(self.k_proj(x)), self._split(self.v_proj(x))

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        """Queries from x (B, L, D) over keys/values (B, H, S, Dh); mask (B|1, 1, L|1, S) True=keep."""
        b, n, _ = x.shape
        y = F.scaled_dot_product_attention(self._split(self.q_proj(x)), k, v, attn_mask=mask)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, self.n_heads * self.head_dim))


class DecoderBlock(nn.Module):
    """Pre-norm residual block: causal self-attention, cross-attention, FFN."""

    def __init__(self, cfg: WhisperDecoderConfig) -> None:
        super().__init__()
        self.attn_ln = nn.LayerNorm(cfg.d_model, eps=LN_EPS)
        self.attn = DecoderAttention(cfg.d_model, cfg.n_heads)
        self.cross_attn_ln = nn.LayerNorm(cfg.d_model, eps=LN_EPS)
        self.cross_attn = DecoderAttention(cfg.d_model, cfg.n_heads)
        self.mlp_ln = nn.LayerNorm(cfg.d_model, eps=LN_EPS)
        self.mlp = FeedForward(cfg.d_model, cfg.d_ff, activation="gelu")

    def forward(self, x: torch.Tensor, cache: BlockCache, cross_mask: torch.Tensor | None
                ) -> tuple[torch.Tensor, BlockCache]:
        self_k, self_v, cross_k, cross_v = cache
        h = self.attn_ln(x)
        k_new, v_new = self.attn.keys_values(h)
        k = torch.cat([self_k, k_new], dim=2)
        v = torch.cat([self_v, v_new], dim=2)
        n, past = x.shape[1], self_k.shape[2]
        causal = None
        if n > 1:  # new token i sees all past tokens and new tokens 0..i: (1, 1, L, S)
            causal = (torch.arange(past + n, device=x.device)[None, :]
                      <= past + torch.arange(n, device=x.device)[:, None])[None, None]
        x = x + self.attn.attend(h, k, v, causal)
        x = x + self.cross_attn.attend(self.cross_attn_ln(x), cross_k, cross_v, cross_mask)
        x = x + self.mlp(self.mlp_ln(x))
        return x, (k, v, cross_k, cross_v)


class WhisperDecoder(nn.Module):
    """Token embedding + learned positions + blocks + final norm; logits tied to the embedding."""

    def __init__(self, config: WhisperDecoderConfig = WhisperDecoderConfig()) -> None:
        super().__init__()
        self.config = config
        c = config
        self.token_embedding = nn.Embedding(c.n_vocab, c.d_model)
        self.positional_embedding = nn.Parameter(torch.zeros(c.n_ctx, c.d_model))
        self.blocks = nn.ModuleList(DecoderBlock(c) for _ in range(c.n_layers))
        self.ln = nn.LayerNorm(c.d_model, eps=LN_EPS)

    def init_cache(self, enc: torch.Tensor, enc_lengths: torch.Tensor | None = None,
                   tail: torch.Tensor | None = None) -> list[BlockCache]:
        """Cross keys/values from the encoder output (B, T, D) and empty self caches, per block.

        With `tail` (1, S, D), S >= T (an encoder output of silence, see workbench.whisper_eval),
        item i attends to its own first `enc_lengths[i]` positions followed by `tail` from there
        on: keys/values are per-position projections, so the tail's are computed once and
        spliced in, and every item has S unmasked positions.
        """
        out = []
        keep = None
        if tail is not None:
            s, t = tail.shape[1], enc.shape[1]
            lengths = enc_lengths if enc_lengths is not None else torch.full(
                (enc.shape[0],), t, dtype=torch.long)
            keep = (torch.arange(s)[None, :] < lengths[:, None].cpu())[:, None, :, None]
        for block in self.blocks:
            ck, cv = block.cross_attn.keys_values(enc)
            if tail is not None:
                tk, tv = block.cross_attn.keys_values(tail)            # (1, H, S, Dh)
                pad = (0, 0, 0, tail.shape[1] - enc.shape[1])
                ck = torch.where(keep, F.pad(ck, pad), tk)
                cv = torch.where(keep, F.pad(cv, pad), tv)
            h, dh = block.attn.n_heads, block.attn.head_dim
            empty = enc.new_zeros(enc.shape[0], h, 0, dh)
            out.append((empty, empty, ck, cv))
        return out

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) final hidden states -> (B, L, vocab) logits (tied output projection)."""
        return x @ self.token_embedding.weight.T

    def forward(self, tokens: torch.Tensor, cache: list[BlockCache],
                enc_pad_mask: torch.Tensor | None = None, last_only: bool = True
                ) -> tuple[torch.Tensor, list[BlockCache]]:
        """tokens (B, L) after `offset` cached ones -> logits (B, L or 1, vocab), new cache."""
        offset = cache[0][0].shape[2] if cache else 0
        n = tokens.shape[1]
        if offset + n > self.config.n_ctx:
            raise ValueError(f"tokens: {offset + n} positions exceed the decoder's "
                             f"{self.config.n_ctx}.")
        x = self.token_embedding(tokens) + self.positional_embedding[offset:offset + n]
        cross_mask = None if enc_pad_mask is None else (~enc_pad_mask)[:, None, None, :]
        new_cache = []
        for block, block_cache in zip(self.blocks, cache):
            x, c = block(x, block_cache, cross_mask)
            new_cache.append(c)
        x = self.ln(x[:, -1:] if last_only else x)
        return self.project(x), new_cache
