"""Where the noise comes from: babble from training utterances, a real music-on-hold recording,
and one simulated room per RT60. Test sets are never used as noise (they would leak test speech)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import soundfile as sf
import torch

from workbench.conditions.grid import ConditionError, stream_seed
from workbench.data import load_audio
from workbench.data.audio import resample
from workbench.data.augment import room_impulse_response
from workbench.paths import CALIB

#: Debian `asterisk-moh-opsound-wav` (CC-BY-SA-3.0, see data/README.md): 8 kHz music on hold.
MOH_DIR = Path("/usr/share/asterisk/moh")
#: Seconds read from the start of each MOH file (5 files -> 5 min of music, plenty for offsets).
MOH_SECONDS_PER_FILE = 60.0


@lru_cache(maxsize=2)
def babble_sources(manifest: str | None = None) -> tuple[torch.Tensor, ...]:
    """Waveforms of the synthetic TRAINING utterances in the shipped calibration set.

    data/calib holds 32 synthetic `train-*` utterances (many voices and accents) and 16 real
    fine-tuning prompts; babble uses only the `train-*` ones, so no test speech is ever mixed in.
    """
    from workbench.data import read_manifest  # looked up per call: tests monkeypatch it

    path = Path(manifest) if manifest else CALIB
    utts = [u for u in read_manifest(path) if u.id.startswith("train-")]
    if not utts:
        raise ConditionError(f"{path}: no training utterances (ids 'train-*') to mix babble from")
    return tuple(load_audio(u.audio_path) for u in utts)


def moh_available(directory: Path = MOH_DIR) -> bool:
    return directory.is_dir() and any(directory.glob("*.wav"))


@lru_cache(maxsize=1)
def moh_recording(directory: str = str(MOH_DIR)) -> torch.Tensor:
    """The music-on-hold files (first 60 s of each, sorted by name) as one 16 kHz waveform."""
    files = sorted(Path(directory).glob("*.wav"))
    if not files:
        raise ConditionError(f"{directory}: no music-on-hold recordings; install the Debian "
                             f"package asterisk-moh-opsound-wav (make setup) or drop the "
                             f"'moh' conditions from the grid")
    parts = []
    for f in files:
        info = sf.info(str(f))
        data, rate = sf.read(str(f), frames=int(MOH_SECONDS_PER_FILE * info.samplerate),
                             dtype="float32", always_2d=True)
        parts.append(resample(torch.from_numpy(data).mean(dim=1), rate, 16_000))
    return torch.cat(parts)


@lru_cache(maxsize=8)
def room_for(rt60_s: float, seed: int = 0) -> torch.Tensor:
    """The RIR of the grid's room for this RT60 (a shoebox drawn from a seed, pyroomacoustics)."""
    gen = torch.Generator().manual_seed(stream_seed(seed, "room", f"{rt60_s:g}"))
    return room_impulse_response(gen, (rt60_s, rt60_s))
