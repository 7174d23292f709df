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


#: Longest audio load_audio reads (checked from the file header before any sample is read):
#: 10 minutes is 38 MB of float32 at 16 kHz. Models take less (Whisper: 30 s); see load_eval_set.
MAX_AUDIO_SECONDS = 600.0
#: Lowest sample rate accepted: 4 kHz still holds the telephone band's lower half.
MIN_SAMPLE_RATE = 4_000
#: A float file whose peak exceeds this was saved without scaling to [-1, 1] (e.g. int16 values
#: written as floats); its features would be meaningless, so it is refused, not clipped.
MAX_ABS_SAMPLE = 2.0


def audio_seconds(path: Path | str) -> float:
    """Duration of an audio file from its header (no samples read); DataError if unreadable."""
    info = _header(Path(path))
    return info.frames / info.samplerate


def _header(path: Path) -> sf._SoundFileInfo:
    if not path.is_file():
        raise DataError(f"{path}: audio file not found (check the manifest's audio_filepath, "
                        "which is relative to the manifest's folder)")
    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError) as e:
        raise DataError(f"{path}: cannot decode audio ({e}); expected WAV, FLAC or OGG") from None
    if info.samplerate <= 0:
        raise DataError(f"{path}: header says sample rate {info.samplerate} Hz; the file is "
                        "corrupt")
    return info


def load_audio(path: Path | str, sample_rate: int = SAMPLE_RATE,
               max_seconds: float = MAX_AUDIO_SECONDS) -> torch.Tensor:
    """Read an audio file -> (samples,) float32 in [-1, 1], mono, at `sample_rate` Hz.

    Raises DataError naming the file when it is missing, unreadable, holds no samples, is longer
    than `max_seconds` (from the header, before reading), has a sample rate below
    MIN_SAMPLE_RATE, or holds NaN / Inf samples or samples far outside [-1, 1].
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or \
            not MIN_SAMPLE_RATE <= sample_rate <= 192_000:
        raise DataError(f"load_audio(sample_rate={sample_rate!r:.20}): an integer rate in Hz, "
                        f"{MIN_SAMPLE_RATE}..192000 (the workbench runs at {SAMPLE_RATE}).")
    if not isinstance(max_seconds, int | float) or not max_seconds > 0:
        raise DataError(f"load_audio(max_seconds={max_seconds!r:.20}): a number of seconds > 0.")
    path = Path(path)
    info = _header(path)
    seconds, rate = info.frames / info.samplerate, info.samplerate
    if seconds > max_seconds:
        raise DataError(f"{path}: {seconds:,.1f} s of audio, longer than the {max_seconds:g} s "
                        f"limit; split it into shorter utterances (e.g. at pauses).")
    if rate < MIN_SAMPLE_RATE:
        raise DataError(f"{path}: sample rate {rate} Hz is below {MIN_SAMPLE_RATE} Hz, too low "
                        f"for speech; resample the recording to 16 kHz.")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (frames, channels)
    except (RuntimeError, sf.LibsndfileError) as e:
        raise DataError(f"{path}: cannot decode audio ({e}); expected WAV, FLAC or OGG") from None
    if data.shape[0] == 0:
        raise DataError(f"{path}: audio file holds no samples (empty recording)")
    check_samples(torch.from_numpy(np.ascontiguousarray(data)), str(path))
    wave = torch.from_numpy(np.ascontiguousarray(data)).mean(dim=1)  # mean over channels
    return resample(wave, rate, sample_rate)


def check_samples(wave: torch.Tensor, name: str) -> None:
    """DataError unless every sample is finite and |sample| <= MAX_ABS_SAMPLE."""
    finite = torch.isfinite(wave)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise DataError(f"{name}: {bad:,} NaN or infinite samples; the recording is corrupt "
                        f"(re-export it, or drop this utterance).")
    peak = float(wave.abs().max()) if wave.numel() else 0.0
    if peak > MAX_ABS_SAMPLE:
        raise DataError(f"{name}: samples reach {peak:g}, far outside [-1, 1]; the audio was "
                        f"saved without scaling (divide int16 values by 32768) — rescale it to "
                        f"[-1, 1].")


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
    if not bool(torch.isfinite(wave).all()):
        raise DataError(f"{path}: refusing to write a waveform with NaN or infinite samples")
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
