"""Reprice a plan by arithmetic on a cached table: the interactive path (ms, no model run).

    base = layer_table(model, 8.0)                  once per model and audio length (~0.2 s)
    table = table_for_plan(base, model, plan)       per slider move (resolve + arithmetic)
    report = price_table(table, load_device("rpi5"))

The shapes follow what workbench.compress builds, without building it:
- heads: an attention module keeps H - count_to_remove(H, amount) heads; its q/k/v outputs,
  out_proj input and the scores (heads) shrink with it;
- neurons: an FFN keeps n - count_to_remove(n, amount) hidden units (fc1 out, fc2 in);
- rank r: a Linear (after pruning) becomes down (in -> r, no bias) and up (r -> out), unless
  r (in + out) >= in * out (then it stays dense, as compress does); r is capped at min(in, out);
- bits: from the plan's quant entries; unstructured sparsity: the plan's amount (no time effect).
Channel pruning of conv modules and energy-based low rank (which needs the singular values) are
not arithmetic: for those plans this falls back to the exact path, layer_table(model, s, plan).
So does any other registered technique that changes shapes without a latency hook (nothing here
knows its new rows; the exact path compresses the model and reads them, as predict_latency does).
A technique with a hook is priced by its hook, after the built-ins' arithmetic.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn

from workbench.latency.table import (ACT_BYTES, EffectiveLayer, LayerTable, layer_table,
                                     with_technique_rows)
from workbench.compress.resolution import resolve
from workbench.compress.techniques import settings, technique
from workbench.compress.lowrank import pays_off
from workbench.compress.prune import count_to_remove

#: The techniques whose rows table_for_plan computes by arithmetic (the built-ins' names).
ARITHMETIC = frozenset({"prune", "low_rank", "quant"})


def table_for_plan(base: LayerTable, model: nn.Module, plan: Any) -> LayerTable:
    """The effective table of `compress(model, plan)`, from the fp32 table `base` of `model`."""
    resolved = resolve(plan, model)
    if any((c.prune is not None and c.prune.structure == "channels") or c.energy is not None
           or any(_unknown_shapes(name, s) for name, s in settings(c).items())
           for c in resolved.values()):
        return layer_table(model, base.audio_seconds, plan)
    rows = {layer.path: layer for layer in base.layers}
    order = [layer.path for layer in base.layers]
    for path, cfg in resolved.items():          # 1. structured pruning
        if cfg.prune is None or cfg.prune.structure == "unstructured":
            continue
        module = model.get_submodule(path)
        if cfg.prune.structure == "heads":
            heads = module.n_heads
            keep = heads - count_to_remove(heads, cfg.prune.amount)
            width = keep * module.head_dim
            for name in ("q_proj", "k_proj", "v_proj"):
                rows[f"{path}.{name}"] = _resize(rows[f"{path}.{name}"], out_width=width)
            rows[f"{path}.out_proj"] = _resize(rows[f"{path}.out_proj"], in_width=width)
            s = rows[f"{path}.scores"]
            rows[f"{path}.scores"] = replace(
                s, heads=keep, in_width=width, out_width=width,
                macs=s.macs * keep // s.heads, input_bytes=s.input_bytes * keep // s.heads,
                output_bytes=s.output_bytes * keep // s.heads)
        else:  # neurons
            hidden = module.fc1.out_features
            keep = hidden - count_to_remove(hidden, cfg.prune.amount)
            rows[f"{path}.fc1"] = _resize(rows[f"{path}.fc1"], out_width=keep)
            rows[f"{path}.fc2"] = _resize(rows[f"{path}.fc2"], in_width=keep)
    for path, cfg in resolved.items():          # 2. low rank, on the pruned shapes
        if cfg.rank is None or path not in rows:
            continue
        row = rows[path]
        rank = min(cfg.rank, row.in_width, row.out_width)
        if not pays_off(row.in_width, row.out_width, rank):
            continue
        has_bias = row.params > row.in_width * row.out_width
        down = replace(_resize(row, out_width=rank, bias=False), path=f"{path}.down")
        up = replace(_resize(row, in_width=rank, bias=has_bias), path=f"{path}.up")
        del rows[path]
        rows[down.path], rows[up.path] = down, up
        i = order.index(path)
        order[i:i + 1] = [down.path, up.path]
    for path, cfg in resolved.items():          # 3. bits and unstructured sparsity
        for p in (path, f"{path}.down", f"{path}.up"):
            if p not in rows:
                continue
            if cfg.quant is not None:
                rows[p] = replace(rows[p], weight_bits=cfg.quant.weight_bits or 32)
            if cfg.prune is not None and cfg.prune.structure == "unstructured":
                rows[p] = replace(rows[p], sparsity=cfg.prune.amount)
    layers = tuple(rows[p] for p in order)
    layers = with_technique_rows(LayerTable(layers, base.audio_seconds, 0), resolved).layers
    residual = base.peak_activation_bytes - max(x.input_bytes + x.output_bytes
                                                for x in base.layers)
    peak = max(x.input_bytes + x.output_bytes for x in layers) + residual
    return LayerTable(layers, base.audio_seconds, peak)


def _unknown_shapes(name: str, setting: Any) -> bool:
    """Does this setting change shapes that neither the arithmetic below nor a latency hook
    prices? (Then only a shape pass of the compressed model gives its rows.)"""
    t = technique(name)
    return (name not in ARITHMETIC and t.latency_row is None and t.latency_row_at is None
            and t.changes_shape(setting))


def _resize(row: EffectiveLayer, in_width: int | None = None, out_width: int | None = None,
            bias: bool | None = None) -> EffectiveLayer:
    """A Linear row with new widths: MACs, parameters and activation bytes follow."""
    new_in = row.in_width if in_width is None else in_width
    new_out = row.out_width if out_width is None else out_width
    had_bias = row.params > row.in_width * row.out_width
    keep_bias = had_bias if bias is None else bias
    t = row.positions
    return replace(row, in_width=new_in, out_width=new_out, macs=t * new_in * new_out,
                   params=new_in * new_out + (new_out if keep_bias else 0),
                   input_bytes=t * new_in * ACT_BYTES if in_width is not None
                   else row.input_bytes,
                   output_bytes=t * new_out * ACT_BYTES if out_width is not None
                   else row.output_bytes)
