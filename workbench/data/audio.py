"""Audio I/O: any file soundfile reads -> float32 mono at 16 kHz; 16 kHz FLAC out.

Every model in the workbench takes 16 kHz mono (Whisper's log-mel front-end is defined at 16 kHz),
so the conversion happens once, here: channels are averaged, then the rate is changed with
torchaudio's band-limited sinc resampler.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from workbench.errors import DataError

SAMPLE_RATE = 16_000  # Hz, the rate of every waveform inside the workbench


def load_audio(path: Path | str, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Read an audio file -> (samples,) float32 in [-1, 1], mono, at `sample_rate` Hz.

    Raises DataError naming the file when it is missing, unreadable or holds no samples.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: audio file not found (check the manifest's audio_filepath, "
                        "which is relative to the manifest's folder)")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (frames, channels)
    except (RuntimeError, sf.LibsndfileError) as e:
        raise DataError(f"{path}: cannot decode audio ({e}); expected WAV, FLAC or OGG") from None
    if data.shape[0] == 0:
        raise DataError(f"{path}: audio file holds no samples (empty recording)")
    wave = torch.from_numpy(np.ascontiguousarray(data)).mean(dim=1)  # mean over channels
    return resample(wave, rate, sample_rate)


def resample(wave: torch.Tensor, orig_rate: int, new_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """(…, samples) at `orig_rate` -> (…, samples * new/orig) at `new_rate`, float32."""
    wave = wave.to(torch.float32)
    if orig_rate == new_rate:
        return wave.contiguous()
    return AF.resample(wave, orig_freq=int(orig_rate), new_freq=int(new_rate))


def save_flac(path: Path | str, wave: torch.Tensor, sr: int = SAMPLE_RATE) -> Path:
    """Write (samples,) float audio as 16-bit FLAC (clipped to [-1, 1]); atomic via rename."""
    path = Path(path)
    if wave.dim() != 1:
        raise DataError(f"{path}: save_flac expects a mono (samples,) tensor, got shape "
                        f"{tuple(wave.shape)}")
    if wave.numel() == 0:
        raise DataError(f"{path}: refusing to write an empty waveform")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = wave.detach().to(torch.float32).clamp(-1.0, 1.0).cpu().numpy()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".flac")
    os.close(fd)
    try:
        sf.write(tmp, data, sr, format="FLAC", subtype="PCM_16")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def normalize_loudness(wave: torch.Tensor, target_lufs: float = -23.0, peak: float = 0.95,
                       sr: int = SAMPLE_RATE) -> torch.Tensor:
    """Scale to `target_lufs` integrated loudness (ITU-R BS.1770, as torchaudio computes it),
    then down if needed so |sample| <= `peak`. -23 LUFS is the EBU R128 broadcast target.

    Clips shorter than one 400 ms BS.1770 gating block fall back to mean square without
    K-weighting (BS.1770's formula, -0.691 + 10 log10 z, so the scales roughly agree).
    """
    wave = wave.to(torch.float32)
    if wave.numel() == 0 or float(wave.abs().max()) == 0.0:
        return wave
    if wave.numel() >= int(0.4 * sr):
        current = float(AF.loudness(wave[None], sr))
    else:
        current = float("nan")
    if not np.isfinite(current):  # too short or fully gated: unweighted BS.1770
        current = -0.691 + 10 * float(torch.log10(wave.pow(2).mean()))
    out = wave * (10.0 ** ((target_lufs - current) / 20.0))
    top = float(out.abs().max())
    return out * (peak / top) if top > peak else out
