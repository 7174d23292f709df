"""Simulated latency of the full Whisper model: autoregressive decoding priced per token.

    latency = encoder(T') + cross keys/values(T') + steps x decoder step
    steps   = tokens + 1, tokens = TOKENS_PER_AUDIO_SECOND x seconds: the prompt pass emits the
              first token, each token fed back emits the next, the last one emits end of text
              (whisper_eval.greedy_tokens never feeds end of text back)

Each part is a `workbench.latency` LayerTable (rows read off the possibly compressed modules: kept
widths after pruning, low-rank factors, weight bits of quantized layers) priced by the same
roofline (`price_table`) and device files as the CTC model. A decoder step runs every decoder
Linear on one position, reads the whole decoder's weights (memory-bound on most devices: the
tied 51,864 x 384 output projection alone is 20 M of the decoder's 29 M weights), attends over
the tokens so far (self) and the 1,500 encoder positions (cross: own frames + the shared silence
tail, whose keys/values are computed once per model and not priced per utterance).

TOKENS_PER_AUDIO_SECOND is measured: CTranslate2 greedy on real_test emitted 866 tokens for
298.2 s of audio (2.9 tokens/s; 7.1 per prompt of 2.4 s on average).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from workbench.latency import (DeviceProfile, EffectiveLayer, LatencyReport, LayerTable, known_devices,
                               load_device, price_table)
from workbench.models.base import role_of

TOKENS_PER_AUDIO_SECOND = 2.9
MARGIN_SECONDS = 1.0      # silence encoded after the audio (workbench.whisper_eval.MARGIN_FRAMES)


def _linear_row(path: str, m: nn.Linear, positions: int, role: str) -> EffectiveLayer:
    bits = int(getattr(m, "weight_bits", 32))
    params = m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)
    return EffectiveLayer(path, role, "matmul", positions * m.in_features * m.out_features,
                          params, bits, 0.0, positions * m.in_features * 4,
                          positions * m.out_features * 4, positions, m.in_features,
                          m.out_features)


def _conv_row(path: str, m: nn.Conv1d, positions: int, role: str) -> EffectiveLayer:
    k = m.kernel_size[0]
    params = m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
    return EffectiveLayer(path, role, "conv", positions * m.out_channels * m.in_channels * k
                          // m.groups, params, int(getattr(m, "weight_bits", 32)), 0.0,
                          positions * m.in_channels * 4 * m.stride[0],
                          positions * m.out_channels * 4, positions, m.in_channels,
                          m.out_channels)


def _scores_row(path: str, attn: nn.Module, queries: int, keys: int) -> EffectiveLayer:
    h, dh = attn.n_heads, attn.head_dim
    return EffectiveLayer(path + ".scores", "attention", "attention_scores", 2 * h * dh * queries
                          * keys, 0, 32, 0.0, (queries + 2 * keys) * h * dh * 4,
                          h * queries * keys * 4, queries, h * dh, h * dh, h, dh)


def _norm_row(path: str, width: int, positions: int) -> EffectiveLayer:
    return EffectiveLayer(path, "norm", "elementwise", 0, 2 * width, 32, 0.0,
                          positions * width * 4, positions * width * 4, positions, width, width)


def _rows(model: nn.Module, prefix: str, positions: int, skip=(), attention=None
          ) -> list[EffectiveLayer]:
    """Rows of every weighted leaf under `prefix` (Linear, Conv1d, LayerNorm), in module order."""
    out = []
    for path, m in model.get_submodule(prefix).named_modules():
        full = f"{prefix}.{path}" if path else prefix
        if any(s in full for s in skip):
            continue
        role = role_of(model, full)
        if isinstance(m, nn.Linear):
            out.append(_linear_row(full, m, positions, role))
        elif isinstance(m, nn.Conv1d):
            out.append(_conv_row(full, m, positions, role))
        elif isinstance(m, nn.LayerNorm):
            out.append(_norm_row(full, m.normalized_shape[0], positions))
        elif attention is not None and hasattr(m, "q_proj") and hasattr(m, "n_heads"):
            q, k = attention(full)
            out.append(_scores_row(full, m, q, k))
    return out


@dataclass(frozen=True)
class WhisperLatency:
    """Simulated latency of one utterance of `audio_seconds` on one device (read `source`)."""

    device: str
    audio_seconds: float
    tokens: int
    encoder: LatencyReport
    cross_kv: LatencyReport
    step: LatencyReport             # one decoder step (one token), at the mean context length
    total_ms: float
    real_time_factor: float
    error_band_pct: float
    source: str

    @property
    def per_token_ms(self) -> float:
        return self.step.total_ms

    def as_dict(self) -> dict:
        return {"device": self.device, "audio_seconds": self.audio_seconds, "tokens": self.tokens,
                "encoder_ms": round(self.encoder.total_ms, 2),
                "cross_kv_ms": round(self.cross_kv.total_ms, 2),
                "per_token_ms": round(self.per_token_ms, 3),
                "total_ms": round(self.total_ms, 1), "rtf": round(self.real_time_factor, 4),
                "band_pct": self.error_band_pct, "source": self.source}


def whisper_tables(model: nn.Module, audio_seconds: float, tokens: int | None = None
                   ) -> tuple[LayerTable, LayerTable, LayerTable, int]:
    """(encoder, cross keys/values, one decoder step) tables and the number of decoder steps."""
    enc, dec = model.encoder, model.decoder
    frames = math.ceil((audio_seconds + MARGIN_SECONDS) * 100)
    t_enc = min(enc.config.n_ctx, (frames - 1) // 2 + 1)
    if tokens is None:
        tokens = max(1, round(TOKENS_PER_AUDIO_SECOND * audio_seconds))
    steps = tokens + 1    # prompt pass -> token 1; feeding token i -> token i+1 / end of text
    context = len(model.rules.prompt) + tokens / 2
    encoder = _rows(model, "encoder", t_enc, attention=lambda p: (t_enc, t_enc))
    encoder[0] = encoder[0].__class__(**{**encoder[0].__dict__, "positions": 2 * t_enc,
                                         "macs": encoder[0].macs * 2})   # conv1 runs at 100 Hz
    cross = [_linear_row(f"decoder.blocks.{i}.cross_attn.{n}",
                         getattr(b.cross_attn, n), t_enc, "attention")
             for i, b in enumerate(dec.blocks) for n in ("k_proj", "v_proj")]
    n_ctx = enc.config.n_ctx
    step = _rows(model, "decoder", 1, skip=("cross_attn.k_proj", "cross_attn.v_proj"),
                 attention=lambda p: (1, n_ctx if "cross_attn" in p else int(context)))
    peak = t_enc * enc.config.d_model * 4 * 4
    return (LayerTable(tuple(encoder), audio_seconds, peak),
            LayerTable(tuple(cross), audio_seconds, peak),
            LayerTable(tuple(step), audio_seconds, n_ctx * dec.config.d_model * 4 * 2), steps)


def whisper_latency(model: nn.Module, device: str = "host", audio_seconds: float = 2.5,
                    tokens: int | None = None) -> WhisperLatency:
    """Simulated latency and real-time factor of one utterance (see the module docstring)."""
    return price_whisper(whisper_tables(model, audio_seconds, tokens), device, audio_seconds)


def price_whisper(tables: tuple[LayerTable, LayerTable, LayerTable, int],
                  device: str | DeviceProfile, audio_seconds: float) -> WhisperLatency:
    """`whisper_latency` of tables already read off the model (`whisper_tables`, bits set on
    the rows or not): the roofline only, no model walk."""
    dev = load_device(device)
    enc_t, cross_t, step_t, steps = tables
    enc, cross, step = (price_table(t, dev) for t in (enc_t, cross_t, step_t))
    total = enc.total_ms + cross.total_ms + steps * step.total_ms
    return WhisperLatency(dev.name, audio_seconds, steps - 1, enc, cross, step, total,
                          total / 1e3 / audio_seconds, enc.error_band_pct,
                          f"simulated: encoder + cross K/V + {steps} decoder steps x per-step "
                          f"roofline ({enc.source})")


def rtf_by_device(model: nn.Module, seconds: tuple[float, ...] = (2.5, 8.0),
                  devices: tuple[str, ...] | None = None) -> list[dict]:
    """Simulated latency / RTF of typical utterances on every known device."""
    return [whisper_latency(model, d, s).as_dict() for d in (devices or known_devices())
            for s in seconds]
