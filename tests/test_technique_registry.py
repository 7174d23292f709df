"""The technique registry: a toy technique registered from this test file (nothing in the package
names it) shows up in plan validation, compress, size, latency, the export split and the UI's
control list. This is the "how to add a technique" recipe of docs/architecture.md, checked."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from workbench.compress import compress
from workbench.compress.resolution import resolve
from workbench.compress.techniques import (ApplyContext, Control, Technique, register, settings,
                                           structure_only, techniques, unregister)
from workbench.errors import PlanError
from workbench.export.structural import structural_plan
from workbench.latency import layer_table
from workbench.models import conformer_ctc
from workbench.plan import CompressionPlan, LayerConfig, QuantConfig, plan_from_json
from workbench.size import size

FC1 = "blocks.0.ffn1.fc1"      # a Linear of conformer_ctc("tiny")
CONV = "blocks.0.conv.depthwise"


class ToyConfig(BaseModel):
    """Scale a Linear's weights by `factor`, and (say) store them as `bits`-bit numbers."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    factor: float = Field(gt=0.0, le=1.0)
    bits: int = Field(16, ge=2, le=32)


def _apply(root: nn.Module, entries: Mapping[str, ToyConfig], ctx: ApplyContext) -> nn.Module:
    for path, s in entries.items():
        layer = root.get_submodule(path)
        with torch.no_grad():
            layer.weight.mul_(s.factor)
        ctx.notes.append(f"{path}: toy scale {s.factor}")
    return root


def _size_specs(specs: list, s: ToyConfig) -> list:
    return [replace(spec, bits=s.bits) for spec in specs]


def _latency_row(row, s: ToyConfig):
    return replace(row, weight_bits=s.bits)


TOY = Technique(
    name="toy", fields=("toy",), order=35, config_type=ToyConfig,
    applies_to=lambda s, kind: kind == "linear", fits="toy fits Linear layers",
    apply_=_apply, changes_shape=lambda s: False, export="pytorch",
    size_specs=_size_specs, latency_row=_latency_row,
    control=Control(label="toy", kinds=("linear",), values=(None, 0.5, 0.25),
                    to_setting=lambda v: None if v is None else ToyConfig(factor=v),
                    from_setting=lambda s: None if s is None else s.factor))


@pytest.fixture
def toy():
    register(TOY)
    yield TOY
    unregister("toy")


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return conformer_ctc("tiny").eval()


def _plan(**toy) -> CompressionPlan:
    return CompressionPlan(layers={FC1: LayerConfig(toy=toy or {"factor": 0.5})})


def test_unregistered_technique_is_refused_by_the_plan() -> None:
    with pytest.raises(PlanError, match="toy"):
        LayerConfig(toy={"factor": 0.5})


def test_plan_validation_sees_the_toy(toy, model) -> None:
    entry = LayerConfig(toy={"factor": 0.5})
    assert isinstance(entry.get("toy"), ToyConfig) and entry.sets("toy")
    with pytest.raises(PlanError, match="factor"):          # its config validates
        LayerConfig(toy={"factor": 2.0})
    plan = _plan()
    assert plan_from_json(plan.to_json()) == plan            # JSON round trip
    assert settings(resolve(plan, model)[FC1]) == {"toy": ToyConfig(factor=0.5)}
    with pytest.raises(PlanError, match="toy fits Linear layers|toy"):   # applies_to
        resolve(CompressionPlan(layers={CONV: LayerConfig(toy={"factor": 0.5})}), model)
    assert "toy" in [t.name for t in techniques()]


def test_compress_applies_the_toy(toy, model) -> None:
    small = compress(model, _plan(factor=0.25))
    before = model.get_submodule(FC1).weight
    after = small.get_submodule(FC1).weight
    torch.testing.assert_close(after, before * 0.25)
    other = "blocks.0.ffn1.fc2"
    torch.testing.assert_close(small.get_submodule(other).weight,
                               model.get_submodule(other).weight)


def test_size_and_latency_use_the_toy_hooks(toy, model) -> None:
    base = size(model, CompressionPlan())
    toy_size = size(model, _plan(factor=0.5, bits=8))
    layer = model.get_submodule(FC1)
    n = layer.weight.numel()
    # fp32 -> 8-bit per-channel: n bytes + fp32 scales + int8 zero points (size.py formulas)
    assert toy_size.layer(FC1).weight_bytes == n
    assert base.layer(FC1).weight_bytes == 4 * n
    table = layer_table(model, 1.0, _plan(factor=0.5, bits=8))
    row = next(r for r in table.layers if r.path == FC1)
    assert row.weight_bits == 8
    assert all(r.weight_bits == 32 for r in table.layers if r.path != FC1 and r.params)


