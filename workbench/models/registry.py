"""Model families by name, and building one from a family name and plain config data."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import torch

from workbench.errors import WorkbenchError
from workbench.models.base import CTCModel
from workbench.models.conformer_ctc import ConformerCTC, ConformerCTCConfig
from workbench.models.whisper_ctc import WhisperCTC, WhisperCTCConfig

#: family name -> (model class, config dataclass)
FAMILIES: dict[str, tuple[type[CTCModel], type]] = {
    WhisperCTC.family: (WhisperCTC, WhisperCTCConfig),
    ConformerCTC.family: (ConformerCTC, ConformerCTCConfig),
}


#: Bounds of every config field (inclusive), checked before a model is built: a config read from
#: a checkpoint header must not allocate gigabytes before its tensors are even looked at.
FIELD_LIMITS: dict[str, tuple[float, float]] = {
    "n_mels": (1, 256), "d_model": (1, 4096), "n_layers": (1, 64), "n_heads": (1, 64),
    "d_ff": (1, 16_384), "conv_kernel": (1, 255), "subsample_channels": (0, 4096),
    "vocab": (2, 100_000), "n_ctx": (1, 100_000), "head_dim": (1, 16_384),
    "head_kernel": (1, 255), "dropout": (0.0, 0.99),
}
#: Largest model built (parameters + buffers, counted on the meta device first): 300 M values is
#: 1.2 GB of float32, far above the edge-sized encoders the workbench compresses (Whisper
#: tiny.en's encoder + head: 7.7 M).
MAX_MODEL_VALUES = 300_000_000


def make_config(family: str, config: Mapping[str, Any]) -> Any:
    """The frozen config of `family` from plain data; unknown families, unknown fields, wrong
    types, values out of FIELD_LIMITS and models above MAX_MODEL_VALUES raise WorkbenchError."""
    if not isinstance(family, str) or family not in FAMILIES:
        raise WorkbenchError(f"family: unknown model family {family!r:.60}; known: "
                             f"{sorted(FAMILIES)}.")
    if not isinstance(config, Mapping):
        raise WorkbenchError(f"config: must be an object of {family} fields (e.g. "
                             f"{{\"d_model\": 64}}), got {type(config).__name__} {config!r:.60}.")
    config_cls = FAMILIES[family][1]
    known = {f.name: f for f in fields(config_cls)}
    unknown = sorted(str(k) for k in set(config) - set(known))
    if unknown:
        raise WorkbenchError(f"config: {family} has no fields {unknown[:10]}; its fields are "
                             f"{sorted(known)}.")
    for name, value in config.items():
        is_float = isinstance(known[name].default, float)
        ok_type = (not isinstance(value, bool)) and (
            isinstance(value, int | float) if is_float else isinstance(value, int))
        if not ok_type:
            raise WorkbenchError(f"config.{name}: must be {'a number' if is_float else 'an integer'}"
                                 f", got {type(value).__name__} {value!r:.40}.")
        low, high = FIELD_LIMITS.get(name, (0, 1e9))
        if not (is_float and math.isfinite(value) or not is_float) or not low <= value <= high:
            raise WorkbenchError(f"config.{name}: {value!r:.40} is outside {low:g}..{high:g}.")
    cfg = config_cls(**config)
    if getattr(cfg, "d_model", 0) % getattr(cfg, "n_heads", 1):
        raise WorkbenchError(f"config: d_model={cfg.d_model} must be divisible by "
                             f"n_heads={cfg.n_heads}.")
    check_model_size(family, cfg)
    return cfg


def check_model_size(family: str, cfg: Any) -> int:
    """Values (parameters + buffers) of the model `cfg` describes, counted on the meta device
    (no memory); WorkbenchError above MAX_MODEL_VALUES."""
    try:
        with torch.device("meta"):
            model = FAMILIES[family][0](cfg)
    except (ValueError, RuntimeError, AssertionError, ZeroDivisionError) as err:
        raise WorkbenchError(f"config: a {family} model cannot be built from {cfg}: {err}") \
            from None
    values = sum(t.numel() for t in model.state_dict().values())
    if values > MAX_MODEL_VALUES:
        raise WorkbenchError(f"config: this {family} config has {values:,} parameters and "
                             f"buffers, above the {MAX_MODEL_VALUES:,} limit (1.2 GB float32); "
                             f"use fewer or narrower layers.")
    return values


def build_model(family: str, **config: Any) -> CTCModel:
    """A freshly initialised model of `family` ("whisper_ctc" or "conformer_ctc")."""
    model_cls = FAMILIES[family][0] if family in FAMILIES else None
    cfg = make_config(family, config)
    assert model_cls is not None
    return model_cls(cfg)
