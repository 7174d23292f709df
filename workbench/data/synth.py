"""Offline speech synthesis with the Debian engines espeak-ng, flite and festival.

Each engine runs as a subprocess writing a WAV file; the audio is resampled to 16 kHz, trimmed of
long leading/trailing silence and loudness-normalized. Voices are split once, by identity, into
train voices and held-out test voices (TEST_* below), so a test set can measure unseen speakers.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import soundfile as sf
import torch

from workbench.data.audio import SAMPLE_RATE, normalize_loudness, resample
from workbench.errors import DataError

#: espeak-ng English accents (voice files in espeak-ng-data/voices and lang/gmw).
ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc",
                  "en-gb-x-gbclan", "en-gb-x-gbcwmd")
#: espeak-ng variants (voices/!v) left out: novelty effects that are not plausible speakers.
ESPEAK_NOVELTY = frozenset({"Demonic", "whisper", "whisperf", "croak", "announcer", "fast",
                            "Tweaky", "UniRobot", "anikaRobot", "Mr", "kaukovalta",
                            "robosoft", "robosoft2", "robosoft3", "robosoft4", "robosoft5",
                            "robosoft6", "robosoft7", "robosoft8", "Storm"})
#: flite voices: kal (8 kHz) duplicates kal16; awb_time is a limited-domain clock voice.
FLITE_SKIP = frozenset({"kal", "awb_time"})
#: Held-out voice identities: the Caribbean accent with every variant, the variants m7, f4, klatt4
#: and belinda with every accent, and flite's rms. None of them is ever used for train or dev.
TEST_ACCENTS = frozenset({"en-029"})
TEST_VARIANTS = frozenset({"m7", "f4", "klatt4", "belinda"})
TEST_FLITE = frozenset({"rms"})

DEBIAN_PACKAGES = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "festival",
                   "text2wave": "festival"}


@dataclass(frozen=True)
class Voice:
    """A synthetic speaker: engine + voice name (espeak-ng: 'accent+variant')."""

    engine: str  # "espeak-ng" | "flite" | "festival"
    name: str

    @property
    def id(self) -> str:
        return f"{self.engine}:{self.name}"

    @property
    def held_out(self) -> bool:
        """True for test-only voices (never in train or dev)."""
        if self.engine == "espeak-ng":
            accent, _, variant = self.name.partition("+")
            return accent in TEST_ACCENTS or variant in TEST_VARIANTS
        return self.engine == "flite" and self.name in TEST_FLITE


@dataclass(frozen=True)
class SynthSettings:
    """Per-utterance prosody. rate 1.0 = the engine's default speed; pitch in espeak units."""

    rate: float = 1.0  # > 1 speaks faster
    pitch: int = 50    # espeak-ng -p, 0..99 (flite/festival ignore it)


def require_engines(required: tuple[str, ...] = ("espeak-ng",),
                    optional: tuple[str, ...] = ("flite", "text2wave"),
                    install_system_packages: bool = False) -> None:
    """Make sure the synthesizers exist. A missing required engine raises DataError naming the
    Debian packages and the fix (optional ones are skipped: the corpus then uses the voices that
    are installed). Nothing is installed unless `install_system_packages` (and running as root)."""
    from workbench.data.system import how_to_install, install_debian_packages

    missing = sorted({DEBIAN_PACKAGES[t] for t in (*required, *optional) if shutil.which(t) is None})
    if missing and install_system_packages and install_debian_packages(missing):
        for fn in (espeak_variants, flite_voices, festival_voices):
            fn.cache_clear()
    still = sorted({DEBIAN_PACKAGES[t] for t in required if shutil.which(t) is None})
    if still:
        raise DataError(f"speech synthesizer missing: {', '.join(still)}; "
                        f"{how_to_install(missing)}")


@cache
def espeak_variants() -> tuple[str, ...]:
    """Variant names espeak-ng lists (`--voices=variant`), minus novelty voices; sorted."""
    if shutil.which("espeak-ng") is None:
        return ()
    out = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True).stdout
    names = set()
    for line in out.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 5 and parts[4].startswith("!v/"):
            names.add(parts[4][3:])
    return tuple(sorted(n for n in names if n not in ESPEAK_NOVELTY))


