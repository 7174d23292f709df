"""Resolve a CompressionPlan (plain data, workbench.plan) against a model: which setting each
target gets, and every check that needs the model (paths exist, techniques fit, ranks fit, the
fingerprint matches). See workbench.plan's docstring for the resolution order.

    resolve(plan, model, force=False) -> {path: LayerConfig}    effective settings, module order
    plan_for_model(plan, model) -> CompressionPlan              stamped with the fingerprint
    fingerprint_of(model) -> str                                architecture id
"""
from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from torch import nn

from workbench.checks import check_model
from workbench.compress.targets import _BLOCK_INDEX, Target, find_targets
from workbench.errors import PlanError
from workbench.models.checkpoint import model_fingerprint
from workbench.compress.techniques import Technique, techniques
from workbench.plan import SKIP, CompressionPlan, LayerConfig, is_pattern, short_repr


def resolve(plan: CompressionPlan, model: nn.Module, force: bool = False) -> dict[str, LayerConfig]:
    """Effective settings of every target that something happens to, in module order.

    Only the techniques that apply to each target's kind are kept. Raises PlanError on an
    unknown path, a technique that fits none of the layers its entry names, an explicit
    rank above min(in, out), or (unless `force`) a plan made for another model.
    """
    check_model(model, "resolve")
    check_fingerprint(plan, model, force)
    modules = dict(model.named_modules())
    targets = _with_rebuilt(plan, modules, find_targets(model))
    _check_explicit(plan, modules, targets)
    _check_group_blocks(plan, targets)
    patterns = sorted((k for k in plan.layers if is_pattern(k)),
                      key=lambda k: (_specificity(k), list(plan.layers).index(k)),
                      reverse=True)
    matched_kinds: dict[str, set[str]] = {}
    out: dict[str, LayerConfig] = {}
    for path, target in targets.items():
        levels: list[tuple[str, LayerConfig | str]] = []
        if path in plan.layers:
            levels.append((f"layers[{path!r}]", plan.layers[path]))
        ancestor = _nearest_skipped_ancestor(path, plan.layers)
        if ancestor is not None:
            levels.append((f"layers[{ancestor!r}]", SKIP))
        for key in patterns:
            if fnmatch.fnmatchcase(path, key):
                levels.append((f"layers[{key!r}]", plan.layers[key]))
                matched_kinds.setdefault(f"layers[{key!r}]", set()).add(target.kind)
        for i in reversed(range(len(plan.groups))):
            group = plan.groups[i]
            if group.role == target.role and (group.blocks is None or
                                              target.block in group.blocks):
                levels.append((f"groups[{i}]", group.config))
                matched_kinds.setdefault(f"groups[{i}]", set()).add(target.kind)
        levels.append(("default", plan.default))
        config = _merge(path, target, levels)
        if not config.is_empty():
            out[path] = config
    _check_patterns_and_groups(plan, patterns, matched_kinds)
    return out


def plan_targets(plan: CompressionPlan, model: nn.Module) -> dict[str, Target]:
    """The targets `resolve(plan, model)` resolves over: find_targets(model), where an explicit
    quant-only entry naming a layer a technique rebuilt makes it one linear target."""
    return _with_rebuilt(plan, dict(model.named_modules()), find_targets(model))


def _rebuilt(module: nn.Module) -> bool:
    """True for a layer a technique rebuilt from Linears (its `weight_parts`: a low-rank
    Linear's down / up, a grouped FFN's parts)."""
    return any(t.weight_parts is not None and t.weight_parts(module) is not None
               for t in techniques())


def _with_rebuilt(plan: CompressionPlan, modules: Mapping[str, nn.Module],
                  targets: dict[str, Target]) -> dict[str, Target]:
    """`targets` where an explicit entry names a layer a technique rebuilt and sets only what
    the runtime applies (quantization; e.g. recover's export plan on its checkpoint): that
    layer becomes one linear target and its parts stop being targets, so quantization treats
    it as compress does on the original model (each part with the layer's setting)."""
    runtime = tuple(f for t in techniques() if t.export == "runtime" for f in t.fields)
    named = [p for p, entry in plan.layers.items() if not is_pattern(p) and entry != SKIP
             and p not in targets and p in modules and _rebuilt(modules[p])
             and entry.without(runtime).is_empty()]
    if not named:
        return targets
    out: dict[str, Target] = {}
    for path in modules:
        if path in named:
            under = [t for p, t in targets.items() if p.startswith(path + ".")]
            match = _BLOCK_INDEX.search(path)
            out[path] = Target("linear", under[0].role if under else "other",
                               int(match.group(1)) if match else None,
                               type(modules[path]).__name__)
        elif path in targets and not any(path.startswith(p + ".") for p in named):
            out[path] = targets[path]
    out.update({p: t for p, t in targets.items() if p not in modules})   # graph groups
    return out


