"""docs/plan_format.md stays true to the shipped JSON Schema and the parser."""
import json
import re
from pathlib import Path

from workbench.models import WhisperCTC
from workbench.plan import SCHEMA_PATH, json_schema, plan_from_json
from workbench.compress.resolution import resolve

DOC = Path(__file__).resolve().parents[1] / "docs" / "plan_format.md"


def test_every_schema_field_is_documented():
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema == json_schema()                       # the shipped file is current
    text = DOC.read_text()
    fields = set(schema["properties"])
    for definition in schema["$defs"].values():
        fields |= set(definition["properties"])
    missing = sorted(f for f in fields if f"`{f}`" not in text)
    assert missing == []


def test_documented_example_is_a_valid_plan_for_whisper():
    example = re.search(r"```json\n(.*?)```", DOC.read_text(), re.S).group(1)
    plan = plan_from_json(example, "plan_format.md")
    resolved = resolve(plan, WhisperCTC())
    assert resolved["blocks.0.mlp.fc1"].quant.weight_bits == 4
    assert resolved["blocks.3.mlp.fc2"].rank == 128
    assert "ctc_head.proj_in" not in resolved            # "skip" on the ancestor path
    assert resolved["blocks.1.attn"].prune.structure == "heads"
    assert "blocks.2.attn" not in resolved               # heads pruned in blocks 0-1 only
