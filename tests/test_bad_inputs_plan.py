"""Bad plan inputs: each one gets a PlanError naming the input (file:line, field or value), never a
traceback or a silent plan. Property tests feed random JSON and random bytes to the parser."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.errors import PlanError, WorkbenchError
from workbench.plan import (MAX_PLAN_BYTES, CompressionPlan, GroupEntry, LayerConfig, PruneConfig,
                            QuantConfig, plan_from_file, plan_from_json)
from workbench.compress.resolution import resolve


@pytest.fixture(scope="module")
def model(tiny_conformer):
    return tiny_conformer


# (case id, plan JSON text, substrings the message must contain)
JSON_CASES = [
    ("nan-literal", '{"default": {"energy": NaN}}', ["p.json:1", "NaN"]),
    ("infinity-literal", '{"default": {"prune": {"amount": Infinity}}}', ["p.json:1", "Infinity"]),
    ("minus-infinity", '{"default": {"rank": -Infinity}}', ["-Infinity"]),
    ("nan-on-line-3", '{\n "default": {\n  "energy": NaN}}', ["p.json:3", "NaN"]),
    ("deep-arrays", "[" * 100_000 + "]" * 100_000, ["p.json:1", "nested more than"]),
    ("deep-objects", '{"a":' * 50_000 + "1" + "}" * 50_000, ["nested more than"]),
    ("deep-unclosed", "[" * 100_000, ["nested more than"]),
    ("rank-5000-digits", '{"default": {"rank": ' + "9" * 5000 + "}}", ["5,000 digits"]),
    ("amount-5000-digits", '{"default": {"prune": {"amount": ' + "1" * 5000 + "}}}",
     ["5,000 digits"]),
    ("block-5000-digits", '{"groups": [{"role": "ffn", "blocks": [' + "9" * 5000 +
     '], "config": "skip"}]}', ["5,000 digits"]),
    ("float-5000-digits", '{"default": {"energy": 0.' + "1" * 5000 + "}}", ["characters"]),
    ("float-overflow", '{"default": {"energy": 1e999}}', ["1e999", "finite"]),
    ("duplicate-key", '{"default": {"rank": 2, "rank": 3}}', ["'rank'", "twice"]),
    ("duplicate-top-key", '{"default": {}, "default": {"rank": 3}}', ["'default'", "twice"]),
    ("duplicate-layer", '{"layers": {"blocks.0": "skip",\n "blocks.0": "skip"}}',
     ["'blocks.0'", "twice"]),
    ("rank-true", '{"default": {"rank": true}}', ["default.rank", "bool"]),
    ("rank-false", '{"default": {"rank": false}}', ["default.rank", "bool"]),
    ("bits-true", '{"default": {"quant": {"weight_bits": true}}}', ["default.quant.weight_bits"]),
    ("amount-true", '{"default": {"prune": {"amount": true}}}', ["default.prune.amount", "bool"]),
    ("energy-true", '{"default": {"energy": true}}', ["default.energy", "bool"]),
    ("symmetric-1", '{"default": {"quant": {"symmetric": 1}}}', ["default.quant.symmetric"]),
    ("symmetric-str", '{"default": {"quant": {"symmetric": "yes"}}}', ["default.quant.symmetric"]),
    ("amount-string", '{"default": {"prune": {"amount": "0.5"}}}', ["default.prune.amount", "str"]),
    ("rank-string", '{"default": {"rank": "4"}}', ["default.rank", "str"]),
    ("rank-fraction", '{"default": {"rank": 4.5}}', ["default.rank", "4.5"]),
    ("rank-list", '{"default": {"rank": [4]}}', ["default.rank"]),
    ("rank-zero", '{"default": {"rank": 0}}', ["default.rank", "got 0"]),
    ("rank-negative", '{"default": {"rank": -3}}', ["default.rank", "-3"]),
    ("rank-absurd", '{"default": {"rank": 123456789012}}', ["default.rank"]),
    ("energy-zero", '{"default": {"energy": 0}}', ["default.energy"]),
    ("energy-above-1", '{"default": {"energy": 1.5}}', ["default.energy", "1.5"]),
    ("rank-and-energy", '{"default": {"rank": 4, "energy": 0.9}}', ["default", "rank or energy"]),
    ("amount-negative", '{"default": {"prune": {"amount": -0.1}}}', ["default.prune.amount"]),
    ("amount-one", '{"default": {"prune": {"amount": 1.0}}}', ["default.prune.amount", "0.95"]),
    ("amount-missing", '{"default": {"prune": {}}}', ["default.prune.amount"]),
    ("bits-9", '{"default": {"quant": {"weight_bits": 9}}}', ["weight_bits", "got 9"]),
    ("bits-negative", '{"default": {"quant": {"weight_bits": -8}}}', ["weight_bits", "-8"]),
    ("bits-32", '{"default": {"quant": {"weight_bits": 32}}}', ["weight_bits", "32"]),
    ("act-bits-4", '{"default": {"quant": {"act_bits": 4}}}', ["act_bits"]),
    ("granularity-typo", '{"default": {"quant": {"granularity": "per_row"}}}', ["granularity"]),
    ("structure-typo", '{"default": {"prune": {"amount": 0.5, "structure": "rows"}}}',
     ["structure"]),
    ("importance-typo", '{"default": {"prune": {"amount": 0.5, "importance": "l3"}}}',
     ["importance"]),
    ("unknown-top-field", '{"defualt": {}}', ["defualt", "Extra"]),
    ("unknown-entry-field", '{"default": {"rnak": 3}}', ["default.rnak"]),
    ("unknown-quant-field", '{"default": {"quant": {"bits": 4}}}', ["default.quant.bits"]),
    ("unknown-group-field", '{"groups": [{"role": "ffn", "config": "skip", "block": [0]}]}',
     ["groups[0].block"]),
    ("top-level-list", "[]", ["(top level)"]),
    ("top-level-string", '"plan"', ["(top level)"]),
    ("top-level-null", "null", ["(top level)"]),
    ("top-level-number", "3", ["(top level)"]),
    ("empty-text", "", ["p.json:1:1", "not valid JSON"]),
    ("only-whitespace", "  \n  ", ["p.json:2", "not valid JSON"]),
    ("utf8-bom", "\ufeff{}", ["p.json:1", "BOM"]),
    ("trailing-garbage", "{} x", ["p.json:1:4", "Extra data"]),
    ("truncated", '{"default": {"rank": 4', ["p.json:1", "not valid JSON"]),
    ("single-quotes", "{'default': {}}", ["p.json:1", "not valid JSON"]),
    ("trailing-comma", '{"default": {},}', ["p.json:1", "not valid JSON"]),
    ("comment", '{"default": {} // int8\n}', ["p.json:1", "not valid JSON"]),
    ("format-version-2", '{"format_version": 2}', ["format_version", "got 2"]),
    ("format-version-string", '{"format_version": "1"}', ["format_version"]),
    ("fingerprint-number", '{"model_fingerprint": 3}', ["model_fingerprint"]),
    ("fingerprint-huge", '{"model_fingerprint": "' + "a" * 1000 + '"}', ["model_fingerprint"]),
    ("groups-object", '{"groups": {}}', ["groups"]),
    ("groups-string", '{"groups": "ffn"}', ["groups"]),
    ("group-role-typo", '{"groups": [{"role": "ffnn", "config": "skip"}]}',
     ["groups[0].role", "ffnn"]),
    ("group-no-config", '{"groups": [{"role": "ffn"}]}', ["groups[0].config"]),
    ("group-config-null", '{"groups": [{"role": "ffn", "config": null}]}', ["groups[0].config"]),
    ("group-blocks-negative", '{"groups": [{"role": "ffn", "blocks": [-1], "config": "skip"}]}',
     ["groups[0].blocks", "-1"]),
    ("group-blocks-bool", '{"groups": [{"role": "ffn", "blocks": [true], "config": "skip"}]}',
     ["groups[0].blocks[0]", "bool"]),
    ("group-blocks-string", '{"groups": [{"role": "ffn", "blocks": "0-1", "config": "skip"}]}',
     ["groups[0].blocks"]),
    ("group-blocks-int", '{"groups": [{"role": "ffn", "blocks": 0, "config": "skip"}]}',
     ["groups[0].blocks"]),
    ("group-blocks-10000", '{"groups": [{"role": "ffn", "blocks": [10000], "config": "skip"}]}',
     ["groups[0].blocks", "10000"]),
    ("layers-list", '{"layers": []}', ["layers"]),
    ("layer-value-number", '{"layers": {"blocks.0": 3}}', ["layers['blocks.0']", "got 3"]),
    ("layer-value-skip-typo", '{"layers": {"blocks.0": "skipp"}}', ["layers['blocks.0']", "skipp"]),
    ("layer-value-null", '{"layers": {"blocks.0": null}}', ["layers['blocks.0']"]),
    ("layer-key-empty", '{"layers": {"": "skip"}}', ["layers", "layer key ''"]),
    ("layer-key-space", '{"layers": {"blocks.0 .attn": "skip"}}', ["blocks.0 .attn"]),
    ("layer-key-surrogate", '{"layers": {"\\ud800": "skip"}}', ["layers", "\\ud800"]),
    ("layer-key-nul", '{"layers": {"a\\u0000": "skip"}}', ["layers", "a\\x00"]),
    ("layer-key-long", '{"layers": {"' + "a" * 400 + '": "skip"}}', ["layers", "aaaa"]),
    ("control-char-in-key", '{"layers": {"a\tb": "skip"}}', ["p.json:1", "control character"]),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in JSON_CASES],
                         ids=[c[0] for c in JSON_CASES])
def test_bad_plan_json_is_one_plan_error(text: str, expected: list[str]) -> None:
    with pytest.raises(PlanError) as err:
        plan_from_json(text, "p.json")
    message = str(err.value)
    for part in expected:
        assert part in message, (part, message)
    assert "Traceback" not in message


# (case id, bytes, substrings)
BYTES_CASES = [
    ("latin1-byte", b'{"layers": {"caf\xe9": "skip"}}', ["p.json:1", "not UTF-8", "byte 16"]),
    ("invalid-utf8-line-2", b'{\n"default": {"rank": \xff}}', ["p.json:2", "not UTF-8"]),
    ("utf16-file", '{"default": {}}'.encode("utf-16"), ["p.json:1", "not UTF-8"]),
    ("oversized-bytes", b" " * (MAX_PLAN_BYTES + 1) + b"{}", ["p.json", "at most"]),
]


@pytest.mark.parametrize("data,expected", [c[1:] for c in BYTES_CASES],
                         ids=[c[0] for c in BYTES_CASES])
def test_bad_plan_bytes_is_one_plan_error(data: bytes, expected: list[str]) -> None:
    with pytest.raises(PlanError) as err:
        plan_from_json(data, "p.json")
    for part in expected:
        assert part in str(err.value), (part, str(err.value))


def test_plan_file_too_large_is_refused_before_reading(tmp_path) -> None:
    path = tmp_path / "huge.json"
    with path.open("wb") as f:  # sparse: 5 GB on paper, nothing on disk
        f.truncate(5_000_000_000)
    with pytest.raises(PlanError) as err:
        plan_from_file(path)
    assert str(path) in str(err.value) and "5,000,000,000 bytes" in str(err.value)


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_plan_file_missing_or_folder(tmp_path, kind: str) -> None:
    path = tmp_path / "plan.json"
    if kind == "folder":
        path.mkdir()
    with pytest.raises(PlanError) as err:
        plan_from_file(path)
    assert str(path) in str(err.value)


def test_plan_not_text_is_refused() -> None:
    with pytest.raises(PlanError) as err:
        plan_from_json(123, "p.json")  # type: ignore[arg-type]
    assert "p.json" in str(err.value) and "int" in str(err.value)


# ---- Python-built plans ----------------------------------------------------------------------
PYTHON_CASES = [
    ("LayerConfig-rank-true", lambda: LayerConfig(rank=True), "LayerConfig.rank"),
    ("LayerConfig-rank-string", lambda: LayerConfig(rank="8"), "LayerConfig.rank"),
    ("LayerConfig-rank-nan", lambda: LayerConfig(rank=float("nan")), "LayerConfig.rank"),
    ("LayerConfig-energy-nan", lambda: LayerConfig(energy=float("nan")), "LayerConfig.energy"),
    ("LayerConfig-energy-inf", lambda: LayerConfig(energy=float("inf")), "LayerConfig.energy"),
    ("LayerConfig-unknown-kwarg", lambda: LayerConfig(bits=8), "LayerConfig.bits"),
    ("LayerConfig-quant-int", lambda: LayerConfig(quant=8), "LayerConfig.quant"),
    ("PruneConfig-amount-nan", lambda: PruneConfig(amount=float("nan")), "PruneConfig.amount"),
    ("PruneConfig-amount-inf", lambda: PruneConfig(amount=float("inf")), "PruneConfig.amount"),
    ("PruneConfig-amount-none", lambda: PruneConfig(amount=None), "PruneConfig.amount"),
    ("PruneConfig-no-amount", lambda: PruneConfig(), "PruneConfig.amount"),
    ("QuantConfig-bits-3.5", lambda: QuantConfig(weight_bits=3.5), "QuantConfig.weight_bits"),
    ("QuantConfig-symmetric-str", lambda: QuantConfig(symmetric="no"), "QuantConfig.symmetric"),
    ("GroupEntry-role-typo", lambda: GroupEntry(role="atention", config="skip"),
     "GroupEntry.role"),
    ("Plan-layers-value", lambda: CompressionPlan(layers={"blocks.0": 3}), "layers"),
    ("Plan-layers-key-int", lambda: CompressionPlan(layers={0: "skip"}), "layers"),
    ("Plan-default-string", lambda: CompressionPlan(default="int8"), "CompressionPlan.default"),
    ("with_group-config-int", lambda: CompressionPlan().with_group("ffn", 3), "config"),
    ("with_group-role-typo", lambda: CompressionPlan().with_group("fnn", "skip"), "role"),
    ("with_group-blocks-int", lambda: CompressionPlan().with_group("ffn", "skip", blocks=3),
     "blocks"),
    ("with_layer-config-str", lambda: CompressionPlan().with_layer("blocks.0", "int8"), "blocks.0"),
    ("with_default-dict-typo", lambda: CompressionPlan().with_default({"rnak": 2}), "rnak"),
    ("model_validate-list", lambda: CompressionPlan.model_validate([]), "CompressionPlan"),
]


@pytest.mark.parametrize("build,expected", [c[1:] for c in PYTHON_CASES],
                         ids=[c[0] for c in PYTHON_CASES])
def test_bad_python_built_plan_is_plan_error(build, expected: str) -> None:
    with pytest.raises(PlanError) as err:
        build()
    assert expected in str(err.value), str(err.value)


# ---- plans that parse but do not fit the model: refused at resolve time ----------------------
RESOLVE_CASES = [
    ("group-block-99", {"groups": [{"role": "ffn", "blocks": [99],
                                    "config": {"quant": {"weight_bits": 8}}}]},
     ["groups[0].blocks", "[99]", "blocks 0..1"]),
    ("group-block-2-of-2", {"groups": [{"role": "attention", "blocks": [0, 2], "config": "skip"}]},
     ["groups[0].blocks", "[2]"]),
    ("unknown-path", {"layers": {"blocks.0.atn": "skip"}}, ["blocks.0.atn", "Did you mean"]),
    ("pattern-matches-nothing", {"layers": {"encoder.*": {"quant": {"weight_bits": 8}}}},
     ["encoder.*", "matches no layer"]),
    ("rank-above-layer", {"layers": {"blocks.0.attn.q_proj": {"rank": 4096}}},
     ["blocks.0.attn.q_proj", "rank", "4096"]),
    ("heads-on-linear", {"layers": {"blocks.0.attn.q_proj": {
        "prune": {"amount": 0.5, "structure": "heads"}}}}, ["blocks.0.attn.q_proj", "heads"]),
    ("quant-on-attention", {"layers": {"blocks.0.attn": {"quant": {"weight_bits": 8}}}},
     ["blocks.0.attn", "quant"]),
    ("fingerprint-mismatch", {"model_fingerprint": "0" * 64}, ["model_fingerprint", "000000000000"]),
]


@pytest.mark.parametrize("data,expected", [c[1:] for c in RESOLVE_CASES],
                         ids=[c[0] for c in RESOLVE_CASES])
def test_plan_for_another_model_is_refused_at_resolve(model, data, expected: list[str]) -> None:
    plan = plan_from_json(json.dumps(data), "p.json")
    with pytest.raises(PlanError) as err:
        resolve(plan, model)
    for part in expected:
        assert part in str(err.value), (part, str(err.value))


def test_rank_written_as_whole_float_is_accepted(model) -> None:
    """4.0 is the integer 4 (handled correctly, not refused)."""
    plan = plan_from_json('{"layers": {"blocks.0.attn.q_proj": {"rank": 4.0}}}')
    assert resolve(plan, model)["blocks.0.attn.q_proj"].rank == 4


# ---- property tests: the parser returns a plan or raises PlanError, nothing else --------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)

entry_values = st.one_of(
    st.just("skip"), st.text(max_size=8),
    st.fixed_dictionaries({}, optional={
        "rank": json_values, "energy": json_values,
        "prune": st.fixed_dictionaries({}, optional={
            "amount": json_values, "structure": st.sampled_from(["heads", "neurons", "x"]),
            "importance": json_values}),
        "quant": st.fixed_dictionaries({}, optional={
            "weight_bits": st.sampled_from([None, 2, 4, 8, 9, True, "8"]) | json_values,
            "act_bits": json_values, "symmetric": json_values,
            "granularity": st.sampled_from(["per_channel", "per_block", "x"])})}))

plan_shaped = st.fixed_dictionaries({}, optional={
    "format_version": st.sampled_from([1, 2, "1", None]),
    "model_fingerprint": st.none() | st.text(max_size=10) | st.integers(),
    "default": entry_values,
    "groups": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["ffn", "attention", "conv", "x"]), "config": entry_values},
        optional={"blocks": st.none() | st.lists(st.integers(-3, 20_000) | st.booleans(),
                                                 max_size=4)}), max_size=3),
    "layers": st.dictionaries(st.sampled_from(["blocks.0.attn", "blocks.*.mlp", "", "a b", "x"])
                              | st.text(max_size=10), entry_values, max_size=3),
    "extra": json_values})


def _parse_or_plan_error(text: str | bytes, model) -> None:
    try:
        plan = plan_from_json(text, "p.json")
    except PlanError as err:
        assert str(err).strip(), "empty error message"
        return
    assert isinstance(plan, CompressionPlan)
    assert CompressionPlan.from_json(plan.to_json()) == plan  # a valid plan round-trips
    try:
        resolve(plan, model)
    except PlanError:
        pass


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_random_json_gives_plan_or_plan_error(model, value) -> None:
    _parse_or_plan_error(json.dumps(value), model)


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(plan_shaped)
def test_random_plan_shaped_json_gives_plan_or_plan_error(model, value) -> None:
    _parse_or_plan_error(json.dumps(value), model)


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=200))
def test_random_bytes_give_plan_or_plan_error(model, data: bytes) -> None:
    _parse_or_plan_error(data, model)


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(alphabet=st.sampled_from('{}[]",:0123456789.eE-+ tnrufalsNIy\\'), max_size=60))
def test_random_json_like_text_gives_plan_or_plan_error(model, text: str) -> None:
    _parse_or_plan_error(text, model)


def test_plan_error_is_a_workbench_error() -> None:
    assert issubclass(PlanError, WorkbenchError)


def test_too_many_groups_refused() -> None:
    groups = ", ".join(['{"role": "ffn", "config": "skip"}'] * 10_001)
    with pytest.raises(PlanError) as err:
        plan_from_json('{"groups": [' + groups + "]}", "p.json")
    assert "groups" in str(err.value) and "10000" in str(err.value).replace(",", "")
