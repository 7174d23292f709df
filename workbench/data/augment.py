"""Data augmentation for training: speed, noise, reverberation, telephone band, SpecAugment.

Every random choice is drawn from an explicit torch.Generator, so a seed reproduces the exact same
augmented audio. Waveforms are (samples,) float32 at 16 kHz; features are (n_mels, frames) or
(batch, n_mels, frames).

Why these: speed perturbation (Ko et al., Interspeech 2015: 0.9/1.0/1.1) and SpecAugment (Park et
al., Interspeech 2019) are the standard ASR recipe; noise, room reverberation and the 8 kHz
telephone band bridge the gap from clean synthetic speech to the real test set (8 kHz prompts).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torchaudio.functional as AF
import torchaudio.transforms as T

from workbench.data.audio import SAMPLE_RATE
from workbench.errors import DataError


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges for augment_wave (waveform) and spec_augment (features)."""

    p_speed: float = 0.5
    speeds: tuple[float, ...] = (0.9, 1.1)     # factor > 1 is faster (and higher pitched)
    p_noise: float = 0.4
    snr_db: tuple[float, float] = (5.0, 25.0)  # uniform range of signal-to-noise ratio
    p_babble: float = 0.3                      # share of noise that is babble (if sources given)
    p_reverb: float = 0.3
    rt60_s: tuple[float, float] = (0.15, 0.7)  # reverberation time range, seconds
    n_rooms: int = 64                          # size of the simulated-room bank (see room_bank)
    p_telephone: float = 0.25
    freq_mask_param: int = 15                  # SpecAugment: max mel channels per mask
    time_mask_param: int = 35                  # SpecAugment: max frames per mask
    time_mask_max_share: float = 1.0           # ... and at most this share of the frames (torchaudio p)
    n_freq_masks: int = 2
    n_time_masks: int = 2

    def __post_init__(self) -> None:
        for name in ("p_speed", "p_noise", "p_babble", "p_reverb", "p_telephone"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise DataError(f"AugmentConfig.{name}={value}: a probability must be in [0, 1]")
        if not 0.0 < self.time_mask_max_share <= 1.0:
            raise DataError(f"AugmentConfig.time_mask_max_share={self.time_mask_max_share}: a "
                            f"share of the frames must be in (0, 1]")
        if self.n_rooms < 1:
            raise DataError(f"AugmentConfig.n_rooms={self.n_rooms}: need at least one room")
        if any(s <= 0 for s in self.speeds):
            raise DataError(f"AugmentConfig.speeds={self.speeds}: speed factors must be > 0")
        for name in ("snr_db", "rt60_s"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise DataError(f"AugmentConfig.{name}={(lo, hi)}: low end above high end")


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def speed_perturb(wave: torch.Tensor, factor: float, sr: int = SAMPLE_RATE) -> torch.Tensor:
    """Play `factor` times faster: resample sr*factor -> sr, so length becomes len/factor and
    pitch scales by `factor` (Kaldi-style speed perturbation)."""
    if factor == 1.0:
        return wave
    # torchaudio resamples between integer rates; 1/100 precision is plenty for 0.9 / 1.1.
    return AF.resample(wave, orig_freq=round(100 * factor), new_freq=100)


def colored_noise(n: int, exponent: float, gen: torch.Generator) -> torch.Tensor:
    """Gaussian noise with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown), unit RMS."""
    white = torch.randn(n, generator=gen)
    spectrum = torch.fft.rfft(white)
    f = torch.arange(spectrum.numel(), dtype=torch.float32).clamp(min=1.0)
    noise = torch.fft.irfft(spectrum / f.pow(exponent / 2), n=n)
    return noise / noise.pow(2).mean().sqrt().clamp(min=1e-8)


def babble_noise(n: int, sources: Sequence[torch.Tensor], gen: torch.Generator,
                 talkers: int = 4) -> torch.Tensor:
    """Sum of `talkers` random other utterances (tiled to length n, random offsets), unit RMS."""
    out = torch.zeros(n)
    for _ in range(talkers):
        src = sources[int(torch.randint(len(sources), (), generator=gen))]
        if src.numel() == 0:
            continue
        reps = -(-(n + src.numel()) // src.numel())
        offset = int(torch.randint(src.numel(), (), generator=gen))
        out += src.repeat(reps)[offset: offset + n] / src.pow(2).mean().sqrt().clamp(min=1e-8)
    return out / out.pow(2).mean().sqrt().clamp(min=1e-8)


def add_noise(wave: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """Mix noise (same length) into wave at `snr_db` dB SNR (torchaudio.functional.add_noise)."""
    return AF.add_noise(wave[None], noise[None], torch.tensor([snr_db]))[0]


def room_impulse_response(gen: torch.Generator, rt60_s: tuple[float, float] = (0.15, 0.7),
                          sr: int = SAMPLE_RATE, max_order: int = 40) -> torch.Tensor:
    """RIR of a random shoebox room (pyroomacoustics image source method), direct path first.

    Room 3-10 x 3-8 x 2.4-3.5 m; RT60 drawn from `rt60_s`; wall absorption from Sabine's formula;
    source and microphone at random positions >= 0.5 m from the walls. Image order is capped at
    `max_order` to bound the cost (~tens of ms); the late tail is then slightly shorter.
    """
    import pyroomacoustics as pra

    dims = [_uniform(gen, 3, 10), _uniform(gen, 3, 8), _uniform(gen, 2.4, 3.5)]
    rt60 = _uniform(gen, *rt60_s)
    try:
        absorption, order = pra.inverse_sabine(rt60, dims)
    except ValueError:  # RT60 too short for this room: use the most absorbent walls possible
        absorption, order = 0.99, 2
    room = pra.ShoeBox(dims, fs=sr, materials=pra.Material(min(absorption, 0.99)),
                       max_order=min(order, max_order))
    place = lambda: [_uniform(gen, 0.5, d - 0.5) for d in dims]  # noqa: E731
    room.add_source(place())
    room.add_microphone(np.array(place())[:, None])
    room.compute_rir()
    rir = torch.tensor(room.rir[0][0], dtype=torch.float32)
    start = max(0, int(rir.abs().argmax()) - int(0.001 * sr))  # keep 1 ms before the direct path
    return rir[start:] / rir.abs().max()


@lru_cache(maxsize=4)
def room_bank(n_rooms: int, rt60_s: tuple[float, float], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """`n_rooms` RIRs simulated once from a fixed seed and memoized: simulating a room costs
    ~0.1-0.4 s, far more than the convolution, so augment_wave draws rooms from this bank."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(room_impulse_response(gen, rt60_s) for _ in range(n_rooms))


def reverberate(wave: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """Convolve with a RIR (FFT), keep the original length, restore the original RMS.

    The FFT is padded to a power of two: the same linear convolution as
    torchaudio.functional.fftconvolve (max difference 3e-6 on the conditions grid's rooms), but
    fftconvolve's exact length len(wave) + len(rir) - 1 often has large prime factors, and it
    took 3.3x the CPU time on the 122 real test prompts."""
    n = wave.numel() + rir.numel() - 1
    size = 1 << max(0, n - 1).bit_length()
    out = torch.fft.irfft(torch.fft.rfft(wave, size) * torch.fft.rfft(rir, size), size)
    out = out[: wave.numel()]
    return out * (wave.pow(2).mean().sqrt() / out.pow(2).mean().sqrt().clamp(min=1e-8))


def telephone(wave: torch.Tensor, sr: int = SAMPLE_RATE, band_hz: tuple[float, float] = (300.0, 3400.0)
              ) -> torch.Tensor:
    """Telephone channel: down to 8 kHz and back (loses > 4 kHz), then the ITU-T G.712 voice band
    300-3400 Hz as an FFT-domain band-pass with 100 Hz raised-cosine edges (an IIR biquad cascade
    does the same job but runs sample by sample, ~30x slower here)."""
    narrow = AF.resample(AF.resample(wave, sr, 8000), 8000, sr)[: wave.numel()]
    n = narrow.numel()
    f = torch.fft.rfftfreq(n, d=1.0 / sr)
    lo, hi, edge = band_hz[0], band_hz[1], 100.0
    rise = ((f - (lo - edge)) / edge).clamp(0, 1)
    fall = (((hi + edge) - f) / edge).clamp(0, 1)
    gain = (0.5 - 0.5 * torch.cos(torch.pi * rise)) * (0.5 - 0.5 * torch.cos(torch.pi * fall))
    return torch.fft.irfft(torch.fft.rfft(narrow) * gain, n=n)


def augment_wave(wave: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator,
                 babble_sources: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """Apply a random subset of speed -> reverb -> noise -> telephone to a (samples,) waveform.

    The order follows the physics: a talker in a room, noise at the microphone, then the channel.
    Returns a new tensor; `wave` is not modified. Peak is limited to 1.0.
    """
    if wave.dim() != 1:
        raise DataError(f"augment_wave expects a (samples,) waveform, got shape {tuple(wave.shape)}")
    out = wave.to(torch.float32)
    if out.numel() == 0:
        return out.clone()
    if cfg.speeds and float(torch.rand((), generator=gen)) < cfg.p_speed:
        out = speed_perturb(out, cfg.speeds[int(torch.randint(len(cfg.speeds), (), generator=gen))])
    if float(torch.rand((), generator=gen)) < cfg.p_reverb:
        rooms = room_bank(cfg.n_rooms, cfg.rt60_s)
        out = reverberate(out, rooms[int(torch.randint(len(rooms), (), generator=gen))])
    if float(torch.rand((), generator=gen)) < cfg.p_noise:
        use_babble = bool(babble_sources) and float(torch.rand((), generator=gen)) < cfg.p_babble
        if use_babble:
            noise = babble_noise(out.numel(), babble_sources, gen)
        else:
            noise = colored_noise(out.numel(), _uniform(gen, 0.0, 2.0), gen)
        out = add_noise(out, noise, _uniform(gen, *cfg.snr_db))
    if float(torch.rand((), generator=gen)) < cfg.p_telephone:
        out = telephone(out)
    if out is wave:  # nothing applied: still hand back a new tensor
        out = out.clone()
    peak = float(out.abs().max())
    return out / peak if peak > 1.0 else out


def spec_augment(features: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """SpecAugment frequency and time masks on (n_mels, frames) or (batch, n_mels, frames).

    Uses torchaudio's FrequencyMasking / TimeMasking (independent masks per batch item), which
    draw from torch's global RNG; we run them under torch.random.fork_rng seeded from `gen`, so
    the result is reproducible and the caller's global RNG state is left untouched.
    Masked values are set to the mean of each item's features (log-mel's zero is not "silence").
    """
    if features.dim() not in (2, 3):
        raise DataError(f"spec_augment expects (n_mels, frames) or (batch, n_mels, frames), got "
                        f"shape {tuple(features.shape)}")
    x = features[None] if features.dim() == 2 else features
    mean = x.mean(dim=(1, 2), keepdim=True)
    seed = int(torch.randint(0, 2**62, (), generator=gen))
    freq = T.FrequencyMasking(cfg.freq_mask_param, iid_masks=True)
    time = T.TimeMasking(cfg.time_mask_param, iid_masks=True, p=cfg.time_mask_max_share)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        y = (x - mean)[:, None]  # (batch, channel=1, n_mels, frames): iid masks need 4-D input
        for _ in range(cfg.n_freq_masks):
            y = freq(y)
        for _ in range(cfg.n_time_masks):
            y = time(y)
    out = y[:, 0] + mean
    return out[0] if features.dim() == 2 else out
