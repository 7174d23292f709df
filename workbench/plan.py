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

import difflib
import fnmatch
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from json.decoder import scanstring
from json.scanner import NUMBER_RE
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError,
                      field_validator, model_serializer, model_validator)
from torch import nn

from workbench.errors import PlanError
from workbench.models.base import ROLE_NAMES

if TYPE_CHECKING:
    from workbench.compress.targets import Target

#: Version of the JSON layout; bump it when a field changes meaning.
FORMAT_VERSION = 1
#: The entry value that leaves a layer (or everything under a path) untouched.
SKIP = "skip"
#: Where the JSON Schema of the plan ships (regenerate: `python -m workbench.plan`).
SCHEMA_PATH = Path(__file__).with_name("plan_schema.json")

RoleName = Literal[ROLE_NAMES]  # type: ignore[valid-type]  # "attention", "ffn", ...
Technique = Literal["prune", "quant", "low_rank"]
TECHNIQUES: tuple[Technique, ...] = ("prune", "quant", "low_rank")
#: Pruning structure that each structured target kind takes.
STRUCTURE_FOR_KIND = {"attention": "heads", "ffn": "neurons", "conv_module": "channels"}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PruneConfig(_Frozen):
    """Remove a fraction of a layer's weights (unstructured) or of its heads/neurons/channels."""

    amount: float = Field(ge=0.0, le=0.95, description="Fraction removed, 0..0.95.")
    structure: Literal["unstructured", "heads", "neurons", "channels"] = "unstructured"
    importance: Literal["magnitude", "taylor"] = Field(
        "magnitude", description="magnitude: L2 norm of the group's weights; taylor: sum of "
                                 "|w * dL/dw| with CTC-loss gradients on a calibration set.")


class QuantConfig(_Frozen):
    """Simulated (fake) quantization of a layer's weights, and optionally of its input."""

    weight_bits: Literal[2, 3, 4, 5, 6, 7, 8, 16] | None = Field(
        8, description="Bits per weight; 16 = fp16 rounding; null = fp32 weights.")
    granularity: Literal["per_channel", "per_tensor", "per_block"] = Field(
        "per_channel", description="Scales per output channel, per tensor, or per block of 32 "
                                   "inputs of each output channel (ONNX Runtime MatMulNBits).")
    symmetric: bool = True
    act_bits: Literal[8] | None = Field(
        None, description="8: the layer's input is fake-quantized (per tensor, asymmetric) with "
                          "min/max observed on the calibration set; null: float input.")


class LayerConfig(_Frozen):
    """What to do to one target. Unset techniques fall through to less specific levels."""

    prune: PruneConfig | None = None
    quant: QuantConfig | None = None
    rank: int | None = Field(None, ge=1, description="Low rank: keep this many singular values.")
    energy: float | None = Field(None, gt=0.0, le=1.0, description=(
        "Low rank: keep the fewest singular values whose squares sum to this fraction."))

    @model_validator(mode="after")
    def _one_low_rank_setting(self) -> LayerConfig:
        if self.rank is not None and self.energy is not None:
            raise ValueError("set either rank or energy for low rank, not both")
        return self

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: Any) -> dict[str, Any]:
        # Unset techniques are left out of the JSON, so a plan file shows only what it changes.
        return {k: v for k, v in handler(self).items() if v is not None}

    def sets(self, technique: Technique) -> bool:
        if technique == "low_rank":
            return self.rank is not None or self.energy is not None
        return getattr(self, technique) is not None

    def is_empty(self) -> bool:
        return not any(self.sets(t) for t in TECHNIQUES)


def _entry_tag(value: Any) -> str:
    return "skip" if isinstance(value, str) else "config"


#: A plan entry: a LayerConfig, or the string "skip".
LayerEntry = Annotated[Union[Annotated[LayerConfig, Tag("config")],
                             Annotated[Literal["skip"], Tag("skip")]], Discriminator(_entry_tag)]