@cache
def flite_voices() -> tuple[str, ...]:
    """Voices `flite -lv` lists, minus FLITE_SKIP; sorted."""
    if shutil.which("flite") is None:
        return ()
    out = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout
    names = out.split(":", 1)[-1].split()
    return tuple(sorted(n for n in names if n not in FLITE_SKIP))


@cache
def festival_voices() -> tuple[str, ...]:
    """Festival voices installed under /usr/share/festival/voices/english (kal_diphone on Debian)."""
    root = Path("/usr/share/festival/voices/english")
    if shutil.which("text2wave") is None or not root.is_dir():
        return ()
    return tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))


def voice_catalogue() -> tuple[Voice, ...]:
    """Every installed voice: espeak-ng accents x (default + variants), flite, festival."""
    voices = [Voice("espeak-ng", accent) for accent in ESPEAK_ACCENTS if espeak_variants()]
    voices += [Voice("espeak-ng", f"{a}+{v}") for a in ESPEAK_ACCENTS for v in espeak_variants()]
    voices += [Voice("flite", v) for v in flite_voices()]
    voices += [Voice("festival", v) for v in festival_voices()]
    return tuple(voices)


def speakable(text: str) -> str:
    """The text handed to the engines: normalized words, with 'a m' / 'p m' written 'A.M.' / 'P.M.'
    because every engine reads a lone 'a' as the article (espeak-ng: 'a#'), not the letter."""
    return re.sub(r"\b([ap]) m\b", lambda m: f"{m.group(1).upper()}.M.", text)


def _run(cmd: list[str], what: str, stdin: str | None = None) -> None:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise DataError(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip()[:300]}")


def synthesize(text: str, voice: Voice, settings: SynthSettings | None = None) -> torch.Tensor:
    """Speak `text` -> (samples,) float32 at 16 kHz, silence-trimmed and loudness-normalized."""
    settings = settings or SynthSettings()
    spoken = speakable(text)
    with tempfile.TemporaryDirectory(prefix="wb-synth-") as tmp:
        wav = Path(tmp) / "out.wav"
        if voice.engine == "espeak-ng":
            wpm = round(175 * settings.rate)  # 175 words/min is espeak-ng's default speed
            _run(["espeak-ng", "-v", voice.name, "-s", str(wpm), "-p", str(settings.pitch),
                  "-w", str(wav), spoken], f"espeak-ng -v {voice.name}")
        elif voice.engine == "flite":
            _run(["flite", "-voice", voice.name, "--setf", f"duration_stretch={1 / settings.rate:.3f}",
                  "-t", spoken, "-o", str(wav)], f"flite -voice {voice.name}")
        elif voice.engine == "festival":
            script = (f"(voice_{voice.name}) "
                      f"(Parameter.set 'Duration_Stretch {1 / settings.rate:.3f})")
            _run(["text2wave", "-eval", script, "-o", str(wav)], f"festival {voice.name}",
                 stdin=spoken)
        else:
            raise DataError(f"unknown synthesis engine {voice.engine!r} (use espeak-ng, flite, festival)")
        data, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    if data.shape[0] == 0:
        raise DataError(f"{voice.id} produced no audio for {text!r}")
    wave = resample(torch.from_numpy(data).mean(dim=1), rate, SAMPLE_RATE)
    return normalize_loudness(trim_silence(wave))


def trim_silence(wave: torch.Tensor, threshold_db: float = -45.0, pad_s: float = 0.15,
                 sr: int = SAMPLE_RATE) -> torch.Tensor:
    """Cut leading/trailing audio quieter than `threshold_db` below the peak, keeping `pad_s` of
    margin. Engines add up to ~0.5 s of silence; keeping it would only cost training time."""
    frame = int(0.01 * sr)  # 10 ms frames
    n = wave.numel() // frame
    if n == 0:
        return wave
    energy = wave[: n * frame].reshape(n, frame).pow(2).mean(dim=1)
    loud = (energy > energy.max() * 10 ** (threshold_db / 10)).nonzero().flatten()
    if loud.numel() == 0:
        return wave
    pad = int(pad_s * sr)
    start = max(0, int(loud[0]) * frame - pad)
    end = min(wave.numel(), (int(loud[-1]) + 1) * frame + pad)
    return wave[start:end]
