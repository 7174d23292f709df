"""CompressionPlan: what to do to each layer of a model, as plain, validated, versioned data.

A plan maps module paths to per-layer settings, with a default, role groups ("all attention in
blocks 0-1") and fnmatch patterns. It never holds tensors; `workbench.compress.compress(model,
plan)` turns it into a compressed model and `workbench.size.size(model, plan)` prices it.

Targets (what an entry may name; found by duck typing in `workbench.compress.targets`):
Linear / Conv leaves ("blocks.0.attn.q_proj") take quant, unstructured pruning and (Linear
only) rank/energy; attention modules ("blocks.0.attn") take 'heads' pruning, FFN modules
("blocks.0.mlp") 'neurons', conformer conv modules ("blocks.0.conv") 'channels'.

Resolution, per target and per technique (prune, quant, low rank), first match wins:
    1. the entry for the target's own path;
    2. an explicit "skip" on an ancestor path ("blocks.3": "skip" keeps the whole block fp32);
    3. the most specific matching pattern (most literal characters; on a tie the later key);
    4. the last matching group (role + optional block indices);
    5. the default.
A level that says "skip" ends the search with nothing for every technique; a level that does not
set a technique passes the search on to the next level (so an int8 default still quantizes the
Linears of an FFN whose group only asks for neuron pruning). "No pruning" / "fp32" are stated
with `PruneConfig(amount=0)` / `QuantConfig(weight_bits=None)`.

Strictness, so a typo never silently does nothing: an explicit path must exist (else the error
lists close matches) and every technique it sets must apply to that module; a pattern must match
at least one target, and each technique it or a group sets must apply to at least one target it
matches. Default settings apply wherever they fit.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic.json_schema import SkipJsonSchema
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag,
                      ValidationError, field_validator, model_serializer, model_validator)

from workbench.errors import PlanError
from workbench.roles import ROLE_NAMES

#: Version of the JSON layout; bump it when a field changes meaning.
FORMAT_VERSION = 1
#: The entry value that leaves a layer (or everything under a path) untouched.
SKIP = "skip"
#: Where the JSON Schema of the plan ships (regenerate: `python -m workbench.plan`).
SCHEMA_PATH = Path(__file__).with_name("plan_schema.json")

RoleName = Literal[ROLE_NAMES]  # type: ignore[valid-type]  # "attention", "ffn", ...
Technique = Literal["prune", "quant", "low_rank"]
TECHNIQUES: tuple[Technique, ...] = ("prune", "quant", "low_rank")
#: Weight widths a plan can hold (QuantConfig.weight_bits; 16 = fp16 rounding). The one list: the
#: CLIs, the UI's bits choices and the quant control are built from WEIGHT_BITS.
WeightBits = Literal[2, 3, 4, 5, 6, 7, 8, 16]
WEIGHT_BITS: tuple[int, ...] = get_args(WeightBits)
#: Pruning structure that each structured target kind takes.
STRUCTURE_FOR_KIND = {"attention": "heads", "ffn": "neurons", "conv_module": "channels"}


#: Limits checked before parsing, so a hostile file costs no memory or recursion: a real plan is
#: a few kB (one entry per layer of the demo model is ~20 kB) and nests 5 levels deep.
MAX_PLAN_BYTES = 4_000_000
MAX_NESTING = 32
MAX_NUMBER_DIGITS = 30      # an int or float literal longer than this is no rank/amount/bits
MAX_BLOCK_INDEX = 9_999
MAX_KEY_CHARS = 300
#: Module paths and fnmatch patterns: word characters, dots, and the pattern characters.
_KEY_RE = re.compile(r"[\w.*?\[\]!\-]+")


def _not_bool_or_text(value: Any) -> Any:
    """Before a number field: refuse true/false and "4" (lax pydantic would make them 1 / 4)."""
    if isinstance(value, bool | str | bytes):
        raise ValueError(f"must be a number, not {type(value).__name__} {value!r}"[:120])
    return value


def _only_bool(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {value!r}"[:120])
    return value


Number = BeforeValidator(_not_bool_or_text)


class _RaisesPlanError(type(BaseModel)):
    """Python-built plans (`LayerConfig(rank=True)`) get the same PlanError as plan files.

    Done in the metaclass, not in `__init__`: pydantic calls an overridden `__init__` for nested
    models too, which would hide the JSON location of an error inside a plan file.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as err:
            raise PlanError(_python_errors(cls.__name__, err)) from None


