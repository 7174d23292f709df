"""Turn a CompressionPlan into a compressed model: prune -> low rank -> quantize.

    compress(model, plan, calib=None) -> new model            (the input is never changed)
    compress_detailed(...) -> Compressed(model, notes)        (notes: what was removed, kept dense)
    compress_module(block, entries, grads=None) -> Compressed (one block, for the engine)

Order, and why: structured pruning first (importance is measured on the original weights and
the later steps work on the smaller shapes), then low rank on what is left, then quantization of
the final weights (quantizing before a factorization would be undone by it). Taylor gradients
are computed once on the uncompressed model and sliced along with the pruned shapes.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from workbench.compress.calibration import (Calibration, as_calibration, calibrate_activations,
                                            taylor_gradients)
from workbench.compress.lowrank import LowRankLinear, choose_rank, factorize
from workbench.compress.prune import (prune_channels_, prune_heads_, prune_neurons_,
                                      prune_unstructured_)
from workbench.compress.quantize import quantize_layer
from workbench.plan import CompressionPlan, LayerConfig
from workbench.compress.resolution import resolve

V = TypeVar("V")
_STRUCTURED = {"heads": prune_heads_, "neurons": prune_neurons_, "channels": prune_channels_}


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
    from workbench.checks import check_bool, check_model, check_plan
    check_model(model, "compress")
    plan = check_plan(plan, "compress")
    check_bool(force, "compress", "force")
    resolved = resolve(plan, model, force=force)
    batches = as_calibration(calib)
    if grads is None and needs_gradients(resolved):
        grads = taylor_gradients(model, batches)
    new, notes = apply_entries_(copy.deepcopy(model), resolved, grads)
    if needs_activation_calibration(resolved):
        calibrate_activations(new, batches)
    return Compressed(new, tuple(notes))


def compress_module(module: nn.Module, entries: Mapping[str, LayerConfig],
                    grads: Mapping[str, torch.Tensor] | None = None) -> Compressed:
    """Apply resolved entries (paths relative to `module`, e.g. from
    `under(resolve(plan, model), "blocks.3")`) to a deep copy of one module.

    `grads` (relative parameter names, `under(taylor_gradients(model, calib), "blocks.3")`) is
    needed for 'taylor' importance. Activation quantizers come back unobserved: run the new
    module on its inputs inside `workbench.compress.quantize.observing(new)` before use.
    """
    new, notes = apply_entries_(copy.deepcopy(module), entries, grads)
    return Compressed(new, tuple(notes))


def under(mapping: Mapping[str, V], prefix: str) -> dict[str, V]:
    """The entries of `mapping` under module path `prefix`, keyed relative to it."""
    start = f"{prefix}."
    return {k[len(start):]: v for k, v in mapping.items() if k.startswith(start)}


def needs_gradients(resolved: Mapping[str, LayerConfig]) -> bool:
    return any(c.prune is not None and c.prune.importance == "taylor" for c in resolved.values())


def needs_activation_calibration(resolved: Mapping[str, LayerConfig]) -> bool:
    return any(c.quant is not None and c.quant.act_bits is not None for c in resolved.values())


def _replace(root: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """Put `new` at `path` under `root`; returns the (possibly new) root."""
    if not path:
        return new
    parent_path, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, name, new)
    return root


def _graph_removal(root: nn.Module, group, cfg: LayerConfig):  # noqa: ANN001, ANN202
    """(group, unit indices to remove) for a graph group; magnitude importance only."""
    from workbench.errors import PlanError
    from workbench.graph.surgery import choose
    if cfg.prune.structure == "unstructured" or cfg.prune.importance != "magnitude":
        raise PlanError(f"layers[{group.path!r}]: a group found from the graph takes structured "
                        f"pruning ({group.kind}) with importance 'magnitude'; got "
                        f"{cfg.prune.structure} / {cfg.prune.importance}.")
    return group, choose(root, group, cfg.prune.amount)


def apply_entries_(root: nn.Module, entries: Mapping[str, LayerConfig],
                   grads: Mapping[str, torch.Tensor] | None = None
                   ) -> tuple[nn.Module, list[str]]:
    """Compress `root` in place (call it on a copy you own); returns (root, notes)."""
    grads = dict(grads) if grads is not None else None  # sliced as shapes shrink
    notes: list[str] = []
    structure = getattr(root, "graph_structure", None)
    graph_groups = {g.path: g for g in getattr(structure, "groups", ())}
    removals = []
    for path, cfg in entries.items():  # 1. structured pruning
        if cfg.prune is not None and path in graph_groups:  # groups found from the graph
            removals.append(_graph_removal(root, graph_groups[path], cfg))
            notes.append(f"{path}: removed {len(removals[-1][1])} {cfg.prune.structure} "
                         f"{removals[-1][1]} (group found from the graph)")
        elif cfg.prune is not None and cfg.prune.structure != "unstructured":
            prune = _STRUCTURED[cfg.prune.structure]
            removed = prune(root.get_submodule(path), cfg.prune.amount, cfg.prune.importance,
                            grads, prefix=path)
            notes.append(f"{path}: removed {len(removed)} {cfg.prune.structure} {removed}")
    if removals:
        from workbench.graph.surgery import remove_units_
        remove_units_(root, removals)
        root._structure = None  # shapes changed: found again if asked
    for path, cfg in entries.items():  # 2. unstructured pruning
        if cfg.prune is not None and cfg.prune.structure == "unstructured":
            grad = None if grads is None else grads.get(f"{path}.weight" if path else "weight")
            zeros = prune_unstructured_(root.get_submodule(path), cfg.prune.amount,
                                        cfg.prune.importance, grad)
            notes.append(f"{path}: {zeros} weights masked to zero (unstructured)")
    for path, cfg in entries.items():  # 3. low rank
        if cfg.rank is not None or cfg.energy is not None:
            linear = root.get_submodule(path)
            rank, dense_reason = choose_rank(linear.weight, cfg.rank, cfg.energy)
            if dense_reason is not None:
                notes.append(f"{path}: {dense_reason}")
                continue
            root = _replace(root, path, factorize(linear, rank))
            notes.append(f"{path}: low rank {rank} ({linear.in_features}->{rank}->"
                         f"{linear.out_features})")
    for path, cfg in entries.items():  # 4. quantization
        if cfg.quant is None:
            continue
        layer = root.get_submodule(path)
        if isinstance(layer, LowRankLinear):
            for child in ("down", "up"):
                setattr(layer, child, quantize_layer(getattr(layer, child), cfg.quant))
        else:
            root = _replace(root, path, quantize_layer(layer, cfg.quant))
    return root, notes
