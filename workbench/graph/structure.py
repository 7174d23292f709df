"""What structure discovery finds, as data: prunable groups of units, and refusals.

    Group(path, kind, axes, units)     units of one module and their slices on each axis
    Refusal(path, reason)              a candidate that could not be proven
    Structure(groups, refusals, ops)   everything `groups.discover` found on one model

Apart from groups.py (which finds them) and surgery.py (which removes units), so both read these
types and groups.py can prove each group with surgery's check.
"""
from __future__ import annotations

from dataclasses import dataclass

Axis = tuple[str, int]  # (parameter name, dim)
_ROLE = {"heads": "attention", "neurons": "ffn", "channels": "conv"}


@dataclass(frozen=True)
class Group:
    """Prunable units of one module: kind, path, and per unit its slices on each axis."""

    path: str
    kind: str                                    # heads | neurons | channels
    axes: tuple[Axis, ...]
    units: tuple[dict[Axis, tuple[int, ...]], ...]

    @property
    def role(self) -> str:
        return _ROLE[self.kind]

    @property
    def size(self) -> int:
        return len(self.units)

    def consumers(self) -> tuple[Axis, ...]:
        return tuple(a for a in self.axes if a[1] == 1)


@dataclass(frozen=True)
class Refusal:
    """A candidate the tracer could not prove: where, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class Structure:
    """Everything `discover` found on one model."""

    groups: tuple[Group, ...]
    refusals: tuple[Refusal, ...]
    ops: int

    def group(self, path: str) -> Group:
        for g in self.groups:
            if g.path == path:
                return g
        known = ", ".join(g.path for g in self.groups) or "none"
        refused = [r.reason for r in self.refusals if r.path == path]
        why = f" It was refused: {refused[0]}" if refused else ""
        raise KeyError(f"{path!r} is not a prunable group.{why} Groups: {known}.")

    def by_kind(self, kind: str) -> tuple[Group, ...]:
        return tuple(g for g in self.groups if g.kind == kind)
