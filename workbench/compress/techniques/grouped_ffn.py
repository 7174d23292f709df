"""Grouped (block-diagonal) FFN as a registered technique: fc1 and fc2 split into G groups
(workbench.compress.swap_layers.grouped_from), G times fewer weights and MACs.

    LayerConfig(grouped_ffn={"groups": 2})

Initialised from the dense FFN: hidden neurons are assigned (balanced) to the input group that
holds most of their fc1 weight energy; each group keeps its block of fc1 and fc2. The weights
outside the blocks are dropped, so it needs recovery. Runs after structured pruning (a pruned
FFN can be grouped when G divides its widths); its parts are plain Linears, which the latency
table prices from the compressed model's shapes.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from workbench.compress.swap_layers import GroupedLinear, grouped_from
from workbench.compress.techniques.low_rank import replace_module
from workbench.compress.techniques.registry import ApplyContext, Control, Technique, register
from workbench.errors import PlanError


class GroupedFFNConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    groups: int = Field(ge=2, le=64, description="Block-diagonal groups of fc1 and fc2.")


def check_module(s: GroupedFFNConfig, ffn: nn.Module) -> str | None:
    d, f = ffn.fc1.in_features, ffn.fc1.out_features
    if d % s.groups or f % s.groups:
        return (f"groups={s.groups} must divide the model width {d} and the hidden width {f} "
                f"of this FFN.")
    return None


def apply_(root: nn.Module, entries: Mapping[str, GroupedFFNConfig], ctx: ApplyContext
           ) -> nn.Module:
    for path, s in entries.items():
        ffn = root.get_submodule(path)
        problem = check_module(s, ffn) if hasattr(ffn, "fc1") else "it is no dense FFN."
        if problem is not None:   # e.g. neuron pruning left a width G does not divide
            raise PlanError(f"layers[{path!r}].grouped_ffn: {problem}")
        root = replace_module(root, path, grouped_from(ffn, s.groups))
        ctx.notes.append(f"{path}: grouped FFN, {s.groups} groups")
    return root


def latency_row(row, s: GroupedFFNConfig):
    """A dense fc1 / fc2 row of the FFN (a table of the model before grouping) -> the rows of
    its G parts (`fc1.parts.0`, ...: in/G -> out/G each, 1/G of the bias and activations), the
    rows a shape pass of the grouped model has, so the dashboard's repriced table and
    predict_latency agree (one row priced G Linears as one op: 0.39 ms apart at 2 s on the
    demo). Rows of a shape pass (already parts) are left as they are."""
    if row.op != "matmul" or not row.path.endswith((".fc1", ".fc2")) or not row.in_width:
        return row
    g = s.groups
    bias = row.params - row.in_width * row.out_width
    i, o = row.in_width // g, row.out_width // g
    return tuple(replace(row, path=f"{row.path}.parts.{k}", in_width=i, out_width=o,
                         macs=row.positions * i * o, params=i * o + bias // g,
                         input_bytes=row.input_bytes // g, output_bytes=row.output_bytes // g)
                 for k in range(g))


def size_specs(specs: list, s: GroupedFFNConfig) -> list:
    """size.py: the WeightSpec of a dense fc1 / fc2 under a grouped FFN -> G specs of the
    (out/G, in/G) parts, at the layer's bits (each part quantized alone, its own scales)."""
    return [replace(spec, out=spec.out // s.groups, k=spec.k // s.groups,
                    nnz=None if spec.nnz is None else spec.nnz // s.groups)
            for spec in specs for _ in range(s.groups)]


def weight_parts(module: nn.Module) -> dict[str, nn.Module] | None:
    """The Linears a grouped fc1 / fc2 is made of ({"parts.0": ..., ...}): quantization
    quantizes each with the layer's setting (its own scales per group)."""
    if not isinstance(module, GroupedLinear):
        return None
    return {f"parts.{g}": part for g, part in enumerate(module.parts)}


GROUPED_FFN = register(Technique(
    name="grouped_ffn", fields=("grouped_ffn",), order=25, config_type=GroupedFFNConfig,
    applies_to=lambda s, kind: kind == "ffn", fits="grouped_ffn fits FFN modules (fc1 / fc2)",
    apply_=apply_, changes_shape=lambda s: True, export="pytorch", latency_row=latency_row,
    check_module=check_module, weight_parts=weight_parts, size_specs=size_specs,
    describe=lambda s: f"grouped FFN, {s.groups} block-diagonal groups in fc1 and fc2",
    control=Control(label="FFN groups", kinds=("ffn",), values=(None, 2, 4),
                    to_setting=lambda v: None if v is None else GroupedFFNConfig(groups=v),
                    from_setting=lambda s: None if s is None else s.groups)))
