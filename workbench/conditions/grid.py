"""The conditions of the robustness grid: what each one does to a clean 16 kHz waveform.

A condition is plain data (kind + parameters); `degrade(cond, wave, utt_id, ...)` applies it with a
random stream seeded by (grid seed, condition name, utterance id), so the result does not depend on
the order utterances are processed in, and a second run gives the same audio bit for bit.

Kinds (the physics order of augment.py: talker -> room -> noise at the mic -> channel):
    clean                      the audio as shipped
    noise  (noise, snr_db)     white | pink (1/f) | babble (4 talkers, TRAINING utterances only)
                               | moh (music on hold, Debian asterisk-moh-opsound-wav, CC-BY-SA-3.0)
    reverb (rt60_s)            one pyroomacoustics shoebox room per RT60 (image source method)
    speed  (factor)            Kaldi-style speed perturbation (length / factor, pitch x factor)
    telephone                  8 kHz and back + the G.712 300-3400 Hz voice band
    mulaw                      8 kHz G.711 mu-law (8-bit companding) and back to 16 kHz
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchaudio.functional as AF

from workbench.data import augment as A
from workbench.errors import WorkbenchError

NOISE_TYPES = ("white", "pink", "babble", "moh")
KINDS = ("clean", "noise", "reverb", "speed", "telephone", "mulaw")


class ConditionError(WorkbenchError):
    """A condition name or parameter the grid does not know."""


@dataclass(frozen=True)
class Condition:
    """One row of the grid. `name` is stable and used as the cache and display key."""

    kind: str
    noise: str = ""
    snr_db: float = 0.0
    rt60_s: float = 0.0
    factor: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConditionError(f"condition kind {self.kind!r}: must be one of {KINDS}")
        if self.kind == "noise" and self.noise not in NOISE_TYPES:
            raise ConditionError(f"noise type {self.noise!r}: must be one of {NOISE_TYPES}")
        if self.kind == "reverb" and not 0.05 <= self.rt60_s <= 3.0:
            raise ConditionError(f"rt60_s={self.rt60_s}: must be in 0.05..3.0 s")
        if self.kind == "speed" and not 0.5 <= self.factor <= 2.0:
            raise ConditionError(f"speed factor={self.factor}: must be in 0.5..2.0")

    @property
    def name(self) -> str:
        if self.kind == "noise":
            return f"{self.noise} {self.snr_db:g} dB"
        if self.kind == "reverb":
            return f"reverb RT60 {self.rt60_s:g} s"
        if self.kind == "speed":
            return f"speed x{self.factor:g}"
        return {"clean": "clean", "telephone": "telephone band", "mulaw": "8 kHz mu-law"}[self.kind]

    @property
    def group(self) -> str:
        return self.noise if self.kind == "noise" else self.kind

    @classmethod
    def parse(cls, text: str) -> Condition:
        """'clean', 'white:10', 'babble:0', 'reverb:0.6', 'speed:0.9', 'telephone', 'mulaw'."""
        kind, _, arg = text.strip().partition(":")
        try:
            if kind in NOISE_TYPES:
                return cls("noise", noise=kind, snr_db=float(arg))
            if kind == "reverb":
                return cls("reverb", rt60_s=float(arg))
            if kind == "speed":
                return cls("speed", factor=float(arg))
        except ValueError:
            raise ConditionError(f"condition {text!r}: {arg!r} is not a number "
                                 f"(e.g. 'white:10', 'reverb:0.6', 'speed:0.9')") from None
        if kind in ("clean", "telephone", "mulaw") and not arg:
            return cls(kind)
        raise ConditionError(f"condition {text!r}: unknown; use clean, telephone, mulaw, "
                             f"{'|'.join(NOISE_TYPES)}:SNR_DB, reverb:RT60_S or speed:FACTOR")


def _grid(specs: Sequence[str]) -> tuple[Condition, ...]:
    return tuple(Condition.parse(s) for s in specs)


#: The default grid: 16 conditions (~4 model runs of the real set per 3 conditions on 2 cores).
DEFAULT_GRID = _grid([
    "clean", "white:10", "white:0", "pink:10", "pink:0", "babble:10", "babble:5", "babble:0",
    "moh:10", "moh:0", "reverb:0.3", "reverb:0.8", "speed:0.9", "speed:1.1", "telephone", "mulaw",
])
#: Every noise type at every SNR of the issue, three rooms, both speeds and both channels.
FULL_GRID = _grid(["clean"] + [f"{n}:{s}" for n in NOISE_TYPES for s in (20, 10, 5, 0)]
                  + ["reverb:0.3", "reverb:0.6", "reverb:0.9", "speed:0.9", "speed:1.1",
                     "telephone", "mulaw"])
GRIDS = {"default": DEFAULT_GRID, "full": FULL_GRID}


def resolve_grid(grid: str | Sequence[str | Condition]) -> tuple[Condition, ...]:
    if isinstance(grid, str):
        if grid in GRIDS:
            return GRIDS[grid]
        return _grid([s for s in grid.split(",") if s.strip()])
    out = tuple(c if isinstance(c, Condition) else Condition.parse(c) for c in grid)
    if not out:
        raise ConditionError("conditions grid: empty; give at least one condition")
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ConditionError(f"conditions grid: duplicate conditions in {names}")
    return out


def stream_seed(seed: int, *parts: str) -> int:
    """A 63-bit seed from the grid seed and names (stable across runs and machines)."""
    h = hashlib.blake2b("\x1f".join([str(seed), *parts]).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


def mulaw_8k(wave: torch.Tensor, sr: int = 16_000) -> torch.Tensor:
    """G.711 mu-law at 8 kHz: resample to 8 kHz, 8-bit mu-law encode + decode, back to `sr`."""
    narrow = AF.resample(wave, sr, 8000).clamp(-1.0, 1.0)
    coded = AF.mu_law_decoding(AF.mu_law_encoding(narrow, 256), 256)
    return AF.resample(coded, 8000, sr)[: wave.numel()]


def degrade(cond: Condition, wave: torch.Tensor, utt_id: str, *, seed: int = 0,
            babble: Sequence[torch.Tensor] = (), moh: torch.Tensor | None = None,
            rir: torch.Tensor | None = None) -> torch.Tensor:
    """`wave` (samples,) 16 kHz under `cond`; a new tensor, peak limited to 1.0."""
    gen = torch.Generator().manual_seed(stream_seed(seed, cond.name, utt_id))
    out = wave.to(torch.float32)
    if cond.kind == "clean":
        return out.clone()
    if cond.kind == "speed":
        out = A.speed_perturb(out, cond.factor)
    elif cond.kind == "telephone":
        out = A.telephone(out)
    elif cond.kind == "mulaw":
        out = mulaw_8k(out)
    elif cond.kind == "reverb":
        if rir is None:
            raise ConditionError(f"{cond.name}: needs a room impulse response (rir=)")
        out = A.reverberate(out, rir)
    elif cond.kind == "noise":
        n = out.numel()
        if cond.noise == "white":
            noise = A.colored_noise(n, 0.0, gen)
        elif cond.noise == "pink":
            noise = A.colored_noise(n, 1.0, gen)
        elif cond.noise == "babble":
            if not babble:
                raise ConditionError(f"{cond.name}: needs babble sources (training utterances)")
            noise = A.babble_noise(n, babble, gen)
        else:
            if moh is None or moh.numel() < 16_000:
                raise ConditionError(f"{cond.name}: needs the music-on-hold recording")
            start = int(torch.randint(moh.numel() - n, (), generator=gen)) if moh.numel() > n else 0
            # A slice when the music is longer than the utterance (always, with 5 min of music):
            # tiling the whole 4.8 M-sample recording per utterance took ~70 % of the noise time.
            noise = (moh[start: start + n] if start + n <= moh.numel()
                     else moh.repeat(-(-n // moh.numel()) + 1)[start: start + n])
            noise = noise / noise.pow(2).mean().sqrt().clamp(min=1e-8)
        out = A.add_noise(out, noise, cond.snr_db)
    peak = float(out.abs().max()) if out.numel() else 0.0
    return out / peak if peak > 1.0 else out