def test_export_keeps_the_toy_in_the_structural_part(toy) -> None:
    entry = LayerConfig(toy={"factor": 0.5}, quant=QuantConfig(weight_bits=8))
    kept = structure_only(entry)
    assert kept.sets("toy") and not kept.sets("quant")
    plan = CompressionPlan(layers={FC1: entry})
    assert structural_plan(plan).layers[FC1] == kept


def test_export_asks_for_calibration_when_a_registered_technique_needs_it(model) -> None:
    from workbench.export.pipeline import build_export, needs_calibration
    register(replace(TOY, needs=lambda s: frozenset({"activations"})))
    try:
        assert needs_calibration(model, _plan())
        with pytest.raises(PlanError, match="calibration"):
            build_export(model, _plan())
    finally:
        unregister("toy")
    assert not needs_calibration(model, CompressionPlan())


def test_a_shape_changing_hook_counts_once_in_the_engine_as_in_predict_latency(model) -> None:
    """A latency_row that is not idempotent (halve the MACs) on a technique that changes shapes:
    the dashboard's host path (engine CostCache) and predict_latency price it once."""
    from workbench.engine.costs import CostCache
    from workbench.latency import predict_latency
    halving = replace(TOY, changes_shape=lambda s: True,
                      latency_row=lambda row, s: replace(row, macs=row.macs // 2))
    register(halving)
    try:
        plan = _plan()
        got = CostCache(model).latency(plan, "host", 1.0)
        ref = predict_latency(model, "host", 1.0, plan)
        # (the MACs, not the time: this small Linear is memory-bound on the host)
        assert [r.macs for r in got.layers] == [r.macs for r in ref.layers]
        assert got.total_ms == pytest.approx(ref.total_ms, rel=1e-9)
    finally:
        unregister("toy")


def _bottleneck(root: nn.Module, entries: Mapping[str, ToyConfig], ctx: ApplyContext
                ) -> nn.Module:
    """A shape-changing toy: each Linear becomes in -> round(out * factor) -> out (two Linears
    under a Sequential: new paths and widths that no built-in arithmetic knows)."""
    from workbench.compress.techniques.low_rank import replace_module
    for path, s in entries.items():
        layer = root.get_submodule(path)
        mid = max(1, round(layer.out_features * s.factor))
        root = replace_module(root, path, nn.Sequential(nn.Linear(layer.in_features, mid),
                                                        nn.Linear(mid, layer.out_features)))
    return root


#: the toy with changes_shape=True and no latency hook: only a shape pass of the compressed
#: model sees what it does
BOTTLENECK = replace(TOY, apply_=_bottleneck, changes_shape=lambda s: True, latency_row=None,
                     size_specs=None)


@pytest.mark.parametrize("seconds", [1.0, 2.0])
def test_a_shape_changing_technique_without_a_hook_is_priced_as_compressed(model, seconds
                                                                           ) -> None:
    """The dashboard's host latency (CostCache -> table_for_plan, arithmetic on the dense table)
    of a technique that changes shapes without a latency hook equals predict_latency (a shape
    pass of the compressed model): the new rows FC1.0 / FC1.1 appear, FC1 is gone. Before the
    fallback, table_for_plan ignored the technique and priced the dense FC1 (the rows differed
    and the total was the baseline's)."""
    from workbench.engine.costs import CostCache
    from workbench.latency import predict_latency, table_for_plan
    dense = predict_latency(model, "host", seconds)
    register(BOTTLENECK)
    try:
        plan = _plan(factor=0.25)
        ref = predict_latency(model, "host", seconds, plan)
        got = CostCache(model).latency(plan, "host", seconds)
        quick = table_for_plan(layer_table(model, seconds), model, plan)
    finally:
        unregister("toy")
    paths = [r.path for r in ref.layers]
    assert f"{FC1}.0" in paths and f"{FC1}.1" in paths and FC1 not in paths
    assert [(r.path, r.macs) for r in got.layers] == [(r.path, r.macs) for r in ref.layers]
    assert got.total_ms == pytest.approx(ref.total_ms, rel=1e-9)
    assert [(r.path, r.macs) for r in quick.layers] == [(r.path, r.macs) for r in ref.layers]
    # the bottleneck (256 -> 64 -> ... on fc1) does change the price: the test can tell
    assert abs(ref.total_ms - dense.total_ms) > 1e-6 * dense.total_ms


def test_the_edge_path_applies_the_toy_hook_as_the_host_does(toy, model) -> None:
    """An edge device prices the traced graph; the module the toy's latency hook changes (FC1:
    stored as 8-bit) is priced from the hooked table row, as on the host: int8 on the Pi 4,
    every other op as traced. The dashboard's (CostCache) and the search's (LatencyPricer) edge
    paths give the same report."""
    from workbench.engine.costs import CostCache
    from workbench.latency import predict_latency
    plan = _plan(factor=0.5, bits=8)
    base = predict_latency(model, "rpi4", 1.0, CompressionPlan())
    got = predict_latency(model, "rpi4", 1.0, plan)
    fc1 = {r.path: r for r in got.layers}[FC1]
    assert {r.path: r for r in base.layers}[FC1].precision == "fp32"
    assert fc1.precision == "int8" and got.total_ms != base.total_ms
    assert [(r.path, r.time_ms) for r in got.layers if r.path != FC1] == \
        [(r.path, r.time_ms) for r in base.layers if r.path != FC1]
    host_row = next(r for r in layer_table(model, 1.0, plan).layers if r.path == FC1)
    assert fc1.macs == host_row.macs and host_row.weight_bits == 8
    ui = CostCache(model).latency(plan, "rpi4", 1.0)
    assert [(r.path, r.precision) for r in ui.layers] == [(r.path, r.precision) for r in got.layers]
    assert ui.total_ms == pytest.approx(got.total_ms, rel=1e-9)
    from workbench.search.objective import LatencyPricer     # the search's edge path too
    assert LatencyPricer(model, "rpi4", 1.0)(plan).total_ms == pytest.approx(got.total_ms,
                                                                             rel=1e-9)


def test_a_shape_changing_hook_changes_the_edge_macs_once(model) -> None:
    """The MAC-halving hook on a shape-changing technique: predict_latency on an edge device and
    the dashboard's edge path count it once, like the host."""
    from workbench.engine.costs import CostCache
    from workbench.latency import predict_latency
    halving = replace(TOY, changes_shape=lambda s: True,
                      latency_row=lambda row, s: replace(row, macs=row.macs // 2))
    base = {r.path: r.macs for r in predict_latency(model, "rpi5", 2.0).layers}
    register(halving)
    try:
        plan = _plan()
        got = predict_latency(model, "rpi5", 2.0, plan)
        ui = CostCache(model).latency(plan, "rpi5", 2.0)
        assert {r.path: r.macs for r in got.layers}[FC1] == base[FC1] // 2
        assert [(r.path, r.macs) for r in ui.layers] == [(r.path, r.macs) for r in got.layers]
    finally:
        unregister("toy")


def test_ui_control_list_has_the_toy(toy, model) -> None:
    from workbench.compress.targets import find_targets
    from workbench.ui.edits import controls_for, set_technique
    targets = find_targets(model)
    assert "toy" in controls_for(targets[FC1])
    assert "toy" not in controls_for(targets[CONV])
    plan = set_technique(CompressionPlan(), FC1, "toy", 0.25)
    assert plan.layers[FC1].get("toy") == ToyConfig(factor=0.25)
    assert set_technique(plan, FC1, "toy", None).layers.get(FC1) is None


def test_export_asks_the_registry_for_a_runtime_technique_handler(model) -> None:
    """A runtime-applied technique without a handler for the chosen runtime is refused by the
    export (never silently dropped); with one, the export's decision function is the handler."""
    from workbench.errors import ExportError
    from workbench.export.decisions import decide, runtime_handler
    from workbench.export.structural import layer_quant

    seen = []

    def ort_handler(path, kind, s):
        seen.append((path, kind, s.factor))
        return "toy decision"

    register(replace(TOY, name="toy", export="runtime"))
    try:
        plan = _plan()
        with pytest.raises(ExportError, match=rf"{FC1}: technique 'toy' has no onnxruntime export"):
            layer_quant(model, plan)
        register(replace(TOY, export="runtime", runtime_exports={"onnxruntime": ort_handler}),
                 replace=True)
        assert layer_quant(model, plan) == {}            # no quant layer; the toy is accepted
        with pytest.raises(ExportError, match="no executorch export"):
            layer_quant(model, plan, runtime="executorch")
        assert runtime_handler("toy", "onnxruntime")(FC1, "linear", ToyConfig(factor=0.5)) == \
            "toy decision" and seen == [(FC1, "linear", 0.5)]
    finally:
        unregister("toy")
    # the built-in quantization decides through its registered handler
    d = decide(FC1, "linear", QuantConfig(weight_bits=8))
    assert (d.method, d.bits) == ("int8_dynamic", 8)


def test_the_model_card_names_every_technique_of_the_plan(model) -> None:
    """The card's plan table and methods (export.model_card, also used by the Whisper and
    ExecuTorch cards) name each registered technique in its own `describe` words: the swaps,
    which the card never named before, and the built-ins."""
    from workbench.export.model_card import methods, plan_table
    from workbench.plan import PruneConfig
    plan = CompressionPlan(layers={
        "blocks.0.attn": LayerConfig(windowed_attention={"window_s": 1.0}),
        "blocks.1.attn": LayerConfig(performer_attention={"features": 32}),
        "blocks.0.ffn1": LayerConfig(grouped_ffn={"groups": 2}),
        "blocks.0.ffn2": LayerConfig(prune=PruneConfig(amount=0.5, structure="neurons")),
        "blocks.1.ffn1.fc1": LayerConfig(rank=8, quant=QuantConfig(weight_bits=8)),
    })
    resolved = resolve(plan, model)
    table, bullets = plan_table(resolved, []), "\n".join(methods(resolved, []))
    rows = {line.split("|")[1].strip(" `"): line for line in table.splitlines()[2:]}
    assert "windowed attention, 1 s blocks" in rows["blocks.0.attn"]
    assert "at least 1 s of context each side" in rows["blocks.0.attn"]
    assert "Performer attention, 32 random features" in rows["blocks.1.attn"]
    assert "grouped FFN, 2 block-diagonal groups" in rows["blocks.0.ffn1"]
    assert "structured pruning, 50% of the FFN neurons removed (magnitude importance)" in \
        rows["blocks.0.ffn2"]
    # low rank before the export; the 8-bit weights (a runtime technique) in the plan column,
    # from `describe` when the export's report has no row for the layer
    cells = [c.strip() for c in rows["blocks.1.ffn1.fc1"].split("|")]
    assert cells[2] == "low rank 8 (truncated SVD)"
    assert cells[3] == "8-bit weights (per channel, symmetric)"
    for name in ("windowed attention", "performer attention", "grouped ffn"):
        assert f"**{name}**: " in bullets                 # one method bullet per swap
    assert "1 s blocks" in bullets and "the exported graph has the new modules" in bullets
    assert "**Structured pruning**" in bullets and "**Low rank**" in bullets


def test_the_model_card_names_a_technique_registered_from_a_test(toy, model) -> None:
    """The toy (registered here, unknown to export/) shows up in the card: by its config when it
    has no `describe` hook, in its own words when it has one."""
    from workbench.export.model_card import methods, plan_table
    resolved = resolve(_plan(factor=0.5), model)
    assert "toy (factor=0.5, bits=16)" in plan_table(resolved, [])
    assert any(m.startswith("**toy**: toy (factor=0.5, bits=16) (1 module)")
               for m in methods(resolved, []))
    register(replace(TOY, describe=lambda s: f"toy scaling by {s.factor:g}"), replace=True)
    resolved = resolve(_plan(factor=0.5), model)
    assert "toy scaling by 0.5" in plan_table(resolved, [])
    assert "**toy**: toy scaling by 0.5 (1 module)" in "\n".join(methods(resolved, []))


def test_cross_technique_rules_are_the_registry_conflicts_hook(model) -> None:
    """Resolution asks each technique's `conflicts` hook: unstructured pruning refuses low rank
    on the same Linear through its hook (without the hook the same plan resolves), and a toy
    registered here can refuse int8 on its layer the same way, naming the plan levels."""
    from workbench.compress.techniques import technique
    from workbench.plan import PruneConfig
    both = CompressionPlan(default=LayerConfig(prune=PruneConfig(amount=0.5)),
                           layers={FC1: LayerConfig(rank=4)})
    with pytest.raises(PlanError, match=rf"{FC1}: unstructured pruning \(default\) and low rank "
                                        rf"\(layers\['{FC1}'\]\)"):
        resolve(both, model)
    pruning = technique("prune")
    register(replace(pruning, conflicts=None), replace=True)
    try:
        assert resolve(both, model)[FC1].rank == 4          # the rule was the hook
    finally:
        register(pruning, replace=True)

    def no_int8(s, where, others):
        if "quant" in others:
            return f"toy ({where}) and quantization ({others['quant'][1]}) do not mix."
        return None

    register(replace(TOY, conflicts=no_int8))
    try:
        assert settings(resolve(_plan(), model)[FC1]) == {"toy": ToyConfig(factor=0.5)}
        mixed = CompressionPlan(default=LayerConfig(quant=QuantConfig(weight_bits=8)),
                                layers={FC1: LayerConfig(toy={"factor": 0.5})})
        with pytest.raises(PlanError, match=rf"{FC1}: toy \(layers\['{FC1}'\]\) and "
                                            rf"quantization \(default\) do not mix"):
            resolve(mixed, model)
    finally:
        unregister("toy")
