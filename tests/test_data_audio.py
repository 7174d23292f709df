"""Audio I/O: resampling keeps frequency, channel mixing, clear errors, LibriSpeech reader."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from workbench.data import load_audio, read_librispeech, save_flac
from workbench.data.audio import normalize_loudness
from workbench.errors import DataError


def _peak_hz(wave: torch.Tensor, sr: int = 16_000) -> float:
    spec = torch.fft.rfft(wave * torch.hann_window(wave.numel()))
    return float(spec.abs().argmax()) * sr / wave.numel()


def test_44k1_stereo_sine_becomes_16k_mono_same_frequency(tmp_path: Path):
    sr, seconds = 44_100, 1.5
    t = np.arange(int(sr * seconds)) / sr
    left = 0.5 * np.sin(2 * np.pi * 1000 * t)
    stereo = np.stack([left, 0.8 * left], axis=1)  # in phase: mean = 0.45 * sine
    path = tmp_path / "sine.wav"
    sf.write(path, stereo, sr)
    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.dim() == 1
    assert abs(wave.numel() - round(seconds * 16_000)) <= 2          # length scaled 16000/44100
    assert abs(_peak_hz(wave) - 1000.0) < 2.0                        # frequency kept (bin 0.67 Hz)
    rms = float(wave[2000:-2000].pow(2).mean().sqrt())
    assert abs(rms - 0.45 / np.sqrt(2)) < 0.01                       # channels averaged


def test_flac_round_trip(tmp_path: Path):
    wave = 0.3 * torch.sin(torch.arange(16_000) * 2 * torch.pi * 440 / 16_000)
    back = load_audio(save_flac(tmp_path / "x.flac", wave))
    assert back.shape == wave.shape
    assert float((back - wave).abs().max()) < 1 / 2**14  # 16-bit quantization
    assert sf.info(str(tmp_path / "x.flac")).samplerate == 16_000


def test_missing_file(tmp_path: Path):
    with pytest.raises(DataError, match="not found") as e:
        load_audio(tmp_path / "missing.wav")
    assert "missing.wav" in str(e.value)


def test_corrupt_file(tmp_path: Path):
    path = tmp_path / "corrupt.flac"
    path.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(DataError, match="cannot decode") as e:
        load_audio(path)
    assert "corrupt.flac" in str(e.value)


def test_empty_file(tmp_path: Path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0,), dtype=np.float32), 16_000)
    with pytest.raises(DataError, match="no samples") as e:
        load_audio(path)
    assert "empty.wav" in str(e.value)


def test_loudness_normalization_reaches_target_and_limits_peak():
    gen = torch.Generator().manual_seed(0)
    wave = 0.01 * torch.randn(32_000, generator=gen)
    out = normalize_loudness(wave, target_lufs=-23.0)
    import torchaudio.functional as AF
    assert abs(float(AF.loudness(out[None], 16_000)) + 23.0) < 0.1
    loud = normalize_loudness(wave, target_lufs=0.0, peak=0.9)
    assert float(loud.abs().max()) <= 0.9 + 1e-6


def test_read_librispeech_layout(tmp_path: Path):
    chapter = tmp_path / "84" / "121123"
    chapter.mkdir(parents=True)
    for i, n in enumerate((8000, 12000)):
        sf.write(chapter / f"84-121123-000{i}.flac", np.zeros(n, dtype=np.float32), 16_000)
    (chapter / "84-121123.trans.txt").write_text("84-121123-0000 GO DO YOU HEAR\n"
                                                 "84-121123-0001 BUT IN LESS THAN FIVE MINUTES\n")
    utts = read_librispeech(tmp_path)
    assert [u.id for u in utts] == ["84-121123-0000", "84-121123-0001"]
    assert [u.duration for u in utts] == [0.5, 0.75]
    assert utts[1].text == "BUT IN LESS THAN FIVE MINUTES"


def test_librispeech_missing_audio_names_line(tmp_path: Path):
    chapter = tmp_path / "1" / "2"
    chapter.mkdir(parents=True)
    (chapter / "1-2.trans.txt").write_text("1-2-0000 HELLO\n")
    with pytest.raises(DataError, match=r"line 1: audio file 1-2-0000.flac is missing"):
        read_librispeech(tmp_path)
