"""Plan errors name the line of the offending field (workbench.plan._json_positions), found with
public APIs only: a small tokenizer of plan.py's own plus json.loads for string values (issue 12:
it used to rely on json.decoder.scanstring and json.scanner.NUMBER_RE, private names)."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.errors import PlanError
from workbench.plan import _json_positions, plan_from_json

PLAN_PY = Path(__file__).resolve().parents[1] / "workbench" / "plan.py"


def _error_lines(text: str) -> dict[str, int]:
    """field -> line, from the PlanError of `text` (lines 'p.json:LINE: FIELD: ...')."""
    with pytest.raises(PlanError) as err:
        plan_from_json(text, "p.json")
    found = re.findall(r"p\.json:(\d+): ([^:]+):", str(err.value))
    return {field: int(line) for line, field in found}


def test_nested_group_and_escaped_key_errors_name_their_lines() -> None:
    # A field three levels down in a list item (groups[1].config.prune.amount), a key written with
    # a \u escape and an escaped quote before it on the same line, tabs and CRLF line ends.
    text = ('{\r\n'
            '\t"groups": [\r\n'
            '\t\t{"role": "ffn", "config": {"rank": 4}},\r\n'
            '\t\t{"role": "attention",\r\n'
            '\t\t "config": {"prune": {"structure": "heads",\r\n'
            '\t\t                      "amount": 1.5}}}\r\n'
            '\t],\r\n'
            '\t"layers": {"x\\"y": "skip", "blocks.\\u0030.ffn1.fc1": {"quant": {"weight_bits": 0}}}\r\n'
            '}\r\n')
    lines = _error_lines(text)
    assert lines["groups[1].config.prune.amount"] == 6, lines
    assert lines["layers['blocks.0.ffn1.fc1'].quant.weight_bits"] == 8, lines


def test_missing_field_points_at_its_parent() -> None:
    text = '{\n "groups": [\n  {"config": {"rank": 4}}\n ]\n}\n'
    lines = _error_lines(text)
    assert lines == {"groups[0].role": 3}, lines


# JSON documents of any shape; json.dumps writes them with several layouts.
_leaf = (st.none() | st.booleans() | st.integers() | st.text(max_size=8)
         | st.floats(allow_nan=False, allow_infinity=False))
_docs = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=25)


@settings(max_examples=300, deadline=None, database=None)
@given(_docs, st.sampled_from([None, 0, 2, "\t"]), st.booleans())
def test_every_position_starts_its_key_or_value(doc, indent, ascii_only) -> None:
    text = json.dumps(doc, indent=indent, ensure_ascii=ascii_only)
    positions = _json_positions(text)
    decoder = json.JSONDecoder()

    def walk(node, path):
        assert path in positions, path
        # a dict entry's position is its key's; anything else starts the value itself
        at_key = bool(path) and isinstance(parent_of[path], dict)
        got, _ = decoder.raw_decode(text[positions[path]:])
        assert got == (path[-1] if at_key else node), (path, text)
        if isinstance(node, dict):
            for k, v in node.items():
                parent_of[path + (k,)] = node
                walk(v, path + (k,))
        elif isinstance(node, list):
            for n, v in enumerate(node):
                parent_of[path + (n,)] = node
                walk(v, path + (n,))

    parent_of: dict = {}
    walk(doc, ())
    assert len(positions) == len(parent_of) + 1     # nothing more than the paths of the doc


def test_plan_module_uses_no_private_json_names() -> None:
    tree = ast.parse(PLAN_PY.read_text())
    private = [f"{node.module} line {node.lineno}" for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and node.module
               and node.module.startswith("json.")]
    private += [f"json.{node.attr} line {node.lineno}" for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "json" and node.attr in ("decoder", "scanner", "encoder")]
    assert not private, f"plan.py uses json internals: {private}"
