"""Small inputs several test files share (not a test module: pytest does not collect it).

Imported as `from toys import ...`: pytest puts tests/ on sys.path (rootdir without __init__.py).
"""
from __future__ import annotations

from pathlib import Path

import torch

from workbench.evaluate import EvalSet

#: Phrases of the demo's domain; random features cannot say them, so WER is ~1 and only has to
#: be *the same* number everywhere the tests compare it.
PHRASES = ("hello world", "press one", "thank you", "good bye", "the pound key", "agent login")


def random_eval_set(n: int = 6, *, first: int = 120, step: int = 40,
                    texts: tuple[str, ...] | None = None) -> EvalSet:
    """`n` utterances of seeded random log-mel features, (80, first + step * i) frames each."""
    gen = torch.Generator().manual_seed(0)
    feats = tuple(torch.randn(80, first + step * i, generator=gen) for i in range(n))
    texts = texts if texts is not None else tuple(PHRASES[i % len(PHRASES)] for i in range(n))
    return EvalSet("random", Path("/nonexistent/manifest.jsonl"),
                   tuple(f"u{i}" for i in range(n)), texts, feats)


def random_items(n: int, seed: int = 0) -> list:
    """`n` seeded training items (workbench.train.Item): random (80, 60..119) log-mel features
    and 3..9 labels in 1..19, for recovery / progressive pruning tests."""
    from workbench.train import Item
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        t = int(torch.randint(60, 120, (), generator=g))
        labels = torch.randint(1, 20, (int(torch.randint(3, 10, (), generator=g)),), generator=g)
        out.append(Item(torch.randn(80, t, generator=g), labels))
    return out


class Letters:
    """Stub Whisper tokenizer: token t -> a doubled letter, so transcripts are words a scorer
    can compare."""

    def decode(self, ids):
        return " ".join("abcdefghijklmnopqrstuvwxyz"[t % 26] * 2 for t in ids)


def tiny_whisper_asr(n_ctx: int = 200):
    """A seeded random WhisperASR (encoder + decoder, 2 layers each, d=32); `n_ctx` encoder
    positions (100 per second of audio)."""
    from workbench.models.whisper_ctc import WhisperCTCConfig
    from workbench.models.whisper_decoder import WhisperDecoderConfig
    from workbench.models.whisper_full import DecodeRules, WhisperASR
    torch.manual_seed(0)
    enc = WhisperCTCConfig(d_model=32, n_heads=4, n_layers=2, d_ff=64, n_ctx=n_ctx, head_dim=16)
    dec = WhisperDecoderConfig(n_vocab=60, n_ctx=64, d_model=32, n_heads=4, n_layers=2, d_ff=64)
    rules = DecodeRules(prompt=(50, 51), eot=49, suppress=(50, 51), suppress_begin=(0, 49),
                        timestamp_begin=52)
    model = WhisperASR(enc, dec, rules).eval()
    with torch.no_grad():
        model.decoder.positional_embedding.normal_(0, 0.1)
    return model


def tiny_app(model, n: int):
    """The dashboard on `model` and `random_eval_set(n)` (rpi5, 2 s), its first WER delivered."""
    from workbench.engine.session import Session
    from workbench.ui import Workbench
    session = Session(model, random_eval_set(n), quick_utterances=2)
    wb = Workbench(model, session.eval_set, device="rpi5", audio_seconds=2.0, session=session)
    wb.wait()
    return wb


def torchaudio_conformer(d: int = 80, heads: int = 4, ffn: int = 256, layers: int = 2,
                         kernel: int = 31):
    """torchaudio's Conformer (seed 0, eval mode): input (B, T, d), lengths (B,)."""
    from torchaudio.models import Conformer
    torch.manual_seed(0)
    return Conformer(input_dim=d, num_heads=heads, ffn_dim=ffn, num_layers=layers,
                     depthwise_conv_kernel_size=kernel).eval()


#: wav2vec2-base's first five feature-extractor convs (channels, kernel, stride), 64 channels.
WAV2VEC2_CONVS = [(64, 10, 5)] + [(64, 3, 2)] * 4


def torchaudio_wav2vec2(aux_num_out: int):
    """A small torchaudio wav2vec2 (seed 0, eval mode, d=128, 2 layers, 4 heads, FFN 256, no
    dropout, a weight-normed positional conv); waveform (B, samples) in. Its feature extractor
    is wav2vec2-base's first five convs on 64 channels (total stride 80: 200 frames per second
    of 16 kHz audio, apart from log-mel's 100 and Whisper's 50 at the blocks). With strides 5
    and 2 only (1600 frames/s), adapt()'s graph discovery on its 1 s example took 13.4 s of CPU,
    and every evaluation attended over 8x more frames (64x the attention scores)."""
    from torchaudio.models import wav2vec2_model
    torch.manual_seed(0)
    return wav2vec2_model(
        extractor_mode="group_norm", extractor_conv_layer_config=WAV2VEC2_CONVS,
        extractor_conv_bias=False, encoder_embed_dim=128, encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=16, encoder_pos_conv_groups=8, encoder_num_layers=2,
        encoder_num_heads=4, encoder_attention_dropout=0.0, encoder_ff_interm_features=256,
        encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=False,
        encoder_layer_drop=0.0, aux_num_out=aux_num_out).eval()


def forbid_held_out(monkeypatch, tmp_path) -> None:
    """Make every held-out / manifest loader fail the test if called, and point the held-out
    manifests nowhere: for code that must never read real_test / synth_test."""
    import importlib
    data, manifest, evaluate, paths, recovery = (importlib.import_module(f"workbench.{m}") for m in (
        "data", "data.manifest", "evaluate", "paths", "recovery"))   # modules, not same-named API

    def forbidden(*args, **kwargs):
        raise AssertionError(f"a held-out / manifest loader was called: {args}")

    monkeypatch.setattr(paths, "REAL_TEST", tmp_path / "nowhere" / "real.jsonl")
    monkeypatch.setattr(paths, "SYNTH_TEST", tmp_path / "nowhere" / "synth.jsonl")
    for module, name in ((evaluate, "load_eval_set"), (data, "read_manifest"),
                         (manifest, "read_manifest"), (recovery, "_held_out_sets")):
        monkeypatch.setattr(module, name, forbidden)
