"""CompressionPlan: validation, JSON round trip, schema, resolution order, clear errors."""
from __future__ import annotations

import json

import jsonschema
import pydantic
import pytest
from torch import nn

from workbench.compress import presets
from workbench.errors import PlanError
from workbench.models import model_fingerprint
from workbench.models.layers import FeedForward, MultiHeadSelfAttention
from workbench.compress.targets import find_targets
from workbench.plan import (SCHEMA_PATH, SKIP, CompressionPlan, GroupEntry, LayerConfig,
                            PruneConfig, QuantConfig, json_schema, plan_from_json, schema_text)
from workbench.compress.resolution import plan_for_model, resolve

INT8 = LayerConfig(quant=QuantConfig(weight_bits=8))
INT4 = LayerConfig(quant=QuantConfig(weight_bits=4, granularity="per_block"))
HEADS = LayerConfig(prune=PruneConfig(amount=0.5, structure="heads"))


@pytest.fixture(scope="module")
def conformer(tiny_conformer) -> nn.Module:
    return tiny_conformer


def _rich_plan() -> CompressionPlan:
    return CompressionPlan(
        model_fingerprint="f" * 64,
        default=INT8,
        groups=(GroupEntry(role="ffn", blocks=(1, 0), config=INT4),
                GroupEntry(role="attention", config=HEADS)),
        layers={"blocks.0.attn.q_proj": LayerConfig(rank=8, quant=QuantConfig(weight_bits=None,
                                                                              act_bits=8)),
                "blocks.1": SKIP,
                "blocks.*.conv.pointwise?": LayerConfig(
                    quant=QuantConfig(weight_bits=6, granularity="per_tensor", symmetric=False)),
                "ctc_head": LayerConfig(prune=PruneConfig(amount=0.3, importance="taylor"))})


def test_json_round_trip_is_identity() -> None:
    plan = _rich_plan()
    text = plan.to_json()
    again = CompressionPlan.from_json(text)
    assert again == plan
    assert again.to_json() == text
    assert hash(again) == hash(plan)
    assert plan.groups[0].blocks == (0, 1)  # block lists are normalised (sorted, unique)
    for factory in presets.PRESETS.values():
        assert CompressionPlan.from_json(factory().to_json()) == factory()


