"""Prunable groups from recorded units (units.py), each proven by a run, or refused with a reason.

    discover(model, example) -> Structure(groups, refusals)

A *group* is the set of units that share the same parameter slices layout: the hidden neurons
of one FFN, the heads of one attention, the channels of one conv module. Each unit of a group
owns, for every (parameter, dim) axis of the group, a set of indices; the units of a group
partition those axes. A group is accepted only if:
    - none of its units is blocked (units.py names the reason when one is);
    - no index on its axes belongs to a unit outside the group;
    - it has a consumer (a weight's input dim) and at least two units;
    - removing one unit physically gives the same output (1e-4 relative) as the original model
      with that unit's consumer columns zeroed, on the example input (`surgery.check_groups`:
      one run with the weakest unit of every group removed; per group only if that fails).
Kind, for plans and the UI: "heads" if the units meet in attention, "channels" if they are a
conv's output channels, else "neurons". The path is the deepest module holding all members
(the producing module's when that is the root or already taken).
"""
from __future__ import annotations

import torch
from torch import nn

from workbench.graph.structure import Axis, Group, Refusal, Structure
from workbench.graph.surgery import check_groups
from workbench.graph.units import Member, Units, eval_mode, record_units


def _common_module(names: list[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    prefix: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        prefix.append(level[0])
    return ".".join(prefix)


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    path, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(path) if path else model, attr)


def discover(model: nn.Module, example: tuple, verify: bool = True) -> Structure:
    """Prunable groups of `model` found from one recorded run on `example` (see module doc).
    Runs in eval mode (dropout off, BatchNorm statistics untouched); `model`'s modes are
    restored."""
    with eval_mode(model):
        units = record_units(model, example)
        return structure_from_units(model, example, units, verify)


def structure_from_units(model: nn.Module, example: tuple, units: Units,
                         verify: bool = True) -> Structure:
    families: dict[tuple[Axis, ...], list[int]] = {}
    for root, members in units.members.items():
        axes = tuple(sorted({(n, d) for n, d, _ in members}))
        families.setdefault(axes, []).append(root)
    owner: dict[Member, int] = {m: r for r, ms in units.members.items() for m in ms}
    groups: list[Group] = []
    refusals: list[Refusal] = []
    for axes, roots in families.items():
        path = _common_module([n for n, _ in axes])
        if not path or any(g.path == path for g in groups) or any(r.path == path
                                                                  for r in refusals):
            # the root (e.g. a stem conv feeding the next conv: "" says nothing) or a taken
            # path: name it by the module(s) that produce the units
            path = _common_module([n for n, d in axes if d == 0]) or path
        blocked = [units.blocked[r] for r in roots if r in units.blocked]
        if blocked:
            refusals.append(Refusal(path, blocked[0]))
            continue
        reason = None
        for name, dim in axes:
            size = _tensor(model, name).shape[dim]
            outside = {owner.get((name, dim, i)) for i in range(size)} - set(roots)
            if outside:
                reason = (f"{name} dim {dim} also holds slices of units that cannot be "
                          f"removed (shared with another group or blocked)")
                break
        consumers = [(n, d) for n, d in axes if d == 1 and _tensor(model, n).dim() >= 2]
        if reason is None and not consumers:
            reason = "no weight consumes these units (nothing to prove the removal against)"
        if reason is None and len(roots) < 2:
            reason = "a single unit (everything here is coupled, e.g. by a norm over it)"
        if reason is not None:
            refusals.append(Refusal(path, reason))
            continue
        kind = ("heads" if any(r in units.attention for r in roots) else
                "channels" if any(r in units.conv for r in roots) and
                any(_tensor(model, n).dim() == 3 for n, _ in axes) else "neurons")
        per_unit = []
        for r in sorted(roots, key=lambda r: min(i for n, d, i in units.members[r])):
            per_unit.append({a: tuple(sorted(i for n, d, i in units.members[r] if (n, d) == a))
                             for a in axes})
        groups.append(Group(path, kind, axes, tuple(per_unit)))
    if verify and groups and check_groups(model, example, groups) is not None:
        # one check of all groups together failed: find which (one run per group)
        problems = {g.path: check_groups(model, example, [g]) for g in groups}
        refusals += [Refusal(path, why) for path, why in problems.items() if why is not None]
        groups = [g for g in groups if problems[g.path] is None]
    groups.sort(key=lambda g: [n for n, _ in model.named_parameters()].index(g.axes[0][0])
                if g.axes[0][0] in dict(model.named_parameters()) else 0)
    return Structure(tuple(groups), tuple(refusals), units.ops)
