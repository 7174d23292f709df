"""Costs of a full Whisper model (encoder + greedy KV-cached decoder) for the dashboard and for
scripts: `WhisperCostCache`, a CostCache whose latency is `workbench.whisper_latency`'s (encoder +
cross keys/values + tokens x one decoder step, on the roofline device profiles), with the
structurally compressed models and per-part tables cached so a bits-only change re-prices rows.

Moved here from workbench/ui/whisper_app.py (review7 finding 10: caches and pricing are the
engine's, not the UI's); `workbench.ui.whisper_app.WhisperCostCache` still names it.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import replace
from typing import Any

from workbench.checks import check_seconds
from workbench.compress import compress
from workbench.engine.costs import CostCache
from workbench.errors import WorkbenchError
from workbench.latency import LayerTable, known_devices, load_device
from workbench.latency.cost import memory_fit
from workbench.plan import CompressionPlan

#: Structurally compressed models kept for pricing (a Whisper tiny copy is ~150 MB in fp32).
STRUCTURES_KEPT = 3
#: whisper_tables kept, per (structure, audio seconds): rows only, a few kB each.
TABLES_KEPT = 64


class WhisperCostCache(CostCache):
    """Costs for a WhisperASR: size as for any model (workbench.size), latency as
    `whisper_latency` (autoregressive), on the roofline device profiles (`known_devices`)."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self._structures: OrderedDict[str, Any] = OrderedDict()
        self._whisper_tables: OrderedDict[tuple[str, float], tuple] = OrderedDict()

    def devices(self) -> tuple[str, ...]:
        return known_devices()

    def device(self, name: str):
        return load_device(name)

    def canonical_device(self, name: str) -> str:
        return name

    def runtimes(self, device: str, device_file: str | None = None) -> tuple[str, ...]:
        return ()      # the device profile's own runtime

    def cores(self, device: str, device_file: str | None = None) -> int:
        return 1

    def warm_up(self, device: str, audio_seconds: float) -> None:
        self.latency(CompressionPlan(), device, audio_seconds)

    def profile(self, audio_seconds: float):
        raise WorkbenchError("The per-layer profile covers the CTC models; for Whisper see "
                             "workbench.whisper_latency.whisper_tables.")

    def _structure_key(self, resolved: dict) -> tuple[dict, str]:
        structure = self._structure(resolved)
        return structure, json.dumps({p: c.model_dump(mode="json") for p, c in structure.items()},
                                     sort_keys=True)

    def _part_tables(self, resolved: dict, seconds: float) -> tuple:
        """`whisper_tables` of the plan's structure at `seconds`, cached: a bits-only change
        re-prices the rows, it does not walk the model again."""
        _, structure_key = self._structure_key(resolved)
        key = (structure_key, seconds)
        with self._lock:
            if key in self._whisper_tables:
                self._whisper_tables.move_to_end(key)
                return self._whisper_tables[key]
        from workbench.whisper_latency import whisper_tables
        tables = whisper_tables(self._structural(resolved), seconds)
        with self._lock:
            self._whisper_tables[key] = tables
            while len(self._whisper_tables) > TABLES_KEPT:
                self._whisper_tables.popitem(last=False)
        return tables

    def _structural(self, resolved: dict):
        """The model with the plan's structure (pruning, low rank) applied, cached per
        structure; bits are priced on its rows (LayerTable.with_bits), not compressed."""
        structure, key = self._structure_key(resolved)
        with self._lock:
            if key in self._structures:
                self._structures.move_to_end(key)
                return self._structures[key]
        model = self.model
        if structure:
            model = compress(self.model, CompressionPlan(layers=structure)).eval()
        with self._lock:
            self._structures[key] = model
            while len(self._structures) > STRUCTURES_KEPT:
                self._structures.popitem(last=False)
        return model

    def latency(self, plan: CompressionPlan, device: str, audio_seconds: float, *,
                runtime: str | None = None, threads: int | None = None,
                device_file: str | None = None):
        """A LatencyReport of one utterance: encoder + cross K/V + steps x decoder step
        (`whisper_latency`), its layers the three parts' rows (decoder-step rows once, their
        time x steps), memory fit of all weights and the encoder's activation peak."""
        from workbench.whisper_latency import price_whisper
        seconds = check_seconds(audio_seconds, "latency", max_seconds=30.0)
        resolved = self.resolve(plan)
        bits = {path: (cfg.quant.weight_bits or 32) for path, cfg in resolved.items()
                if cfg.quant is not None}
        dev = load_device(device)
        enc_t, cross_t, step_t, steps = (t.with_bits(bits) if isinstance(t, LayerTable) else t
                                         for t in self._part_tables(resolved, seconds))
        wl = price_whisper((enc_t, cross_t, step_t, steps), dev, seconds)
        enc, total = wl.encoder, wl.total_ms
        layers = enc.layers + wl.cross_kv.layers + tuple(
            replace(x, time_ms=x.time_ms * steps) for x in wl.step.layers)
        weights = memory_fit(LayerTable(enc_t.layers + cross_t.layers + step_t.layers, seconds,
                                        enc_t.peak_activation_bytes), dev)
        return replace(enc, layers=layers, total_ms=total,
                       real_time_factor=wl.real_time_factor, memory=weights,
                       source=(f"simulated (Whisper tiny.en): encoder + cross K/V + {steps} "
                               f"decoder steps x per-step roofline; {enc.source}"))
