"""Greedy decoding and evaluation of the full Whisper model (`workbench.models.whisper_full`).

    encode_batch(model, features)            padded batch -> encoder output (B, T', D), lengths
    greedy_tokens(model, enc, lengths, ...)  batched greedy search with a KV cache -> token ids
    transcribe(model, tokenizer, features)   feature list -> normalized transcripts, batched by length
    evaluate_whisper(model, tokenizer, set)  WER / CER like `workbench.evaluate.evaluate`

Greedy search as CTranslate2 / openai-whisper do it for an English-only model without timestamps:
prompt `<|startoftranscript|><|notimestamps|>`, argmax each step, never the suppressed tokens nor
timestamps, not a blank or end-of-text as the first token, stop at end-of-text. An item that has
finished is dropped from the batch (its rows of the KV cache too); the loop ends when every item
has finished or reached its token budget.

Token budget: `max_new_tokens(seconds)` = 16 + 8 tokens per second of audio (capped by the 448
positions). Speech carries ~3 words/s, ~4-5 tokens/s with punctuation; the budget only bites when a
(compressed) model loops, and then it bounds the time an evaluation takes.
"""
from __future__ import annotations

import math
import time

import torch

from workbench.data import load_audio, normalize_text
from workbench.evaluate import EvalResult, batches, score
from workbench.features import FRAMES_PER_SECOND, SAMPLE_RATE, collate_features, log_mel
from workbench.models.layers import lengths_to_pad_mask
from workbench.models.whisper_full import DecodeRules, WhisperASR, WhisperTokenizer

TOKENS_PER_SECOND = 8
TOKENS_BASE = 16
#: Mel frames of silence encoded after the audio (1 s); measured: 0.5 s loops more often.
MARGIN_FRAMES = 100
#: Whisper's normalized log-mel of digital silence: (log10(1e-10) + 4) / 4.
SILENCE = -1.5


def max_new_tokens(seconds: float, n_ctx: int = 448, prompt: int = 2) -> int:
    """Token budget for `seconds` of audio (see module docstring)."""
    return int(min(n_ctx - prompt, TOKENS_BASE + math.ceil(TOKENS_PER_SECOND * seconds)))