def test_shipped_schema_is_current_and_validates_plans() -> None:
    assert SCHEMA_PATH.read_text() == schema_text(), "run `python -m workbench.plan`"
    schema = json_schema()
    jsonschema.validate(json.loads(_rich_plan().to_json()), schema)
    for bad in ({"default": {"quant": {"weight_bits": 33}}},
                {"layers": {"blocks.0.attn": {"prune": {"amount": 1.2}}}},
                {"layers": {"x": "skipp"}}, {"format_version": 2}, {"defaults": {}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


@pytest.mark.parametrize("kwargs", [
    {"quant": {"weight_bits": 0}}, {"quant": {"weight_bits": 33}},
    {"quant": {"act_bits": 4}}, {"quant": {"granularity": "per_row"}},
    {"prune": {"amount": 1.2}}, {"prune": {"amount": -0.1}},
    {"prune": {"amount": 0.5, "structure": "rows"}}, {"prune": {"amount": 0.5, "importance": "l3"}},
    {"rank": 0}, {"energy": 1.5}, {"rank": 4, "energy": 0.9}, {"bits": 8},
])
def test_invalid_values_are_rejected(kwargs: dict) -> None:
    with pytest.raises(PlanError):  # Python-built plans raise PlanError like plan files
        LayerConfig.model_validate(kwargs)


def test_json_errors_name_line_and_field() -> None:
    text = ('{\n  "default": {"quant": {"weight_bits": 8}},\n  "layers": {\n'
            '    "blocks.0.attn": {"prune": {"amount": 1.2, "structure": "heads"}},\n'
            '    "blocks.0.ffn1.fc1": {"quant": {"weight_bits": 0}}\n  }\n}\n')
    with pytest.raises(PlanError) as err:
        plan_from_json(text, "my_plan.json")
    message = str(err.value)
    assert "my_plan.json:4: layers['blocks.0.attn'].prune.amount" in message
    assert "my_plan.json:5: layers['blocks.0.ffn1.fc1'].quant.weight_bits" in message
    with pytest.raises(PlanError, match=r"my_plan.json:2:\d+: not valid JSON"):
        plan_from_json('{\n  "default": ,\n}', "my_plan.json")


def test_frozen_and_immutable_edits(conformer: nn.Module) -> None:
    plan = presets.int8_everywhere()
    with pytest.raises(pydantic.ValidationError):
        plan.default = INT4
    edited = plan.with_layer("blocks.0.attn", HEADS)
    assert plan.layers == {} and edited.layers == {"blocks.0.attn": HEADS}
    assert edited.with_layer("blocks.0.attn", None) == plan
    grouped = plan.with_group("attention", INT4, blocks=range(0, 1))
    assert grouped.with_group("attention", INT8, blocks=[0]).groups[0].config == INT8
    assert len(grouped.with_group("attention", INT8).groups) == 2
    assert grouped.with_group("attention", None, blocks=[0]) == plan
    resolved = resolve(grouped, conformer)
    assert resolved["blocks.0.attn.q_proj"].quant.weight_bits == 4
    assert resolved["blocks.1.attn.q_proj"].quant.weight_bits == 8
    assert resolved["blocks.0.ffn1.fc1"].quant.weight_bits == 8


def test_resolution_order(conformer: nn.Module) -> None:
    plan = CompressionPlan(
        default=INT8,
        groups=(GroupEntry(role="attention", config=LayerConfig(
            quant=QuantConfig(weight_bits=6), prune=PruneConfig(amount=0.25, structure="heads"))),),
        layers={"blocks.*": LayerConfig(quant=QuantConfig(weight_bits=5)),
                "blocks.*.attn.*_proj": LayerConfig(quant=QuantConfig(weight_bits=4)),
                "blocks.0.attn.v_proj": LayerConfig(quant=QuantConfig(weight_bits=3)),
                "blocks.1.conv": SKIP, "blocks.1.conv.depthwise": INT8})
    r = resolve(plan, conformer)
    assert r["blocks.0.attn.v_proj"].quant.weight_bits == 3         # explicit path
    assert r["blocks.0.attn.q_proj"].quant.weight_bits == 4         # most specific pattern
    assert r["blocks.0.ffn1.fc1"].quant.weight_bits == 5            # less specific pattern
    assert r["blocks.0.attn"].prune.amount == 0.25                  # group (patterns set no prune)
    assert r["ctc_head"].quant.weight_bits == 8                     # default
    assert "blocks.1.conv.pointwise1" not in r                      # skip of an ancestor
    assert r["blocks.1.conv.depthwise"] == INT8                     # explicit beats ancestor skip
    assert "blocks.1.conv" not in r
    # A skip group stops the default for its targets only.
    skipped = presets.int8_everywhere().with_group("head", SKIP)
    assert "ctc_head" not in resolve(skipped, conformer)
    assert "subsample.proj" in resolve(skipped, conformer)


def test_unknown_path_lists_close_matches(conformer: nn.Module) -> None:
    plan = CompressionPlan(layers={"blocks.0.atn.q_proj": INT8})
    with pytest.raises(PlanError, match=r"no module 'blocks.0.atn.q_proj'.*blocks.0.attn.q_proj"):
        resolve(plan, conformer)
    with pytest.raises(PlanError, match="matches no layer"):
        resolve(CompressionPlan(layers={"encoder.*": INT8}), conformer)


@pytest.mark.parametrize("layers, field", [
    ({"blocks.0.ffn1": HEADS}, r"layers\['blocks.0.ffn1'\].prune.structure.*'neurons'"),
    ({"blocks.0.attn": LayerConfig(prune=PruneConfig(amount=0.5, structure="neurons"))},
     r"layers\['blocks.0.attn'\].prune.structure.*'heads'"),
    ({"blocks.0.attn.q_proj": HEADS}, r"prune.structure.*'unstructured'"),
    ({"blocks.0.ffn1": INT8}, r"layers\['blocks.0.ffn1'\].quant"),
    ({"blocks.0.conv.depthwise": LayerConfig(rank=2)}, r"\.rank: low rank applies to Linear"),
    ({"blocks.0.ffn1.fc1": LayerConfig(rank=65)}, r"\.rank: 65 is above min\(in, out\) = 64"),
    ({"blocks.0.ffn1_ln": INT8}, r"LayerNorm, which a plan cannot compress"),
    ({"blocks.*.ffn?": HEADS}, r"layers\['blocks.\*.ffn\?'\].prune.structure: applies to none"),
])
def test_misplaced_techniques_name_layer_and_field(conformer: nn.Module, layers: dict,
                                                   field: str) -> None:
    with pytest.raises(PlanError, match=field):
        resolve(CompressionPlan(layers=layers), conformer)


def test_head_pruning_group_on_ffn_is_rejected(conformer: nn.Module) -> None:
    plan = CompressionPlan().with_group("ffn", HEADS)
    with pytest.raises(PlanError, match=r"groups\[0\].prune.structure: applies to none"):
        resolve(plan, conformer)


def test_unstructured_with_low_rank_on_one_layer_is_rejected(conformer: nn.Module) -> None:
    plan = CompressionPlan(default=LayerConfig(prune=PruneConfig(amount=0.5)),
                           layers={"ctc_head": LayerConfig(rank=4)})
    with pytest.raises(PlanError, match="ctc_head: unstructured pruning"):
        resolve(plan, conformer)


def test_fingerprint_mismatch_and_force(conformer: nn.Module, whisper_small: nn.Module) -> None:
    plan = plan_for_model(presets.int8_everywhere(), whisper_small)
    assert plan.model_fingerprint == model_fingerprint(whisper_small)
    assert resolve(plan, whisper_small)
    with pytest.raises(PlanError, match="model_fingerprint: the plan was made for another model"
                                        ".*force=True"):
        resolve(plan, conformer)
    assert resolve(plan, conformer, force=True)["ctc_head"].quant.weight_bits == 8


def test_presets_resolve_on_both_families(conformer: nn.Module, whisper_small: nn.Module) -> None:
    for model in (conformer, whisper_small):
        n_linear = sum(isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) for m in model.modules())
        assert len(resolve(presets.int8_everywhere(), model)) == n_linear
        ffn = resolve(presets.prune_ffn_neurons(0.5), model)
        assert ffn and all(t == "ffn" for t in
                           (find_targets(model)[p].kind for p in ffn))
        mixed = resolve(presets.int4_ffn_int8_attention(), model)
        roles = {p: t.role for p, t in find_targets(model).items()}
        for path, cfg in mixed.items():
            assert cfg.quant.weight_bits == (4 if roles[path] == "ffn" else 8), path


class _TinyEncoder(nn.Module):
    """A model with no ROLES table: roles and kinds must be found by duck typing."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleDict({"attn": MultiHeadSelfAttention(16, 4),
                                                   "ffn": FeedForward(16, 32)}) for _ in range(2))
        self.out = nn.Linear(16, 5)


def test_any_module_of_known_layers_works() -> None:
    targets = find_targets(_TinyEncoder())
    assert targets["layers.1.attn"].kind == "attention"
    assert targets["layers.1.attn.q_proj"].role == "attention"
    assert targets["layers.0.ffn.fc2"].role == "ffn" and targets["layers.0.ffn.fc2"].block == 0
    assert targets["out"].role == "other" and targets["out"].block is None
    resolved = resolve(presets.prune_attention_heads(0.5), _TinyEncoder())
    assert set(resolved) == {"layers.0.attn", "layers.1.attn"}
