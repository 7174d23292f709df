"""Model families by name, and building one from a family name and plain config data."""
from __future__ import annotations

from dataclasses import fields
from typing import Any

from workbench.errors import WorkbenchError
from workbench.models.base import CTCModel
from workbench.models.conformer_ctc import ConformerCTC, ConformerCTCConfig
from workbench.models.whisper_ctc import WhisperCTC, WhisperCTCConfig

#: family name -> (model class, config dataclass)
FAMILIES: dict[str, tuple[type[CTCModel], type]] = {
    WhisperCTC.family: (WhisperCTC, WhisperCTCConfig),
    ConformerCTC.family: (ConformerCTC, ConformerCTCConfig),
}


def make_config(family: str, config: dict[str, Any]) -> Any:
    """The frozen config of `family` from plain data; unknown families or fields raise."""
    if family not in FAMILIES:
        raise WorkbenchError(f"family: unknown model family '{family}'; known: {sorted(FAMILIES)}.")
    config_cls = FAMILIES[family][1]
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise WorkbenchError(f"config: {family} has no fields {unknown}; its fields are "
                             f"{sorted(known)}.")
    return config_cls(**config)


def build_model(family: str, **config: Any) -> CTCModel:
    """A freshly initialised model of `family` ("whisper_ctc" or "conformer_ctc")."""
    model_cls = FAMILIES[family][0] if family in FAMILIES else None
    cfg = make_config(family, config)
    assert model_cls is not None
    return model_cls(cfg)
