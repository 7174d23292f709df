"""The effective layer table: what the latency model prices, one row per op of a (compressed) model.

Each row says how much work a layer does after compression: its kept widths (structured pruning
and low rank change the module shapes, so the shapes are read from the compressed model), its
weight bits, and its unstructured sparsity. Built from a shape pass of `workbench.layer_profile`:

    layer_table(model, 4.0)                          fp32 (or bits given per path)
    layer_table(model, 4.0, {"blocks.*": 8})         weight bits per module path / fnmatch pattern
    layer_table(model, 4.0, plan)                    the plan applied to a copy (workbench.compress)
    layer_table(compressed_model, 4.0)               bits read from its quantized layers

Rows are plain data, so the UI can reprice a plan without a model run (`with_bits`,
`at_seconds`). Unstructured sparsity is carried for reporting only: dense CPU/MCU runtimes store
and multiply the zeros, so it changes neither bytes nor time.
"""
from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from workbench.errors import WorkbenchError
from workbench.plan import CompressionPlan
from workbench.layer_profile import Profile, profile
from workbench.compress.resolution import resolve
from workbench.compress.techniques import structure_only, techniques
from workbench.compress import compress_module

#: Profiler row kind -> op class of the cost model.
OP_OF_KIND = {"linear": "matmul", "conv": "conv", "attention_scores": "attention_scores",
              "norm": "elementwise", "activation": "elementwise", "other": "elementwise"}
#: Bytes per activation element as exported (fp32 between ops).
ACT_BYTES = 4

WeightBits = Mapping[str, int]
BitsOrPlan = WeightBits | Any | None   # a bits mapping, a CompressionPlan, or None


@dataclass(frozen=True)
class EffectiveLayer:
    """One op after compression: work of one forward pass (batch 1) on LayerTable.audio_seconds."""

    path: str
    role: str
    op: str                 # matmul | conv | attention_scores | elementwise
    macs: int
    params: int
    weight_bits: int        # 32 = fp32, 16 = fp16, <= 8 = integer weights
    sparsity: float         # fraction of zero weights; no effect on bytes or time (module doc)
    input_bytes: int        # fp32 activations read (q, k, v for attention scores)
    output_bytes: int       # fp32 activations written (score matrix for attention scores)
    positions: int          # time steps the op runs over
    in_width: int
    out_width: int
    heads: int = 0
    head_dim: int = 0
    #: attention scores whose work grows linearly with T (windowed / linear attention swaps,
    #: workbench.compress.swap_layers): at_seconds scales them like any other op
    linear_in_length: bool = False

    @property
    def weight_bytes(self) -> int:
        return math.ceil(self.params * self.weight_bits / 8)

    @property
    def precision(self) -> str:
        """Arithmetic: 'int8' (<= 8-bit weights), 'fp16' or 'fp32'; only ops with weights vary."""
        if self.op not in ("matmul", "conv") or self.params == 0:
            return "fp32"
        if self.weight_bits <= 8:
            return "int8"
        return "fp16" if self.weight_bits == 16 else "fp32"


