"""Calibration data for compression: a few labelled batches, and what compression computes on them.

- Taylor importance needs gradients of the CTC loss with respect to every weight
  (`taylor_gradients`), computed once on the uncompressed model.
- Activation quantization needs the range of each quantized layer's input, observed by running
  the compressed model on the features (`calibrate_activations`).
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workbench.compress.quantize import observing
from workbench.errors import PlanError


@dataclass(frozen=True)
class CalibrationBatch:
    """One padded batch: features (B, n_mels, T) log-mel at 100 Hz, feat_lengths (B,) frames,
    targets (B, S) token ids padded (blank = 0 never appears inside a target), target_lengths
    (B,). Targets are only needed for Taylor importance."""

    features: torch.Tensor
    feat_lengths: torch.Tensor
    targets: torch.Tensor | None = None
    target_lengths: torch.Tensor | None = None


Calibration = Sequence[CalibrationBatch]


def as_calibration(calib: CalibrationBatch | Iterable[CalibrationBatch | tuple] | None
                   ) -> tuple[CalibrationBatch, ...]:
    """Accept one batch, batches, or (features, feat_len, targets, target_len) tuples."""
    if calib is None:
        return ()
    if isinstance(calib, CalibrationBatch):
        return (calib,)
    out = []
    for i, item in enumerate(calib):
        if isinstance(item, CalibrationBatch):
            out.append(item)
        elif isinstance(item, (tuple, list)) and len(item) in (2, 4):
            out.append(CalibrationBatch(*item))
        else:
            raise PlanError(f"calib[{i}]: expected a CalibrationBatch or a tuple (features, "
                            f"feat_lengths[, targets, target_lengths]), got {type(item).__name__}.")
    return tuple(out)


def ctc_loss(model: nn.Module, batch: CalibrationBatch) -> torch.Tensor:
    """Summed CTC loss (blank 0) of `model` on a labelled batch."""
    log_probs, lengths = model(batch.features, batch.feat_lengths)
    return F.ctc_loss(log_probs.transpose(0, 1), batch.targets, lengths, batch.target_lengths,
                      blank=0, reduction="sum", zero_infinity=True)


def taylor_gradients(model: nn.Module, calib: Calibration) -> dict[str, torch.Tensor]:
    """Gradient of the summed CTC loss over `calib`, for every parameter (by full name).

    Runs on an eval-mode copy, so the caller's model (its .grad and training flag) is untouched.
    """
    batches = as_calibration(calib)
    if not batches or any(b.targets is None or b.target_lengths is None for b in batches):
        raise PlanError("prune.importance: 'taylor' needs a calibration set with targets "
                        "(calib=[CalibrationBatch(features, feat_lengths, targets, "
                        "target_lengths), ...]).")
    work = copy.deepcopy(model).eval()
    names, params = zip(*[(n, p) for n, p in work.named_parameters()])
    total = [torch.zeros_like(p) for p in params]
    with torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        for batch in batches:
            grads = torch.autograd.grad(ctc_loss(work, batch), params, allow_unused=True)
            total = [t if g is None else t + g for t, g in zip(total, grads)]
    return {n: t.detach() for n, t in zip(names, total)}


def calibrate_activations(model: nn.Module, calib: Calibration) -> None:
    """Observe the input range of every activation quantizer of `model` (changed in place: call
    it on a model you own) by running it on the calibration features."""
    batches = as_calibration(calib)
    if not batches:
        raise PlanError("quant.act_bits: activation quantization needs a calibration set "
                        "(calib=...) to observe activation ranges.")
    was_training = model.training
    model.eval()
    try:
        with observing(model), torch.no_grad():
            for batch in batches:
                model(batch.features, batch.feat_lengths)
    finally:
        model.train(was_training)
