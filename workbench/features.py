"""Log-mel front-end, computed exactly as OpenAI Whisper does, on the real length of the audio.

Whisper (openai/whisper, audio.py): 16 kHz, n_fft 400 (25 ms), hop 160 (10 ms, so 100 frames/s),
Hann window, |STFT|^2 with the last frame dropped, 80 Slaney-normalised mel bins (librosa's filters),
log10 clamped at 1e-10, floored at (max - 8), then (x + 4) / 4.
We do not pad to 30 s: the encoder runs on the real length (its positional table is sliced).
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torchaudio

from workbench.errors import ArgumentError, DataError

SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100


@lru_cache(maxsize=4)
def _mel_filters(n_mels: int) -> torch.Tensor:
    # (n_freqs, n_mels); Slaney scale + Slaney area norm == librosa.filters.mel defaults used by Whisper.
    return torchaudio.functional.melscale_fbanks(
        n_freqs=N_FFT // 2 + 1, f_min=0.0, f_max=SAMPLE_RATE / 2, n_mels=n_mels,
        sample_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")


def num_frames(num_samples: int) -> int:
    """Number of log-mel frames for `num_samples` of 16 kHz audio (Whisper drops the last STFT frame)."""
    return num_samples // HOP_LENGTH


def log_mel(wave: torch.Tensor, n_mels: int = N_MELS) -> torch.Tensor:
    """(samples,) float 16 kHz -> (n_mels, samples // 160) Whisper log-mel features."""
    if not isinstance(wave, torch.Tensor):
        raise ArgumentError(f"log_mel(wave=...): expected a 1-D torch tensor of samples, got "
                            f"{type(wave).__name__}; use workbench.data.load_audio(path).")
    if wave.dim() != 1:
        raise ArgumentError(f"log_mel(wave=...): expects a 1-D waveform (samples,), got shape "
                            f"{tuple(wave.shape)}; average the channels first.")
    if wave.is_complex() or not bool(torch.isfinite(wave).all()):
        raise DataError("log_mel(wave=...): the waveform holds NaN, infinite or complex values.")
    wave = wave.float()
    if wave.numel() < N_FFT // 2 + 1:  # reflect padding needs at least n_fft/2 + 1 samples
        wave = torch.nn.functional.pad(wave, (0, N_FFT // 2 + 1 - wave.numel()))
    window = torch.hann_window(N_FFT, device=wave.device)
    stft = torch.stft(wave, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    power = stft[..., :-1].abs() ** 2                       # (n_freqs, frames)
    mel = _mel_filters(n_mels).to(wave.device).T @ power    # (n_mels, frames)
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    out = (log_spec + 4.0) / 4.0
    return out[:, : max(1, num_frames(wave.numel()))]


def collate_features(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (n_mels, T_i) -> zero-padded batch (B, n_mels, T_max) and lengths (B,)."""
    lengths = torch.tensor([f.shape[-1] for f in feats], dtype=torch.long)
    batch = torch.zeros(len(feats), feats[0].shape[0], int(lengths.max()))
    for i, f in enumerate(feats):
        batch[i, :, : f.shape[-1]] = f
    return batch, lengths
