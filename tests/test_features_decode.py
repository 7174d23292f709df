"""Front-end and decoding: shapes, Whisper's frame arithmetic, greedy CTC collapse rules."""
import math

import numpy as np
import torch

from workbench.decode import encode_text, greedy_decode
from workbench.features import N_MELS, collate_features, log_mel, num_frames
from workbench.models.base import VOCAB


def test_log_mel_shape_and_range():
    t = torch.arange(16000) / 16000
    wave = 0.3 * torch.sin(2 * math.pi * 440 * t)
    f = log_mel(wave)
    assert f.shape == (N_MELS, num_frames(16000)) == (80, 100)
    # Whisper scaling: log10 floored at max - 8, then (x + 4) / 4 -> values within 2 of each other.
    assert float(f.max() - f.min()) <= 2.0 + 1e-6


def test_log_mel_peak_at_tone_frequency():
    t = torch.arange(16000) / 16000
    low = log_mel(0.3 * torch.sin(2 * math.pi * 300 * t)).mean(-1).argmax()
    high = log_mel(0.3 * torch.sin(2 * math.pi * 3000 * t)).mean(-1).argmax()
    assert high > low + 20


def test_log_mel_matches_numpy_reference():
    # Independent reference: numpy rfft with Hann window, same mel matrix.
    rng = np.random.default_rng(0)
    wave = rng.standard_normal(8000).astype(np.float32) * 0.1
    ours = log_mel(torch.from_numpy(wave)).numpy()
    padded = np.pad(wave, (200, 200), mode="reflect")
    frames = np.stack([padded[i * 160: i * 160 + 400] for i in range(len(wave) // 160)])
    window = np.hanning(401)[:-1]  # periodic Hann, as torch.hann_window
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    from workbench.features import _mel_filters
    mel = power @ _mel_filters(80).numpy()
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    ref = ((log_spec + 4.0) / 4.0).T
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-3


def test_very_short_audio_gives_one_frame():
    assert log_mel(torch.zeros(10)).shape == (80, 1)


def test_collate_pads_with_zeros():
    x, lens = collate_features([torch.ones(80, 3), torch.ones(80, 5)])
    assert x.shape == (2, 80, 5) and lens.tolist() == [3, 5]
    assert float(x[0, :, 3:].abs().sum()) == 0.0


def test_greedy_decode_collapses_repeats_and_blanks():
    ids = [VOCAB.index(c) for c in "hh"] + [0] + [VOCAB.index("h"), VOCAB.index("i"), 1, 1, 0,
                                                   VOCAB.index("y")]
    lp = torch.full((1, len(ids), len(VOCAB)), -10.0)
    lp[0, torch.arange(len(ids)), torch.tensor(ids)] = 0.0
    assert greedy_decode(lp, torch.tensor([len(ids)])) == ["hhi y"]
    assert greedy_decode(lp, torch.tensor([2])) == ["h"]


def test_encode_text_roundtrip_ids():
    ids = encode_text("it's ok")
    assert "".join(VOCAB[i] for i in ids) == "it's ok"
