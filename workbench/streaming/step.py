"""Chunked (streaming) inference of a Whisper-CTC encoder: one step = one chunk + cached context.

Why a step module: the same code runs the chunked simulation in PyTorch (batched over utterances)
and is exported to ONNX, so "the ONNX model equals the simulation" is a statement about the export,
not about two implementations.

One step with chunk C, look-ahead R and left context L (all in encoder frames, 20 ms each):

    inputs   mel        (B, 80, 2(C+R)+4)   mel frames [2s-2, 2(s+C+R)+2) of a 100 Hz log-mel
             offset     ()  int64          s, the first encoder frame of the chunk
             mel_len    (B,) int64         mel frames of the whole utterance (masks the end)
             k_cache    (n_layers, B, H, L, Dh)   keys of encoder frames [s-L, s), per layer
             v_cache    (n_layers, B, H, L, Dh)   values of the same frames
             head_cache (B, 4, W)          CTC head activations of frames [s-4, s)
    outputs  logits     (B, C, V)          CTC logits of frames [s-2, s+C-2) (the head's
                                           depthwise conv (k5) needs 2 frames to the right)
             new k_cache, v_cache, head_cache

The conv stem's exact receptive field: encoder frame t = conv2(stride 2, k3) over conv1 outputs
2t-1..2t+1, each conv1(k3) over mel 2t-2..2t+2; so a chunk needs 2 mel frames before it (carried in
the window) and 2 after (20 ms of stem look-ahead). Positions outside [0, mel_len) are zeroed
exactly where the full model zero-pads, so with a left context covering the whole utterance and
a chunk covering it, the step equals the full-context model (checked in tests).

Attention inside a step: queries are the C+R frames; keys are the L cached frames and the C+R
frames. Look-ahead frames are recomputed by the next step (their keys are never cached), so a
chunk's output never depends on audio more than R frames (+ 20 ms stem, + 40 ms head) past it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workbench.errors import WorkbenchError

#: Encoder frames per second (Whisper's stem halves the 100 Hz mel rate).
FRAMES_PER_SECOND = 50
#: Frames of the CTC head's right context (depthwise conv k5 -> 2) and the cache it needs (4).
HEAD_DELAY = 2
HEAD_CACHE = 4


class StreamingError(WorkbenchError):
    """A streaming configuration or model the chunked runner cannot handle."""


@dataclass(frozen=True)
class StreamConfig:
    """Chunk, look-ahead and left context in encoder frames (20 ms)."""

    chunk: int = 50
    lookahead: int = 0
    left: int = 200

    def __post_init__(self) -> None:
        if self.chunk < 3:
            raise StreamingError(f"chunk={self.chunk} frames: need at least 3 (60 ms), since the "
                                 f"CTC head delays output by {HEAD_DELAY} frames")
        if self.lookahead < 0 or self.left < 0:
            raise StreamingError(f"lookahead={self.lookahead}, left={self.left}: must be >= 0")

    @classmethod
    def from_seconds(cls, chunk_s: float, lookahead_s: float = 0.0, left_s: float = 4.0
                     ) -> StreamConfig:
        return cls(round(chunk_s * FRAMES_PER_SECOND), round(lookahead_s * FRAMES_PER_SECOND),
                   round(left_s * FRAMES_PER_SECOND))

    @property
    def chunk_s(self) -> float:
        return self.chunk / FRAMES_PER_SECOND

    @property
    def lookahead_s(self) -> float:
        return self.lookahead / FRAMES_PER_SECOND

    @property
    def mel_window(self) -> int:
        return 2 * (self.chunk + self.lookahead) + 4

    @property
    def algorithmic_latency_s(self) -> float:
        """Audio that must have arrived before a chunk's last frame can be computed: the chunk,
        the look-ahead and the stem's 2 mel frames (20 ms). The head's 2-frame delay means that
        chunk's last 40 ms are emitted with the next chunk."""
        return (self.chunk + self.lookahead) / FRAMES_PER_SECOND + 0.02


def supports_streaming(model: nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("conv1", "conv2", "positional_embedding", "ln_post",
                                           "ctc_head", "blocks")) and \
        all(hasattr(b, "attn_ln") and hasattr(b, "attn") and hasattr(b, "mlp_ln")
            for b in model.blocks)


