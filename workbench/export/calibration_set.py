"""Calibration data for an export: the same utterances feed the simulation and ONNX Runtime.

- `calibration_batches`: CalibrationBatch per utterance (features, lengths, CTC targets) for
  `compress` (Taylor importance, activation ranges). One utterance per batch, because ONNX
  Runtime runs batch 1: padded frames would otherwise widen the observed activation ranges.
- `FeatureReader`: an onnxruntime CalibrationDataReader over the same features, for static
  (QDQ) quantization.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from workbench.compress.calibration_stats import CalibrationBatch
from workbench.decode import encode_text
from workbench.evaluate import EvalSet, load_eval_set
from workbench.onnx_tools.runtime import feature_feeds

#: Utterances of data/calib used for calibration (enough for stable min/max, seconds to run).
CALIB_UTTERANCES = 32


def load_calibration_set(manifest: Path, limit: int = CALIB_UTTERANCES) -> EvalSet:
    return load_eval_set(manifest, limit=limit, progress=False, name="calib")


def calibration_batches(calib: EvalSet) -> list[CalibrationBatch]:
    """One CalibrationBatch per utterance: features (1, n_mels, T), targets from its text."""
    out = []
    for feats, text in zip(calib.features, calib.texts):
        ids = encode_text(text) or [1]          # an empty transcript still needs a target
        out.append(CalibrationBatch(feats[None], torch.tensor([feats.shape[-1]]),
                                    torch.tensor([ids]), torch.tensor([len(ids)])))
    return out


def feature_reader(calib: EvalSet):
    """A fresh onnxruntime CalibrationDataReader over `calib` (one utterance per call)."""
    from onnxruntime.quantization import CalibrationDataReader

    class FeatureReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds: Iterator[dict[str, np.ndarray]] = (
                feature_feeds(f) for f in calib.features)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    return FeatureReader()
