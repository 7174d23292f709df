"""The engine's cost caches: size, latency, profile and importance of plans for one baseline
model, cached so a slider move is priced in milliseconds (the UI and the search call these).

Nothing here computes a metric: size comes from `workbench.size.size`, latency from
`workbench.latency` (`layer_table`, `LayerTable.with_bits`, `price_table`), the profile from
`workbench.layer_profile.profile`, importance from `workbench.compress.importance`.

Why a cache for latency: `predict_latency(model, device, seconds, plan)` compresses the model and
runs a shape pass (~150 ms on Whisper tiny), too slow for every slider step. Only structure
(structured pruning, low rank) changes shapes; bits only change the price of each row, and the
audio length only rescales the rows (`LayerTable.at_seconds`: work and activations grow with T,
attention scores with T^2). So the shape pass runs once per structure, on a short reference
clip, and every other change re-prices the cached table (`at_seconds` + `with_bits` + the
techniques' latency hooks + `price_table`, ~5 ms). The hooks (architecture swaps) run last, at
the requested length: a window in seconds pads T to a whole number of windows, which no rescale
of a 1 s row can give. That equals `predict_latency` exactly at whole multiples of the reference
length and within a frame of rounding elsewhere (<1 % on Conformer at 2.5 s; tested).
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict

import torch
from torch import nn

from workbench.compress.targets import find_targets, graph_groups
from workbench.compress.techniques import shape_only, techniques
from workbench.latency.table import hooked_paths, table_from_profile, with_technique_rows
from workbench.plan import STRUCTURE_FOR_KIND, CompressionPlan, LayerConfig, PruneConfig
from workbench.compress.resolution import resolve
from workbench.compress import importance as imp
from workbench.compress.techniques.registry import generation
from workbench.latency import load_device, price_table, table_for_plan
from workbench.latency.graph import ops_at_scale
from workbench.latency.hardware import edge_device_names
from workbench.latency.predict import (ALIASES, bits_by_op, canonical_device, check_seconds, edge_report,
                                       is_edge, resolve_target, roles_for, technique_ops, trace_model)
from workbench.layer_profile import profile
from workbench.size import size

#: Shape-pass tables kept (each a few KB of plain data).
TABLE_CACHE = 64
#: Audio length (s) of the shape pass; tables are rescaled to the selected length.
REFERENCE_SECONDS = 1.0


class CostCache:
    """Costs of plans for one baseline model. Thread-safe (one lock around the caches)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.targets = find_targets(model)
        self._lock = threading.Lock()
        self._tables: OrderedDict[str, object] = OrderedDict()
        self._base_table = None  # the fp32 model's shape-pass table: one pass, never evicted
        # resolved plans: one slider move prices the same plan several times (size, latency,
        # the structure table); resolving walks every target each time
        self._resolved: OrderedDict[tuple[str, int], dict[str, LayerConfig]] = OrderedDict()
        self._profiles: dict[float, object] = {}
        self._importance: dict[str, torch.Tensor] = {}

    # ---- plan --------------------------------------------------------------------------------
    def resolve(self, plan: CompressionPlan) -> dict[str, LayerConfig]:
        """Effective settings per layer; raises PlanError on a bad plan (shown by the app).
        Cached per (plan JSON, technique registry generation): the baseline never changes."""
        key = (plan.to_json(), generation())
        with self._lock:
            if key in self._resolved:
                self._resolved.move_to_end(key)
                return dict(self._resolved[key])
        resolved = resolve(plan, self.model)
        with self._lock:
            self._resolved[key] = resolved
            while len(self._resolved) > TABLE_CACHE:
                self._resolved.popitem(last=False)
        return dict(resolved)

    # ---- size --------------------------------------------------------------------------------
    def size(self, plan: CompressionPlan):
        """workbench.size.SizeReport of `plan` (exact bytes, no model run)."""
        return size(self.model, plan)

    # ---- latency -----------------------------------------------------------------------------
    def devices(self) -> tuple[str, ...]:
        """Edge devices (names say the core) and `host` (ONNX Runtime here, calibrated)."""
        return (*edge_device_names(), "host")

    def device(self, name: str):
        """The device's profile; an old name ('rpi4') maps to its file ('rpi4_a72')."""
        if is_edge(name):
            return resolve_target(ALIASES.get(name, name), None, None)[0]
        return load_device(name)

    def canonical_device(self, name: str) -> str:
        return canonical_device(name)

    def runtimes(self, device: str, device_file: str | None = None) -> tuple[str, ...]:
        """Runtimes of an edge device (its file's list), () for the host."""
        if not is_edge(device, device_file):
            return ()
        return resolve_target(ALIASES.get(device, device), None, None, device_file)[0].runtimes

    def cores(self, device: str, device_file: str | None = None) -> int:
        if not is_edge(device, device_file):
            return 1
        return resolve_target(ALIASES.get(device, device), None, None, device_file)[0].cores

    def latency(self, plan: CompressionPlan, device: str, audio_seconds: float, *,
                runtime: str | None = None, threads: int | None = None,
                device_file: str | None = None):
        """workbench.latency.LatencyReport of `plan` on `device` for `audio_seconds` of audio.

        Edge devices: the traced graph of the plan's structure (one trace per structure, on
        REFERENCE_SECONDS, rescaled: graph.ops_at_scale) priced with the plan's bits; equals
        predict_latency(model, device, seconds, plan) at whole multiples of the reference."""
        if is_edge(device, device_file):
            return self._edge_latency(plan, device, float(audio_seconds), runtime, threads,
                                      device_file)
        return price_table(self._priced_table(self.resolve(plan), float(audio_seconds)),
                           load_device(device))

    def _priced_table(self, resolved: dict[str, LayerConfig], seconds: float):
        """The plan's layer table at `seconds`: its structure's table (no latency hooks),
        rescaled, its bits, then every latency hook of its techniques applied once, at the
        requested length (a window in seconds prices a different padded length at 1 s and at
        4 s, so a hooked row cannot be rescaled). What the host prices; the edge path prices
        the hooked modules from it too (latency.predict.technique_ops)."""
        table = self._table(resolved)
        if seconds != table.audio_seconds:
            table = table.at_seconds(seconds)
        bits = {path: (cfg.quant.weight_bits or 32) for path, cfg in resolved.items()
                if cfg.quant is not None}
        return with_technique_rows(table.with_bits(bits), resolved)

    def _edge_latency(self, plan: CompressionPlan, device: str, seconds: float,
                      runtime: str | None, threads: int | None, device_file: str | None):
        check_seconds(seconds)
        dev, rt, n = resolve_target(ALIASES.get(device, device), runtime, threads, device_file)
        resolved = self.resolve(plan)
        ops, roles = self._ops(resolved)
        ops = ops_at_scale(ops, seconds / REFERENCE_SECONDS)
        bits = {path: (cfg.quant.weight_bits or 32) for path, cfg in resolved.items()
                if cfg.quant is not None}
        op_bits = bits_by_op(ops, bits, {})
        if hooked_paths(resolved):   # modules a latency hook prices: as on the host
            hooked = self._priced_table(resolved, seconds)
            ops, op_bits = technique_ops(ops, op_bits, hooked, resolved)
            roles = {**roles, **{row.path: row.role for row in hooked.layers}}
        return edge_report(ops, op_bits, dev, rt, n, seconds, roles)

    def _ops(self, resolved: dict[str, LayerConfig]):
        """Fused ops of the plan's structure at REFERENCE_SECONDS (cached per structure)."""
        structure = self._structure(resolved)
        key = "ops:" + json.dumps({p: c.model_dump(mode="json") for p, c in structure.items()},
                                  sort_keys=True)
        with self._lock:
            if key in self._tables:
                self._tables.move_to_end(key)
                return self._tables[key]
        plan = CompressionPlan(layers=structure) if structure else None
        ops, _bits, traced = trace_model(self.model, REFERENCE_SECONDS, plan, None)
        value = (ops, roles_for(traced, ops))
        with self._lock:
            self._tables[key] = value
            while len(self._tables) > TABLE_CACHE:
                self._tables.popitem(last=False)
        return value

    @staticmethod
    def _structure(resolved: dict[str, LayerConfig]) -> dict[str, LayerConfig]:
        """The settings that change shapes (the registry says which), per path."""
        return {path: kept for path, cfg in resolved.items()
                for kept in [shape_only(cfg)] if not kept.is_empty()}

    def warm_up(self, device: str, audio_seconds: float) -> None:
        """Price one structural change of each kind (heads, neurons, channels) once, so the first
        slider move does not pay one-off costs (lazy imports, first compress and shape pass of
        that kind: ~0.3-3 s on a busy machine)."""
        seen: set[str] = set()
        for path, target in self.targets.items():
            if target.kind in STRUCTURE_FOR_KIND and target.kind not in seen:
                seen.add(target.kind)
                plan = CompressionPlan(layers={path: LayerConfig(prune=PruneConfig(
                    amount=0.5, structure=STRUCTURE_FOR_KIND[target.kind]))})
                self.size(plan)
                self.latency(plan, device, audio_seconds)

    def _table(self, resolved: dict[str, LayerConfig]):
        """The table of the plan's structure at REFERENCE_SECONDS, without latency hooks: the
        shapes of structured pruning and low rank. A technique priced by a latency hook (the
        architecture swaps) is left out here and hooked in `_priced_table`, once, at the
        length asked for."""
        structure = {path: kept for path, cfg in self._structure(resolved).items()
                     for kept in [_without_hooked(cfg)] if not kept.is_empty()}
        # The fp32 model's table comes from one shape pass, kept apart from the LRU (evicting it
        # would re-profile the model); a structural plan is then priced by arithmetic on it
        # (table_for_plan: ~2 ms, equal to a shape pass of the compressed model, tested in the
        # latency package). Channel pruning, energy ranks and a registered technique that
        # changes shapes without a latency hook fall back to a pass of the compressed model.
        with self._lock:
            base = self._base_table
        if base is None:
            base = table_from_profile(profile(self.model, REFERENCE_SECONDS, measure=False))
            with self._lock:
                self._base_table = base
        if not structure:
            return base
        key = json.dumps({p: c.model_dump(mode="json") for p, c in structure.items()},
                         sort_keys=True)
        with self._lock:
            if key in self._tables:
                self._tables.move_to_end(key)
                return self._tables[key]
        table = table_for_plan(base, self.model, CompressionPlan(layers=structure))
        with self._lock:
            self._tables[key] = table
            while len(self._tables) > TABLE_CACHE:
                self._tables.popitem(last=False)
        return table

    # ---- profile -----------------------------------------------------------------------------
    def profile(self, audio_seconds: float):
        """workbench.layer_profile.Profile of the baseline model (analytic, no timing), cached."""
        seconds = float(audio_seconds)
        with self._lock:
            if seconds in self._profiles:
                return self._profiles[seconds]
        prof = profile(self.model, seconds, measure=False)
        with self._lock:
            self._profiles[seconds] = prof
        return prof

    # ---- importance --------------------------------------------------------------------------
    def importance(self, path: str) -> torch.Tensor:
        """Magnitude importance of each head / neuron / channel of a structured module (cached:
        the baseline weights never change)."""
        with self._lock:
            if path in self._importance:
                return self._importance[path]
        scores = _importance(self.model, path, self.targets[path].kind)
        with self._lock:
            self._importance[path] = scores
        return scores


def _without_hooked(cfg: LayerConfig) -> LayerConfig:
    """`cfg` without the settings of techniques priced by a latency hook."""
    return cfg.without(tuple(f for t in techniques()
                             if t.latency_row is not None or t.latency_row_at is not None
                             for f in t.fields))


def _importance(model: nn.Module, path: str, kind: str) -> torch.Tensor:
    groups = graph_groups(model)
    if path in groups:  # a group found from the graph (workbench.byo.adapt): the scores its
        from workbench.graph.surgery import scores  # pruning ranks by (sum of squares)
        return scores(model, groups[path]).float()
    module = model.get_submodule(path)
    fn = {"attention": imp.head_importance, "ffn": imp.neuron_importance,
          "conv_module": imp.channel_importance}[kind]
    return fn(module, "magnitude")