class _Frozen(BaseModel, metaclass=_RaisesPlanError):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as err:
            raise PlanError(_python_errors(cls.__name__, err)) from None

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Any:
        """A copy with `update` applied, validated like construction (pydantic's own
        model_copy(update=...) skips validation, so `QuantConfig(...).model_copy(update=
        {"weight_bits": 9})` would build a config no plan can hold); PlanError names the field."""
        if not update:
            return super().model_copy(deep=deep)
        fields = {name: getattr(self, name) for name in type(self).model_fields}
        return type(self).model_validate({**fields, **update})


def _python_errors(name: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for i, x in enumerate(e["loc"]) if not _is_union_tag(e["loc"], i))
        parts.append(f"{name}.{loc}: {e['msg']} (got {short_repr(e.get('input'))})" if loc else
                     f"{name}: {e['msg']} (got {short_repr(e.get('input'))})")
    return "invalid compression plan: " + "; ".join(parts)


def _is_union_tag(loc: tuple[Any, ...], i: int) -> bool:
    """pydantic puts the LayerEntry union tag ("config" / "skip") after a group's config field or
    a layers key; it is not a field the user wrote."""
    return loc[i] in ("config", "skip") and i > 0 and (
        loc[i - 1] == "config" or (i >= 2 and loc[i - 2] == "layers"))


def short_repr(value: Any) -> str:
    """repr of a value, cut to 60 characters (for error messages)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class PruneConfig(_Frozen):
    """Remove a fraction of a layer's weights (unstructured) or of its heads/neurons/channels."""

    amount: Annotated[float, Number] = Field(ge=0.0, le=0.95,
                                             description="Fraction removed, 0..0.95.")
    structure: Literal["unstructured", "heads", "neurons", "channels"] = "unstructured"
    importance: Literal["magnitude", "taylor"] = Field(
        "magnitude", description="magnitude: L2 norm of the group's weights; taylor: sum of "
                                 "|w * dL/dw| with CTC-loss gradients on a calibration set.")


class QuantConfig(_Frozen):
    """Simulated (fake) quantization of a layer's weights, and optionally of its input."""

    weight_bits: WeightBits | None = Field(
        8, description="Bits per weight; 16 = fp16 rounding; null = fp32 weights.")
    granularity: Literal["per_channel", "per_tensor", "per_block"] = Field(
        "per_channel", description="Scales per output channel, per tensor, or per block of 32 "
                                   "inputs of each output channel (ONNX Runtime MatMulNBits).")
    symmetric: Annotated[bool, BeforeValidator(_only_bool)] = True
    act_bits: Literal[8] | None = Field(
        None, description="8: the layer's input is fake-quantized (per tensor, asymmetric) with "
                          "min/max observed on the calibration set; null: float input.")


#: Configs of techniques registered at run time (workbench.compress.techniques.register), by the
#: key a plan entry uses for them. The built-in techniques are LayerConfig's own fields.
_TECHNIQUE_CONFIGS: dict[str, type[BaseModel]] = {}
_BUILT_IN_FIELDS = ("prune", "quant", "rank", "energy")


def register_technique_config(name: str, config_type: type[BaseModel]) -> None:
    """Let plan entries carry `name: <config_type>` (called by the technique registry)."""
    if name in _BUILT_IN_FIELDS or name in TECHNIQUES or not name.isidentifier():
        raise PlanError(f"technique name {name!r}: must be an identifier that is not a built-in "
                        f"field ({', '.join(_BUILT_IN_FIELDS)}).")
    _TECHNIQUE_CONFIGS[name] = config_type


def unregister_technique_config(name: str) -> None:
    _TECHNIQUE_CONFIGS.pop(name, None)


