"""The technique registry: one handler per compression technique, in the style of torchao's
config -> handler map. Everything that must know "which techniques exist" loops over it:
plan resolution and its checks (workbench.compress.resolution), compress (apply.py), the split
into structure vs runtime quantization (export, recovery, the engine's shape caches), size and
latency pricing hooks, and the UI's control list.

A technique's setting lives in a plan entry (workbench.plan.LayerConfig) under its `fields`:
the built-in ones are LayerConfig fields (prune, quant, rank/energy); a technique registered later
brings its own frozen pydantic config (`config_type`), and LayerConfig accepts it under the
technique's name (`LayerConfig(toy={"factor": 0.5})`, or the same key in a plan file).

Adding a technique = one module that builds a `Technique` and calls `register(...)`; see
docs/architecture.md.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from workbench.errors import PlanError
from workbench.plan import LayerConfig, register_technique_config, unregister_technique_config

#: How an export treats a technique: "pytorch" = applied to the model before the fp32 ONNX export
#: (pruning, low rank: the graph has the new shapes / weights); "runtime" = left to the runtime's
#: own kernels (quantization in ONNX Runtime); "simulated" = no export path yet (the export says so).
ExportPath = Literal["pytorch", "runtime", "simulated"]


@dataclass
class ApplyContext:
    """What `apply_` may read or update while compress runs: Taylor gradients by parameter name
    (sliced by structured pruning as shapes shrink), notes for the user, and where the module
    being compressed sits in the whole model.

    The engine compresses one block at a time (`compress_module(block, entries, model=baseline,
    prefix="blocks.3")`); a technique that needs a model-level fact (the frame rate at the
    blocks) or a per-module identity (a random seed) reads it from `model` and `absolute(path)`,
    never from the root it is given, so both paths build the same model."""

    grads: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    #: path of the root `apply_` gets, in the whole model: "" when compress runs on the whole
    #: model, "blocks.3" on the engine's per-block path; entry paths are relative to it
    prefix: str = ""
    #: the whole uncompressed model (read only); None: the root is the whole model
    model: nn.Module | None = None

    def absolute(self, path: str) -> str:
        """`path` (relative to the root) as a path in the whole model."""
        return ".".join(p for p in (self.prefix, path) if p)

    def whole(self, root: nn.Module) -> nn.Module:
        """The whole model: `model`, or the root when compress runs on the whole model."""
        return self.model if self.model is not None else root


@dataclass(frozen=True)
class Control:
    """A UI control for one target: a slider over `values` (the first one = technique off)."""

    label: str
    #: target kinds whose rows show it (workbench.compress.targets)
    kinds: tuple[str, ...]
    values: tuple[Any, ...]
    #: control value -> the setting written to the plan entry (None = remove the setting)
    to_setting: Callable[[Any], Any]
    #: setting -> control value shown
    from_setting: Callable[[Any], Any]


@dataclass(frozen=True)
class Technique:
    """One compression technique. Hooks take the technique's *setting* (what `setting(cfg)` returns
    for a resolved LayerConfig) and never change their inputs, except `apply_` (a model copy)."""

    name: str
    #: LayerConfig keys that hold the setting (resolution copies them together, per level)
    fields: tuple[str, ...]
    #: compress applies techniques in increasing order (structure before low rank before bits)
    order: int
    #: (setting, target kind) -> does it fit a target of that kind? kinds: workbench.compress.targets
    applies_to: Callable[[Any, str], bool]
    #: one sentence for error messages: which layers the technique fits
    fits: str
    #: (model copy, {path: setting} in module order, context) -> model (maybe a new root object)
    apply_: Callable[[nn.Module, Mapping[str, Any], ApplyContext], nn.Module]
    #: does this setting change tensor shapes (so latency tables and exports must be rebuilt)?
    changes_shape: Callable[[Any], bool]
    #: see ExportPath
    export: ExportPath
    #: pydantic config of a technique that is not a built-in LayerConfig field
    config_type: type | None = None
    #: a setting that does nothing (amount 0, fp32) is dropped by resolution
    is_noop: Callable[[Any], bool] = lambda setting: False
    #: (setting, target, path) -> why an explicit entry does not fit (default: `fits`)
    why_not: Callable[[Any, Any, str], str] | None = None
    #: which JSON field an error about this setting names (default: the first of `fields`)
    field_name: Callable[[LayerConfig], str] | None = None
    #: (setting, module) -> an error text when the setting cannot work on this module, else None
    check_module: Callable[[Any, nn.Module], str | None] | None = None
    #: what compress must compute first: subset of {"gradients", "activations"}
    needs: Callable[[Any], frozenset[str]] = lambda setting: frozenset()
    #: size.py: (list of WeightSpec of one Linear/Conv, setting) -> new list (None: no change)
    size_specs: Callable[[list, Any], list] | None = None
    #: latency: (EffectiveLayer row, setting) -> row, or a tuple of rows where the technique
    #: splits a layer into parts (None: bits/shape hooks of the built-ins).
    #: Applied once to the rows of the target and of its sub-modules, in a table of the model
    #: without this technique (the engine's cached tables are never hooked before a rescale)
    #: or of the compressed model (a shape pass: e.g. a grouped FFN's parts, left as they are).
    latency_row: Callable[[Any, Any], Any] | None = None
    #: the same for a setting that depends on the audio length (e.g. a window in seconds):
    #: (row, setting, audio seconds of the table) -> row
    latency_row_at: Callable[[Any, Any, float], Any] | None = None
    #: the per-layer control of the UI's compress tab (None: no control)
    control: Control | None = None
    #: size_of_compressed: (a module of a compressed model) -> {state-dict suffix: Linear / Conv}
    #: of the weight layers it is made of, when this technique built it (None: not its module);
    #: e.g. a low-rank Linear -> {"down": ..., "up": ...}. Each part is priced at its own bits.
    weight_parts: Callable[[nn.Module], Mapping[str, nn.Module] | None] | None = None
    #: export == "runtime": per runtime ("onnxruntime", "executorch"), (path, target kind,
    #: setting) -> the export's Decision for that layer (how it runs there, what differs from the
    #: plan). A runtime without a handler refuses layers that set the technique.
    runtime_exports: Mapping[str, Callable[[str, str, Any], Any]] = field(default_factory=dict)
    #: the model card: setting -> a short phrase a person reads ("windowed attention, 1 s
    #: blocks"); None: the card writes the technique's name and its config (see `describe_setting`)
    describe: Callable[[Any], str] | None = None
    #: resolution: (this setting, the plan level that set it, {other technique's name: (its
    #: setting, its level)} chosen for the same layer) -> why they cannot go together (a
    #: sentence; the PlanError puts the layer's path before it), or None. E.g. unstructured
    #: pruning refuses low rank on the same Linear.
    conflicts: Callable[[Any, str, Mapping[str, tuple[Any, str]]], str | None] | None = None

    def setting(self, cfg: LayerConfig) -> Any:
        """This technique's setting in `cfg`, or None when `cfg` does not set it."""
        if not cfg.sets(self.name):
            return None
        if len(self.fields) == 1:
            return cfg.get(self.fields[0])
        return {f: cfg.get(f) for f in self.fields}


    def describe_setting(self, setting: Any) -> str:
        """The `describe` phrase of `setting`; without the hook, the name and the config's
        fields ("toy (factor=0.5, bits=16)"), so an export never leaves a technique unnamed."""
        if self.describe is not None:
            return self.describe(setting)
        if hasattr(setting, "model_dump"):
            fields = setting.model_dump(mode="json")
        elif isinstance(setting, Mapping):
            fields = dict(setting)
        else:
            return f"{self.name} ({setting})"
        return f"{self.name} (" + ", ".join(f"{k}={v}" for k, v in fields.items()) + ")"