class GroupEntry(_Frozen):
    """Settings for every target of a role ("attention", "ffn", ...), optionally in some blocks."""

    role: RoleName
    blocks: tuple[int, ...] | None = Field(None, description="Block indices; null = all blocks "
                                                             "(and targets outside blocks).")
    config: LayerEntry

    @field_validator("blocks")
    @classmethod
    def _sorted_blocks(cls, blocks: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if blocks is not None and any(b < 0 for b in blocks):
            raise ValueError("block indices must be >= 0")
        return None if blocks is None else tuple(sorted(set(blocks)))


def is_pattern(key: str) -> bool:
    return any(c in key for c in "*?[")


class CompressionPlan(_Frozen):
    """Per-layer compression settings; see the module docstring for resolution and validation."""

    format_version: Literal[1] = FORMAT_VERSION
    model_fingerprint: str | None = Field(None, description="Architecture id of the model the "
                                                            "plan was made for; null = any.")
    default: LayerConfig = Field(default_factory=LayerConfig)
    groups: tuple[GroupEntry, ...] = ()
    layers: dict[str, LayerEntry] = Field(default_factory=dict, description=(
        "Module path or fnmatch pattern -> LayerConfig or \"skip\"."))

    @field_validator("layers")
    @classmethod
    def _clean_keys(cls, layers: dict[str, Any]) -> dict[str, Any]:
        for key in layers:
            if not key or key != key.strip() or " " in key:
                raise ValueError(f"layer key {key!r} must be a module path or pattern "
                                 f"without spaces, like 'blocks.0.attn' or 'blocks.*.mlp'")
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
        key = GroupEntry(role=role, blocks=None if blocks is None else tuple(blocks), config=SKIP)
        kept = [g for g in self.groups if (g.role, g.blocks) != (key.role, key.blocks)]
        if config is not None:
            kept.append(key.model_copy(update={"config": config}))
        return self.model_validate({**self._fields(), "groups": tuple(kept)})

    def for_model(self, model: nn.Module) -> CompressionPlan:
        """This plan stamped with `model`'s fingerprint."""
        return self.model_validate({**self._fields(), "model_fingerprint": fingerprint_of(model)})

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in type(self).model_fields}

    # ---- resolution ------------------------------------------------------------------------
    def resolve(self, model: nn.Module, force: bool = False) -> dict[str, LayerConfig]:
        """Effective settings of every target that something happens to, in module order.

        Only the techniques that apply to each target's kind are kept. Raises PlanError on an
        unknown path, a technique that fits none of the layers its entry names, an explicit
        rank above min(in, out), or (unless `force`) a plan made for another model.
        """
        from workbench.compress.targets import find_targets  # compress imports this module

        check_fingerprint(self, model, force)
        modules = dict(model.named_modules())
        targets = find_targets(model)
        self._check_explicit(modules, targets)
        patterns = sorted((k for k in self.layers if is_pattern(k)),
                          key=lambda k: (_specificity(k), list(self.layers).index(k)),
                          reverse=True)
        matched_kinds: dict[str, set[str]] = {}
        out: dict[str, LayerConfig] = {}
        for path, target in targets.items():
            levels: list[tuple[str, LayerConfig | str]] = []
            if path in self.layers:
                levels.append((f"layers[{path!r}]", self.layers[path]))
            ancestor = _nearest_skipped_ancestor(path, self.layers)
            if ancestor is not None:
                levels.append((f"layers[{ancestor!r}]", SKIP))
            for key in patterns:
                if fnmatch.fnmatchcase(path, key):
                    levels.append((f"layers[{key!r}]", self.layers[key]))
                    matched_kinds.setdefault(f"layers[{key!r}]", set()).add(target.kind)
            for i in reversed(range(len(self.groups))):
                group = self.groups[i]
                if group.role == target.role and (group.blocks is None or
                                                  target.block in group.blocks):
                    levels.append((f"groups[{i}]", group.config))
                    matched_kinds.setdefault(f"groups[{i}]", set()).add(target.kind)
            levels.append(("default", self.default))
            config = _merge(path, target, levels)
            if not config.is_empty():
                out[path] = config
        self._check_patterns_and_groups(patterns, matched_kinds)
        return out

    def _check_explicit(self, modules: Mapping[str, nn.Module], targets: Mapping[str, Target]
                        ) -> None:
        for path, entry in self.layers.items():
            if is_pattern(path):
                continue
            where = f"layers[{path!r}]"
            if path not in modules:
                close = difflib.get_close_matches(path, [p for p in modules if p], n=5, cutoff=0.5)
                hint = f" Did you mean {close}?" if close else ""
                raise PlanError(f"{where}: the model has no module '{path}'.{hint}")
            if entry == SKIP:
                continue
            if path not in targets:
                raise PlanError(f"{where}: '{path}' is a {type(modules[path]).__name__}, which a "
                                f"plan cannot compress; name a Linear/Conv layer, an attention, "
                                f"FFN or conv module under it, or use \"skip\".")
            target = targets[path]
            for technique in TECHNIQUES:
                if entry.sets(technique) and not _applies(technique, entry, target):
                    raise PlanError(f"{where}.{_field_name(technique, entry)}: "
                                    f"{_why_not(technique, entry, target, path)}")
            if entry.rank is not None:
                linear = modules[path]
                limit = min(linear.in_features, linear.out_features)
                if entry.rank > limit:
                    raise PlanError(f"{where}.rank: {entry.rank} is above min(in, out) = {limit} "
                                    f"of this {linear.in_features}->{linear.out_features} Linear.")

    def _check_patterns_and_groups(self, patterns: list[str],
                                   matched_kinds: Mapping[str, set[str]]) -> None:
        named = [(f"layers[{k!r}]", self.layers[k]) for k in patterns]
        named += [(f"groups[{i}]", g.config) for i, g in enumerate(self.groups)]
        for where, entry in named:
            kinds = matched_kinds.get(where, set())
            if not kinds:
                if where.startswith("layers"):
                    raise PlanError(f"{where}: the pattern matches no layer of this model.")
                continue  # a role group may be empty for some model families
            if entry == SKIP:
                continue
            for technique in TECHNIQUES:
                if entry.sets(technique) and not any(
                        _kind_applies(technique, entry, k) for k in kinds):
                    raise PlanError(
                        f"{where}.{_field_name(technique, entry)}: applies to none of the layers "
                        f"it matches (kinds: {', '.join(sorted(kinds))}). Pruning 'heads' fits "
                        f"attention modules, 'neurons' FFN modules, 'channels' conv modules, "
                        f"'unstructured' Linear/Conv layers; quant fits Linear/Conv layers; "
                        f"rank/energy fit Linear layers.")