class LayerConfig(_Frozen):
    """What to do to one target. Unset techniques fall through to less specific levels.

    A technique registered at run time (workbench.compress.techniques) is set under its own name,
    `LayerConfig(toy={...})` or `"toy": {...}` in a plan file; it is kept in `techniques` and
    written back flat. Any other unknown key is refused."""

    prune: PruneConfig | None = None
    quant: QuantConfig | None = None
    rank: Annotated[int, Number] | None = Field(None, ge=1, le=1_000_000, description=(
        "Low rank: keep this many singular values."))
    energy: Annotated[float, Number] | None = Field(None, gt=0.0, le=1.0, description=(
        "Low rank: keep the fewest singular values whose squares sum to this fraction."))
    #: (name, config) of registered techniques, sorted by name; not in the JSON Schema, which
    #: describes the built-in techniques.
    techniques: SkipJsonSchema[tuple[tuple[str, Any], ...]] = Field((), repr=False)

    @model_validator(mode="before")
    @classmethod
    def _registered_techniques(cls, data: Any) -> Any:
        """Move the keys of registered techniques into `techniques`, validated by their config
        type; unknown keys stay, so pydantic refuses them with their location."""
        if not isinstance(data, Mapping):
            return data
        out, found = {}, dict(data.get("techniques") or ())
        for key, value in data.items():
            if key == "techniques":
                continue
            if isinstance(key, str) and key in _TECHNIQUE_CONFIGS:
                found[key] = value
            else:
                out[key] = value
        settings = []
        for key, value in found.items():
            config_type = _TECHNIQUE_CONFIGS.get(key)
            if config_type is None:
                raise ValueError(f"technique {short_repr(key)} is not registered")
            if value is None:
                continue
            if not isinstance(value, config_type):
                try:
                    value = config_type.model_validate(value)
                except ValidationError as err:
                    raise ValueError(f"{key}: " + "; ".join(
                        f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
                        for e in err.errors())) from None
            settings.append((key, value))
        if settings:
            out["techniques"] = tuple(sorted(settings, key=lambda kv: kv[0]))
        return out

    @model_validator(mode="after")
    def _one_low_rank_setting(self) -> LayerConfig:
        if self.rank is not None and self.energy is not None:
            raise ValueError("set either rank or energy for low rank, not both")
        return self

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: Any) -> dict[str, Any]:
        # Unset techniques are left out of the JSON, so a plan file shows only what it changes;
        # registered techniques are written under their own names.
        data = handler(self)
        registered = data.pop("techniques", None) or ()
        out = {k: v for k, v in data.items() if v is not None}
        out.update({name: value for name, value in registered})
        return out

    def get(self, key: str) -> Any:
        """The value under `key`: a built-in field or a registered technique's config (or None)."""
        if key in _BUILT_IN_FIELDS:
            return getattr(self, key)
        return dict(self.techniques).get(key)

    def sets(self, technique: str) -> bool:
        if technique == "low_rank":
            return self.rank is not None or self.energy is not None
        return self.get(technique) is not None

    def is_empty(self) -> bool:
        return not any(self.sets(t) for t in TECHNIQUES) and not self.techniques

    def values(self) -> dict[str, Any]:
        """Every setting by key: the built-in fields (None = unset) and registered techniques."""
        return {**{f: getattr(self, f) for f in _BUILT_IN_FIELDS}, **dict(self.techniques)}

    def without(self, keys: Iterable[str]) -> LayerConfig:
        """A copy with the settings under `keys` removed."""
        keys = set(keys)
        return LayerConfig(**{k: v for k, v in self.values().items() if k not in keys})


def _entry_tag(value: Any) -> str:
    return "skip" if isinstance(value, str) else "config"


#: A plan entry: a LayerConfig, or the string "skip".
LayerEntry = Annotated[Annotated[LayerConfig, Tag("config")] | Annotated[Literal["skip"], Tag("skip")],
                       Discriminator(_entry_tag)]