_REGISTRY: dict[str, Technique] = {}
#: The registry in apply order, rebuilt at (un)register: techniques() runs per target of every
#: resolve, so it must not sort on each call.
_ORDERED: tuple[Technique, ...] = ()
#: Bumped at every (un)register: caches of resolved plans key on it.
_GENERATION = 0


def _changed() -> None:
    global _ORDERED, _GENERATION
    _ORDERED = tuple(sorted(_REGISTRY.values(), key=lambda t: t.order))
    _GENERATION += 1


def generation() -> int:
    """A number that changes whenever a technique is registered or removed."""
    return _GENERATION


def register(technique: Technique, *, replace: bool = False) -> Technique:
    """Add `technique` to the registry (and its config type to the plan's schema of entries)."""
    if technique.name in _REGISTRY and not replace:
        raise PlanError(f"technique {technique.name!r} is already registered; pass replace=True "
                        f"to swap its handler.")
    if technique.config_type is not None:
        if technique.fields != (technique.name,):
            raise PlanError(f"technique {technique.name!r}: a registered config lives under its "
                            f"name, so fields must be ({technique.name!r},).")
        register_technique_config(technique.name, technique.config_type)
    _REGISTRY[technique.name] = technique
    _changed()
    return technique


def unregister(name: str) -> None:
    """Remove a registered technique (tests that register a toy technique clean up with this)."""
    _REGISTRY.pop(name, None)
    unregister_technique_config(name)
    _changed()


def techniques() -> tuple[Technique, ...]:
    """Every registered technique, in the order compress applies them."""
    return _ORDERED


def technique(name: str) -> Technique:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PlanError(f"no technique {name!r}; registered: {', '.join(_REGISTRY)}.") from None


def settings(cfg: LayerConfig) -> dict[str, Any]:
    """{technique name: setting} of every technique `cfg` sets, in apply order."""
    return {t.name: s for t in techniques() for s in [t.setting(cfg)] if s is not None}


def changes_shape(cfg: LayerConfig) -> bool:
    return any(technique(n).changes_shape(s) for n, s in settings(cfg).items())


def structure_only(cfg: LayerConfig) -> LayerConfig:
    """`cfg` keeping only the settings applied in PyTorch before an export (export == "pytorch"):
    the structural part of a plan entry. Runtime quantization is removed."""
    drop = {f: None for t in techniques() if t.export == "runtime" for f in t.fields}
    return cfg.without(tuple(drop))


def runtime_only(cfg: LayerConfig) -> LayerConfig:
    """`cfg` keeping only what the runtime applies at export (export == "runtime")."""
    return cfg.without(tuple(f for t in techniques() if t.export != "runtime" for f in t.fields))


def shape_only(cfg: LayerConfig) -> LayerConfig:
    """`cfg` keeping only the settings that change shapes (what a shape cache is keyed on)."""
    keep = {f for n, s in settings(cfg).items() if technique(n).changes_shape(s)
            for f in technique(n).fields}
    return cfg.without(tuple(f for t in techniques() for f in t.fields if f not in keep))


def needs(resolved: Mapping[str, LayerConfig]) -> frozenset[str]:
    """What compress must compute before applying `resolved`: "gradients", "activations"."""
    out: set[str] = set()
    for cfg in resolved.values():
        for name, s in settings(cfg).items():
            out |= technique(name).needs(s)
    return frozenset(out)
