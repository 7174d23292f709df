"""Manifests: round trip, relative paths, and errors that name file, line and field."""
import json
from pathlib import Path

import pytest

from workbench.data import Utterance, read_manifest, write_manifest
from workbench.errors import DataError


def test_round_trip_keeps_fields_and_paths_are_relative(tmp_path: Path):
    audio = tmp_path / "audio" / "a b.flac"
    audio.parent.mkdir()
    audio.write_bytes(b"")
    utts = [Utterance(audio, 1.25, "hello world", "u1"),
            Utterance(tmp_path / "audio" / "x.flac", 0.5, "it's ok", "u2")]
    path = write_manifest(utts, tmp_path / "m.jsonl")
    first = json.loads(path.read_text().splitlines()[0])
    assert first["audio_filepath"] == "audio/a b.flac"  # relative to the manifest's folder
    assert set(first) >= {"audio_filepath", "duration", "text"}
    back = read_manifest(path)
    assert [(u.audio_path.resolve(), u.duration, u.text, u.id) for u in back] == \
           [(u.audio_path.resolve(), u.duration, u.text, u.id) for u in utts]


def test_manifest_moves_with_its_folder(tmp_path: Path):
    src = tmp_path / "a"
    write_manifest([Utterance(src / "audio" / "x.flac", 1.0, "x", "x")], src / "m.jsonl")
    dst = tmp_path / "b"
    src.rename(dst)
    assert read_manifest(dst / "m.jsonl")[0].audio_path == dst / "audio" / "x.flac"


def test_id_defaults_to_file_stem(tmp_path: Path):
    (tmp_path / "m.jsonl").write_text('{"audio_filepath": "w/abc.flac", "duration": 2, "text": "t"}\n')
    assert read_manifest(tmp_path / "m.jsonl")[0].id == "abc"


@pytest.mark.parametrize("line, needle", [
    ('{"audio_filepath": "a.flac", "duration": 1.0}', "missing field 'text'"),
    ('{"audio_filepath": "a.flac", "text": "x"}', "missing field 'duration'"),
    ('{"duration": 1.0, "text": "x"}', "missing field 'audio_filepath'"),
    ('{"audio_filepath": "a.flac", "duration": "long", "text": "x"}', "'duration'"),
    ('{"audio_filepath": "a.flac", "duration": 1.0, "text": 5}', "'text'"),
    ('{"audio_filepath": "a.flac", "duration": 1.0, "text": "x"', "not valid JSON"),
    ('[1, 2]', "expected a JSON object"),
])
def test_bad_line_names_file_line_and_field(tmp_path: Path, line: str, needle: str):
    good = '{"audio_filepath": "a.flac", "duration": 1.0, "text": "ok"}'
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n\n{good}\n{line}\n")
    with pytest.raises(DataError) as e:
        read_manifest(path)
    msg = str(e.value)
    assert str(path) in msg and "line 4" in msg and needle in msg


def test_missing_manifest_is_a_data_error(tmp_path: Path):
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


def test_write_is_atomic_no_temp_files_left(tmp_path: Path):
    write_manifest([Utterance(tmp_path / "a.flac", 1.0, "a", "a")], tmp_path / "m.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]