class GroupEntry(_Frozen):
    """Settings for every target of a role ("attention", "ffn", ...), optionally in some blocks."""

    role: RoleName
    blocks: tuple[Annotated[int, Number], ...] | None = Field(
        None, max_length=10_000,
        description="Block indices; null = all blocks (and targets outside blocks).")
    config: LayerEntry

    @field_validator("blocks")
    @classmethod
    def _sorted_blocks(cls, blocks: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if blocks is not None and any(b < 0 or b > MAX_BLOCK_INDEX for b in blocks):
            raise ValueError(f"block indices must be 0..{MAX_BLOCK_INDEX}, got {list(blocks)}"
                             [:160])
        return None if blocks is None else tuple(sorted(set(blocks)))


def is_pattern(key: str) -> bool:
    return any(c in key for c in "*?[")


class CompressionPlan(_Frozen):
    """Per-layer compression settings; see the module docstring for resolution and validation."""

    format_version: Literal[1] = FORMAT_VERSION
    model_fingerprint: str | None = Field(None, max_length=200, description=(
        "Architecture id of the model the plan was made for; null = any."))
    default: LayerConfig = Field(default_factory=LayerConfig)
    groups: tuple[GroupEntry, ...] = Field((), max_length=10_000)
    layers: dict[str, LayerEntry] = Field(default_factory=dict, max_length=100_000, description=(
        "Module path or fnmatch pattern -> LayerConfig or \"skip\"."))

    @field_validator("layers")
    @classmethod
    def _clean_keys(cls, layers: dict[str, Any]) -> dict[str, Any]:
        for key in layers:
            if not isinstance(key, str) or len(key) > MAX_KEY_CHARS or not _KEY_RE.fullmatch(key):
                raise ValueError(f"layer key {short_repr(key)} must be a module path or pattern "
                                 f"(letters, digits, '_', '.', '*', '?', '[', ']', '!', '-'; no "
                                 f"spaces), like 'blocks.0.attn' or 'blocks.*.mlp'")
        return layers

    def __hash__(self) -> int:  # `layers` is a dict, so hash the canonical JSON instead
        return hash(self.to_json())

    # ---- JSON ------------------------------------------------------------------------------
    def to_json(self) -> str:
        """Canonical JSON text; `CompressionPlan.from_json(p.to_json()) == p`."""
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source_name: str = "<plan>") -> CompressionPlan:
        return plan_from_json(text, source_name)

    # ---- immutable edits (for the UI) ------------------------------------------------------
    def with_layer(self, path: str, config: LayerConfig | Literal["skip"] | None
                   ) -> CompressionPlan:
        """A new plan with `path`'s entry set (None removes the entry)."""
        layers = dict(self.layers)
        if config is None:
            layers.pop(path, None)
        else:
            layers[path] = config
        return self.model_validate({**self._fields(), "layers": layers})

    def with_default(self, config: LayerConfig) -> CompressionPlan:
        return self.model_validate({**self._fields(), "default": config})

    def with_group(self, role: str, config: LayerConfig | Literal["skip"] | None,
                   blocks: Iterable[int] | None = None) -> CompressionPlan:
        """A new plan whose group (role, blocks) is `config` (replaced if present, None removes).

        `plan.with_group("attention", LayerConfig(quant=QuantConfig(weight_bits=4)),
        blocks=range(0, 2))` sets every attention target of blocks 0 and 1.
        """
        if blocks is not None and not isinstance(blocks, Iterable):
            raise PlanError(f"with_group blocks: an iterable of block indices or None, got "
                            f"{short_repr(blocks)}.")
        key = GroupEntry(role=role, blocks=None if blocks is None else tuple(blocks), config=SKIP)
        kept = [g for g in self.groups if (g.role, g.blocks) != (key.role, key.blocks)]
        if config is not None:
            kept.append(GroupEntry(role=key.role, blocks=key.blocks, config=config))
        return self.model_validate({**self._fields(), "groups": tuple(kept)})

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in type(self).model_fields}