@dataclass(frozen=True)
class LayerTable:
    """Effective layers in execution order, plus the activation peak estimate of the profiler."""

    layers: tuple[EffectiveLayer, ...]
    audio_seconds: float
    peak_activation_bytes: int      # fp32 estimate (workbench.layer_profile docstring)

    @property
    def weight_bytes(self) -> int:
        return sum(layer.weight_bytes for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def with_bits(self, bits: WeightBits) -> LayerTable:
        """Same shapes, weight bits set per path / pattern (unnamed layers keep theirs)."""
        layers = []
        for layer in self.layers:
            b = bits_for(layer.path, bits)
            layers.append(layer if b is None or layer.params == 0
                          else replace(layer, weight_bits=b))
        return replace(self, layers=tuple(layers))

    def at_seconds(self, seconds: float) -> LayerTable:
        """Analytic rescale to another audio length: work and activations grow with T, the
        attention scores (and their (H, T, T) matrix) with T^2 (unless swapped for an attention
        linear in T). Exact up to a frame of rounding
        per strided layer; use layer_table(...) for the exact shapes."""
        if not seconds > 0:
            raise WorkbenchError(f"audio_seconds: must be > 0 seconds, got {seconds!r}.")
        s = seconds / self.audio_seconds
        layers = []
        for layer in self.layers:
            if layer.op == "attention_scores" and not layer.linear_in_length:
                layers.append(replace(layer, macs=round(layer.macs * s * s),
                                      input_bytes=round(layer.input_bytes * s),
                                      output_bytes=round(layer.output_bytes * s * s),
                                      positions=round(layer.positions * s)))
            else:
                layers.append(replace(layer, macs=round(layer.macs * s),
                                      input_bytes=round(layer.input_bytes * s),
                                      output_bytes=round(layer.output_bytes * s),
                                      positions=round(layer.positions * s)))
        peak = max((x.input_bytes + x.output_bytes for x in layers), default=0)
        old_peak = max((x.input_bytes + x.output_bytes for x in self.layers), default=1) or 1
        return LayerTable(tuple(layers), float(seconds),
                          round(self.peak_activation_bytes * peak / old_peak))


def bits_for(path: str, bits: WeightBits) -> int | None:
    """Bits for `path`: its own key, else the nearest ancestor's key (low-rank factors of a
    Linear inherit the Linear's bits), else the most specific matching fnmatch pattern."""
    probe = path
    while True:
        if probe in bits:
            return int(bits[probe])
        if "." not in probe:
            break
        probe = probe.rsplit(".", 1)[0]
    matches = [k for k in bits if any(c in k for c in "*?[") and fnmatch.fnmatchcase(path, k)]
    if matches:
        best = max(matches, key=lambda k: sum(c not in "*?[]" for c in k))
        return int(bits[best])
    return None


def layer_table(model: nn.Module, audio_seconds: float = 4.0, weight_bits: BitsOrPlan = None, *,
                make_inputs: Callable[[float], tuple[Any, ...]] | None = None) -> LayerTable:
    """The effective layer table of `model` (see module docstring). The model is not changed.

    weight_bits: None (the bits the model carries: `weight_bits` of workbench.compress's quantized
    layers, else fp32), {path or pattern: bits} (overrides), or a workbench.plan.CompressionPlan
    (applied to a copy for its shapes and bits). Sparsity is read from the weights (zeros).
    """
    bits: dict[str, int] = {}
    resolved = None
    if weight_bits is not None and isinstance(weight_bits, CompressionPlan):
        resolved = resolve(weight_bits, model)
        model = compressed_for_pricing(model, weight_bits)
    elif weight_bits is not None:
        bits = {str(k): _check_bits(k, v) for k, v in dict(weight_bits).items()}
    prof = profile(model, audio_seconds, measure=False, make_inputs=make_inputs)
    carried = {path: int(m.weight_bits) for path, m in model.named_modules()
               if isinstance(getattr(m, "weight_bits", None), int)}
    table = table_from_profile(prof, bits, weight_sparsity(model), carried_bits=carried)
    return with_technique_rows(table, resolved) if resolved else table


def compressed_for_pricing(model: nn.Module, plan: Any, quant: bool = True) -> nn.Module:
    """`plan` applied to a copy of `model`, for its shapes and bits only.

    Importance 'taylor' becomes 'magnitude' and act_bits are dropped: neither changes a shape
    or a weight's bits, and both would need calibration data. quant=False applies only what
    PyTorch applies before an ONNX export (the registry's structure_only: what the export's
    fp32 graph holds; ONNX Runtime quantizes after).
    """
    entries = {}
    for path, config in resolve(plan, model).items():
        if not quant:
            config = structure_only(config)
        update: dict[str, Any] = {}
        if config.prune is not None and config.prune.importance != "magnitude":
            update["prune"] = config.prune.model_copy(update={"importance": "magnitude"})
        if config.quant is not None and config.quant.act_bits is not None:
            update["quant"] = config.quant.model_copy(update={"act_bits": None})
        entries[path] = config.model_copy(update=update) if update else config
    return compress_module(model, entries).model


def with_technique_rows(table: LayerTable, resolved: Mapping[str, Any]) -> LayerTable:
    """Rows changed by the `latency_row` / `latency_row_at` hooks of registered techniques (the
    built-in ones change shapes and bits, which the table already has). A row takes the setting
    of the nearest entry at or above its path that sets the technique: a low-rank Linear's
    factors (`path.down`, `path.up`) take their Linear's, an attention's scores row
    (`attn.scores`) and an FFN's Linears (`mlp.fc1`) take the attention's / FFN's."""
    hooked = [t for t in techniques() if t.latency_row is not None or t.latency_row_at is not None]
    if not hooked:
        return table
    layers = []
    for row in table.layers:
        rows = [row]        # a hook may split a row into parts (a grouped FFN's Linears)
        for tech in hooked:
            setting = _nearest_setting(tech, row.path, resolved)
            if setting is None:
                continue
            if tech.latency_row is not None:
                rows = _flat(tech.latency_row(r, setting) for r in rows)
            if tech.latency_row_at is not None:
                rows = _flat(tech.latency_row_at(r, setting, table.audio_seconds) for r in rows)
        layers.extend(rows)
    return replace(table, layers=tuple(layers))


def _flat(results: Any) -> list[EffectiveLayer]:
    """Hook results, each a row or a sequence of rows, as one list of rows."""
    out: list[EffectiveLayer] = []
    for r in results:
        out.extend(r if isinstance(r, (list, tuple)) else (r,))
    return out


def hooked_paths(resolved: Mapping[str, Any]) -> tuple[str, ...]:
    """Paths of the entries that set a technique with a latency hook: with_technique_rows
    changes the rows at and under them (the edge path prices those modules from these rows)."""
    hooked = [t for t in techniques() if t.latency_row is not None or t.latency_row_at is not None]
    return tuple(path for path, cfg in resolved.items()
                 if any(t.setting(cfg) is not None for t in hooked))


def _nearest_setting(tech: Any, path: str, resolved: Mapping[str, Any]) -> Any:
    probe = path
    while probe:
        cfg = resolved.get(probe)
        setting = tech.setting(cfg) if cfg is not None else None
        if setting is not None:
            return setting
        probe = probe.rsplit(".", 1)[0] if "." in probe else ""
    return None


def weight_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exactly-zero weights per Linear / Conv layer that has any."""
    out = {}
    for path, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            w = m.weight.detach()
            zeros = float((w == 0).float().mean())
            if zeros > 0:
                out[path] = zeros
    return out


def table_from_profile(prof: Profile, bits: WeightBits | None = None,
                       sparsity: Mapping[str, float] | None = None, *,
                       carried_bits: WeightBits | None = None) -> LayerTable:
    """Effective layers from profiler rows: bits per path from `bits`, else `carried_bits` (what
    the model's layers say), else 32; sparsity per path (default dense)."""
    bits, carried, sparsity = bits or {}, carried_bits or {}, sparsity or {}
    layers = []
    for r in prof.rows:
        b = None
        if r.params:
            b = bits_for(r.path, bits)
            b = bits_for(r.path, carried) if b is None else b
        layers.append(EffectiveLayer(
            path=r.path, role=r.role, op=OP_OF_KIND[r.kind], macs=r.macs, params=r.params,
            weight_bits=32 if b is None else b, sparsity=bits_for_float(r.path, sparsity) or 0.0,
            input_bytes=r.input_bytes, output_bytes=r.activation_bytes, positions=r.positions,
            in_width=r.in_width, out_width=r.out_width, heads=r.heads, head_dim=r.head_dim))
    return LayerTable(tuple(layers), prof.audio_seconds, prof.peak_activation_bytes)


def bits_for_float(path: str, values: Mapping[str, float]) -> float | None:
    probe = path
    while True:
        if probe in values:
            return float(values[probe])
        if "." not in probe:
            return None
        probe = probe.rsplit(".", 1)[0]


def _check_bits(key: Any, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 32:
        raise WorkbenchError(f"weight_bits[{key!r}]: bits must be an integer 1..32 (32 = fp32), "
                             f"got {value!r}.")
    return value