def suppress_mask(rules: DecodeRules, n_vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_vocab,) bool masks: tokens never emitted; tokens not emitted first."""
    always = torch.zeros(n_vocab, dtype=torch.bool)
    always[[i for i in rules.suppress if i < n_vocab]] = True
    always[rules.timestamp_begin:] = True
    first = always.clone()
    first[[i for i in rules.suppress_begin if i < n_vocab]] = True
    return always, first


def with_margin(feature: torch.Tensor, frames: int) -> torch.Tensor:
    """(80, T) -> (80, T + frames): the log-mel of the audio followed by digital silence (the
    floor Whisper's log-mel gives silence after this audio: its maximum - 2)."""
    if frames <= 0:
        return feature
    return torch.cat([feature, feature.new_full((feature.shape[0], frames),
                                                float(feature.max()) - 2.0)], dim=1)


@torch.inference_mode()
def silence_tail(model: WhisperASR) -> torch.Tensor:
    """Encoder output (1, n_ctx, D) of 30 s of digital silence (log-mel -1.5 everywhere)."""
    n = model.encoder.config.n_ctx * 2
    return model.encoder.encode(torch.full((1, model.encoder.config.n_mels, n), SILENCE))[0]


@torch.inference_mode()
def encode_batch(model: WhisperASR, features: list[torch.Tensor], margin: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (80, T_i) -> encoder output (B, T'_max, D) and lengths (B,) (padding masked),
    each item followed by `margin` mel frames of silence."""
    x, lens = collate_features([with_margin(f, margin) for f in features])
    return model.encoder.encode(x, lens)


@torch.inference_mode()
def greedy_tokens(model: WhisperASR, enc: torch.Tensor, enc_lengths: torch.Tensor,
                  budgets: list[int] | int = 224, tail: torch.Tensor | None = None
                  ) -> list[list[int]]:
    """Batched greedy search over encoder outputs (B, T', D): the generated ids per item (without
    the prompt and end-of-text). With `tail` (`silence_tail`), each item's positions past its
    length are the silence encoding instead of being masked out."""
    rules = model.rules
    dec = model.decoder
    b = enc.shape[0]
    budgets = [budgets] * b if isinstance(budgets, int) else list(budgets)
    always, first = suppress_mask(rules, dec.config.n_vocab)
    enc_pad = lengths_to_pad_mask(enc_lengths.to(enc.device), enc.shape[1])
    cache = dec.init_cache(enc, tail)
    tokens = torch.tensor([rules.prompt] * b, dtype=torch.long)
    out: list[list[int]] = [[] for _ in range(b)]
    done = [budget <= 0 for budget in budgets]
    active = list(range(b))          # batch row r decodes item active[r]
    lengths = enc_lengths.clone()
    for step in range(max(budgets)):
        keep = [r for r, i in enumerate(active) if not done[i]]
        if not keep:
            break
        if len(keep) < len(active):  # drop finished rows: no work is spent on them any more
            sel = torch.tensor(keep)
            active = [active[r] for r in keep]
            tokens, enc_pad, lengths = tokens[sel], enc_pad[sel], lengths[sel]
            cache = [(sk[sel], sv[sel], ck[sel], cv[sel], tk, tv)
                     for sk, sv, ck, cv, tk, tv in cache]
        logits, cache = dec(tokens, cache, enc_pad, enc_lengths=lengths)
        logits = logits[:, -1].masked_fill(first if step == 0 else always, float("-inf"))
        nxt = logits.argmax(dim=-1)
        for i, t in zip(active, nxt.tolist()):
            if t == rules.eot:
                done[i] = True
            else:
                out[i].append(t)
                done[i] = len(out[i]) >= budgets[i]
        tokens = nxt[:, None]
    return out


@torch.inference_mode()
def encode_all(model: WhisperASR, features, context: str = "tail", max_frames: int = 12_000
               ) -> list[torch.Tensor]:
    """Encoder output (T'_i, D) per (80, T_i) feature tensor, batched by length. context "tail":
    each with MARGIN_FRAMES of silence; "real": the frames as given."""
    margin = MARGIN_FRAMES if context == "tail" else 0
    out: list[torch.Tensor] = [torch.empty(0)] * len(features)
    for idx in batches([f.shape[-1] + margin for f in features], max_frames):
        enc, lens = encode_batch(model, [features[i] for i in idx], margin)
        for j, i in enumerate(idx):
            out[i] = enc[j, :int(lens[j])]
    return out


@torch.inference_mode()
def decode_all(model: WhisperASR, encoded: list[torch.Tensor], seconds: list[float],
               tail: torch.Tensor | None, batch_size: int = 48,
               before_batch=None) -> list[list[int]]:
    """Greedy token ids for each encoder output (T'_i, D), decoded in batches of similar length.
    `before_batch()` is called before each batch (the interactive engine cancels stale runs there)."""
    out: list[list[int]] = [[] for _ in encoded]
    order = sorted(range(len(encoded)), key=lambda i: seconds[i])
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        if before_batch is not None:
            before_batch()
        lens = torch.tensor([encoded[i].shape[0] for i in idx])
        enc = torch.nn.utils.rnn.pad_sequence([encoded[i] for i in idx], batch_first=True)
        ids = greedy_tokens(model, enc, lens, [max_new_tokens(seconds[i]) for i in idx], tail)
        for i, toks in zip(idx, ids):
            out[i] = toks
    return out


def transcribe(model: WhisperASR, tokenizer: WhisperTokenizer,
               features: tuple[torch.Tensor, ...] | list[torch.Tensor],
               seconds: list[float] | None = None, context: str = "tail",
               normalize: bool = True, tail: torch.Tensor | None = None) -> list[str]:
    """Transcripts (normalized to spoken lowercase words unless `normalize=False`) per (80, T)
    feature tensor. `seconds` (audio length) sets each token budget; by default the feature length.

    context "tail" (default): the encoder runs on the audio + 1 s of silence, and the decoder sees
    the encoding of 30 s of silence past that (`silence_tail`, computed once per encoder; pass
    `tail` to reuse one). "real": the encoder output of the features as given, padding masked
    (pass features padded to 30 s for Whisper's own, slow, way).
    """
    if context not in ("tail", "real"):
        raise ValueError(f"context: 'tail' or 'real', got {context!r}.")
    if seconds is None:
        seconds = [f.shape[-1] / FRAMES_PER_SECOND for f in features]
    if context == "tail" and tail is None:
        tail = silence_tail(model)
    encoded = encode_all(model, features, context)
    ids = decode_all(model, encoded, list(seconds), tail if context == "tail" else None)
    texts = [tokenizer.decode(t) for t in ids]
    return [normalize_text(t) for t in texts] if normalize else texts


def evaluate_whisper(model: WhisperASR, tokenizer: WhisperTokenizer, eval_set,
                     features: tuple[torch.Tensor, ...] | None = None, context: str = "tail",
                     tail: torch.Tensor | None = None) -> EvalResult:
    """WER / CER of the full model on an `EvalSet` (its cached real-length features, or `features`
    e.g. padded to 30 s with context="real")."""
    start = time.perf_counter()
    secs = [f.shape[-1] / FRAMES_PER_SECOND for f in eval_set.features]
    hyps = transcribe(model, tokenizer, features or eval_set.features, secs, context, tail=tail)
    seconds = time.perf_counter() - start
    wer, cer, per = score(eval_set.texts, hyps, eval_set.ids)
    return EvalResult(wer, cer, len(eval_set), seconds, eval_set.seconds, per)


def padded_features(manifest, limit: int | None = None, seconds: float | None = 30.0,
                    extra: float = 0.0) -> tuple[torch.Tensor, ...]:
    """Log-mel of each utterance's audio zero-padded to `seconds` (Whisper's own input: 3000
    frames for 30 s, as openai-whisper / CTranslate2 users feed it), or, with `seconds=None`,
    followed by `extra` seconds of digital silence."""
    from workbench.data import read_manifest  # looked up per call: tests monkeypatch it

    out = []
    for u in read_manifest(manifest)[:limit]:
        wave = load_audio(u.audio_path)
        n = int(seconds * SAMPLE_RATE) if seconds is not None else \
            wave.numel() + int(extra * SAMPLE_RATE)
        wave = wave[:n]
        out.append(log_mel(torch.nn.functional.pad(wave, (0, n - wave.numel()))))
    return tuple(out)


def _dynamic_uint8(x: torch.Tensor) -> torch.Tensor:
    """ONNX Runtime's DynamicQuantizeLinear, faked per item (dim 0): asymmetric uint8 over the
    item's whole tensor with 0 in range, then dequantized."""
    flat = x.reshape(x.shape[0], -1)
    lo = flat.min(dim=1).values.clamp(max=0.0)
    hi = flat.max(dim=1).values.clamp(min=0.0)
    scale = ((hi - lo) / 255.0).clamp(min=1e-12)
    zero = (-lo / scale).round().clamp(0, 255)
    shape = (-1,) + (1,) * (x.dim() - 1)
    scale, zero = scale.view(shape), zero.view(shape)
    return (((x / scale).round() + zero).clamp(0, 255) - zero) * scale


class ort_dynamic_activations:
    """Context manager: while active, the input of every Linear with <= 8-bit weights is fake-
    quantized the way ORT dynamic int8 does at run time (uint8, per tensor; per item here, as
    ORT runs batch 1). Weight-only fake-quant misses this rounding; with it the simulation is of
    what the runtime executes. `paths`: only the layers ORT runs as int8 dynamic (MatMulNBits
    4-bit layers take float inputs)."""

    def __init__(self, model: torch.nn.Module, paths: set[str] | None = None) -> None:
        self.model = model
        self.paths = paths          # only Linears under these plan paths (None: every <= 8-bit)
        self.handles: list = []

    def _chosen(self, path: str) -> bool:
        return self.paths is None or any(path == p or path.startswith(p + ".")
                                         for p in self.paths)

    def __enter__(self):
        for path, m in self.model.named_modules():
            if (isinstance(m, torch.nn.Linear) and getattr(m, "weight_bits", 32) <= 8
                    and self._chosen(path)):
                self.handles.append(m.register_forward_pre_hook(
                    lambda mod, args: (_dynamic_uint8(args[0]),) + tuple(args[1:])))
        return self.model

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