# ---- JSON with line numbers in errors --------------------------------------------------------
def plan_from_json(text: str | bytes, source_name: str = "<plan>") -> CompressionPlan:
    """Parse and validate plan JSON; any problem becomes one PlanError naming line and field.

    Refused before any parsing work: more than MAX_PLAN_BYTES, bytes that are not UTF-8, nesting
    deeper than MAX_NESTING. Refused while parsing: NaN / Infinity, numbers longer than
    MAX_NUMBER_DIGITS digits, and a key repeated in one object (JSON would keep the last silently).
    """
    if isinstance(text, bytes | bytearray):
        if len(text) > MAX_PLAN_BYTES:
            raise PlanError(f"{source_name}: {len(text):,} bytes; a plan file is at most "
                            f"{MAX_PLAN_BYTES:,} bytes (one entry per layer is a few kB).")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as err:
            line = bytes(text).count(b"\n", 0, err.start) + 1
            raise PlanError(f"{source_name}:{line}: not UTF-8 text ({err.reason} at byte "
                            f"{err.start}); save the plan as UTF-8 JSON.") from None
    if not isinstance(text, str):
        raise PlanError(f"{source_name}: plan JSON must be text (str or UTF-8 bytes), got "
                        f"{type(text).__name__}.")
    if len(text) > MAX_PLAN_BYTES:
        raise PlanError(f"{source_name}: {len(text):,} characters; a plan file is at most "
                        f"{MAX_PLAN_BYTES:,} (one entry per layer is a few kB).")
    _check_nesting(text, source_name)
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_int=_bounded_int,
                          parse_float=_bounded_float, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise PlanError(f"{source_name}:{err.lineno}:{err.colno}: not valid JSON: {err.msg}.") \
            from None
    except _JsonRefused as err:
        line = text.count("\n", 0, max(0, text.find(err.token))) + 1 if err.token else 1
        raise PlanError(f"{source_name}:{line}: {err}") from None
    except RecursionError:  # not reached after _check_nesting; kept as a last guard
        raise PlanError(f"{source_name}: JSON nested too deeply (limit {MAX_NESTING}).") from None
    try:  # pydantic-core's validator directly: its structured errors carry the JSON locations
        return CompressionPlan.__pydantic_validator__.validate_python(data)
    except ValidationError as err:
        positions = _json_positions(text)
        lines: list[tuple[int, str]] = []
        for e in err.errors():
            path, field = _json_path(data, e["loc"], e["type"] == "missing")
            line = text.count("\n", 0, positions.get(path, 0)) + 1
            got = "" if e["type"] == "missing" else f" (got {short_repr(e.get('input'))})"
            lines.append((line, f"{source_name}:{line}: {field or '(top level)'}: "
                                f"{e['msg']}{got}"))
        lines.sort(key=lambda item: item[0])
        raise PlanError("invalid compression plan:\n  " + "\n  ".join(t for _, t in lines)) \
            from None


def plan_from_file(path: str | Path) -> CompressionPlan:
    """Read a plan file: its size is checked from the file system before a byte is read."""
    path = Path(path)
    if not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "no such file"
        raise PlanError(f"{path}: {what}; pass the path of a plan JSON file.")
    n_bytes = path.stat().st_size
    if n_bytes > MAX_PLAN_BYTES:
        raise PlanError(f"{path}: {n_bytes:,} bytes; a plan file is at most {MAX_PLAN_BYTES:,} "
                        f"bytes (one entry per layer is a few kB). Is this the right file?")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PlanError(f"{path}: cannot read the plan file ({err.strerror}).") from None
    return plan_from_json(data, source_name=str(path))


class _JsonRefused(ValueError):
    """A JSON value a plan refuses; `token` is text to look for to report the line."""

    def __init__(self, message: str, token: str = "") -> None:
        super().__init__(message)
        self.token = token


def _refuse_constant(name: str) -> Any:
    raise _JsonRefused(f"{name} is not a valid plan value (JSON has no NaN / Infinity); write a "
                       f"finite number.", name)


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise _JsonRefused(f"a number with {len(digits.lstrip('-')):,} digits ({digits[:12]}...);"
                           f" plan numbers (ranks, bits, block indices, amounts) have at most "
                           f"{MAX_NUMBER_DIGITS} digits.", digits[:40])
    return int(digits)


