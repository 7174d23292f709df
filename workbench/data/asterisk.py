"""Real speech: the Asterisk core prompts in English (Debian asterisk-core-sounds-en[-wav]).

One professional speaker (Allison Smith), 8 kHz telephone-band WAV, CC-BY-SA-3.0. Transcripts come
from core-sounds-en.txt.gz as `name: text` lines. This module decides which prompts are usable
speech, cleans their transcripts, and assigns each prompt to `finetune` or `test` by a stable hash
of its name, so the held-out set is the same on every machine and never depends on a seed.
"""
from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from workbench.data.text import normalize_text
from workbench.errors import DataError

SOUNDS_DIR = Path("/usr/share/asterisk/sounds/en")
TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
DEBIAN_PACKAGES = ("asterisk-core-sounds-en-wav", "asterisk-core-sounds-en")

#: Test prompts: eligible ones (see is_test_eligible) whose name hash falls below this fraction.
#: 0.36 gives ~115 prompts (~5 min of audio) from the ~320 eligible ones.
TEST_FRACTION = 0.36
TEST_MIN_SECONDS, TEST_MAX_SECONDS = 1.0, 8.0

# Spelling slips in the upstream transcripts, corrected to what is spoken.
_CORRECTIONS = {"exclaimation": "exclamation", "fourtieth": "fortieth", "umute": "unmute",
                "decending": "descending", "thru": "through", "de-activated": "deactivated",
                "un-indentified": "unidentified", "witheld": "withheld",
                "represenatives": "representatives"}


@dataclass(frozen=True)
class Prompt:
    """One usable prompt: its name (e.g. 'digits/7'), WAV path and normalized transcript."""

    name: str
    path: Path
    text: str


@dataclass(frozen=True)
class Rejected:
    name: str
    reason: str


def read_transcripts(path: Path = TRANSCRIPTS) -> dict[str, str]:
    """name -> raw transcript from core-sounds-en.txt.gz (comment lines start with ';')."""
    if not path.is_file():
        raise DataError(f"{path}: Asterisk transcripts not found. Install them with: "
                        f"sudo apt-get install -y {' '.join(DEBIAN_PACKAGES)}")
    out: dict[str, str] = {}
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(";") or ":" not in line:
                continue
            name, _, text = line.partition(":")
            out[name.strip()] = text.strip()
    return out


def clean_transcript(raw: str) -> tuple[str | None, str]:
    """Raw transcript -> (normalized text, "") or (None, reason it is not usable speech)."""
    text = raw
    if re.fullmatch(r"\s*[\[(<].*[\])>]\s*", text):  # "[sound of monkeys]", "(1 second of silence)"
        return None, f"not speech: {raw!r}"
    if re.search(r"[\[(<][^\])>]*\b(tone|beep|sound|silence)", text, re.I):
        return None, f"contains a non-speech sound: {raw!r}"
    if re.search(r"\bnote:", text, re.I):
        return None, f"transcript is annotated, audio may differ: {raw!r}"
    text = re.sub(r"\[[^\]]*\]", " ", text)  # "dash [-]" -> "dash"
    if re.search(r"\b[A-Z]{2,}\b", text) or "www." in text:  # PBX, IAX, DAHDI: spelled or read?
        return None, f"acronym or address with unknown pronunciation: {raw!r}"
    if re.search(r"\d{3,}|\d\.\d", text):  # "1234", "28.8": digit-by-digit or as a number?
        return None, f"number with ambiguous reading: {raw!r}"
    for wrong, right in _CORRECTIONS.items():
        text = re.sub(rf"\b{wrong}\b", right, text, flags=re.I)
    text = text.replace("*", " star ").replace("#", " pound ").replace("-", " ")
    text = normalize_text(text)
    if not text:
        return None, f"empty after normalization: {raw!r}"
    return text, ""


def scan_prompts(sounds_dir: Path = SOUNDS_DIR, transcripts: Path = TRANSCRIPTS
                 ) -> tuple[list[Prompt], list[Rejected]]:
    """Usable prompts (sorted by name) and the rejected ones with reasons."""
    if not sounds_dir.is_dir():
        raise DataError(f"{sounds_dir}: Asterisk prompts not found. Install them with: "
                        f"sudo apt-get install -y {' '.join(DEBIAN_PACKAGES)}")
    texts = read_transcripts(transcripts)
    files = {p.relative_to(sounds_dir).with_suffix("").as_posix(): p
             for p in sounds_dir.rglob("*.wav")}
    if not files:
        raise DataError(f"{sounds_dir}: no .wav prompts. Install the WAV variant with: "
                        f"sudo apt-get install -y {DEBIAN_PACKAGES[0]}")
    prompts, rejected = [], []
    for name in sorted(files):
        if name.startswith("silence/"):
            rejected.append(Rejected(name, "silence"))
            continue
        if name not in texts:
            rejected.append(Rejected(name, "no transcript"))
            continue
        text, reason = clean_transcript(texts[name])
        if text is None:
            rejected.append(Rejected(name, reason))
        else:
            prompts.append(Prompt(name, files[name], text))
    return prompts, rejected


def name_hash(name: str) -> float:
    """Stable uniform number in [0, 1) from a prompt name (blake2b; independent of any seed)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") / 2**64


def is_test_eligible(duration: float) -> bool:
    """Test prompts are "a few seconds": isolated digits/letters (<1 s) and long menus stay in
    finetune, so the held-out set is short sentences a device would hear."""
    return TEST_MIN_SECONDS <= duration <= TEST_MAX_SECONDS


def split_of(name: str, duration: float) -> str:
    """'test' or 'finetune' for a prompt; deterministic from its name and duration."""
    return "test" if is_test_eligible(duration) and name_hash(name) < TEST_FRACTION else "finetune"
