"""What each control does to the plan: small pure functions plan -> new plan, and presets.

A control writes an explicit entry for its own layer, so the value the user sets wins over
groups, patterns and the default (`workbench.resolve`: the layer's own entry comes first,
technique by technique). A control shows the *resolved* setting, so a preset or group shows up
on every row it reaches.

Rows and their targets (`workbench.plan.find_targets`):
    structured module (attention / ffn / conv_module): prune amount + structure. Structure
        "heads"/"neurons"/"channels" prunes the module; "unstructured" writes the same amount
        on each of its Linear / Conv layers (and sets the module's structured amount to 0).
    linear / conv layer: weight bits (None = fp32), rank (Linear; None = full rank), and an
        unstructured prune amount when the layer is not inside a structured module.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from torch import nn

from workbench.compress import presets as core
from workbench.compress.targets import Target, find_targets
from workbench.compress.techniques import technique, techniques
from workbench.plan import (STRUCTURE_FOR_KIND, WEIGHT_BITS, CompressionPlan, LayerConfig,
                            PruneConfig, QuantConfig)

#: Choices of the bits control: None = fp32 weights.
BIT_CHOICES: tuple[int | None, ...] = (None, *sorted(WEIGHT_BITS, reverse=True))


def _entry(plan: CompressionPlan, path: str) -> LayerConfig:
    entry = plan.layers.get(path)
    return entry if isinstance(entry, LayerConfig) else LayerConfig()


def set_bits(plan: CompressionPlan, path: str, bits: int | None,
             resolved: Mapping[str, LayerConfig] | None = None) -> CompressionPlan:
    """`path`'s weight bits (None = fp32), keeping its other quantization settings."""
    entry = _entry(plan, path)
    old = entry.quant or (resolved or {}).get(path, LayerConfig()).quant or QuantConfig()
    return plan.with_layer(path, entry.model_copy(update={
        "quant": old.model_copy(update={"weight_bits": bits})}))


def set_rank(plan: CompressionPlan, path: str, rank: int | None) -> CompressionPlan:
    """`path`'s low rank (None = full rank: the explicit rank is removed)."""
    entry = _entry(plan, path).model_copy(update={"rank": rank, "energy": None})
    return plan.with_layer(path, None if entry.is_empty() else entry)


def set_prune(plan: CompressionPlan, model: nn.Module, path: str, amount: float,
              structure: str) -> CompressionPlan:
    """Prune `path` by `amount` with `structure` (see the module docstring)."""
    targets = find_targets(model)
    target = targets[path]
    structured = STRUCTURE_FOR_KIND.get(target.kind)
    if structure == "unstructured" and structured is not None:
        # The module itself: structured amount 0; its layers: the unstructured amount.
        plan = plan.with_layer(path, _entry(plan, path).model_copy(update={
            "prune": PruneConfig(amount=0.0, structure=structured)}))
        for child in children(targets, path):
            plan = plan.with_layer(child, _entry(plan, child).model_copy(update={
                "prune": PruneConfig(amount=amount, structure="unstructured")}))
        return plan
    if structured is not None:  # structured: clear any unstructured amount on its layers
        for child in children(targets, path):
            entry = _entry(plan, child)
            if entry.prune is not None:
                plan = plan.with_layer(child, entry.model_copy(update={
                    "prune": PruneConfig(amount=0.0, structure="unstructured")}))
    return plan.with_layer(path, _entry(plan, path).model_copy(update={
        "prune": PruneConfig(amount=amount, structure=structure)}))


def controls_for(target: Target) -> list[str]:
    """The registered techniques with a `Control` on `target`'s row, in the registry's order
    (the built-in prune / quant / low rank have none: the compress tab draws their widgets)."""
    return [t.name for t in techniques() if t.control is not None and target.kind in t.control.kinds]


def set_technique(plan: CompressionPlan, path: str, name: str, value) -> CompressionPlan:
    """`path`'s setting of technique `name` from its control's `value` (the control's
    `to_setting`; None removes the setting)."""
    tech = technique(name)
    setting = tech.control.to_setting(value)
    entry = _entry(plan, path).without(tech.fields)
    if setting is not None:
        new = setting if len(tech.fields) > 1 else {tech.fields[0]: setting}
        entry = LayerConfig(**{**entry.values(), **new})
    return plan.with_layer(path, None if entry.is_empty() else entry)


def children(targets: Mapping[str, Target], path: str) -> list[str]:
    """Linear / Conv targets under `path`."""
    return [p for p, t in targets.items()
            if p.startswith(path + ".") and t.kind in ("linear", "conv")]


def structured_parent(targets: Mapping[str, Target], path: str) -> str | None:
    """The attention / FFN / conv module `path` sits in, if any."""
    for p, t in targets.items():
        if t.kind in STRUCTURE_FOR_KIND and path.startswith(p + "."):
            return p
    return None


def prune_shown(plan: CompressionPlan, resolved: Mapping[str, LayerConfig],
                targets: Mapping[str, Target], path: str) -> tuple[float, str]:
    """(amount, structure) a module row shows: its structured amount, else its layers'
    unstructured amount (the largest, if they differ). The structure stays "unstructured" at
    amount 0 when the plan says so explicitly, so choosing it before moving the slider sticks."""
    structured = STRUCTURE_FOR_KIND[targets[path].kind]
    own = resolved.get(path, LayerConfig()).prune
    if own is not None and own.amount > 0:
        return own.amount, own.structure
    kids = children(targets, path)
    amounts = [resolved[c].prune.amount for c in kids
               if c in resolved and resolved[c].prune is not None]
    if amounts and max(amounts) > 0:
        return max(amounts), "unstructured"
    explicit = [plan.layers.get(c) for c in kids]
    if any(isinstance(e, LayerConfig) and e.prune is not None
           and e.prune.structure == "unstructured" for e in explicit):
        return 0.0, "unstructured"
    return 0.0, structured


# ---- group edits ------------------------------------------------------------------------------
def apply_group(plan: CompressionPlan, model: nn.Module, role: str, blocks: Iterable[int] | None,
                config: LayerConfig) -> CompressionPlan:
    """Set `config` on every `role` target of `blocks` (None = all). Explicit per-layer settings
    of the same techniques on those targets are dropped, so the group takes effect everywhere
    it names (a user who applies "all FFN: 4 bit" expects every FFN row to say 4)."""
    block_set = None if blocks is None else set(blocks)
    for path, target in find_targets(model).items():
        if target.role != role or (block_set is not None and target.block not in block_set):
            continue
        entry = plan.layers.get(path)
        if not isinstance(entry, LayerConfig):
            continue
        drop = [f for tech in techniques() if config.sets(tech.name) for f in tech.fields]
        if drop:
            new = entry.without(drop)
            plan = plan.with_layer(path, None if new.is_empty() else new)
    return plan.with_group(role, config, blocks=None if blocks is None else sorted(block_set))


# ---- presets ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """A named plan. Applying a preset replaces the whole plan (its description says what with)."""

    name: str
    description: str
    build: Callable[[], CompressionPlan]


def presets() -> tuple[Preset, ...]:
    """"reset" (the empty plan) and the core's named plans (workbench.compress.presets)."""
    out = [Preset("reset", "No compression: every layer fp32, nothing pruned.", CompressionPlan)]
    for name, factory in core.PRESETS.items():
        doc = " ".join((factory.__doc__ or name).split())
        out.append(Preset(name, doc, factory))
    return tuple(out)


def preset_named(name: str) -> Preset:
    for p in presets():
        if p.name == name:
            return p
    raise KeyError(f"preset: unknown preset '{name}'; known: {[p.name for p in presets()]}")