def _bounded_float(literal: str) -> float:
    if len(literal) > MAX_NUMBER_DIGITS + 10:
        raise _JsonRefused(f"a number written with {len(literal):,} characters ({literal[:12]}...);"
                           f" plan numbers have at most {MAX_NUMBER_DIGITS} digits.", literal[:40])
    value = float(literal)
    if value != value or value in (float("inf"), float("-inf")):
        raise _JsonRefused(f"{literal} overflows a float; write a finite number.", literal)
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _JsonRefused(f"key {short_repr(key)} appears twice in one object; JSON would keep "
                               f"only the last silently, so remove one of them.",
                               json.dumps(key))
        out[key] = value
    return out


_BRACKETS_OUTSIDE_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|([\[{])|([\]}])')


def _check_nesting(text: str, source_name: str) -> None:
    """Refuse JSON nested deeper than MAX_NESTING before the recursive parser sees it."""
    depth = 0
    for match in _BRACKETS_OUTSIDE_STRINGS.finditer(text):
        if match.group(1):
            depth += 1
            if depth > MAX_NESTING:
                line = text.count("\n", 0, match.start()) + 1
                raise PlanError(f"{source_name}:{line}: JSON nested more than {MAX_NESTING} "
                                f"levels deep; a plan nests at most 5 (plan > layers > entry > "
                                f"prune > field).")
        elif match.group(2):
            depth -= 1


def _json_path(data: Any, loc: tuple[Any, ...], missing: bool) -> tuple[tuple[Any, ...], str]:
    """Follow a pydantic error location through the JSON data, skipping union tags."""
    path: tuple[Any, ...] = ()
    field = ""
    node = data
    for n, item in enumerate(loc):
        if isinstance(node, dict) and item in node:
            node = node[item]
            path += (item,)
            field += f"[{item!r}]" if path[:1] == ("layers",) and len(path) == 2 else f".{item}"
        elif isinstance(node, list) and isinstance(item, int) and item < len(node):
            node = node[item]
            path += (item,)
            field += f"[{item}]"
        elif missing and n == len(loc) - 1:
            field += f".{item}"  # a required field is absent: name it, point at its parent
        # anything else is a union tag ("config" / "skip") that is not in the data
    return path, field.lstrip(".")


# The tokens of JSON (RFC 8259, sections 6-7), for `_json_positions`: it only runs on text that
# json.loads has accepted, so these need not reject anything; a string token's value is read by
# json.loads (public API) rather than by the json module's private scanner.
_WS = re.compile(r"[ \t\n\r]*")
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


def _json_positions(text: str) -> dict[tuple[Any, ...], int]:
    """Character offset of every value (objects: of their key) in valid JSON, by path."""
    out: dict[tuple[Any, ...], int] = {}

    def skip(i: int) -> int:
        return _WS.match(text, i).end()     # type: ignore[union-attr]  # `*`: always matches

    def string_end(i: int) -> int:
        token = _STRING.match(text, i)
        if token is None:                   # not reached: json.loads accepted the text
            raise ValueError(f"no JSON string at offset {i}")
        return token.end()

    def value(i: int, path: tuple[Any, ...]) -> int:
        i = skip(i)
        out.setdefault(path, i)
        c = text[i]
        if c == "{":
            i = skip(i + 1)
            while text[i] != "}":
                key_at, i = i, string_end(i)
                key = json.loads(text[key_at:i])
                out[path + (key,)] = key_at
                i = skip(i) + 1                          # past ':'
                i = skip(value(i, path + (key,)))
                if text[i] == ",":
                    i = skip(i + 1)
            return i + 1
        if c == "[":
            i = skip(i + 1)
            n = 0
            while text[i] != "]":
                i = skip(value(i, path + (n,)))
                n += 1
                if text[i] == ",":
                    i = skip(i + 1)
            return i + 1
        if c == '"':
            return string_end(i)
        for literal in ("true", "false", "null"):
            if text.startswith(literal, i):
                return i + len(literal)
        number = _NUMBER.match(text, i)
        if number is None:                  # not reached: json.loads accepted the text
            raise ValueError(f"no JSON value at offset {i}")
        return number.end()

    value(0, ())
    return out


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the plan file; shipped as workbench/plan_schema.json."""
    return CompressionPlan.model_json_schema()


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # regenerate the shipped schema file
    SCHEMA_PATH.write_text(schema_text())
    print(f"wrote {SCHEMA_PATH}")
