"""Whisper's text decoder (openai/whisper model.py `TextDecoder`) with an explicit KV cache.

    tokens (B, L) -> token_embedding + positional_embedding[offset:offset + L]
    -> blocks: x += attn(attn_ln(x)) [causal, cached]; x += cross_attn(cross_attn_ln(x)) [keys and
       values from the encoder output, computed once]; x += mlp(mlp_ln(x))
    -> ln -> logits = token_embedding(x)   (one Linear: the output projection is tied to the embedding)

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

#: One block's cache: self-attention keys/values so far (B, H, L, Dh), cross-attention keys/values
#: of each item's encoder output (B, H, T, Dh), and of the shared silence tail (H, S, Dh) or None.
BlockCache = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                   torch.Tensor | None, torch.Tensor | None]


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

    def attend_with_tail(self, x: torch.Tensor, kt: torch.Tensor, v: torch.Tensor,
                         mask: torch.Tensor, tkt: torch.Tensor, tv: torch.Tensor,
                         tail_mask: torch.Tensor) -> torch.Tensor:
        """Attention over each item's keys where `mask` (B, 1, 1, T) is True, and the shared tail
        keys where `tail_mask` (B, 1, 1, S) is True, in one softmax. Keys come transposed (own
        (B, H, Dh, T), tail (H, Dh, S)) so no step copies them; values (B, H, T, Dh), (H, S, Dh).

        Same result as concatenating the two key sets per item, but the shared tail is read once
        for the whole batch (one GEMM with batch x queries as rows) instead of copied per item.
        """
        b, n, _ = x.shape
        h, dh = self.n_heads, self.head_dim
        q = self._split(self.q_proj(x)) * dh ** -0.5                  # (B, H, L, Dh)
        own = (q @ kt).masked_fill(~mask, float("-inf"))              # (B, H, L, T)
        qt = q.permute(1, 0, 2, 3).reshape(h, b * n, dh)              # (H, B*L, Dh)
        tail = (qt @ tkt).view(h, b, n, -1).permute(1, 0, 2, 3)
        tail = tail.masked_fill(~tail_mask, float("-inf"))            # (B, H, L, S)
        p = torch.cat([own, tail], dim=-1).softmax(dim=-1)
        t = kt.shape[3]
        p_tail = p[..., t:].permute(1, 0, 2, 3).reshape(h, b * n, -1)
        y = p[..., :t] @ v + (p_tail @ tv).view(h, b, n, dh).permute(1, 0, 2, 3)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, h * dh))


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

    def forward(self, x: torch.Tensor, cache: BlockCache, cross_mask: torch.Tensor | None,
                tail_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, BlockCache]:
        self_k, self_v, cross_k, cross_v, tail_k, tail_v = cache
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
        h = self.cross_attn_ln(x)
        if tail_k is None:
            x = x + self.cross_attn.attend(h, cross_k, cross_v, cross_mask)
        else:
            x = x + self.cross_attn.attend_with_tail(h, cross_k, cross_v, cross_mask, tail_k,
                                                     tail_v, tail_mask)
        x = x + self.mlp(self.mlp_ln(x))
        return x, (k, v, cross_k, cross_v, tail_k, tail_v)


class WhisperDecoder(nn.Module):
    """Token embedding + learned positions + blocks + final norm; logits tied to the embedding."""

    def __init__(self, config: WhisperDecoderConfig = WhisperDecoderConfig()) -> None:
        super().__init__()
        self.config = config
        c = config
        # The tied embedding / output projection is one Linear (d_model -> n_vocab, weight
        # (n_vocab, d_model)), so a plan can quantize or factorize it like any other layer; the
        # input embedding reads rows of that same (possibly compressed) weight (`embed`).
        self.token_embedding = nn.Linear(c.d_model, c.n_vocab, bias=False)
        self.positional_embedding = nn.Parameter(torch.zeros(c.n_ctx, c.d_model))
        self.blocks = nn.ModuleList(DecoderBlock(c) for _ in range(c.n_layers))
        self.ln = nn.LayerNorm(c.d_model, eps=LN_EPS)

    def init_cache(self, enc: torch.Tensor, tail: torch.Tensor | None = None
                   ) -> list[BlockCache]:
        """Cross keys/values from the encoder output (B, T, D), of the shared `tail` (1, S, D) if
        given (an encoder output of silence, see workbench.whisper_eval), and empty self caches."""
        out = []
        for block in self.blocks:
            ck, cv = block.cross_attn.keys_values(enc)
            tk = tv = None
            if tail is not None:  # keys stored transposed: (B, H, Dh, T) and (H, Dh, S)
                tk, tv = (t[0] for t in block.cross_attn.keys_values(tail))
                tk, ck = tk.transpose(-1, -2).contiguous(), ck.transpose(-1, -2).contiguous()
            h, dh = block.attn.n_heads, block.attn.head_dim
            empty = enc.new_zeros(enc.shape[0], h, 0, dh)
            out.append((empty, empty, ck, cv, tk, tv))
        return out

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) final hidden states -> (B, L, vocab) logits (tied output projection)."""
        return self.token_embedding(x)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, D): rows of the tied weight; a low-rank factorized weight
        (`LowRankLinear`: up (V, r) @ down (r, D)) is read as up[tokens] @ down."""
        layer = self.token_embedding
        if hasattr(layer, "up") and hasattr(layer, "down"):
            return F.embedding(tokens, layer.up.weight) @ layer.down.weight
        return F.embedding(tokens, layer.weight)

    def forward(self, tokens: torch.Tensor, cache: list[BlockCache],
                enc_pad_mask: torch.Tensor | None = None, last_only: bool = True,
                enc_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, list[BlockCache]]:
        """tokens (B, L) after `offset` cached ones -> logits (B, L or 1, vocab), new cache.

        With a tail in the cache, item i attends to its own first `enc_lengths[i]` encoder
        positions and to the tail's positions from `enc_lengths[i]` on."""
        offset = cache[0][0].shape[2] if cache else 0
        n = tokens.shape[1]
        if offset + n > self.config.n_ctx:
            raise ValueError(f"tokens: {offset + n} positions exceed the decoder's "
                             f"{self.config.n_ctx}.")
        x = self.embed(tokens) + self.positional_embedding[offset:offset + n]
        cross_mask = None if enc_pad_mask is None else (~enc_pad_mask)[:, None, None, :]
        tail_mask = None
        if cache and cache[0][4] is not None:
            t, s = cache[0][2].shape[3], cache[0][4].shape[2]
            lengths = enc_lengths if enc_lengths is not None else torch.full(
                (tokens.shape[0],), t, dtype=torch.long)
            lengths = lengths.to(tokens.device)[:, None]
            cross_mask = (torch.arange(t, device=tokens.device)[None, :] < lengths)[:, None, None]
            tail_mask = (torch.arange(s, device=tokens.device)[None, :] >= lengths)[:, None, None]
        new_cache = []
        for block, block_cache in zip(self.blocks, cache):
            x, c = block(x, block_cache, cross_mask, tail_mask)
            new_cache.append(c)
        x = self.ln(x[:, -1:] if last_only else x)
        return self.project(x), new_cache
