"""The held-out sets are never training data: one guard for every entry point that trains on,
or tunes by, user-given manifests.

The shipped held-out sets are `workbench.paths.REAL_TEST` and `SYNTH_TEST` (read at call time,
so tests that point them elsewhere are followed). Every WER the workbench reports comes from
them; a model trained, or a recipe or a step count chosen, on any of their utterances reports a
number that is no longer held out (issue 14: "the held-out sets stay untouched").

The rule: a manifest is refused when it lists ANY utterance of a held-out set. An utterance is
one of theirs when

1. its audio file is one of theirs: the same file (same device and inode, so a symlink or a hard
   link is the same file too), or
2. its audio file has the same bytes as one of theirs (a copied folder; SHA-256, computed only for
   files whose size equals that of a held-out file, so a training corpus costs one stat() per
   utterance), or
3. it has the same id and the same transcript as one of theirs (a manifest copied without its
   audio, or its audio converted to another format).

A manifest that IS a held-out manifest (same file) is refused before it is read. Audio re-encoded
AND renamed (new ids) is not recognized: the rule compares files and labels, not sounds.

    refuse_held_out([Path("train.jsonl")], option="--manifest")   # raises DataError, one line
    find_held_out(Path("train.jsonl"))                           # HeldOutMatch | None
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from workbench import paths
from workbench.errors import DataError

#: What the rule says, in the refusal (one sentence; users see it).
RULE = ("a manifest is refused if it lists any utterance of a held-out set: the same audio file, "
        "the same audio bytes, or the same id and transcript")


def held_out_manifests() -> dict[str, Path]:
    """The shipped held-out manifests by set name (workbench.paths, read now)."""
    return {"real_test": Path(paths.REAL_TEST), "synth_test": Path(paths.SYNTH_TEST)}


@dataclass(frozen=True)
class HeldOutMatch:
    """`manifest` lists `utterances` of its `total` utterances from the held-out set `held_out`
    (its manifest `held_out_manifest`); `example` is one such utterance's id and `how` which
    part of the rule matched it ("is that manifest" when the file itself is the held-out one)."""

    manifest: Path
    held_out: str
    held_out_manifest: Path
    utterances: int
    total: int
    example: str
    how: str

    def describe(self) -> str:
        if self.how == "is that manifest":
            return f"is the held-out set {self.held_out} ({self.held_out_manifest})"
        return (f"{self.utterances} of its {self.total} utterances are utterances of the "
                f"held-out set {self.held_out} ({self.held_out_manifest}; e.g. "
                f"'{self.example[:60]}': {self.how})")


def _file_key(path: Path) -> tuple[int, int, int] | None:
    """(device, inode, size) of an existing regular file (symlinks followed), else None."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino, st.st_size) if os.path.isfile(path) else None


_DIGESTS: dict[tuple[int, int, int, int], str] = {}


def _digest(path: Path, key: tuple[int, int, int]) -> str:
    """SHA-256 of the file's bytes, memoized by (device, inode, size, mtime)."""
    memo = (*key, os.stat(path).st_mtime_ns)
    if memo not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[memo] = h.hexdigest()
    return _DIGESTS[memo]


class _Index:
    """One manifest's utterances (a held-out set's): their files, sizes and (id, transcript)
    pairs."""

    def __init__(self, manifest: Path) -> None:
        from workbench.data.manifest import read_manifest  # looked up per call: tests monkeypatch it
        self.files: set[tuple[int, int]] = set()
        self.by_size: dict[int, list[tuple[Path, tuple[int, int, int]]]] = {}
        self.labels: set[tuple[str, str]] = set()
        for u in read_manifest(manifest, allow_empty=True):
            self.labels.add((u.id, u.text))
            key = _file_key(u.audio_path)
            if key is not None:
                self.files.add(key[:2])
                self.by_size.setdefault(key[2], []).append((u.audio_path, key))

    def how(self, audio: Path, utt_id: str, text: str) -> str | None:
        """Which part of the rule makes this utterance one of the set's (None: none does)."""
        key = _file_key(audio)
        if key is not None:
            if key[:2] in self.files:
                return "same audio file"
            same_size = self.by_size.get(key[2], ())
            if same_size and any(_digest(audio, key) == _digest(p, k) for p, k in same_size):
                return "same audio bytes"
        if (utt_id, text) in self.labels:
            return "same id and transcript"
        return None


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    ka, kb = _file_key(a), _file_key(b)
    return ka is not None and kb is not None and ka[:2] == kb[:2]


def find_held_out(manifest: Path | str) -> HeldOutMatch | None:
    """The first held-out set `manifest` takes utterances from (module docstring), or None.
    Held-out manifests that do not exist are skipped. Raises DataError for a manifest that
    cannot be read (read_manifest's message)."""
    from workbench.data.manifest import read_manifest  # looked up per call: tests monkeypatch it
    manifest = Path(manifest)
    held = {name: m for name, m in held_out_manifests().items() if m.is_file()}
    for name, m in held.items():
        if _same_file(manifest, m):
            return HeldOutMatch(manifest, name, m, 0, 0, "", "is that manifest")
    if not held:
        return None
    utts = read_manifest(manifest)
    for name, m in held.items():
        index = _Index(m)
        hits = [(u.id, how) for u in utts
                if (how := index.how(u.audio_path, u.id, u.text)) is not None]
        if hits:
            return HeldOutMatch(manifest, name, m, len(hits), len(utts), *hits[0])
    return None


def shared_utterances(manifest: Path | str, others: Iterable[Path | str]
                      ) -> tuple[Path, int, int, str, str] | None:
    """The first of `others` that shares an utterance with `manifest` by the same rule, as
    (that manifest, shared utterances, utterances of `manifest`, an example id, how), or None.
    For a validation set that must not overlap the training data."""
    from workbench.data.manifest import read_manifest  # looked up per call: tests monkeypatch it
    utts = read_manifest(manifest)
    for other in others:
        if _same_file(Path(manifest), Path(other)):
            return Path(other), len(utts), len(utts), utts[0].id, "the same manifest"
        index = _Index(Path(other))
        hits = [(u.id, how) for u in utts
                if (how := index.how(u.audio_path, u.id, u.text)) is not None]
        if hits:
            return Path(other), len(hits), len(utts), *hits[0]
    return None


def refuse_held_out(manifests: Iterable[Path | str] | None, option: str = "--manifest",
                    use: str = "training data") -> None:
    """Raise DataError (one line naming `option`, the file, the held-out set and the rule) for
    the first of `manifests` that takes any utterance from a held-out set. `use` says what the
    manifest was given as (e.g. "training data", "the WER estimate watched while training")."""
    for m in manifests or ():
        match = find_held_out(m)
        if match is not None:
            raise DataError(
                f"{option} {m}: {match.describe()}; {use} must never come from the held-out "
                f"sets, which score the results ({RULE}).")
