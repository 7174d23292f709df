"""Augmentation: shapes, effects, and determinism under an explicit generator."""
import pytest
import torch

from workbench.data import AugmentConfig, augment_wave, colored_noise, spec_augment, speed_perturb, telephone
from workbench.data.augment import add_noise, babble_noise, reverberate, room_impulse_response
from workbench.errors import DataError

SR = 16_000


def _speechlike(seed: int = 0, seconds: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(SR * seconds)) / SR
    return 0.3 * torch.sin(2 * torch.pi * 220 * t) * (1 + torch.sin(2 * torch.pi * 3 * t)) \
        + 0.01 * torch.randn(t.numel(), generator=g)


# short RT60s keep the simulated rooms cheap (few image sources) so the tests stay fast
ALL_ON = AugmentConfig(p_speed=1.0, p_noise=1.0, p_reverb=1.0, p_telephone=1.0, p_babble=0.5,
                       rt60_s=(0.15, 0.3), n_rooms=4)


def test_same_seed_same_result_different_seed_different():
    wave = _speechlike()
    a = augment_wave(wave, ALL_ON, torch.Generator().manual_seed(7))
    b = augment_wave(wave, ALL_ON, torch.Generator().manual_seed(7))
    c = augment_wave(wave, ALL_ON, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert a.shape != c.shape or not torch.allclose(a, c, atol=1e-3)
    assert a.dim() == 1 and float(a.abs().max()) <= 1.0


def test_augment_does_not_modify_input_and_all_off_is_identity():
    wave = _speechlike()
    before = wave.clone()
    off = AugmentConfig(p_speed=0, p_noise=0, p_reverb=0, p_telephone=0)
    out = augment_wave(wave, off, torch.Generator().manual_seed(0))
    assert torch.equal(out, before) and out is not wave
    augment_wave(wave, ALL_ON, torch.Generator().manual_seed(0))
    assert torch.equal(wave, before)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturb_scales_length(factor: float):
    wave = _speechlike()
    out = speed_perturb(wave, factor)
    assert abs(out.numel() - wave.numel() / factor) <= 2


def test_add_noise_hits_requested_snr():
    wave = _speechlike()
    noise = colored_noise(wave.numel(), 1.0, torch.Generator().manual_seed(0))
    noisy = add_noise(wave, noise, 10.0)
    snr = 10 * torch.log10(wave.pow(2).sum() / (noisy - wave).pow(2).sum())
    assert abs(float(snr) - 10.0) < 0.05


def test_colored_noise_slope():
    g = torch.Generator().manual_seed(0)
    power = lambda x: torch.fft.rfft(x).abs().pow(2)  # noqa: E731
    white, brown = power(colored_noise(2**16, 0.0, g)), power(colored_noise(2**16, 2.0, g))
    lo, hi = slice(100, 1000), slice(10_000, 20_000)
    assert 0.5 < float(white[lo].mean() / white[hi].mean()) < 2.0   # flat
    assert float(brown[lo].mean() / brown[hi].mean()) > 100         # falls ~ 1/f^2


def test_babble_and_reverb_keep_length():
    g = torch.Generator().manual_seed(0)
    sources = [_speechlike(i, 0.3 + 0.2 * i) for i in range(3)]
    assert babble_noise(20_000, sources, g).shape == (20_000,)
    rir = room_impulse_response(g)
    assert rir.dim() == 1 and float(rir.abs().max()) == pytest.approx(1.0)
    assert int(rir.abs().argmax()) <= int(0.001 * SR) + 1           # direct path first
    wave = _speechlike()
    wet = reverberate(wave, rir)
    assert wet.shape == wave.shape
    assert float(wet.pow(2).mean()) == pytest.approx(float(wave.pow(2).mean()), rel=1e-3)


@pytest.mark.parametrize("n, m", [(1, 1), (5, 3), (20_000, 7_001), (33_333, 14_153)])
def test_reverberate_is_the_linear_convolution_of_fftconvolve(n: int, m: int):
    import torchaudio.functional as AF
    g = torch.Generator().manual_seed(n + m)
    wave, rir = torch.randn(n, generator=g), torch.randn(m, generator=g)
    ref = AF.fftconvolve(wave, rir)[:n]
    ref = ref * (wave.pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp(min=1e-8))
    got = reverberate(wave, rir)
    assert got.shape == (n,)
    assert float((got - ref).abs().max()) <= 1e-4 * max(1.0, float(ref.abs().max()))


def test_telephone_removes_out_of_band_energy():
    t = torch.arange(SR) / SR
    low, mid, high = (torch.sin(2 * torch.pi * f * t) for f in (100, 1000, 6000))
    gain = lambda x: float(telephone(x)[2000:-2000].pow(2).mean() / x.pow(2).mean())  # noqa: E731
    assert gain(mid) > 0.7
    assert gain(high) < 1e-3 and gain(low) < 0.1


def test_spec_augment_masks_deterministic_and_keeps_global_rng():
    feats = torch.randn(2, 80, 200, generator=torch.Generator().manual_seed(0))
    cfg = AugmentConfig(freq_mask_param=20, time_mask_param=40)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = spec_augment(feats, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(torch.random.get_rng_state(), state)
    b = spec_augment(feats, cfg, torch.Generator().manual_seed(1))
    c = spec_augment(feats, cfg, torch.Generator().manual_seed(2))
    assert a.shape == feats.shape and torch.equal(a, b) and not torch.equal(a, c)
    changed = (a != feats)
    assert changed.any() and changed.float().mean() < 0.6
    assert spec_augment(feats[0], cfg, torch.Generator().manual_seed(1)).shape == (80, 200)


def test_bad_config_and_input_raise():
    with pytest.raises(DataError, match="p_noise"):
        AugmentConfig(p_noise=1.5)
    with pytest.raises(DataError, match="snr_db"):
        AugmentConfig(snr_db=(20.0, 5.0))
    with pytest.raises(DataError, match="time_mask_max_share"):
        AugmentConfig(time_mask_max_share=0.0)
    with pytest.raises(DataError, match="samples"):
        augment_wave(torch.zeros(2, 100), AugmentConfig(), torch.Generator())


def test_train_spec_augment_is_the_data_module_one_with_the_training_config():
    from workbench.train import SPEC_AUGMENT, spec_augment as train_spec_augment

    feats = torch.randn(80, 120, generator=torch.Generator().manual_seed(0))
    got = train_spec_augment(feats, torch.Generator().manual_seed(3))
    assert torch.equal(got, spec_augment(feats, SPEC_AUGMENT, torch.Generator().manual_seed(3)))
    # a time mask covers at most a fifth of the frames: some frames of every mel row survive
    masked_frames = (got != feats).all(dim=0)
    assert masked_frames.float().mean() <= 2 * 0.2 + 1e-9


def test_recipe_items_use_the_data_module_augmentation():
    """The recipes' augmented views come from augment_wave(TRAIN_AUGMENT): the clean copy is the
    plain log-mel, the augmented copy is reproducible from the seed."""
    from workbench.data import load_audio, read_manifest
    from workbench.features import log_mel
    from workbench.paths import REAL_TEST
    from workbench.recipes import TRAIN_AUGMENT, _items

    utts = read_manifest(REAL_TEST)[:2]
    feats, labels = _items(utts, copies=2, augment=True, seed=5, desc="t", progress=False)
    again, _ = _items(utts, copies=2, augment=True, seed=5, desc="t", progress=False)
    assert len(feats) == len(labels) == 4
    assert torch.equal(feats[0], log_mel(load_audio(utts[0].audio_path)))
    gen = torch.Generator().manual_seed(5)
    expected = log_mel(augment_wave(load_audio(utts[0].audio_path), TRAIN_AUGMENT, gen))
    assert torch.equal(feats[1], expected) and not torch.equal(feats[1], feats[0])
    assert all(torch.equal(a, b) for a, b in zip(feats, again))