def _applies(technique: Technique, config: LayerConfig, target: Target) -> bool:
    return _kind_applies(technique, config, target.kind)


def _kind_applies(technique: Technique, config: LayerConfig, kind: str) -> bool:
    """Whether `config`'s setting of `technique` fits a target of `kind`."""
    if technique == "prune":
        structure = config.prune.structure
        if kind in ("linear", "conv"):
            return structure == "unstructured"
        return STRUCTURE_FOR_KIND[kind] == structure
    if technique == "quant":
        return kind in ("linear", "conv")
    return kind == "linear"


def _field_name(technique: Technique, config: LayerConfig) -> str:
    if technique == "prune":
        return "prune.structure"
    if technique == "low_rank":
        return "rank" if config.rank is not None else "energy"
    return "quant"


def _why_not(technique: Technique, config: LayerConfig, target: Target, path: str) -> str:
    if technique == "prune":
        structure = config.prune.structure
        want = STRUCTURE_FOR_KIND.get(target.kind, "unstructured")
        return (f"'{structure}' pruning does not fit {path} ({target.type_name}, a {target.kind} "
                f"target); use structure '{want}' here, or name a module of the right kind "
                f"(heads: attention, neurons: FFN, channels: conv module, unstructured: "
                f"Linear/Conv).")
    if technique == "quant":
        return (f"quantization applies to Linear/Conv layers, and {path} is a {target.type_name}; "
                f"name its layers (e.g. '{path}.*').")
    return (f"low rank applies to Linear layers, and {path} is a {target.type_name}.")


def _nearest_skipped_ancestor(path: str, layers: Mapping[str, Any]) -> str | None:
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:i])
        if layers.get(prefix) == SKIP:
            return prefix
    return None


def _specificity(pattern: str) -> int:
    """Literal characters of an fnmatch pattern (a [...] class counts as one)."""
    return len(re.sub(r"\[[^\]]*\]", "?", pattern).replace("*", "").replace("?", ""))


