"""Compression techniques, one per file, and the verb that applies a plan.

    apply.py        compress(model, plan, calib) -> new model; compress_module (one block)
    resolution.py   resolve(plan, model): the effective setting per target, every model check
    techniques/     the registry: one module per technique (applies_to, apply_, bytes, latency
                    row, export path, shape change, UI control); compress loops over it
    prune.py        heads / neurons / channels removed (shapes shrink), unstructured masks
    lowrank.py      Linear -> two Linears by truncated SVD
    quantize.py     fake-quantized weights (b bits) and activations (8 bits, observed ranges)
    importance.py   scores per head / neuron / channel / weight (magnitude, Taylor)
    calibration_stats.py  calibration batches, Taylor gradients, activation range observation
    targets.py      which modules a plan may name (Linear/Conv, attention, FFN, conv modules)
    distill.py      recovery training after compression: layer-wise distillation from the original
                    (and QAT); `workbench recover` around it (data, cache, checkpoint) is
                    workbench/recovery.py
"""
# Named plans are plain data at the plan layer (workbench.presets); kept here as an attribute
# so `from workbench.compress import presets` still works.
from workbench import presets
from workbench.compress.apply import (Compressed, compress, compress_detailed, compress_module,
                                      under)
from workbench.compress.calibration_stats import (CalibrationBatch, calibrate_activations,
                                            taylor_gradients)
from workbench.compress.importance import (channel_importance, head_importance,
                                           neuron_importance, weight_importance)
from workbench.compress.lowrank import LowRankLinear
from workbench.compress.quantize import (ActivationFakeQuant, QuantConv1d, QuantConv2d,
                                         QuantLinear, observing)
from workbench.compress.targets import Target, find_targets

__all__ = [
    "ActivationFakeQuant", "CalibrationBatch", "Compressed", "LowRankLinear", "QuantConv1d",
    "QuantConv2d", "QuantLinear", "calibrate_activations", "channel_importance", "compress",
    "compress_detailed", "compress_module", "head_importance", "neuron_importance", "observing",
    "Target", "find_targets", "presets", "taylor_gradients", "under", "weight_importance",
]
