"""CTC decoding: greedy (best path) over the character vocabulary."""
from __future__ import annotations

import torch

from workbench.models.base import VOCAB


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor,
                  vocab: tuple[str, ...] = VOCAB) -> list[str]:
    """(B, T, V) log-probs + (B,) lengths -> B strings: argmax, collapse repeats, drop blanks (id 0)."""
    best = log_probs.argmax(dim=-1)  # (B, T)
    out = []
    for row, n in zip(best.tolist(), lengths.tolist()):
        chars, prev = [], -1
        for idx in row[:n]:
            if idx != prev and idx != 0:
                chars.append(vocab[idx])
            prev = idx
        out.append(" ".join("".join(chars).split()))
    return out


def encode_text(text: str, vocab: tuple[str, ...] = VOCAB) -> list[int]:
    """Normalized text -> label ids (characters outside the vocabulary are dropped)."""
    index = {c: i for i, c in enumerate(vocab)}
    return [index[c] for c in text if c in index and index[c] != 0]
