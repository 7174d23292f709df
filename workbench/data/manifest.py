"""Utterance lists on disk: NeMo-style JSONL manifests and the LibriSpeech folder layout.

A manifest is one JSON object per line with `audio_filepath` (relative to the manifest's folder, so
a data set can be moved or shipped as one folder), `duration` (seconds) and `text`. An optional `id`
is kept; without it the id is the audio file's stem. Absolute paths are accepted on read.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from workbench.errors import DataError

REQUIRED_FIELDS = ("audio_filepath", "duration", "text")


@dataclass(frozen=True)
class Utterance:
    """One audio file and its transcript. `audio_path` is absolute once read from a manifest."""

    audio_path: Path
    duration: float  # seconds
    text: str
    id: str


#: Refused from the file size before reading: a manifest line is ~150 bytes, so this is ~600k
#: utterances (~1,000 h), far above any eval or training set the workbench handles.
MAX_MANIFEST_BYTES = 100_000_000
#: A manifest line longer than this is not one utterance's metadata.
MAX_LINE_CHARS = 100_000


def read_manifest(path: Path | str, allow_empty: bool = False) -> list[Utterance]:
    """Read a JSONL manifest; audio paths are resolved against the manifest's folder.

    Raises DataError naming the file, the 1-based line number and the offending field; also for
    a file over MAX_MANIFEST_BYTES (checked before reading), bytes that are not UTF-8, and (unless
    `allow_empty`) a manifest that lists no utterance.
    """
    if not isinstance(path, str | os.PathLike):
        raise DataError(f"manifest: expected a path (str or Path), got {type(path).__name__}.")
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a manifest file" if path.is_dir() else "manifest not found"
        raise DataError(f"{path}: {what} (build it with `workbench data build`, or check the "
                        "path)")
    n_bytes = path.stat().st_size
    if n_bytes > MAX_MANIFEST_BYTES:
        raise DataError(f"{path}: {n_bytes:,} bytes; a manifest is at most "
                        f"{MAX_MANIFEST_BYTES:,} bytes (~600k utterances). Split it into parts.")
    utts: list[Utterance] = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}, line {lineno}: not UTF-8 text ({err.reason} at byte "
                                f"{err.start} of the line); save the manifest as UTF-8.") from None
            if not line.strip():
                continue
            utts.append(_parse_line(line, path, lineno))
    if not utts and not allow_empty:
        raise DataError(f"{path}: the manifest lists no utterances ("
                        f"{'empty file' if n_bytes == 0 else 'only blank lines'}); each line "
                        f"must be a JSON object with {', '.join(REQUIRED_FIELDS)}.")
    return utts


class _Refused(ValueError):
    pass


def _refuse_constant(name: str) -> None:
    raise _Refused(f"{name} is not a number JSON allows; write a finite number")


def _bounded_int(digits: str) -> int:
    if len(digits) > 30:
        raise _Refused(f"a number with {len(digits):,} digits")
    return int(digits)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"field '{key[:40]}' appears twice; keep one")
        out[key] = value
    return out


def _parse_line(line: str, path: Path, lineno: int) -> Utterance:
    where = f"{path}, line {lineno}"
    if len(line) > MAX_LINE_CHARS:
        raise DataError(f"{where}: {len(line):,} characters; one utterance's line is at most "
                        f"{MAX_LINE_CHARS:,}")
    try:
        entry = json.loads(line, parse_constant=_refuse_constant, parse_int=_bounded_int,
                           object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); each line must "
                        "be one JSON object") from None
    except _Refused as e:
        raise DataError(f"{where}: {e}") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply; each line must be one flat JSON "
                        "object") from None
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected a JSON object with fields {', '.join(REQUIRED_FIELDS)}")
    for field in REQUIRED_FIELDS:
        if field not in entry:
            raise DataError(f"{where}: missing field '{field}' (required: "
                            f"{', '.join(REQUIRED_FIELDS)})")
    audio, duration, text = entry["audio_filepath"], entry["duration"], entry["text"]
    if not isinstance(audio, str) or not audio.strip() or "\x00" in audio:
        raise DataError(f"{where}: field 'audio_filepath' must be a non-empty path string, got "
                        f"{audio!r:.60}")
    if isinstance(duration, bool) or not isinstance(duration, int | float) or \
            not 0 <= duration < 1e7:
        raise DataError(f"{where}: field 'duration' must be a non-negative number of seconds, "
                        f"got {duration!r:.60}")
    if not isinstance(text, str):
        raise DataError(f"{where}: field 'text' must be a string, got {type(text).__name__}")
    audio_path = Path(audio)
    if not audio_path.is_absolute():
        audio_path = path.parent / audio_path
    utt_id = entry.get("id", audio_path.stem)
    if not isinstance(utt_id, str) or not utt_id:
        raise DataError(f"{where}: field 'id' must be a non-empty string when present, got "
                        f"{utt_id!r:.60}")
    return Utterance(audio_path=audio_path, duration=float(duration), text=text, id=utt_id)


def write_manifest(utts: Iterable[Utterance], path: Path | str) -> Path:
    """Write a manifest atomically (temp file + rename), audio paths relative to its folder.

    Atomic so an interrupted build never leaves a half-written manifest that later counts as done.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = path.parent.resolve()
    lines = []
    for u in utts:
        audio = Path(u.audio_path)
        audio = audio if audio.is_absolute() else Path.cwd() / audio
        rel = os.path.relpath(audio.resolve(), folder)
        lines.append(json.dumps({"audio_filepath": Path(rel).as_posix(),
                                 "duration": round(float(u.duration), 4),
                                 "text": u.text, "id": u.id}, ensure_ascii=False))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_librispeech(root: Path | str) -> list[Utterance]:
    """Utterances of a LibriSpeech-layout folder: speaker/chapter/*.flac + speaker-chapter.trans.txt.

    Each transcript line is `<utterance-id> <TEXT>`; durations come from the FLAC headers.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: LibriSpeech folder not found")
    trans_files = sorted(root.glob("*/*/*.trans.txt"))
    if not trans_files:
        raise DataError(f"{root}: no speaker/chapter/*.trans.txt files; expected the LibriSpeech "
                        "layout (e.g. the folder that contains 84/121123/84-121123.trans.txt)")
    utts: list[Utterance] = []
    for trans in trans_files:
        try:
            lines = trans.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise DataError(f"{trans}: not UTF-8 text ({err.reason} at byte {err.start}); save "
                            f"the transcript as UTF-8.") from None
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            audio = trans.parent / f"{utt_id}.flac"
            if not audio.is_file():
                raise DataError(f"{trans}, line {lineno}: audio file {audio.name} is missing")
            try:
                duration = sf.info(str(audio)).duration
            except (RuntimeError, sf.LibsndfileError) as e:
                raise DataError(f"{audio}: cannot read audio header ({e})") from None
            utts.append(Utterance(audio_path=audio, duration=duration, text=text, id=utt_id))
    return utts
