"""Offline synthesis: a tiny 3-utterance corpus (one per split), voices held out for test."""
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from workbench.data import build_corpus, read_manifest, synthesize, voice_catalogue
from workbench.data.build import voice_of
from workbench.data.corpus import split_of
from workbench.data.synth import SynthSettings, Voice, speakable, trim_silence

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="espeak-ng is not installed (sudo apt-get install -y espeak-ng)")


def test_tiny_corpus_of_three_utterances(tmp_path: Path):
    summary = build_corpus(tmp_path, n_train=1, n_dev=1, n_test=1, seed=0, progress=False, workers=1)
    assert summary["synthesized_now"] == 3
    by_split = {s: read_manifest(tmp_path / f"{s}.jsonl") for s in ("train", "dev", "test")}
    for split, utts in by_split.items():
        assert len(utts) == 1
        u = utts[0]
        info = sf.info(str(u.audio_path))
        assert info.samplerate == 16_000 and info.channels == 1
        assert 0.5 < u.duration < 15 and abs(info.duration - u.duration) < 1e-3
        assert split_of(u.text) == split                      # sentence-level split
        voice = voice_of(u.id)
        assert voice in voice_catalogue()
        assert voice.held_out == (split == "test")            # test voices never in train/dev
    again = build_corpus(tmp_path, n_train=1, n_dev=1, n_test=1, seed=0, progress=False, workers=1)
    assert again["synthesized_now"] == 0                      # idempotent


def test_synthesize_is_16k_normalized_and_trimmed():
    wave = synthesize("turn off the kitchen lights", Voice("espeak-ng", "en-gb"),
                      SynthSettings(rate=1.0, pitch=50))
    assert wave.dim() == 1 and 0.8 < wave.numel() / 16_000 < 4.0
    assert 0.05 < float(wave.abs().max()) <= 0.95 + 1e-6
    assert float(trim_silence(wave).numel()) >= wave.numel() - 16  # already trimmed


def test_voice_of_parses_ids():
    assert voice_of("train-00003-espeak-ng-en-us-nyc+m3-0a1b2c3d") == Voice("espeak-ng", "en-us-nyc+m3")
    assert voice_of("test-00000-flite-rms-deadbeef") == Voice("flite", "rms")
    assert voice_of("digits__7") is None


def test_speakable_spells_am_pm():
    assert speakable("seven a m and ten p m") == "seven A.M. and ten P.M."
    assert speakable("a man") == "a man"


def test_every_accent_has_held_out_and_train_voices():
    voices = voice_catalogue()
    test = [v for v in voices if v.held_out]
    assert 20 <= len(test) < len(voices) / 3
    assert any(v.engine == "espeak-ng" and v.name.startswith("en-029") for v in test)


def test_build_all_refuses_the_repository():
    from workbench.data import build_all
    from workbench.errors import DataError
    from workbench.paths import REPO_ROOT

    with pytest.raises(DataError, match="inside the workbench repository"):
        build_all(REPO_ROOT / "data" / "corpus", n_train=1, progress=False)