def _merge(path: str, target: Target, levels: list[tuple[str, LayerConfig | str]]
           ) -> LayerConfig:
    """Per technique, the first level that sets it or says skip; keep what fits the target."""
    chosen: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for technique in TECHNIQUES:
        for where, entry in levels:
            if entry == SKIP:
                break
            if entry.sets(technique):
                if _applies(technique, entry, target):
                    sources[technique] = where
                    if technique == "low_rank":
                        chosen.update(rank=entry.rank, energy=entry.energy)
                    else:
                        chosen[technique] = getattr(entry, technique)
                break
    prune = chosen.get("prune")
    if prune is not None and prune.amount == 0:
        chosen.pop("prune")
    quant = chosen.get("quant")
    if quant is not None and quant.weight_bits is None and quant.act_bits is None:
        chosen.pop("quant")
    if "prune" in chosen and chosen["prune"].structure == "unstructured" and (
            chosen.get("rank") is not None or chosen.get("energy") is not None):
        raise PlanError(f"{path}: unstructured pruning ({sources['prune']}) and low rank "
                        f"({sources['low_rank']}) on the same Linear would make the sparse "
                        f"weights dense again; pick one for this layer.")
    return LayerConfig(**chosen)


# ---- fingerprint ---------------------------------------------------------------------------
def fingerprint_of(model: nn.Module) -> str:
    """Architecture id: workbench.models.model_fingerprint for workbench models; for any other
    module, sha256 over its class name and sorted (parameter name, shape)."""
    if hasattr(model, "describe") and hasattr(model, "family"):
        from workbench.models import model_fingerprint
        return model_fingerprint(model)
    params = sorted((n, list(p.shape)) for n, p in model.named_parameters())
    blob = json.dumps({"class": type(model).__name__, "params": params}, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def check_fingerprint(plan: CompressionPlan, model: nn.Module, force: bool = False) -> None:
    if plan.model_fingerprint is None or force:
        return
    actual = fingerprint_of(model)
    if plan.model_fingerprint != actual:
        raise PlanError(f"model_fingerprint: the plan was made for another model "
                        f"({plan.model_fingerprint[:12]}...), this one is {actual[:12]}.... Pass "
                        f"force=True to apply it anyway (paths are still checked), or set "
                        f"model_fingerprint to null.")


# ---- JSON with line numbers in errors --------------------------------------------------------
def plan_from_json(text: str, source_name: str = "<plan>") -> CompressionPlan:
    """Parse and validate plan JSON; any problem becomes one PlanError naming line and field."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise PlanError(f"{source_name}:{err.lineno}:{err.colno}: not valid JSON: {err.msg}.") \
            from None
    try:
        return CompressionPlan.model_validate(data)
    except ValidationError as err:
        positions = _json_positions(text)
        lines: list[tuple[int, str]] = []
        for e in err.errors():
            path, field = _json_path(data, e["loc"], e["type"] == "missing")
            line = text.count("\n", 0, positions.get(path, 0)) + 1
            lines.append((line, f"{source_name}:{line}: {field or '(top level)'}: {e['msg']}"))
        lines.sort(key=lambda item: item[0])
        raise PlanError("invalid compression plan:\n  " + "\n  ".join(t for _, t in lines)) \
            from None


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


def _json_positions(text: str) -> dict[tuple[Any, ...], int]:
    """Character offset of every value (objects: of their key) in valid JSON, by path."""
    out: dict[tuple[Any, ...], int] = {}
    ws = re.compile(r"[ \t\n\r]*")

    def value(i: int, path: tuple[Any, ...]) -> int:
        i = ws.match(text, i).end()
        out.setdefault(path, i)
        c = text[i]
        if c == "{":
            i = ws.match(text, i + 1).end()
            while text[i] != "}":
                key_at = i
                key, i = scanstring(text, i + 1)
                out[path + (key,)] = key_at
                i = ws.match(text, i).end() + 1          # past ':'
                i = ws.match(text, value(i, path + (key,))).end()
                if text[i] == ",":
                    i = ws.match(text, i + 1).end()
            return i + 1
        if c == "[":
            i = ws.match(text, i + 1).end()
            n = 0
            while text[i] != "]":
                i = ws.match(text, value(i, path + (n,))).end()
                n += 1
                if text[i] == ",":
                    i = ws.match(text, i + 1).end()
            return i + 1
        if c == '"':
            return scanstring(text, i + 1)[1]
        for literal in ("true", "false", "null"):
            if text.startswith(literal, i):
                return i + len(literal)
        return NUMBER_RE.match(text, i).end()

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
