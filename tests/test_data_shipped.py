"""The eval sets shipped in data/: present, 16 kHz, small, and held out from everything trained on."""
from pathlib import Path

import pytest
import soundfile as sf

from workbench.data import asterisk, corpus, normalize_text, read_manifest
from workbench.data.build import voice_of

DATA = Path(__file__).resolve().parents[1] / "data"
SETS = {"real_test": (100, 130), "synth_test": (150, 150), "calib": (48, 48)}


@pytest.fixture(scope="module")
def shipped():
    missing = [n for n in SETS if not (DATA / n / "manifest.jsonl").is_file()]
    if missing:
        pytest.fail(f"shipped eval sets missing: {missing}; rebuild with workbench.data.write_eval_sets")
    return {n: read_manifest(DATA / n / "manifest.jsonl") for n in SETS}


def test_counts_format_and_size(shipped):
    total_bytes = 0
    for name, (lo, hi) in SETS.items():
        utts = shipped[name]
        assert lo <= len(utts) <= hi, name
        assert len({u.id for u in utts}) == len(utts)
        for u in utts:
            info = sf.info(str(u.audio_path))
            assert info.samplerate == 16_000 and info.channels == 1 and info.format == "FLAC"
            assert abs(info.duration - u.duration) < 1e-3
            assert u.text and normalize_text(u.text) == u.text
            total_bytes += u.audio_path.stat().st_size
        assert {p.name for p in (DATA / name / "audio").iterdir()} == \
               {u.audio_path.name for u in utts}  # no stray files
    assert total_bytes < 16e6


def test_real_test_is_the_hash_split(shipped):
    for u in shipped["real_test"]:
        assert asterisk.split_of(u.id.replace("__", "/"), u.duration) == "test"
        assert 1.0 <= u.duration <= 8.0
    minutes = sum(u.duration for u in shipped["real_test"]) / 60
    assert 3 <= minutes <= 8


def test_synth_test_is_unseen_voices_and_sentences(shipped):
    for u in shipped["synth_test"]:
        assert corpus.split_of(u.text) == "test"
        assert voice_of(u.id).held_out
    assert len({u.text for u in shipped["synth_test"]}) == len(shipped["synth_test"])


def test_calib_comes_from_the_training_side_only(shipped):
    test_texts = {u.text for n in ("real_test", "synth_test") for u in shipped[n]}
    real = [u for u in shipped["calib"] if voice_of(u.id) is None]
    synth = [u for u in shipped["calib"] if voice_of(u.id) is not None]
    assert len(real) == 16 and len(synth) == 32
    for u in synth:
        assert corpus.split_of(u.text) == "train" and not voice_of(u.id).held_out
    for u in real:
        assert asterisk.split_of(u.id.replace("__", "/"), u.duration) == "finetune"
    assert not ({u.id for u in shipped["calib"]} & {u.id for u in shipped["real_test"]})
    assert not ({u.text for u in synth} & test_texts)
