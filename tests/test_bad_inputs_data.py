"""Bad manifests, audio and eval sets: one DataError / ArgumentError naming the file, line or
argument, raised before features are computed; never a traceback, never a silent WER."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.data import load_audio, read_manifest
from workbench.data.manifest import MAX_MANIFEST_BYTES
from workbench.errors import ArgumentError, DataError, WorkbenchError
from workbench.evaluate import EvalSet, evaluate, load_eval_set, score, transcribe

SR = 16_000


def _tone(seconds: float = 0.5, sr: int = SR, peak: float = 0.1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (peak * np.sin(2 * np.pi * 220 * t)).astype("float32")


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    sf.write(tmp_path / "ok.wav", _tone(), SR, subtype="FLOAT")
    return tmp_path


def _line(**fields) -> str:
    entry = {"audio_filepath": "ok.wav", "duration": 0.5, "text": "hello world"}
    entry.update(fields)
    return json.dumps({k: v for k, v in entry.items() if v is not _DROP})


_DROP = object()
GOOD = _line()

# (case id, manifest bytes or text, substrings of the message)
MANIFEST_CASES = [
    ("empty-file", "", ["m.jsonl", "no utterances", "empty file"]),
    ("only-blank-lines", "\n   \n\t\n", ["m.jsonl", "no utterances", "blank lines"]),
    ("not-utf8", GOOD + '\n{"audio_filepath": "ok.wav", "duration": 1, "text": "caf\xe9"}\n',
     ["m.jsonl, line 2", "not UTF-8"]),
    ("utf16", GOOD.encode("utf-16"), ["m.jsonl, line 1", "not UTF-8"]),
    ("not-json", GOOD + "\nhello\n", ["m.jsonl, line 2", "not valid JSON"]),
    ("truncated-json", '{"audio_filepath": "ok.wav", "dur', ["line 1", "not valid JSON"]),
    ("array-line", "[1, 2]\n", ["line 1", "JSON object"]),
    ("string-line", '"ok.wav"\n', ["line 1", "JSON object"]),
    ("number-line", "3\n", ["line 1", "JSON object"]),
    ("missing-audio_filepath", _line(audio_filepath=_DROP), ["line 1", "'audio_filepath'"]),
    ("missing-duration", _line(duration=_DROP), ["line 1", "'duration'"]),
    ("missing-text", _line(text=_DROP), ["line 1", "'text'"]),
    ("audio-path-int", _line(audio_filepath=3), ["line 1", "'audio_filepath'"]),
    ("audio-path-empty", _line(audio_filepath=""), ["line 1", "'audio_filepath'"]),
    ("audio-path-blank", _line(audio_filepath="   "), ["line 1", "'audio_filepath'"]),
    ("audio-path-nul", _line(audio_filepath="a\x00.wav"), ["line 1", "'audio_filepath'"]),
    ("audio-path-list", _line(audio_filepath=["ok.wav"]), ["line 1", "'audio_filepath'"]),
    ("duration-negative", _line(duration=-1), ["line 1", "'duration'", "-1"]),
    ("duration-string", _line(duration="1.0"), ["line 1", "'duration'"]),
    ("duration-bool", _line(duration=True), ["line 1", "'duration'"]),
    ("duration-null", _line(duration=None), ["line 1", "'duration'"]),
    ("duration-NaN", '{"audio_filepath": "ok.wav", "duration": NaN, "text": "a"}',
     ["line 1", "NaN"]),
    ("duration-Infinity", '{"audio_filepath": "ok.wav", "duration": Infinity, "text": "a"}',
     ["line 1", "Infinity"]),
    ("duration-1e400", '{"audio_filepath": "ok.wav", "duration": 1e400, "text": "a"}',
     ["line 1", "'duration'"]),
    ("duration-absurd", _line(duration=1e12), ["line 1", "'duration'"]),
    ("duration-5000-digits", '{"audio_filepath": "ok.wav", "duration": ' + "9" * 5000 +
     ', "text": "a"}', ["line 1", "5,000 digits"]),
    ("text-int", _line(text=3), ["line 1", "'text'"]),
    ("text-null", _line(text=None), ["line 1", "'text'"]),
    ("id-empty", _line(id=""), ["line 1", "'id'"]),
    ("id-int", _line(id=7), ["line 1", "'id'"]),
    ("duplicate-field", '{"audio_filepath": "ok.wav", "duration": 1, "duration": 2, "text": "a"}',
     ["line 1", "'duration'", "twice"]),
    ("deeply-nested", '{"audio_filepath": "ok.wav", "duration": 1, "text": "a", "x": ' +
     "[" * 20_000 + "]" * 20_000 + "}", ["line 1", "nested too deeply"]),
    ("line-too-long", _line(text="a" * 200_000), ["line 1", "characters"]),
    ("bad-line-after-good", GOOD + "\n" + GOOD + "\n\n" + _line(text=5), ["line 4", "'text'"]),
]


@pytest.mark.parametrize("content,expected", [c[1:] for c in MANIFEST_CASES],
                         ids=[c[0] for c in MANIFEST_CASES])
def test_bad_manifest_is_one_data_error(folder: Path, content, expected: list[str]) -> None:
    path = folder / "m.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("utf-8")
                         if "\xe9" not in content else content.encode("latin-1"))
    with pytest.raises(DataError) as err:
        read_manifest(path)
    for part in expected:
        assert part in str(err.value), (part, str(err.value))


def test_empty_manifest_allowed_when_asked(folder: Path) -> None:
    (folder / "m.jsonl").write_text("\n")
    assert read_manifest(folder / "m.jsonl", allow_empty=True) == []


@pytest.mark.parametrize("kind", ["missing", "folder", "not-a-path"])
def test_manifest_path_problems(folder: Path, kind: str) -> None:
    arg = {"missing": folder / "none.jsonl", "folder": folder, "not-a-path": 42}[kind]
    with pytest.raises(DataError) as err:
        read_manifest(arg)
    assert (str(arg) if kind != "not-a-path" else "int") in str(err.value)


def test_huge_manifest_refused_from_file_size(folder: Path) -> None:
    path = folder / "huge.jsonl"
    with path.open("wb") as f:  # sparse file: no disk used, no byte read
        f.truncate(MAX_MANIFEST_BYTES + 1)
    with pytest.raises(DataError) as err:
        read_manifest(path)
    assert str(path) in str(err.value) and "bytes" in str(err.value)


# ---- audio files ------------------------------------------------------------------------------
def _write(path: Path, data: np.ndarray, sr: int = SR, subtype: str = "FLOAT") -> Path:
    sf.write(path, data, sr, subtype=subtype)
    return path


AUDIO_CASES = [
    ("nan-samples", lambda p: _write(p, np.where(np.arange(8000) == 100, np.nan,
                                                 _tone()).astype("float32")), ["NaN"]),
    ("inf-samples", lambda p: _write(p, np.where(np.arange(8000) == 5, np.inf,
                                                 _tone()).astype("float32")), ["infinite"]),
    ("neg-inf-samples", lambda p: _write(p, np.full(8000, -np.inf, dtype="float32")),
     ["infinite"]),
    ("samples-1000x", lambda p: _write(p, _tone(peak=1000.0)), ["1000", "[-1, 1]"]),
    ("int16-as-float", lambda p: _write(p, _tone(peak=32767.0)), ["[-1, 1]"]),
    ("zero-length", lambda p: _write(p, np.zeros(0, dtype="float32")), ["no samples"]),
    ("rate-1000Hz", lambda p: _write(p, _tone(sr=1000), sr=1000), ["1000 Hz"]),
    ("text-file", lambda p: (p.write_text("not audio"), p)[1], ["cannot decode audio"]),
    ("empty-file", lambda p: (p.write_bytes(b""), p)[1], ["cannot decode audio"]),
    ("truncated-header", lambda p: (p.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt "), p)[1],
     ["cannot decode audio"]),
    ("missing-file", lambda p: p, ["not found"]),
    ("folder", lambda p: (p.mkdir(), p)[1], ["not found"]),
]


@pytest.mark.parametrize("make,expected", [c[1:] for c in AUDIO_CASES],
                         ids=[c[0] for c in AUDIO_CASES])
def test_bad_audio_is_one_data_error(tmp_path: Path, make, expected: list[str]) -> None:
    path = make(tmp_path / "x.wav")
    with pytest.raises(DataError) as err:
        load_audio(path)
    assert str(tmp_path / "x.wav") in str(err.value)
    for part in expected:
        assert part in str(err.value), (part, str(err.value))


@pytest.fixture(scope="module")
def hour_of_silence(tmp_path_factory) -> Path:
    """1 h of 8 kHz FLAC silence: 60 MB of samples on paper, ~100 kB on disk."""
    path = tmp_path_factory.mktemp("long") / "hour.flac"
    with sf.SoundFile(path, "w", 8000, 1, format="FLAC", subtype="PCM_16") as f:
        block = np.zeros(8000 * 60, dtype="int16")
        for _ in range(60):
            f.write(block)
    return path


def test_hour_of_audio_refused_from_header(hour_of_silence: Path, monkeypatch) -> None:
    def no_read(*args, **kwargs):
        raise AssertionError("samples were read before the length check")
    monkeypatch.setattr(sf, "read", no_read)
    with pytest.raises(DataError) as err:
        load_audio(hour_of_silence)
    assert str(hour_of_silence) in str(err.value) and "3,600.0 s" in str(err.value)


def test_eval_set_with_long_audio_refused_before_features(tmp_path: Path, hour_of_silence,
                                                           monkeypatch) -> None:
    ev = sys.modules["workbench.evaluate"]  # the package attribute is the evaluate() verb
    sf.write(tmp_path / "ok.wav", _tone(), SR)
    (tmp_path / "m.jsonl").write_text(_line() + "\n" + _line(audio_filepath=str(hour_of_silence))
                                      + "\n")
    monkeypatch.setattr(ev, "log_mel", lambda *a: (_ for _ in ()).throw(
        AssertionError("features computed before the length check")))
    with pytest.raises(DataError) as err:
        load_eval_set(tmp_path / "m.jsonl", progress=False)
    assert str(hour_of_silence) in str(err.value) and "30 s" in str(err.value)


def test_eval_set_utterance_of_31s_refused(tmp_path: Path) -> None:
    sf.write(tmp_path / "long.flac", np.zeros(31 * 8000, dtype="int16"), 8000)
    (tmp_path / "m.jsonl").write_text(_line(audio_filepath="long.flac") + "\n")
    with pytest.raises(DataError) as err:
        load_eval_set(tmp_path / "m.jsonl", progress=False)
    assert "long.flac" in str(err.value) and "31.0 s" in str(err.value)


def test_stereo_and_8khz_audio_are_handled(tmp_path: Path) -> None:
    """Handled correctly, not refused: channels are averaged and the rate converted."""
    stereo = _write(tmp_path / "s.wav", np.stack([_tone(), _tone()], axis=1))
    narrow = _write(tmp_path / "n.wav", _tone(sr=8000), sr=8000)
    assert load_audio(stereo).shape == (8000,)
    assert load_audio(narrow).shape == (8000,)


# ---- eval sets --------------------------------------------------------------------------------
EVAL_MANIFESTS = [
    ("reference-empty", _line(text=""), ["'ok'", "no words"]),
    ("reference-punctuation", _line(text="?!... --"), ["'ok'", "no words", "?!..."]),
    ("reference-whitespace", _line(text="   "), ["'ok'", "no words"]),
    ("reference-symbols-only", _line(text="\u266a \u2605"), ["'ok'", "no words"]),
    ("audio-missing", _line(audio_filepath="gone.wav"), ["gone.wav", "missing"]),
    ("one-of-three-missing", GOOD + "\n" + _line(audio_filepath="gone.wav", id="b") + "\n" + GOOD,
     ["gone.wav", "1 audio file"]),
]


@pytest.mark.parametrize("content,expected", [c[1:] for c in EVAL_MANIFESTS],
                         ids=[c[0] for c in EVAL_MANIFESTS])
def test_bad_eval_set_refused_before_features(folder: Path, content: str, expected: list[str],
                                              monkeypatch) -> None:
    ev = sys.modules["workbench.evaluate"]  # the package attribute is the evaluate() verb
    monkeypatch.setattr(ev, "log_mel", lambda *a: (_ for _ in ()).throw(
        AssertionError("features computed before the check")))
    (folder / "m.jsonl").write_text(content + "\n")
    with pytest.raises(DataError) as err:
        load_eval_set(folder / "m.jsonl", progress=False)
    assert "m.jsonl" in str(err.value) or "gone.wav" in str(err.value)
    for part in expected:
        assert part in str(err.value), (part, str(err.value))


@pytest.mark.parametrize("limit", [0, -1, -100, True, 1.5, "3"],
                         ids=["zero", "minus-one", "minus-100", "bool", "float", "string"])
def test_bad_limit_is_refused(folder: Path, limit) -> None:
    (folder / "m.jsonl").write_text(GOOD + "\n")
    with pytest.raises(ArgumentError) as err:
        load_eval_set(folder / "m.jsonl", limit=limit, progress=False)
    assert "limit" in str(err.value)


def test_limit_larger_than_set_is_handled(folder: Path) -> None:
    (folder / "m.jsonl").write_text(GOOD + "\n")
    assert len(load_eval_set(folder / "m.jsonl", limit=10, progress=False)) == 1


# ---- evaluate / score / transcribe --------------------------------------------------------------
def _empty_set() -> EvalSet:
    return EvalSet("nothing", Path("m.jsonl"), (), (), ())


def test_evaluate_empty_eval_set(tiny_conformer) -> None:
    with pytest.raises(DataError) as err:
        evaluate(tiny_conformer, _empty_set())
    assert "'nothing'" in str(err.value) and "no utterances" in str(err.value)


@pytest.mark.parametrize("eval_set", ["data/real/test.jsonl", None, [torch.zeros(80, 10)]],
                         ids=["path-string", "none", "list-of-features"])
def test_evaluate_eval_set_wrong_type(tiny_conformer, eval_set) -> None:
    with pytest.raises(ArgumentError) as err:
        evaluate(tiny_conformer, eval_set)
    assert "eval_set" in str(err.value) and type(eval_set).__name__ in str(err.value)


@pytest.mark.parametrize("refs,expected", [([], "no utterances"), (["a b", ""], "['1']"),
                                           (["  "], "['0']")],
                         ids=["no-refs", "one-empty-ref", "blank-ref"])
def test_score_refuses_empty_references(refs, expected: str) -> None:
    with pytest.raises(DataError) as err:
        score(refs, ["x"] * len(refs))
    assert expected in str(err.value)


TRANSCRIBE_CASES = [
    ("tensor-not-list", torch.zeros(2, 80, 10), ArgumentError, "features"),
    ("one-d-feature", [torch.zeros(160)], ArgumentError, "features[0]"),
    ("zero-frames", [torch.zeros(80, 0)], ArgumentError, "features[0]"),
    ("numpy-feature", [np.zeros((80, 10))], ArgumentError, "features[0]"),
    ("nan-feature", [torch.full((80, 10), float("nan"))], DataError, "features[0]"),
    ("string", "hello", ArgumentError, "features"),
]


@pytest.mark.parametrize("features,error,expected", [c[1:] for c in TRANSCRIBE_CASES],
                         ids=[c[0] for c in TRANSCRIBE_CASES])
def test_transcribe_bad_features(tiny_conformer, features, error, expected: str) -> None:
    with pytest.raises(error) as err:
        transcribe(tiny_conformer, features)
    assert expected in str(err.value)


# ---- property tests: a manifest reads, or raises DataError ------------------------------------
def _read_or_data_error(path: Path) -> None:
    try:
        utts = read_manifest(path)
    except DataError as err:
        assert str(path) in str(err)
        return
    assert utts and all(u.duration >= 0 and isinstance(u.text, str) for u in utts)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_random_bytes_manifest(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(data)
    _read_or_data_error(path)


scalar = (st.none() | st.booleans() | st.integers() | st.text(max_size=10)
          | st.floats(allow_nan=False, allow_infinity=False))
entries = st.fixed_dictionaries({}, optional={
    "audio_filepath": scalar | st.just("a.wav"), "duration": scalar | st.floats(0, 30),
    "text": scalar, "id": scalar, "extra": scalar})


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(entries | scalar, max_size=4))
def test_random_json_lines_manifest(tmp_path: Path, lines: list) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    _read_or_data_error(path)


def test_data_error_is_a_workbench_error() -> None:
    assert issubclass(DataError, WorkbenchError) and issubclass(ArgumentError, WorkbenchError)


def test_librispeech_transcript_not_utf8(tmp_path: Path) -> None:
    from workbench.data import read_librispeech
    chapter = tmp_path / "84" / "121"
    chapter.mkdir(parents=True)
    (chapter / "84-121.trans.txt").write_bytes(b"84-121-0000 CAF\xc9\n")
    with pytest.raises(DataError) as err:
        read_librispeech(tmp_path)
    assert "84-121.trans.txt" in str(err.value) and "UTF-8" in str(err.value)


@pytest.mark.parametrize("kwargs,expected", [({"sample_rate": 0}, "sample_rate=0"),
                                             ({"sample_rate": 16000.0}, "sample_rate=16000.0"),
                                             ({"max_seconds": -1}, "max_seconds=-1")],
                         ids=["rate-0", "rate-float", "max-seconds-negative"])
def test_load_audio_bad_arguments(folder: Path, kwargs: dict, expected: str) -> None:
    with pytest.raises(DataError) as err:
        load_audio(folder / "ok.wav", **kwargs)
    assert expected in str(err.value)
