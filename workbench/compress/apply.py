"""Turn a CompressionPlan into a compressed model: prune -> low rank -> quantize.

    compress(model, plan, calib=None) -> new model            (the input is never changed)
    compress_detailed(...) -> Compressed(model, notes)        (notes: what was removed, kept dense)
    compress_module(block, entries, model=, prefix=) -> Compressed (one block, for the engine)

Order, and why: structured pruning first (importance is measured on the original weights and
the later steps work on the smaller shapes), then low rank on what is left, then quantization of
the final weights (quantizing before a factorization would be undone by it). Taylor gradients
are computed once on the uncompressed model and sliced along with the pruned shapes.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from workbench.compress.calibration_stats import (Calibration, as_calibration, calibrate_activations,
                                            taylor_gradients)
from workbench.compress.techniques import ApplyContext, techniques
from workbench.compress.techniques import needs as techniques_needs
from workbench.errors import ArgumentError
from workbench.plan import CompressionPlan, LayerConfig
from workbench.compress.resolution import resolve
from workbench.errors import PlanError
from workbench.models.checkpoint import register_structure_loader
from workbench.checks import check_bool, check_model, check_plan

V = TypeVar("V")


@dataclass(frozen=True)
class Compressed:
    """A compressed copy and plain-language notes on what happened to which layer."""

    model: nn.Module
    notes: tuple[str, ...]


def compress(model: nn.Module, plan: CompressionPlan, calib: Calibration | None = None,
             force: bool = False, grads: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """A compressed deep copy of `model` following `plan` (see `compress_detailed`)."""
    return compress_detailed(model, plan, calib, force, grads).model


def compress_detailed(model: nn.Module, plan: CompressionPlan,
                      calib: Calibration | None = None, force: bool = False,
                      grads: Mapping[str, torch.Tensor] | None = None) -> Compressed:
    """Resolve `plan` on `model` (PlanError on a bad plan), then prune, factorize and quantize
    a deep copy. `calib` (CalibrationBatch list) is needed for 'taylor' importance (with targets)
    and for act_bits (features only); `force` applies a plan made for another fingerprint.
    `grads`: Taylor gradients already computed on `model` (`taylor_gradients(model, calib)`),
    reused instead of recomputed (several plans with Taylor importance on one model)."""
    check_model(model, "compress")
    plan = check_plan(plan, "compress")
    check_bool(force, "compress", "force")
    resolved = resolve(plan, model, force=force)
    batches = as_calibration(calib)
    if grads is None and needs_gradients(resolved):
        grads = taylor_gradients(model, batches)
    new, notes = apply_entries_(copy.deepcopy(model), resolved, grads, model=model)
    if needs_activation_calibration(resolved):
        calibrate_activations(new, batches)
    return Compressed(new, tuple(notes))


def compress_module(module: nn.Module, entries: Mapping[str, LayerConfig],
                    grads: Mapping[str, torch.Tensor] | None = None, *,
                    model: nn.Module | None = None, prefix: str = "") -> Compressed:
    """Apply resolved entries (paths relative to `module`, e.g. from
    `under(resolve(plan, model), "blocks.3")`) to a deep copy of one module.

    `model` is the whole model `module` belongs to and `prefix` its path there ("blocks.3"):
    techniques that read model-level facts (a window in seconds needs the frame rate at the
    blocks) or seed per module (Performer features) need them to build exactly what
    `compress(model, plan)` builds. `grads` (relative parameter names,
    `under(taylor_gradients(model, calib), "blocks.3")`) is needed for 'taylor' importance.
    Activation quantizers come back unobserved: run the new module on its inputs inside
    `workbench.compress.quantize.observing(new)` before use.
    """
    if model is not None and model.get_submodule(prefix) is not module:
        raise ArgumentError(f"compress_module(prefix={prefix!r}): the module at that path of "
                            f"`model` is not the module given.")
    if model is None and prefix:
        raise ArgumentError("compress_module(prefix=...): give the whole model too (model=...).")
    new, notes = apply_entries_(copy.deepcopy(module), entries, grads, model=model,
                                prefix=prefix)
    return Compressed(new, tuple(notes))


def under(mapping: Mapping[str, V], prefix: str) -> dict[str, V]:
    """The entries of `mapping` under module path `prefix`, keyed relative to it."""
    start = f"{prefix}."
    return {k[len(start):]: v for k, v in mapping.items() if k.startswith(start)}


def needs_gradients(resolved: Mapping[str, LayerConfig]) -> bool:
    return "gradients" in techniques_needs(resolved)


def needs_activation_calibration(resolved: Mapping[str, LayerConfig]) -> bool:
    return "activations" in techniques_needs(resolved)


def apply_entries_(root: nn.Module, entries: Mapping[str, LayerConfig],
                   grads: Mapping[str, torch.Tensor] | None = None, *,
                   model: nn.Module | None = None, prefix: str = ""
                   ) -> tuple[nn.Module, list[str]]:
    """Compress `root` in place (call it on a copy you own); returns (root, notes). `model`:
    the uncompressed whole model, `prefix`: the root's path in it (ApplyContext).

    Each registered technique (workbench.compress.techniques) applies all of its entries in
    turn, in the registry's order: structured then unstructured pruning, low rank, quantization."""
    ctx = ApplyContext(grads=dict(grads) if grads is not None else None,  # sliced as shapes shrink
                       prefix=prefix, model=model)
    for tech in techniques():
        mine = {path: s for path, cfg in entries.items() for s in [tech.setting(cfg)]
                if s is not None}
        if mine:
            root = tech.apply_(root, mine, ctx)
    return root, ctx.notes


def apply_stored_structure(model: nn.Module, structure: dict, source_name: str) -> nn.Module:
    """`model` reshaped by a checkpoint's stored structure (a structural CompressionPlan as JSON
    data: pruned heads / neurons / channels, explicit ranks); which units go does not matter,
    the checkpoint's tensors overwrite every weight next (workbench.models.checkpoint)."""
    plan = CompressionPlan.from_json(json.dumps(structure), source_name=source_name)
    if any(c.quant is not None or c.energy is not None for c in plan.layers.values()):
        raise PlanError("structure: holds quantization or an energy rank; a stored structure "
                        "has only pruning and explicit ranks.")
    return compress(model, plan, force=True)


# The models layer loads checkpoints but cannot import compress (a layer above it): it calls this.
register_structure_loader(apply_stored_structure)