class StreamingStep(nn.Module):
    """One chunk step of a Whisper-CTC model (see the module docstring for shapes)."""

    def __init__(self, model: nn.Module, cfg: StreamConfig) -> None:
        super().__init__()
        if not supports_streaming(model):
            raise StreamingError(f"{type(model).__name__}: chunked inference supports the "
                                 f"Whisper-CTC family (conv stem, pre-norm blocks, CTC head); "
                                 f"this model does not have that structure")
        self.model = model
        self.cfg = cfg

    def init_state(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        blocks = self.model.blocks
        heads = max(b.attn.n_heads for b in blocks)
        dh = blocks[0].attn.head_dim
        shape = (len(blocks), batch, heads, self.cfg.left, dh)
        width = self.model.ctc_head.proj_in.out_features
        return torch.zeros(shape), torch.zeros(shape), torch.zeros(batch, HEAD_CACHE, width)

    def forward(self, mel: torch.Tensor, offset: torch.Tensor, mel_len: torch.Tensor,
                k_cache: torch.Tensor, v_cache: torch.Tensor, head_cache: torch.Tensor):
        m, cfg = self.model, self.cfg
        c, r, left = cfg.chunk, cfg.lookahead, cfg.left
        q_len = c + r
        b = mel.shape[0]
        mel_len = mel_len.reshape(-1, 1)                                  # (B, 1)
        t_len = torch.div(mel_len - 1, 2, rounding_mode="floor") + 1      # encoder frames
        # --- stem: valid convolutions over the window, zeroed where the full model zero-pads
        a0 = 2 * offset - 2
        pos_mel = a0 + torch.arange(cfg.mel_window)                       # (Wm,)
        ok = (pos_mel[None, :] >= 0) & (pos_mel[None, :] < mel_len)       # (B, Wm)
        x = mel * ok[:, None, :].to(mel.dtype)
        x = F.gelu(F.conv1d(x, m.conv1.weight, m.conv1.bias))             # (B, D, Wm-2)
        pos_c1 = pos_mel[1:-1]
        ok = (pos_c1[None, :] >= 0) & (pos_c1[None, :] < mel_len)
        x = x * ok[:, None, :].to(x.dtype)
        x = F.gelu(F.conv1d(x, m.conv2.weight, m.conv2.bias, stride=2))   # (B, D, C+R)
        pos_q = offset + torch.arange(q_len)                              # (C+R,)
        n_ctx = m.positional_embedding.shape[0]
        pe = m.positional_embedding.index_select(0, pos_q.clamp(max=n_ctx - 1))
        h = x.transpose(1, 2) + pe[None]                                  # (B, C+R, D)
        # --- attention mask (B, 1, C+R, L+C+R): valid keys, and every query sees itself
        pos_k = torch.cat([offset - left + torch.arange(left), pos_q])    # (L+C+R,)
        key_ok = (pos_k[None, :] >= 0) & (pos_k[None, :] < t_len)         # (B, L+C+R)
        self_key = pos_k[None, :] == pos_q[:, None]                       # (C+R, L+C+R)
        mask = key_ok[:, None, :] | self_key[None]                        # (B, C+R, L+C+R)
        mask = mask[:, None]
        new_k, new_v = [], []
        for i, block in enumerate(m.blocks):
            attn = block.attn
            hn = block.attn_ln(h)
            nh, dh = attn.n_heads, attn.head_dim
            q = attn.q_proj(hn).view(b, q_len, nh, dh).transpose(1, 2)
            k = attn.k_proj(hn).view(b, q_len, nh, dh).transpose(1, 2)
            v = attn.v_proj(hn).view(b, q_len, nh, dh).transpose(1, 2)
            kc, vc = k_cache[i][:, :nh], v_cache[i][:, :nh]
            keys = torch.cat([kc, k], dim=2)
            vals = torch.cat([vc, v], dim=2)
            y = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask)
            h = h + attn.out_proj(y.transpose(1, 2).reshape(b, q_len, nh * dh))
            h = h + block.mlp(block.mlp_ln(h))
            # cache: the last L of (cache, chunk frames); look-ahead frames are redone next step
            kk = torch.cat([kc, k[:, :, :c]], dim=2)[:, :, c:]
            vv = torch.cat([vc, v[:, :, :c]], dim=2)[:, :, c:]
            full = k_cache.shape[2]
            if nh < full:  # pruned heads: keep the cache shape uniform across blocks
                pad = torch.zeros(b, full - nh, left, dh, dtype=kk.dtype)
                kk, vv = torch.cat([kk, pad], 1), torch.cat([vv, pad], 1)
            new_k.append(kk)
            new_v.append(vv)
        # --- head on the chunk's frames, delayed by HEAD_DELAY frames for the depthwise conv
        z = m.ln_post(h[:, :c])
        head = m.ctc_head
        xh = F.gelu(head.proj_in(z))                                      # (B, C, W)
        ok = pos_q[None, :c] < t_len                                      # (B, C)
        xh = xh * ok[:, :, None].to(xh.dtype)
        xc = torch.cat([head_cache, xh], dim=1)                           # (B, 4+C, W)
        dw = head.dwconv
        y = F.gelu(F.conv1d(xc.transpose(1, 2), dw.weight, dw.bias, groups=dw.groups))
        logits = head.proj_out(xc[:, HEAD_DELAY: HEAD_DELAY + c] + y.transpose(1, 2))
        return (logits, torch.stack(new_k), torch.stack(new_v), xc[:, -HEAD_CACHE:])


def n_steps(t_len: int, chunk: int) -> int:
    """Steps that emit every frame of a t_len-frame utterance (the head lags HEAD_DELAY frames)."""
    return -(-(t_len + HEAD_DELAY) // chunk)


def mel_window(features: torch.Tensor, offset: int, cfg: StreamConfig) -> torch.Tensor:
    """(B, 80, T) -> (B, 80, mel_window) frames [2*offset-2, ...), zero outside [0, T)."""
    a0 = 2 * offset - 2
    t = features.shape[-1]
    lo, hi = max(0, a0), min(t, a0 + cfg.mel_window)
    out = features.new_zeros(features.shape[0], features.shape[1], cfg.mel_window)
    if hi > lo:
        out[:, :, lo - a0: hi - a0] = features[:, :, lo:hi]
    return out


@torch.inference_mode()
def stream_logits(step: StreamingStep, features: torch.Tensor, feat_lengths: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunk-by-chunk logits of a batch: (B, 80, T), (B,) -> (B, T', V), (B,) encoder lengths."""
    cfg = step.cfg
    t_len = (feat_lengths - 1) // 2 + 1
    total = int(t_len.max())
    k, v, hc = step.init_state(features.shape[0])
    outs = []
    for j in range(n_steps(total, cfg.chunk)):
        s = j * cfg.chunk
        logits, k, v, hc = step(mel_window(features, s, cfg), torch.tensor(s), feat_lengths,
                                k, v, hc)
        outs.append(logits)
    logits = torch.cat(outs, dim=1)[:, HEAD_DELAY: HEAD_DELAY + total]
    return logits, t_len