def _check_explicit(plan: CompressionPlan, modules: Mapping[str, nn.Module], targets: Mapping[str, Target]
                    ) -> None:
    for path, entry in plan.layers.items():
        if is_pattern(path):
            continue
        where = f"layers[{path!r}]"
        if path not in modules:
            close = difflib.get_close_matches(path, [p for p in modules if p], n=5, cutoff=0.5)
            hint = f" Did you mean {close}?" if close else ""
            raise PlanError(f"{where}: the model has no module '{path}'.{hint}")
        if entry == SKIP:
            continue
        if path not in targets and _rebuilt(modules[path]):
            raise PlanError(f"{where}: '{path}' is a {type(modules[path]).__name__} (a layer a "
                            f"technique already rebuilt); a plan can only quantize it now "
                            f"(quant), or name the Linears under it.")
        if path not in targets:
            raise PlanError(f"{where}: '{path}' is a {type(modules[path]).__name__}, which a "
                            f"plan cannot compress; name a Linear/Conv layer, an attention, "
                            f"FFN or conv module under it, or use \"skip\".")
        target = targets[path]
        for tech in techniques():
            setting = tech.setting(entry)
            if setting is None:
                continue
            if not tech.applies_to(setting, target.kind):
                why = (tech.why_not(setting, target, path) if tech.why_not is not None else
                       f"{tech.fits}; {path} is a {target.type_name} ({target.kind}).")
                raise PlanError(f"{where}.{_field_name(tech, entry)}: {why}")
            problem = (tech.check_module(setting, modules[path])
                       if tech.check_module is not None else None)
            if problem is not None:
                raise PlanError(f"{where}.{_field_name(tech, entry)}: {problem}")


def _check_group_blocks(plan: CompressionPlan, targets: Mapping[str, Target]) -> None:
    """A group naming a block the model does not have would silently do nothing there."""
    present = sorted({t.block for t in targets.values() if t.block is not None})
    for i, group in enumerate(plan.groups):
        if group.blocks is None:
            continue
        absent = [b for b in group.blocks if b not in present]
        if absent:
            have = f"blocks {present[0]}..{present[-1]}" if present else "no blocks"
            raise PlanError(f"groups[{i}].blocks: {short_repr(absent)} not in this model, which "
                            f"has {have}; use indices from 0 to {len(present) - 1}, or null "
                            f"for all blocks.")


def _check_patterns_and_groups(plan: CompressionPlan, patterns: list[str],
                               matched_kinds: Mapping[str, set[str]]) -> None:
    named = [(f"layers[{k!r}]", plan.layers[k]) for k in patterns]
    named += [(f"groups[{i}]", g.config) for i, g in enumerate(plan.groups)]
    for where, entry in named:
        kinds = matched_kinds.get(where, set())
        if not kinds:
            if where.startswith("layers"):
                raise PlanError(f"{where}: the pattern matches no layer of this model.")
            continue  # a role group may be empty for some model families
        if entry == SKIP:
            continue
        for tech in techniques():
            setting = tech.setting(entry)
            if setting is not None and not any(tech.applies_to(setting, k) for k in kinds):
                fits = "; ".join(t.fits for t in techniques())
                raise PlanError(
                    f"{where}.{_field_name(tech, entry)}: applies to none of the layers "
                    f"it matches (kinds: {', '.join(sorted(kinds))}). {fits}.")


def plan_for_model(plan: CompressionPlan, model: nn.Module) -> CompressionPlan:
    """`plan` stamped with `model`'s fingerprint (the plan itself is not changed)."""
    check_model(model, "plan_for_model")
    fields = {name: getattr(plan, name) for name in type(plan).model_fields}
    return plan.model_validate({**fields, "model_fingerprint": fingerprint_of(model)})


def _field_name(tech: Technique, entry: LayerConfig) -> str:
    return tech.field_name(entry) if tech.field_name is not None else tech.fields[0]


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
    picked: dict[str, tuple[Any, str]] = {}    # technique -> (setting, level that set it)
    for tech in techniques():
        for where, entry in levels:
            if entry == SKIP:
                break
            setting = tech.setting(entry)
            if setting is not None:
                if tech.applies_to(setting, target.kind) and not tech.is_noop(setting):
                    picked[tech.name] = (setting, where)
                    chosen.update({f: entry.get(f) for f in tech.fields})
                break
    for tech in techniques():       # cross-technique rules: each technique's `conflicts`
        if tech.conflicts is not None and tech.name in picked:
            setting, where = picked[tech.name]
            why = tech.conflicts(setting, where,
                                 {n: v for n, v in picked.items() if n != tech.name})
            if why is not None:
                raise PlanError(f"{path}: {why}")
    return LayerConfig(**chosen)


def fingerprint_of(model: nn.Module) -> str:
    """Architecture id: workbench.models.model_fingerprint for workbench models; for any other
    module, sha256 over its class name and sorted (parameter name, shape)."""
    if hasattr(model, "describe") and hasattr(model, "family"):
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
